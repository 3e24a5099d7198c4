"""Log context (run id, dataset, batch, table) and structured JSON logs on request.

Every stage run opens a ``log_context`` (``pipelines.lake.runs.record_run`` does it where each stage starts), so
every log line inside it can say which run, dataset, batch and table it belongs to:

- ``CITYLAKE_LOG_FORMAT=json`` (or ``citylake --log-json``): ``configure_logging`` gives citylake's loggers
  (``pipelines``, ``dags``) a handler writing one JSON object per line to stderr: ``ts`` (UTC ISO),
  ``level``, ``logger``, ``message``, the context fields when set, ``exc`` for a traceback. Otherwise logging is
  left as it was (the default output is unchanged).
- Inside an Airflow task the task log stays Airflow's: the fields are bound with ``structlog.contextvars``,
  which Airflow's log pipeline merges into every line of the task log (its own and the stdlib loggers'),
  and no handler is added.

Messages and tracebacks in the JSON lines pass through ``scrub_urls`` (userinfo, query strings and token-like
path segments of any URL removed), the rule the alerts use; a source URL's password never reaches a message
in the first place (``connections.scrub``). Hand-written: the stdlib has no JSON formatter, and a library for
these ~40 lines (python-json-logger) would not know the context or the scrubbing.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

FIELDS = ("run_id", "dataset", "batch", "table")
"""The context fields, in the order a JSON line shows them."""
LOGGERS = ("pipelines", "dags")
"""citylake's loggers (module loggers under these names)."""

_context: ContextVar[dict[str, str]] = ContextVar("citylake_log_context", default={})  # noqa: B039 - never mutated


def current() -> dict[str, str]:
    """The context fields set in this thread/task (empty outside every stage run)."""
    return dict(_context.get())


@contextmanager
def log_context(**fields: Any) -> Iterator[dict[str, str]]:
    """Within the block, every log line carries ``fields`` (None values are left out; nested contexts add to
    the outer one). Also bound as structlog context vars, so Airflow's task log shows them."""
    merged = {**_context.get(), **{k: str(v) for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    bound = _bind_structlog(merged)
    try:
        yield merged
    finally:
        _context.reset(token)
        if bound is not None:
            import structlog

            structlog.contextvars.reset_contextvars(**bound)


def _bind_structlog(fields: dict[str, str]) -> Any:
    try:
        import structlog
    except ImportError:  # citylake runs without Airflow too
        return None
    return structlog.contextvars.bind_contextvars(**fields)


class ContextFilter(logging.Filter):
    """Stamps the context fields on a record as attributes (``record.run_id`` …), for any handler or
    formatter that wants them; never drops a record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts, level, logger, message, the context fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        from pipelines.connections import scrub_urls

        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname, "logger": record.name, "message": scrub_urls(record.getMessage())}
        context = _context.get()
        for key in FIELDS:
            value = getattr(record, key, None) or context.get(key)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = scrub_urls(self.formatException(record.exc_info))
        return json.dumps(out, ensure_ascii=False, default=str)


_HANDLER_NAME = "citylake-json"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted (a test's capture, a redirect)."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def json_requested() -> bool:
    return os.environ.get("CITYLAKE_LOG_FORMAT", "").strip().lower() == "json"


def configure_logging(json_lines: bool | None = None, level: int = logging.INFO) -> bool:
    """JSON lines for citylake's loggers when asked (``json_lines`` or ``CITYLAKE_LOG_FORMAT=json``); idempotent.
    Returns whether JSON logging is on. Nothing changes when it is not asked for."""
    if not (json_requested() if json_lines is None else json_lines):
        return False
    handler = _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers = [h for h in logger.handlers if h.get_name() != _HANDLER_NAME] + [handler]
        logger.setLevel(min(level, logger.level or level))
        logger.propagate = False  # one line per record, not a second plain one from the root's handler
    return True
