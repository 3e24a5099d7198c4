"""What every citylake DAG shares: start date and ``default_args`` (retries with exponential backoff).

Plain Python (no Airflow import), so DAG files stay cheap to parse and each one takes the same policy
instead of its own copy.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from pipelines.errors import CitylakeError
from pipelines.settings import TZ

START = datetime(2026, 1, 1, tzinfo=TZ)

EXECUTION_TIMEOUT = timedelta(hours=6)
"""The longest any citylake task may run (``execution_timeout`` in ``default_args``). The longest realistic
task is a first full load or full refresh of a big source table: the benchmarks stream 20 M rows in 139 s
and publish 10 M rows in ~100 s, so a few hundred million rows take one to two hours; six hours leaves
threefold headroom and still frees a hung task's pool slot (a source connection stuck on a lock) within
the night. Lake maintenance's orphan-file window is derived from it (``pipelines.lake.maintenance``): a
load's Parquet files are written before its commit, and no task may still be writing files older than
this."""


def run_day(context: Any) -> date:
    """A task's day in Asia/Shanghai: its logical date, or when the run was triggered for a run without one."""
    when = context.get("logical_date") or context["dag_run"].run_after
    return when.astimezone(TZ).date()


def on_task_failure(context: Any) -> None:
    """Every task's ``on_failure_callback`` (a task that failed for good, retries spent): the owning
    department is told through its alert routes (``pipelines.alerts.alert_task_failed``); nothing is sent
    when no route or connection is configured, and the callback never raises. Imported lazily: DAG files
    parse without the alert machinery."""
    from pipelines.alerts import alert_task_failed

    alert_task_failed(context)


def default_args(owner: str) -> dict[str, Any]:
    """Retries 3, exponential backoff from one minute (``CITYLAKE_RETRY_DELAY_SECONDS`` shortens the first
    delay for tests) up to 30 minutes; at most ``EXECUTION_TIMEOUT`` per try; the failure alert; ``owner`` is
    a department's Chinese name."""
    return {
        "on_failure_callback": on_task_failure,
        "owner": owner,
        "retries": 3,
        "retry_delay": timedelta(seconds=float(os.environ.get("CITYLAKE_RETRY_DELAY_SECONDS", "60"))),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=30),
        "execution_timeout": EXECUTION_TIMEOUT,
    }


# --- what an ingest run loads ---------------------------------------------------------------------------

TIME_PATTERN = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:?\d{2})?)?$"
"""What ``since``/``until`` accept (checked by the params' JSON schema when the run is triggered): an ISO date
or date-time, Asia/Shanghai unless it carries an offset. An offset only after a time: Python 3.11's
``fromisoformat`` drops the offset of a date-only value (``2026-11-01Z`` read as Shanghai midnight, 8 h off)."""

_ZONED_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}(Z|[+-]\d{2}:?\d{2})$")


class RunParamsError(CitylakeError):
    """The run's params ask for something impossible; one line, raised before anything loads."""


@dataclass(frozen=True)
class IngestRun:
    """What one ``ingest__<system>`` run loads, decided from its run type, data interval and params."""

    kind: str
    """scheduled | backfill | manual (no params) | window (params since/until) | full_refresh (param)."""
    mode: str
    """``ingest_table``'s mode for a cursor table: incremental, backfill or full."""
    since: datetime | None
    until: datetime | None
    end: datetime
    """The run's end: ``_extracted_at`` of what it loads and the publish's reference day. The data interval's
    end; for a run without one (triggered by hand in Airflow 3), when it was triggered (``run_after``)."""
    interval_start: datetime | None
    """The data interval's start (None without one): the deletion check's due test."""

    @property
    def deletion_check(self) -> bool:
        """The key-only deletion check runs in scheduled and plain manual runs with a data interval (a full
        refresh finds deleted keys itself; a window or a backfill is a past slice of the cursor)."""
        return self.kind in ("scheduled", "manual") and self.interval_start is not None

    def describe(self) -> str:
        window = f"[{_iso(self.since)}, {_iso(self.until)})" if self.since or self.until else ""
        what = {"scheduled": "scheduled: incremental from each table's watermark",
                "manual": "manual: incremental from each table's watermark",
                "backfill": f"backfill of the data interval {window}",
                "window": f"window {window} (params since/until)",
                "full_refresh": "full refresh (param full_refresh)"}[self.kind]
        return f"{what}; rows stamped {_iso(self.end)}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "mode": self.mode, "since": _iso(self.since), "until": _iso(self.until),
                "end": _iso(self.end), "deletion_check": self.deletion_check}


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(TZ).isoformat() if value is not None else None


def parse_time(name: str, text: Any) -> datetime | None:
    """A ``since``/``until`` param: None/empty stays None; an ISO date or date-time, Asia/Shanghai when naive."""
    if text is None or text == "":
        return None
    if isinstance(text, str) and _ZONED_DATE.match(text.strip()):
        raise RunParamsError(f"params: {name}={text!r} has a zone but no time; give the time with it "
                             f"(e.g. {text.strip()[:10]}T00:00{text.strip()[10:]}) or leave the zone out (Asia/Shanghai)")
    if not isinstance(text, str) or not re.match(TIME_PATTERN, text.strip()):
        raise RunParamsError(f"params: {name}={text!r} is not an ISO date or date-time (e.g. 2026-11-01T00:00)")
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise RunParamsError(f"params: {name}={text!r} is not a valid date-time: {exc}") from None
    return value.replace(tzinfo=TZ) if value.tzinfo is None else value


def ingest_run(context: Any) -> IngestRun:
    """Decide what a run loads (``RunParamsError``, one line, for params that contradict each other):

    - no params: a scheduled run and a manual run load incrementally from each table's watermark (a manual
      run triggered without a logical date has no data interval in Airflow 3: its end is when it was
      triggered); a backfill run (``airflow backfill create``) loads the cursor window of its data interval;
    - ``since`` [``until``]: that window of the cursor (``until`` defaults to the run's end); since < until,
      neither after the run was triggered;
    - ``full_refresh``: the whole table, compared with the lake (not with since/until).
    Tables without a cursor are always a full refresh; file drops load the files not yet loaded whatever the
    params (a window or a full refresh does not select files).
    """
    dag_run = context["dag_run"]
    params = context.get("params") or {}
    start, interval_end = context.get("data_interval_start"), context.get("data_interval_end")
    if interval_end is None:  # Airflow 3: a run triggered without a logical date
        start, interval_end = getattr(dag_run, "data_interval_start", None), getattr(dag_run, "data_interval_end", None)
    triggered = getattr(dag_run, "run_after", None) or interval_end
    end = interval_end or triggered
    if end is None:
        raise RunParamsError("the run has neither a data interval nor a trigger time")
    since, until = parse_time("since", params.get("since")), parse_time("until", params.get("until"))
    full = params.get("full_refresh") in (True, "true", "True")
    backfill = str(getattr(dag_run, "run_type", "")).lower().endswith("backfill")
    if full and (since or until):
        raise RunParamsError("params: full_refresh loads the whole table; leave since/until empty (or set "
                             "full_refresh to false for a window)")
    if until is not None and since is None:
        raise RunParamsError(f"params: until={_iso(until)} needs since (the window's start)")
    if since is not None:
        until = until or end
        if since >= until:
            raise RunParamsError(f"params: since {_iso(since)} must be before until {_iso(until)}")
        limit = triggered or end
        if until > limit:
            raise RunParamsError(f"params: until {_iso(until)} is in the future (the run was triggered at "
                                 f"{_iso(limit)}); nothing after that can have been delivered")
        return IngestRun("window", "backfill", since, until, until, start)
    if full:
        return IngestRun("full_refresh", "full", None, None, end, start)
    if backfill and start is not None:
        return IngestRun("backfill", "backfill", start, interval_end, interval_end, start)
    kind = "scheduled" if "scheduled" in str(getattr(dag_run, "run_type", "")).lower() else "manual"
    return IngestRun(kind, "incremental", None, None, end, start)
