"""Read-only views of the lake for the CLI and the demo summary."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pyarrow as pa

from pipelines.errors import CitylakeError
from pipelines.lake.catalog import NAMESPACES, get_catalog
from pipelines.lake.raw import (
    BATCH_ID,
    MAINTENANCE,
    PUBLISHED_BATCHES,
    STATE_PROPERTY,
    carried_data,
    data_snapshot,
    summary_int,
    summary_value,
    total_records,
)
from pipelines.settings import TZ, Settings


def table_info(table: Any, name: str) -> dict[str, Any]:
    """``committed_at`` is the last commit that changed rows: a maintenance commit (compaction) is not one."""
    snap = table.current_snapshot()
    state = json.loads(table.properties.get(STATE_PROPERTY, "{}"))
    rows = total_records(snap) or 0
    data = data_snapshot(table)
    committed = datetime.fromtimestamp(data.timestamp_ms / 1000, TZ).isoformat() if data else None
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


def head(name: str, limit: int = 20, settings: Settings | None = None, *,
         as_of: int | datetime | None = None) -> pa.Table:
    """The first ``limit`` rows of a lake table, now or ``as_of`` a snapshot id or a time (``snapshot_at``)."""
    catalog = get_catalog(settings)
    table = catalog.load_table(name)
    if as_of is None:
        return table.scan(limit=limit).to_arrow()
    return table.scan(limit=limit, snapshot_id=snapshot_at(table, name, as_of)).to_arrow()


def _local(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, TZ).isoformat(timespec="seconds")


def snapshot_at(table: Any, name: str, as_of: int | datetime) -> int:
    """The snapshot id ``as_of`` names: that id (or, for a data snapshot lake maintenance expired, the
    compaction that holds its rows), or the snapshot that was current at that time (the table's snapshot log).
    A time before the first kept snapshot, in a stretch whose snapshot was expired, or an expired snapshot
    id, is a ``CitylakeError`` naming the table.

    Expiry drops an expired snapshot's snapshot-log entries and the parent link of its child, so the log
    alone would answer a time in an expired stretch with the older kept snapshot before it: the entry after
    the time must be a child of the one found (or a compaction holding rows committed by then)."""
    meta = table.metadata
    kept = {s.snapshot_id for s in meta.snapshots}
    oldest = min(meta.snapshots, key=lambda s: s.timestamp_ms, default=None)
    since = f"the oldest kept is {oldest.snapshot_id} at {_local(oldest.timestamp_ms)}" if oldest else "it has none"
    if isinstance(as_of, int):
        if as_of in kept:
            return as_of
        holders = [s for s in meta.snapshots if (c := carried_data(s)) is not None and c.snapshot_id == as_of]
        if holders:
            return int(min(holders, key=lambda s: s.timestamp_ms).snapshot_id)
        raise CitylakeError(f"{name}: snapshot {as_of} is not in its history (expired by lake maintenance or "
                            f"never this table's; {since}; see `citylake lake history {name}`)")
    ms = int(as_of.timestamp() * 1000)
    when = as_of.astimezone(TZ).isoformat()
    log = sorted(meta.snapshot_log, key=lambda e: e.timestamp_ms)
    before = [e for e in log if e.timestamp_ms <= ms]
    after = next((e for e in log if e.timestamp_ms > ms), None)
    nxt = table.snapshot_by_id(after.snapshot_id) if after is not None else None
    carried = carried_data(nxt)
    if nxt is not None and carried is not None and carried.timestamp_ms <= ms:
        return int(nxt.snapshot_id)  # a compaction of the data snapshot current then: the same rows
    if not before:
        first = min([e.timestamp_ms for e in log] + [s.timestamp_ms for s in meta.snapshots], default=None)
        raise CitylakeError(f"{name}: no snapshot kept at or before {when} (the first it knows is "
                            f"{_local(first) if first is not None else 'not written yet'}: earlier ones were "
                            "expired by lake maintenance, or the table did not exist yet)")
    found = before[-1].snapshot_id
    gap = nxt is not None and nxt.parent_snapshot_id != found and (
        nxt.parent_snapshot_id is None or nxt.parent_snapshot_id not in kept)
    if gap and after is not None:
        end = _current_until(table, found, before[-1].timestamp_ms, after.timestamp_ms)
        gap = end is None or ms >= end
    if found not in kept or gap:
        raise CitylakeError(f"{name}: the snapshot current at {when} was expired by lake maintenance; {since} "
                            f"(see `citylake lake history {name}`)")
    return int(found)


def _current_until(table: Any, snapshot_id: int, since_ms: int, until_ms: int) -> int | None:
    """When ``snapshot_id`` stopped being current, between its log entry (``since_ms``) and the next kept one
    (``until_ms``) when expiry removed the entries between: the first earlier metadata file of that stretch
    (the metadata log, which expiry keeps) whose current snapshot is another; None when one cannot be read."""
    from pyiceberg.serializers import FromInputFile

    for entry in sorted(table.metadata.metadata_log, key=lambda e: e.timestamp_ms):
        if not since_ms < entry.timestamp_ms <= until_ms:
            continue
        try:
            meta = FromInputFile.table_metadata(table.io.new_input(entry.metadata_file))
        except Exception:  # noqa: BLE001 - an unreadable file: the stretch cannot be placed (error upstream)
            return None
        if meta.current_snapshot_id != snapshot_id:
            return int(meta.last_updated_ms)
    return None


def history(name: str, settings: Settings | None = None) -> list[dict[str, Any]]:
    """Every kept snapshot of a lake table, oldest first: id, parent, time (Asia/Shanghai), operation, rows
    added/deleted/total, the batch it loaded (raw) or the batches it published (std), run and build ids, the
    maintenance tag, and whether it is current."""
    table = get_catalog(settings).load_table(name)
    current = table.metadata.current_snapshot_id
    out = []
    for snap in sorted(table.metadata.snapshots, key=lambda s: (s.timestamp_ms, s.sequence_number or 0)):
        published = summary_value(snap, PUBLISHED_BATCHES)
        out.append({
            "snapshot_id": snap.snapshot_id,
            "parent_id": snap.parent_snapshot_id,
            "committed_at": _local(snap.timestamp_ms),
            "operation": snap.summary.operation.value if snap.summary is not None else None,
            "added_rows": summary_int(snap, "added-records"),
            "deleted_rows": summary_int(snap, "deleted-records"),
            "total_rows": total_records(snap),
            "batch_id": summary_value(snap, BATCH_ID),
            "batches": json.loads(published) if published else None,
            "run_id": summary_value(snap, "citylake.run-id"),
            "build_id": summary_value(snap, "citylake.build-id"),
            "maintenance": summary_value(snap, MAINTENANCE),
            "current": snap.snapshot_id == current,
        })
    return out


def show(name: str, limit: int = 20, settings: Settings | None = None, *, unmasked: bool = False,
         as_of: int | datetime | None = None) -> tuple[list[str], list[dict[str, Any]], str | None]:
    """(columns, rows, warning): the first rows of a lake table as a person may read them. Personal values
    are masked by declaration and by detection (``pipelines.privacy``) unless ``unmasked``; when the config
    cannot be read, masking fails closed and ``warning`` says why."""
    from pipelines.privacy import load_declarations, masked_rows
    from pipelines.settings import load_settings

    settings = settings or load_settings()
    data = head(name, limit, settings, as_of=as_of)
    if unmasked:
        return data.column_names, data.to_pylist(), None
    declarations, why = load_declarations(settings)
    warning = f"config unreadable ({why}): every value that looks personal and all free text masked" if why else None
    return data.column_names, masked_rows(name, data, declarations), warning
