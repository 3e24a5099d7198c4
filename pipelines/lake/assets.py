"""The Airflow Asset of a lake table: one naming rule for every DAG file that emits or schedules on one
(``publish_std`` emits ``std.<ds>``; ``curate__<domain>`` schedules on it and emits ``curated.<ds>``)."""

from __future__ import annotations

from typing import Any


def table_asset(identifier: str) -> Any:
    """``Asset(name=<identifier>, uri=iceberg://citylake/<ns>/<table>)``; Airflow is imported here, so the module
    stays importable without it."""
    from airflow.sdk import Asset

    return Asset(name=identifier, uri=f"iceberg://citylake/{identifier.replace('.', '/')}")
