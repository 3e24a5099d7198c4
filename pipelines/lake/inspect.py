"""Read-only views of the lake for the CLI and the demo summary."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pyarrow as pa

from pipelines.lake.catalog import NAMESPACES, get_catalog
from pipelines.lake.raw import STATE_PROPERTY, total_records
from pipelines.settings import TZ, Settings


def table_info(table: Any, name: str) -> dict[str, Any]:
    snap = table.current_snapshot()
    state = json.loads(table.properties.get(STATE_PROPERTY, "{}"))
    rows = total_records(snap) or 0
    committed = datetime.fromtimestamp(snap.timestamp_ms / 1000, TZ).isoformat() if snap else None
    return {
        "table": name,
        "rows": rows,
        "snapshot_id": snap.snapshot_id if snap else None,
        "watermark": state.get("watermark"),
        "committed_at": committed,
    }


def list_tables(settings: Settings | None = None, namespaces: tuple[str, ...] = NAMESPACES) -> list[dict[str, Any]]:
    """Every table of the lake: rows, snapshot id, last watermark, last commit time (+08:00)."""
    catalog = get_catalog(settings)
    out = []
    for ns in namespaces:
        for ident in sorted(catalog.list_tables(ns)):
            name = ".".join(ident)
            out.append(table_info(catalog.load_table(name), name))
    return out


def head(name: str, limit: int = 20, settings: Settings | None = None) -> pa.Table:
    """The first ``limit`` rows of a lake table."""
    catalog = get_catalog(settings)
    return catalog.load_table(name).scan(limit=limit).to_arrow()


def show(name: str, limit: int = 20, settings: Settings | None = None, *,
         unmasked: bool = False) -> tuple[list[str], list[dict[str, Any]], str | None]:
    """(columns, rows, warning): the first rows of a lake table as a person may read them. Personal values
    are masked by declaration and by detection (``pipelines.privacy``) unless ``unmasked``; when the config
    cannot be read, masking fails closed and ``warning`` says why."""
    from pipelines.privacy import load_declarations, masked_rows
    from pipelines.settings import load_settings

    settings = settings or load_settings()
    data = head(name, limit, settings)
    if unmasked:
        return data.column_names, data.to_pylist(), None
    declarations, why = load_declarations(settings)
    warning = f"config unreadable ({why}): every value that looks personal and all free text masked" if why else None
    return data.column_names, masked_rows(name, data, declarations), warning
