"""What every citylake DAG shares: start date and ``default_args`` (retries with exponential backoff).

Plain Python (no Airflow import), so DAG files stay cheap to parse and each one takes the same policy
instead of its own copy.
"""

from __future__ import annotations

import os
from datetime import date, datetime, timedelta
from typing import Any

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


def default_args(owner: str) -> dict[str, Any]:
    """Retries 3, exponential backoff from one minute (``CITYLAKE_RETRY_DELAY_SECONDS`` shortens the first
    delay for tests) up to 30 minutes; at most ``EXECUTION_TIMEOUT`` per try; ``owner`` is a department's
    Chinese name."""
    return {
        "owner": owner,
        "retries": 3,
        "retry_delay": timedelta(seconds=float(os.environ.get("CITYLAKE_RETRY_DELAY_SECONDS", "60"))),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=30),
        "execution_timeout": EXECUTION_TIMEOUT,
    }
