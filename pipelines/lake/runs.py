"""The run ledger ``meta.runs``: one row per stage run, written where each stage starts and ends.

``record_run`` wraps a stage's entry point (``ingest_table``, the gate's ``run_quality``, ``build_curated``,
``deliver_grant``, ``release_open_data``, ``maintain``): it sets the log context (``pipelines.logs``), reads the
target table's snapshot before, times the run, and on the way out records kind, what ran (system, dataset,
table, batch), rows in and out, seconds, the snapshot before and after, the status and a one-line masked
error. The stage fills in what only it knows through the yielded ``Run`` (``run.done(rows_in=…)``).

A rerun of the same (run id, kind, target) replaces its row (``meta.replace_run``, one commit; concurrent
writers are retried on the reloaded table as every meta write is). The ledger observes: a ledger write that
fails is logged as a warning and never fails the stage (whose own commit already landed, or whose own error
is the one to see); a crash that kills the process leaves no row.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pipelines.logs import log_context

log = logging.getLogger(__name__)

KINDS = ("ingest", "publish", "curate", "share", "release", "maintenance")
ERROR_CHARS = 500


@dataclass
class Run:
    """One stage run's ledger row, filled in by the stage as it goes."""

    run_id: str
    kind: str
    target: str
    system: str | None = None
    dataset: str | None = None
    table: str | None = None
    batch_id: str | None = None
    status: str = "succeeded"
    rows_in: int | None = None
    rows_out: int | None = None
    snapshot_before: int | None = None
    snapshot_after: int | None = None
    error: str | None = None
    detail: str | None = None

    def done(self, *, status: str | None = None, rows_in: int | None = None, rows_out: int | None = None,
             snapshot: int | None = None, batch_id: str | None = None, detail: str | None = None) -> None:
        """What the stage did (only the given values change)."""
        for key, value in (("status", status), ("rows_in", rows_in), ("rows_out", rows_out),
                           ("snapshot_after", snapshot), ("batch_id", batch_id), ("detail", detail)):
            if value is not None:
                setattr(self, key, value)


def one_line(exc: BaseException) -> str:
    """An exception as one masked line for the ledger: its type and first line, personal values and URL
    secrets hidden (``mask_message``, ``scrub_urls``), at most ERROR_CHARS characters."""
    from pipelines.connections import scrub_urls
    from pipelines.privacy import mask_message

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = scrub_urls(mask_message(text) or "")
    line = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return line if len(line) <= ERROR_CHARS else line[:ERROR_CHARS - 1] + "…"


def _snapshot(catalog: Any, identifier: str | None) -> int | None:
    if catalog is None or identifier is None:
        return None
    from pipelines.lake.raw import open_table

    try:
        table = open_table(catalog, identifier)
        snap = table.current_snapshot() if table is not None else None
        return snap.snapshot_id if snap is not None else None
    except Exception as exc:  # the ledger never fails a stage
        log.warning("meta.runs: snapshot of %s not read: %s", identifier, one_line(exc))
        return None


@contextmanager
def record_run(kind: str, *, run_id: str, target: str, settings: Any = None, snapshot_of: str | None = None,
               statuses: dict[type[BaseException], str] | None = None, **what: Any) -> Iterator[Run]:
    """Record one stage run in ``meta.runs`` (module docstring). ``target``: what the run wrote or delivered
    (a lake table, a grant, a release date); ``snapshot_of``: the lake table whose snapshot before and after
    to record (default: none; the stage may give ``run.done(snapshot=…)``); ``statuses``: exception type →
    status for exceptions that are verdicts rather than failures (a held batch: ``held``); ``what``: system,
    dataset, table, batch_id. The exception, if any, is re-raised after its row is written."""
    if kind not in KINDS:
        raise ValueError(f"record_run: unknown kind {kind!r} (one of {', '.join(KINDS)})")
    run = Run(run_id, kind, target, **what)
    started_at, started = datetime.now(UTC), time.perf_counter()
    catalog = _catalog(settings) if snapshot_of is not None else None
    run.snapshot_before = _snapshot(catalog, snapshot_of)
    with log_context(run_id=run_id, dataset=run.dataset, batch=run.batch_id, table=run.table or snapshot_of):
        try:
            yield run
        except BaseException as exc:
            run.status = next((s for t, s in (statuses or {}).items() if isinstance(exc, t)), "failed")
            run.error = one_line(exc)
            raise
        finally:
            if run.snapshot_after is None and run.status != "failed":
                run.snapshot_after = _snapshot(catalog, snapshot_of)
            seconds = round(time.perf_counter() - started, 3)
            log.info("%s %s: %s, rows in %s, out %s, %.3f s%s", kind, target, run.status, run.rows_in, run.rows_out,
                     seconds, f" ({run.error})" if run.error else "")
            _write(settings, run, started_at, seconds)


def _catalog(settings: Any) -> Any:
    from pipelines.lake.catalog import get_catalog
    from pipelines.settings import load_settings

    try:
        return get_catalog(settings or load_settings())
    except Exception as exc:
        log.warning("meta.runs: catalog not opened: %s", one_line(exc))
        return None


def _write(settings: Any, run: Run, started_at: datetime, seconds: float) -> None:
    from dataclasses import asdict

    from pipelines.lake.meta import replace_run

    row = {**asdict(run), "seconds": seconds, "started_at": started_at, "finished_at": datetime.now(UTC)}
    try:
        catalog = _catalog(settings)
        if catalog is None:
            return
        replace_run(catalog, "meta.runs", run.run_id, [row], kind=run.kind, target=run.target)
    except Exception as exc:  # observation only: the stage's own outcome stands
        log.warning("meta.runs: %s run %s of %s not recorded: %s", run.kind, run.run_id, run.target, one_line(exc))


def read_runs(catalog: Any, *, since: datetime | None = None, kind: str | None = None) -> list[dict[str, Any]]:
    """The ledger's rows, newest first (``started_at``), optionally from ``since`` on and of one ``kind``."""
    from pyiceberg.expressions import AlwaysTrue, And, EqualTo, GreaterThanOrEqual

    from pipelines.lake.raw import open_table

    table = open_table(catalog, "meta.runs")
    if table is None or table.current_snapshot() is None:
        return []
    where: Any = AlwaysTrue()
    if kind is not None:
        where = And(where, EqualTo("kind", kind))
    if since is not None:
        where = And(where, GreaterThanOrEqual("started_at", since.astimezone(UTC).isoformat()))
    rows = table.scan(row_filter=where).to_arrow().to_pylist()
    return sorted(rows, key=lambda r: r["started_at"], reverse=True)
