"""Raw zone writer: one Iceberg table per source table, every extracted version of a row kept.

Memory stays bounded whatever the table size: record batches are streamed into Parquet (zstd) files
by a background thread while the next batch is extracted, and the files are registered in one
transaction (``add_files``) together with the batch replacement (delete by batch id), the schema
evolution and the watermark. One write = one Iceberg commit: a crash before it leaves the table at
its previous snapshot (the orphan files are invisible and swept by maintenance).
"""

from __future__ import annotations

import json
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException, NoSuchTableError, TableAlreadyExistsError, ValidationException
from pyiceberg.expressions import And, BooleanExpression, EqualTo, In
from pyiceberg.io.pyarrow import schema_to_pyarrow
from pyiceberg.table import Table
from pyiceberg.table.snapshots import ancestors_of
from pyiceberg.table.update import ValidatableTableRequirement
from pyiceberg.types import DecimalType, DoubleType, LongType

from pipelines.errors import CitylakeError, CommitStateUnknown, SchemaDriftError

LINEAGE = pa.schema(
    [
        pa.field("_batch_id", pa.string()),
        pa.field("_extracted_at", pa.timestamp("us", tz="UTC")),
        pa.field("_source_system", pa.string()),
        pa.field("_source_file", pa.string()),
        pa.field("_deleted", pa.bool_()),
        # the table's load sequence when this row's extract started: orders versions whoever ran the load
        pa.field("_load_seq", pa.int64()),
    ]
)
LINEAGE_NAMES = frozenset(LINEAGE.names)
STATE_PROPERTY = "citylake.state"
# Full (not 16-character) bounds for _batch_id: a publish reading its new batches skips every other file.
BATCH_METRICS = {"write.metadata.metrics.column._batch_id": "full"}
TABLE_PROPERTIES = {
    "format-version": "2",
    "write.parquet.compression-codec": "zstd",
    **BATCH_METRICS,
}
_ROWS_PER_FILE = 4_000_000
# A load that asked for two writer threads (``RawWriter(writers=2)``) starts the second once this many rows
# are queued: below it a load stays one thread and one file, as small loads should.
_SECOND_WRITER_FROM = 1_000_000
_ROW_GROUP_ROWS = 256 * 1024
# How raw data files are written (the load's writer thread is the ingest's largest CPU cost beside the
# source decode). Decimals of precision ≤ 18 as INT32/INT64, as pyiceberg's own writer stores them
# (the Iceberg spec's Parquet mapping; statistics and readers handle both): cheaper than big-endian
# fixed-length bytes.
RAW_PARQUET: dict[str, Any] = {"compression": "zstd", "compression_level": 1, "store_decimal_as_integer": True}
_KEEP_WINDOWS = 50


# --- types ----------------------------------------------------------------------------------------


def normalize_type(t: pa.DataType) -> pa.DataType:
    """The Arrow type a source type is stored as in Iceberg (exact, never lossy)."""
    if pa.types.is_timestamp(t):
        # Naive source times are Asia/Shanghai; Iceberg stores instants in UTC.
        return pa.timestamp("us", tz="UTC")
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t):
        return pa.binary()
    if pa.types.is_unsigned_integer(t):
        return pa.int64()
    if pa.types.is_date64(t):
        return pa.date32()
    if pa.types.is_dictionary(t):
        return normalize_type(t.value_type)
    if pa.types.is_null(t):
        return pa.string()
    if pa.types.is_int8(t) or pa.types.is_int16(t):
        return pa.int32()  # Iceberg has no smaller integer
    if pa.types.is_float16(t):
        return pa.float32()
    if pa.types.is_time(t):
        return pa.time64("us")
    return t


def normalize_array(arr: pa.Array | pa.ChunkedArray, target: pa.DataType) -> pa.Array | pa.ChunkedArray:
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.dictionary_decode() if isinstance(arr, pa.Array) else pc.cast(arr, t.value_type)
        t = arr.type
    if pa.types.is_timestamp(t) and t.tz is None:
        arr = _shanghai_to_utc(arr)
    return arr if arr.type == target else pc.cast(arr, target)


_NO_DST_SINCE = pa.scalar(datetime(1991, 9, 16), pa.timestamp("us"))  # China dropped summer time in 1991


def _shanghai_to_utc(arr: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Naive Asia/Shanghai times as UTC instants: a fixed −8 h shift when no value predates 1991
    (10× faster than a zone lookup per value), else the zone database."""
    arr = pc.cast(arr, pa.timestamp("us"))
    low = pc.min(arr)
    if low.is_valid and pc.less(low, _NO_DST_SINCE).as_py():
        return pc.assume_timezone(arr, "Asia/Shanghai", ambiguous="earliest", nonexistent="earliest")
    shifted = pc.subtract(arr.cast(pa.int64()), 8 * 3600 * 1_000_000)
    return shifted.cast(pa.timestamp("us", tz="UTC"))


def _widens(old: pa.DataType, new: pa.DataType) -> bool:
    """Safe widening the raw table evolves for: int → bigint, float → double, wider decimal."""
    if pa.types.is_integer(old) and pa.types.is_integer(new):
        return new.bit_width > old.bit_width
    if pa.types.is_float32(old) and pa.types.is_float64(new):
        return True
    if pa.types.is_decimal(old) and pa.types.is_decimal(new):
        return new.scale == old.scale and new.precision > old.precision
    return False


def _fits(old: pa.DataType, new: pa.DataType) -> bool:
    """A source type narrower than the table's (a value always fits): cast up silently."""
    return old == new or _widens(new, old)


def _iceberg_type(t: pa.DataType) -> Any:
    if pa.types.is_int64(t):
        return LongType()
    if pa.types.is_float64(t):
        return DoubleType()
    if pa.types.is_decimal(t):
        return DecimalType(t.precision, t.scale)
    raise AssertionError(t)


def plan_schema(table_name: str, current: pa.Schema, source: pa.Schema) -> tuple[pa.Schema, list[str]]:
    """Target Arrow schema of the table after this load, and the changes made (for the run log).

    Added columns evolve the table; safe widenings evolve it; a dropped or retyped column raises
    SchemaDriftError naming every change, and nothing in the lake changes.
    """
    data_current = [f for f in current if f.name not in LINEAGE_NAMES]
    src = {f.name: normalize_type(f.type) for f in source}
    problems: list[str] = []
    changes: list[str] = []
    fields: list[pa.Field] = []
    for f in data_current:
        if f.name not in src:
            problems.append(f"column {f.name} ({f.type}) was dropped at the source")
            fields.append(f)
        elif _fits(f.type, src[f.name]):
            fields.append(f)
        elif _widens(f.type, src[f.name]):
            changes.append(f"widened {f.name}: {f.type} → {src[f.name]}")
            fields.append(pa.field(f.name, src[f.name]))
        else:
            problems.append(f"column {f.name} changed type {f.type} → {src[f.name]}")
            fields.append(f)
    if problems:
        raise SchemaDriftError(f"{table_name}: schema drift at the source: {'; '.join(problems)} (lake unchanged)")
    known = {f.name for f in data_current}
    for name, t in src.items():
        if name not in known:
            if data_current:
                changes.append(f"added {name} ({t})")
            fields.append(pa.field(name, t))
    return pa.schema(fields + list(LINEAGE)), changes


# --- table state ----------------------------------------------------------------------------------


@dataclass
class TableState:
    """Incremental state kept as a table property, set in the same commit as the rows it covers."""

    cursor: str | None = None
    watermark: str | None = None
    batch_id: str | None = None
    windows: dict[str, list[str | None]] = field(default_factory=dict)
    ledger: dict[str, dict[str, Any]] = field(default_factory=dict)
    load_seq: int = 0
    """The last load sequence allocated (``next_load_seq``); never moves back, survives snapshot expiry."""

    def next_load_seq(self) -> int:
        """Allocate this load's sequence number (at extract start; committed with the rows)."""
        self.load_seq += 1
        return self.load_seq

    loaded: str | None = field(default=None, repr=False, compare=False)
    """The property text this state was read from: what a commit checks is still there (not stored)."""

    @classmethod
    def of(cls, table: Table) -> TableState:
        raw = table.properties.get(STATE_PROPERTY)
        return cls(**json.loads(raw), loaded=raw) if raw else cls()

    def knows(self, batch_id: str) -> bool:
        """Whether a batch id has committed into this state (its commit must replace, not add)."""
        return batch_id in self.windows or any(e.get("batch") == batch_id for e in self.ledger.values())

    def merge(self, committed: TableState) -> TableState:
        """This load's state on top of ``committed``, the state another writer committed after this load
        read ``loaded``: each writer's own windows and ledger entries (what it changed) are kept, the
        watermark and the load sequence are the larger of the two. The result's base is ``committed``."""
        base = json.loads(self.loaded) if self.loaded else {}

        def own(mine: dict[str, Any], theirs: dict[str, Any], old: dict[str, Any]) -> dict[str, Any]:
            changed = {k: v for k, v in mine.items() if k not in old or json.dumps(old[k]) != json.dumps(v)}
            return {**{k: v for k, v in theirs.items() if k not in changed}, **changed}

        return TableState(
            cursor=self.cursor or committed.cursor,
            watermark=_later_text(self.watermark, committed.watermark),
            batch_id=self.batch_id or committed.batch_id,
            windows=own(self.windows, committed.windows, base.get("windows", {})),
            ledger=own(self.ledger, committed.ledger, base.get("ledger", {})),
            load_seq=max(self.load_seq, committed.load_seq),
            loaded=committed.loaded,
        )

    def to_property(self) -> str:
        windows = dict(list(self.windows.items())[-_KEEP_WINDOWS:])
        return json.dumps(
            {"cursor": self.cursor, "watermark": self.watermark, "batch_id": self.batch_id,
             "windows": windows, "ledger": self.ledger, "load_seq": self.load_seq},
            ensure_ascii=False, separators=(",", ":"),
        )


def _later_text(a: str | None, b: str | None) -> str | None:
    """The later of two watermarks as stored (ISO times and dates in one zone, integers, decimals, text)."""
    if a is None or b is None:
        return a if b is None else b
    for parse in (int, Decimal, datetime.fromisoformat):
        try:
            return a if parse(a) >= parse(b) else b  # type: ignore[operator]
        except (ValueError, ArithmeticError, TypeError):
            continue
    return max(a, b)


def open_table(catalog: Catalog, identifier: str) -> Table | None:
    try:
        return catalog.load_table(identifier)
    except NoSuchTableError:
        return None


# --- snapshot summaries (read in one place: the report, the catalog, inspect and the change compare) ----

BATCH_ID = "citylake.batch-id"
"""Summary key of every raw snapshot a load commits: its batch id (``RawWriter.commit``)."""
PUBLISHED_BATCHES = "citylake.batches"
"""std snapshot summary: the raw batches a publish carried (JSON list), so a concurrent run sees them."""


def summary_value(snap: Any, key: str) -> str | None:
    """A snapshot summary's value for ``key`` (None without a snapshot, a summary or the key)."""
    if snap is None or snap.summary is None:
        return None
    value = snap.summary.additional_properties.get(key)
    return None if value is None else str(value)


def summary_int(snap: Any, key: str) -> int | None:
    """A numeric snapshot summary field (``total-records``, ``added-records``, ...), None when absent."""
    value = summary_value(snap, key)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def last_publish(table: Any, until_ms: int | None = None) -> Any:
    """The latest snapshot of a std table that a quality run committed (its summary names the batches it
    published, or the run), at or before ``until_ms`` (epoch ms): when its data last changed. A maintenance
    commit (compaction, snapshot expiry) is not a publish; when the publish a compaction rewrote has expired,
    the compaction's ``citylake.data-snapshot`` stands for it (a ``DataSnapshot``: id and time, no summary).
    None when there is none. The report's freshness and the catalog's 最近更新 both use it, so the two pages
    give one time."""
    published = [sn for sn in table.metadata.snapshots if (until_ms is None or sn.timestamp_ms <= until_ms)
                 and (summary_value(sn, PUBLISHED_BATCHES) or summary_value(sn, "citylake.run-id"))]
    found = max(published, key=lambda sn: sn.timestamp_ms) if published else None
    kept = {s.snapshot_id for s in table.metadata.snapshots}
    for sn in table.metadata.snapshots:
        carried = carried_data(sn)
        if (carried is not None and carried.snapshot_id not in kept
                and (until_ms is None or carried.timestamp_ms <= until_ms)
                and (found is None or carried.timestamp_ms > found.timestamp_ms)):
            found = carried
    return found


MAINTENANCE = "citylake.maintenance"
"""Snapshot summary key of a lake-maintenance commit (``compact``): same rows, no batch, no state."""
DATA_SNAPSHOT = "citylake.data-snapshot"
DATA_SNAPSHOT_MS = "citylake.data-snapshot-ms"
"""A compaction's summary: the id and commit time (epoch ms) of the snapshot whose rows it holds (its data
snapshot), so that snapshot, and its small files, may expire while readers keyed on it still resolve."""
DATA_BATCHES = "citylake.data-batches"
"""A compaction's summary: its data snapshot's ``citylake.batches`` (lineage: the raw batches the table's rows
last came from). Not ``citylake.batches`` itself: a compaction publishes nothing (``std_changes``)."""


@dataclass(frozen=True)
class DataSnapshot:
    """A data snapshot lake maintenance expired, as a compaction's summary names it: id and commit time. It has
    no summary (``summary_value`` reads None) and cannot be scanned: ``snapshot_with_data`` finds what can."""

    snapshot_id: int
    timestamp_ms: int
    summary: Any = None


def carried_data(snap: Any) -> DataSnapshot | None:
    """The data snapshot a compaction's summary names (``DATA_SNAPSHOT``), None for any other snapshot."""
    text, ms = summary_value(snap, DATA_SNAPSHOT), summary_value(snap, DATA_SNAPSHOT_MS)
    if text is None or ms is None:
        return None
    try:
        return DataSnapshot(int(text), int(ms))
    except ValueError:
        return None


def _data_id(snap: Any, chain: list[Any]) -> int:
    """The id of the data snapshot of ``snap`` (``chain``: its ancestry after it, newest first)."""
    if summary_value(snap, MAINTENANCE) is None:
        return int(snap.snapshot_id)
    carried = carried_data(snap)
    if carried is not None:
        return carried.snapshot_id
    return next((int(a.snapshot_id) for a in chain if summary_value(a, MAINTENANCE) is None), int(snap.snapshot_id))


def data_snapshot(table: Any) -> Any:
    """The snapshot whose rows the table holds now: the current one, or, when lake maintenance committed
    last (a compaction rewrites files, not rows), the data snapshot its summary names (the ``Snapshot`` while
    kept, else a ``DataSnapshot`` with its id and time), or for a compaction without that summary its newest
    ancestor that is not a maintenance commit. None for an empty table. What a reader that keys on a
    snapshot id (a curated build's inputs) uses, so a compaction is no change."""
    current = table.current_snapshot()
    for snap in ancestors_of(current, table.metadata):
        if summary_value(snap, MAINTENANCE) is None:
            return snap
        carried = carried_data(snap)
        if carried is not None:
            return table.snapshot_by_id(carried.snapshot_id) or carried
    return current


def data_snapshot_ms(table: Any, snapshot_id: int) -> int | None:
    """When data snapshot ``snapshot_id`` was committed (epoch ms): the snapshot's own time while it is kept,
    else the time a compaction's summary carries for it; None when neither is left."""
    snap = table.snapshot_by_id(snapshot_id)
    if snap is not None:
        return int(snap.timestamp_ms)
    for sn in table.metadata.snapshots:
        carried = carried_data(sn)
        if carried is not None and carried.snapshot_id == snapshot_id:
            return carried.timestamp_ms
    return None


def snapshot_with_data(table: Any, snapshot_id: int) -> Any:
    """The newest snapshot of the current ancestry whose rows are those of data snapshot ``snapshot_id`` (a
    compaction of it, what a reader should scan: fewer files; else that snapshot itself); None when none is
    (a newer publish came and lake maintenance expired it)."""
    chain = list(ancestors_of(table.current_snapshot(), table.metadata))  # newest first
    for i, snap in enumerate(chain):
        if _data_id(snap, chain[i + 1:]) == snapshot_id:
            return snap
    return None


def total_records(snap: Any) -> int | None:
    """Rows of the table at a snapshot (``total-records``); None without a snapshot or the field."""
    return summary_int(snap, "total-records")


def _file_columns(parquet_schema: pa.Schema, fields: list[Any], name_mapping: dict[int, list[str]]) -> dict[str, str]:
    """Current column name → its column in one data file, by Iceberg field id: the id stored in the file
    (pyiceberg's writes), else the table's name mapping (files added with ``add_files``), else the name."""
    by_id = {int(f.metadata[b"PARQUET:field_id"]): f.name for f in parquet_schema
             if f.metadata and b"PARQUET:field_id" in f.metadata}
    names = set(parquet_schema.names)
    out = {}
    for f in fields:
        if by_id:
            found = by_id.get(f.field_id)
        else:
            found = next((n for n in name_mapping.get(f.field_id, [f.name]) if n in names), None)
        if found is not None:
            out[f.name] = found
    return out


def file_batches(parquet: Any, batch_rows: int, columns: list[str] | None = None) -> Any:
    """A Parquet file's record batches, one row group at a time: across a whole file ``iter_batches`` kept
    decoded buffers of earlier row groups alive (a 1 M-row raw file: 86 MB of Arrow memory at once, 14 MB
    this way, and faster)."""
    for group in range(parquet.num_row_groups):
        yield from parquet.iter_batches(batch_size=batch_rows, row_groups=[group], columns=columns)


def stream_scan(scan: Any, batch_rows: int = 64 * 1024) -> pa.RecordBatchReader:
    """A table scan as a reader that holds about one record batch at a time, whatever the file sizes.

    pyiceberg 0.12's ``to_arrow_batch_reader`` materialises every data file it reads (``list(...)`` per
    file task, several files at once through its executor), and the threaded Arrow scanner under it
    decodes a file's row groups ahead of a slow consumer: 424 MB in flight for the first batch of a 2 M-row
    raw file. Here each planned file is read with ``ParquetFile.iter_batches`` (64 MB for the same file):
    columns resolved by field id (renames and added columns read as pyiceberg reads them), the scan's row
    filter applied per batch. A file with delete files goes through pyiceberg's own reader."""
    import pyarrow.parquet as pq
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.expressions.visitors import bind, extract_field_ids
    from pyiceberg.io.pyarrow import ArrowScan, _read_all_delete_files, expression_to_pyarrow

    tasks = list(scan.plan_files())
    projected = scan.projection()
    target = schema_to_pyarrow(projected)
    table_schema = scan.table_metadata.schema()
    keep, filter_ids = None, set()
    if scan.row_filter != AlwaysTrue():
        bound = bind(table_schema, scan.row_filter, scan.case_sensitive)
        keep = expression_to_pyarrow(bound, table_schema)
        filter_ids = extract_field_ids(bound)
    selected = {f.field_id for f in projected.fields}
    fields = [*projected.fields, *(f for f in table_schema.fields if f.field_id in filter_ids - selected)]
    types = {f.name: a.type for f, a in zip(fields, schema_to_pyarrow(type(table_schema)(*fields)), strict=True)}
    mapping = json.loads(scan.table_metadata.properties.get("schema.name-mapping.default", "[]"))
    name_mapping = {m["field-id"]: m.get("names", []) for m in mapping if "field-id" in m}

    def batches() -> Any:
        for task in tasks:
            if task.delete_files:
                deletes = _read_all_delete_files(scan.io, [task])
                reader = ArrowScan(scan.table_metadata, scan.io, projected, scan.row_filter, scan.case_sensitive)
                yield from reader._record_batches_from_scan_tasks_and_deletes([task], deletes)
                continue
            with scan.io.new_input(task.file.file_path).open() as f:
                parquet = pq.ParquetFile(f)
                columns = _file_columns(parquet.schema_arrow, fields, name_mapping)
                for batch in file_batches(parquet, batch_rows, list(dict.fromkeys(columns.values()))):
                    n = batch.num_rows
                    part = pa.table({name: batch.column(columns[name]).cast(t) if name in columns else pa.nulls(n, t)
                                     for name, t in types.items()})
                    if keep is not None:
                        part = part.filter(keep)
                    if part.num_rows:
                        yield from part.select(target.names).cast(target).to_batches()

    return pa.RecordBatchReader.from_batches(target, batches())


def arrow_schema(table: Table) -> pa.Schema:
    """The table's schema as the writer's Arrow types (pyiceberg reads strings as large_string)."""
    s = schema_to_pyarrow(table.schema(), include_field_ids=False)
    return pa.schema([pa.field(f.name, normalize_type(f.type)) for f in s])


# --- writer ---------------------------------------------------------------------------------------


_DONE = object()
T = TypeVar("T")
COMMIT_UUID = "citylake.commit-uuid"
COMMIT_ATTEMPTS = 10


def conflict_pause(attempt: int) -> float:
    """Seconds to wait before retrying a commit another writer beat (jittered, doubling up to 2 s)."""
    return random.uniform(0, min(2.0, 0.05 * 2 ** attempt))


class _AssertState(ValidatableTableRequirement):
    """The table's ``citylake.state`` is still the one this commit merged into. Checked by the SQL catalog
    inside its compare-and-swap, so a writer can never overwrite a state it did not read."""

    type: Literal["assert-citylake-state"] = Field(default="assert-citylake-state")
    expected: str | None = None

    def validate(self, base_metadata: Any) -> None:
        if base_metadata is None or base_metadata.properties.get(STATE_PROPERTY) != self.expected:
            raise CommitFailedException(f"{STATE_PROPERTY} changed since it was read")


def _stage_state(tx: Any, state: TableState) -> str:
    """Stage ``state`` with the requirement that the table's state is still ``state.loaded``.

    pyiceberg 0.12 has no public way to add a requirement: ``Transaction.set_properties`` stages none, and
    the public ones (``AssertTableUUID``, ``AssertRefSnapshotId``) do not see a properties-only commit by
    another writer (no new snapshot), which is exactly what a load-sequence allocation is. So the private
    ``tx._stage`` carries ``_AssertState``, which the SQL catalog validates inside its compare-and-swap. A
    REST catalog would not know the requirement type: it must be refused loudly, not retried into
    ``CommitStateUnknown`` (see ``_require_sql_catalog``)."""
    text = state.to_property()
    tx._stage((), (_AssertState(expected=state.loaded),))
    tx.set_properties({STATE_PROPERTY: text})
    return text


def _require_sql_catalog(catalog: Catalog, identifier: str) -> None:
    """The state requirement is validated client-side by pyiceberg's SQL catalog only (see ``_stage_state``)."""
    from pyiceberg.catalog.sql import SqlCatalog

    if not isinstance(catalog, SqlCatalog):
        raise CitylakeError(f"{identifier}: catalog {type(catalog).__name__} cannot check the citylake.state "
                            "requirement (only the SQL catalog can); refusing to commit")


def single_attempt(table: Table) -> Table:
    """The table with pyiceberg's commit retry off (in memory only: the commit sends updates, not these
    properties). Its retry rebuilds the snapshot but re-applies the staged properties, so the state it
    writes would be the one read before the other writer's commit; ``RawWriter.commit`` retries instead."""
    props = {**table.metadata.properties, "commit.retry.num-retries": "0"}
    table.metadata = table.metadata.model_copy(update={"properties": props})
    return table


def retry_conflicts(what: str, attempt: Callable[[], T]) -> T:
    """Run ``attempt`` (one single-attempt commit, see ``single_attempt``) again while a concurrent writer's
    commit makes the catalog refuse it; each attempt decides again on the table it reloads."""
    for n in range(COMMIT_ATTEMPTS):
        try:
            return attempt()
        except (CommitFailedException, ValidationException):
            time.sleep(conflict_pause(n))
    raise CitylakeError(f"{what}: refused {COMMIT_ATTEMPTS} times by concurrent writers; nothing landed, rerun it")


def take_load_seq(catalog: Catalog, identifier: str) -> TableState:
    """Allocate the table's next load sequence with a compare-and-swap state commit (properties only, no
    snapshot), retried on the reloaded state when another writer committed first: two loads of one table
    never share a ``_load_seq``, whose tie would fall back to ``_extracted_at`` (CLI clock vs data interval).
    Returns the state as committed (``load_seq`` is this load's number; ``loaded`` the committed text)."""
    _require_sql_catalog(catalog, identifier)
    for attempt in range(COMMIT_ATTEMPTS):
        table = catalog.load_table(identifier)
        state = TableState.of(table)
        state.next_load_seq()
        tx = single_attempt(table).transaction()
        text = _stage_state(tx, state)
        try:
            tx.commit_transaction()
        except Exception as exc:
            # Refused (another writer was first), or an unknown outcome: taking a new number is safe either
            # way, as a number that did land unused only leaves a gap in the order.
            if attempt == COMMIT_ATTEMPTS - 1:
                raise CitylakeError(f"{identifier}: load sequence not allocated after {COMMIT_ATTEMPTS} attempts "
                                    f"({type(exc).__name__}); nothing was written, rerun the load") from exc
            time.sleep(conflict_pause(attempt))
            continue
        state.loaded = text
        return state
    raise AssertionError("unreachable")


def commit_state(catalog: Catalog, identifier: str, state: TableState) -> None:
    """Commit the table state alone (a drop load that landed no rows), merged like a load's commit."""
    _require_sql_catalog(catalog, identifier)

    def attempt() -> None:
        nonlocal state
        table = catalog.load_table(identifier)
        if table.properties.get(STATE_PROPERTY) != state.loaded:
            state = state.merge(TableState.of(table))
        tx = single_attempt(table).transaction()
        _stage_state(tx, state)
        tx.commit_transaction()

    retry_conflicts(f"{identifier}: state commit", attempt)


def _delta_packable(t: pa.DataType) -> bool:
    # Decimals of precision <= 18 are INT32/INT64 in raw files (RAW_PARQUET's store_decimal_as_integer).
    return (pa.types.is_integer(t) or pa.types.is_date32(t) or pa.types.is_timestamp(t) or pa.types.is_time64(t)
            or (pa.types.is_decimal(t) and t.precision <= 18))


def parquet_options(batch: pa.RecordBatch, dictionary: list[str] | None = None) -> dict[str, Any]:
    """Writer options for raw files shaped like ``batch``: ``RAW_PARQUET``, dictionaries where given, and the
    other integer-like columns (ids, dates, timestamps, decimals stored as integers) DELTA_BINARY_PACKED and
    not compressed. On 5 M realistic residents delta took the file from 253 to 235 MB for the same CPU (plain
    pages leave zstd to find the small steps between neighbouring values; delta stores just those), and zstd
    over the delta pages then saved 0.1 MB for 0.06-0.14 s of the writer's CPU. A numeric(12,2) income column:
    7.2 → 6.0 MB and about half the writer's time on it (2 M rows, 0.11 → 0.05 s)."""
    dictionary = dictionary or []
    delta = [f.name for f in batch.schema if f.name not in dictionary and _delta_packable(f.type)]
    options = {**RAW_PARQUET, "use_dictionary": dictionary,
               "column_encoding": dict.fromkeys(delta, "DELTA_BINARY_PACKED") or None}
    if any(pa.types.is_nested(f.type) for f in batch.schema):
        return options  # per-column codecs name leaf paths (``s.a``, ``l.list.element``): zstd for every column
    compressed = [name for name in batch.schema.names if name not in delta]
    return {**options,
            "compression": {**dict.fromkeys(compressed, RAW_PARQUET["compression"]), **dict.fromkeys(delta, "none")},
            "compression_level": dict.fromkeys(compressed, RAW_PARQUET["compression_level"])}


def dictionary_columns(batch: pa.RecordBatch) -> list[str]:
    """Columns worth a Parquet dictionary: at most one distinct value in ten rows of the load's first batch.

    Dictionary-encoding high-cardinality columns (IDs, names, addresses, timestamps) is pure cost: on 5 M
    residents it took encoding from 1.20 s to 2.55 s on the writer thread, the ingest's bottleneck, and
    grew the file from 94 to 154 MB, as each column chunk falls back to plain after its dictionary fills."""
    n = batch.num_rows
    return [name for name, col in zip(batch.schema.names, batch.columns, strict=True)
            if n and int(pc.count_distinct(col, mode="all").as_py()) * 10 <= n]


def _meet(barrier: threading.Barrier) -> None:
    """Wait at a flush's barrier; one the flushing thread gave up on (interrupted) is passed."""
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass


class RawWriter:
    """Streams batches of one load into Parquet files and commits them as one Iceberg snapshot."""

    def __init__(self, catalog: Catalog, identifier: str, source_schema: pa.Schema, *,
                 batch_id: str, extracted_at: datetime, system: str, load_seq: int | None = None,
                 base: Table | None = None, writers: int = 1):
        self.catalog = catalog
        self.identifier = identifier
        self.batch_id = batch_id
        self.system = system
        self.extracted_at = pa.scalar(extracted_at, pa.timestamp("us", tz="UTC"))
        self.load_seq = pa.scalar(load_seq, pa.int64())
        table = open_table(catalog, identifier)
        current = arrow_schema(table) if table is not None else pa.schema([])
        self.target, self.changes = plan_schema(identifier, current, source_schema)
        if table is None:
            try:
                table = catalog.create_table(identifier, schema=self.target, properties=TABLE_PROPERTIES)
                self.changes = []
            except TableAlreadyExistsError:  # another writer created it first: plan against its schema
                table = catalog.load_table(identifier)
                self.target, self.changes = plan_schema(identifier, arrow_schema(table), source_schema)
        elif any(table.properties.get(k) != v for k, v in BATCH_METRICS.items()):
            with table.transaction() as tx:  # tables created before BATCH_METRICS: stats of new files only
                tx.set_properties(BATCH_METRICS)
            table = catalog.load_table(identifier)
        self.table: Table = table
        # What this load compared with the lake against: rows other loads land after it are checked at commit.
        head = (base or table).current_snapshot()
        self._compared_at = head.snapshot_id if head else None
        self.commit_uuid = uuid.uuid4().hex  # in the snapshot summary: finds this commit when its outcome is unknown
        self._sent = False  # a commit attempt reached the catalog and was not refused: never delete the files
        self.files: list[str] = []
        self.rows = 0
        self.dropped: dict[tuple[str | None, bool], int] = {}
        """Rows ``_drop_landed`` took out, per (``_source_file``, ``_deleted``): the caller's counts follow."""
        self._constants: dict[str, tuple[Any, pa.Array]] = {}
        self._dictionary: list[str] | None = None
        self._dictionary_lock = threading.Lock()
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=2 * writers)
        self._error: BaseException | None = None
        # Writer threads beyond the first wait for ``_more`` (set once the load reaches _SECOND_WRITER_FROM
        # rows, or at its end, when ``_more_used`` stays False and they leave without a file).
        self._more = threading.Event()
        self._more_used = False
        self._threads = [threading.Thread(target=self._drain, args=(i,), name=f"write-{identifier}-{i}", daemon=True)
                         for i in range(writers)]
        for t in self._threads:
            t.start()

    def allocate_load_seq(self) -> int:
        """Take this load's sequence number from the table (``take_load_seq``; the table exists now) for
        the rows it shapes from here on. Call before the first ``shape``."""
        seq = take_load_seq(self.catalog, self.identifier).load_seq
        self.load_seq = pa.scalar(seq, pa.int64())
        return seq

    def expect(self, rows: int | None) -> None:
        """The load expects about ``rows`` rows (a source's estimate): from _SECOND_WRITER_FROM on, the second
        writer thread starts now rather than once that many rows are queued, so a backlog the read built
        before the writer existed (a CLI read started ahead) drains on both threads from its first batch."""
        if rows is not None and rows >= _SECOND_WRITER_FROM:
            self._start_more()

    def _start_more(self) -> None:
        if len(self._threads) > 1 and not self._more_used:
            self._more_used = True
            self._more.set()

    @property
    def _active(self) -> int:
        """Writer threads taking batches from the queue."""
        return len(self._threads) if self._more_used else 1

    # The extraction thread only shapes batches; compression and I/O run here, overlapping it. Each writer
    # thread fills a file of its own. A flush is one Barrier item per active thread: a thread that takes one
    # closes its file and waits at the barrier, so it cannot take another, and every thread takes one.
    def _drain(self, slot: int) -> None:
        if slot:
            self._more.wait()
            if not self._more_used:
                return
        out: list[Any] | None = None  # this thread's open file: [ParquetWriter, stream, rows]
        try:
            while (item := self._queue.get()) is not _DONE:
                if isinstance(item, threading.Barrier):
                    try:
                        out = self._close_file(out)
                    except BaseException as exc:
                        self._error = exc  # set before the barrier opens: the flush raises it
                        raise
                    finally:  # a close that failed still meets the flush
                        out = None
                        _meet(item)
                elif self._error is None:
                    out = self._write_now(item, out)
            self._close_file(out)
        except BaseException as exc:  # surfaced in commit()
            self._error = exc
            try:
                self._close_file(out)  # release the file; abort() deletes it
            except BaseException:  # noqa: BLE001 - the first error is the one to report
                pass
            while (item := self._queue.get()) is not _DONE:
                if isinstance(item, threading.Barrier):
                    _meet(item)

    def _write_now(self, batch: pa.RecordBatch, out: list[Any] | None) -> list[Any] | None:
        if out is None:
            path, out = self._new_file(batch)
            self.files.append(path)
        out[0].write_batch(batch, row_group_size=_ROW_GROUP_ROWS)
        out[2] += batch.num_rows
        return self._close_file(out) if out[2] >= _ROWS_PER_FILE else out

    def _new_file(self, batch: pa.RecordBatch) -> tuple[str, list[Any]]:
        """A new data file of this load, opened for ``batch``'s rows: its path and [ParquetWriter, stream, rows]."""
        path = f"{self.table.location()}/data/{self.batch_id}-{uuid.uuid4().hex}.parquet"
        stream = self.table.io.new_output(path).create(overwrite=True)
        with self._dictionary_lock:  # chosen on the load's first batch, the same for every file
            if self._dictionary is None:
                self._dictionary = dictionary_columns(batch)
        return path, [pq.ParquetWriter(stream, self.target, write_statistics=True,
                                       **parquet_options(batch, self._dictionary)), stream, 0]

    @staticmethod
    def _close_file(out: list[Any] | None) -> None:
        if out is not None:
            out[0].close()
            out[1].close()

    def _constant(self, name: str, value: pa.Scalar, n: int) -> pa.Array:
        """``value`` repeated ``n`` times: a slice of the array last built for column ``name``, rebuilt when the
        value changes (a drop load's next file) or a batch is longer (repeating the lineage strings anew for
        every batch was a fifth of the extraction thread's work). One array per column, so memory stays a batch."""
        key = value.as_py()
        cached = self._constants.get(name)
        if cached is None or cached[0] != key or len(cached[1]) < n:
            grown = 2 * len(cached[1]) if cached is not None and cached[0] == key else 0
            cached = self._constants[name] = (key, pa.repeat(value, max(n, grown)))
        return cached[1].slice(0, n)

    def shape(self, batch: pa.RecordBatch | pa.Table, *, source_file: str | None = None,
              deleted: bool = False) -> pa.RecordBatch:
        """Add lineage and cast to the table's schema (missing data columns become null)."""
        n = batch.num_rows
        lineage = {"_batch_id": pa.scalar(self.batch_id, pa.string()), "_extracted_at": self.extracted_at,
                   "_source_system": pa.scalar(self.system, pa.string()),
                   "_source_file": pa.scalar(source_file, pa.string()), "_deleted": pa.scalar(deleted),
                   "_load_seq": self.load_seq}
        cols = []
        for f in self.target:
            if f.name in lineage:
                cols.append(self._constant(f.name, lineage[f.name], n))
            elif f.name in batch.schema.names:
                col = batch.column(f.name)
                cols.append(normalize_array(col, f.type))
            else:
                cols.append(pa.nulls(n, f.type))
        if isinstance(batch, pa.Table):
            cols = [c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in cols]
        return pa.RecordBatch.from_arrays(cols, schema=self.target)

    @property
    def data_columns(self) -> list[str]:
        return [f.name for f in self.target if f.name not in LINEAGE_NAMES]

    def write(self, batch: pa.RecordBatch | pa.Table, *, source_file: str | None = None,
              deleted: bool = False) -> None:
        if batch.num_rows:
            self.write_shaped(self.shape(batch, source_file=source_file, deleted=deleted))

    def write_shaped(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Queue a batch already in the target schema (see ``shape``) for the writer thread."""
        if self._error is not None:
            raise self._error
        if batch.num_rows == 0:
            return
        if isinstance(batch, pa.Table):
            batch = batch.combine_chunks().to_batches()[0]
        self._queue.put(batch)
        self.rows += batch.num_rows
        if self.rows >= _SECOND_WRITER_FROM:
            self._start_more()

    def flush(self) -> int:
        """Close the current Parquet file(s); returns a mark to ``rollback`` to (one file's rows, say)."""
        done = threading.Barrier(self._active + 1)
        for _ in range(self._active):
            self._queue.put(done)
        try:
            done.wait()
        except BaseException:  # interrupted (Ctrl-C, a task's SIGTERM): release the writers waiting at it
            done.abort()
            raise
        if self._error is not None:
            raise self._error
        return len(self.files)

    def rollback(self, mark: int, rows: int) -> None:
        """Forget the files written since ``mark`` (e.g. a drop file rejected halfway through)."""
        self.flush()
        for path in self.files[mark:]:
            self.table.io.delete(path)
        del self.files[mark:]
        self.rows -= rows

    def extend(self, source_schema: pa.Schema) -> list[str]:
        """Evolve the target for a new source schema (a later drop file); drift raises SchemaDriftError."""
        target, changes = plan_schema(self.identifier, self.target, source_schema)
        data_names = {f.name for f in self.target if f.name not in LINEAGE_NAMES}
        if target != self.target:
            self.flush()
            self.target = target
            if data_names:
                self.changes += changes
        return changes

    def _finish(self) -> None:
        if self._threads[0].is_alive():
            self._more.set()  # an unused second thread leaves; a used one takes its own _DONE
            for _ in range(self._active):
                self._queue.put(_DONE)
            for t in self._threads:
                t.join()
        if self._error is not None:
            raise self._error

    def commit(self, state: TableState, summary: dict[str, str], *, replace_batch: bool,
               keys: list[str] | None = None, batch_rows: BooleanExpression | None = None) -> int | None:
        """One Iceberg commit: schema evolution, delete of this batch id, new files, state. Returns snapshot id.

        Another writer's commit in between (the catalog refuses ours: nothing landed) is retried on the
        reloaded table: the state is merged (``TableState.merge``), this batch id is replaced if the other
        writer committed it, and with ``keys`` the versions other loads landed since this one compared
        are dropped from its files. pyiceberg's own retry is off: it re-applies the stale state.
        A commit whose outcome is unknown (connection lost after it was sent) is looked for in the
        table; not found, it raises ``CommitStateUnknown`` and the files stay (never deleted: they may be
        the table's); a rerun of the batch replaces it either way.
        ``batch_rows`` narrows what replacing the batch deletes (a drop rerun: only the files it re-read,
        so a file of the batch that is gone or was loaded again later keeps its rows); the conflict retry
        replaces with the same narrowed expression.
        """
        self._finish()
        _require_sql_catalog(self.catalog, self.identifier)
        summary = {**summary, COMMIT_UUID: self.commit_uuid}
        for attempt in range(COMMIT_ATTEMPTS):
            table = self.catalog.load_table(self.identifier)
            if table.properties.get(STATE_PROPERTY) != state.loaded:
                committed = TableState.of(table)
                replace_batch = replace_batch or committed.knows(self.batch_id)
                state = state.merge(committed)
            if keys:
                for (name, deleted), n in self._drop_landed(table, keys).items():
                    self.dropped[name, deleted] = self.dropped.get((name, deleted), 0) + n
                    entry = state.ledger.get(name) if name is not None and not deleted else None
                    if name is not None and entry is not None and entry.get("batch") == self.batch_id \
                            and "written" in entry:
                        # the ledger says what this load landed of the file: staged below with the rows
                        state.ledger[name] = {**entry, "written": max(0, int(entry["written"]) - n)}
            tx = single_attempt(table).transaction()
            if arrow_schema(table) != self.target:
                self._evolve(tx, table)
            if replace_batch:
                this_batch = EqualTo("_batch_id", self.batch_id)
                tx.delete(this_batch if batch_rows is None else And(this_batch, batch_rows),
                          snapshot_properties=summary)
            if self.files:
                tx.add_files(self.files, snapshot_properties=summary, check_duplicate_files=False)
            sent_state = _stage_state(tx, state)
            try:
                self._sent = True
                table = tx.commit_transaction()
            except (CommitFailedException, ValidationException):
                self._sent = False  # refused by the catalog: nothing landed, the files are still only ours
                time.sleep(conflict_pause(attempt))
                continue
            except Exception as exc:
                found = self._landed(sent_state)
                if found is None:
                    raise CommitStateUnknown(
                        f"{self.identifier}: the catalog commit of batch {self.batch_id} has an unknown outcome "
                        f"({type(exc).__name__}); its data files are kept; rerun the load (it replaces the batch)"
                    ) from exc
                return found or None
            snap = table.current_snapshot()
            return snap.snapshot_id if snap else None
        raise CitylakeError(f"{self.identifier}: commit of batch {self.batch_id} refused {COMMIT_ATTEMPTS} times "
                            "by concurrent writers; nothing landed, rerun the load")

    def _landed(self, sent_state: str) -> int | None:
        """After an unknown commit outcome: the snapshot id of this commit if the table has it (0 for a
        commit of state only), None if it is not found or the catalog cannot be asked."""
        try:
            table = self.catalog.load_table(self.identifier)
        except Exception:
            return None
        for snap in ancestors_of(table.current_snapshot(), table.metadata):
            if snap.summary is not None and snap.summary.get(COMMIT_UUID) == self.commit_uuid:
                return snap.snapshot_id
        return 0 if table.properties.get(STATE_PROPERTY) == sent_state else None

    def _drop_landed(self, table: Table, keys: list[str]) -> dict[tuple[str | None, bool], int]:
        """Drop from this load's files the versions (key, row hash) that other loads landed after this one
        compared with the lake: two loads of one window (a CLI run beside the DAG) must not both add them.
        Returns the rows dropped per (``_source_file``, ``_deleted``), for the load's counts and ledger.

        Compared as a full refresh compares (``LakeCompare``: DuckDB on local disk, spilling): the other
        loads' rows are streamed in as (key, hash), this load's files are staged and read back without the
        rows that match the other loads' latest version of their key. Memory follows a record batch, not
        the other load. A deletion row is never dropped (the compare's lake side holds live versions only):
        two concurrent full refreshes may both record a key's deletion, which std applies once."""
        from pipelines.lake.changes import LakeCompare  # changes imports this module

        head = table.current_snapshot()
        if head is None or head.snapshot_id == self._compared_at:
            return {}
        others: set[str] = set()
        for snap in ancestors_of(head, table.metadata):
            if snap.snapshot_id == self._compared_at:
                break
            batch = snap.summary.get("citylake.batch-id") if snap.summary is not None else None
            if batch is not None and batch != self.batch_id:  # not maintenance, not the batch being replaced
                others.add(batch)
        self._compared_at = head.snapshot_id
        if not others or not self.files:
            return {}
        fields = [f for f in self.target if f.name not in LINEAGE_NAMES]
        compare = LakeCompare(keys)
        try:
            if not compare.load_lake(table, fields, row_filter=In("_batch_id", sorted(others))):
                return {}
            read: dict[tuple[str | None, bool], int] = {}
            for path in self.files:
                with self.table.io.new_input(path).open() as f:
                    # a file's schema may predate a later file's added column (``extend``): conform each batch
                    for batch in file_batches(pq.ParquetFile(f), _ROW_GROUP_ROWS):
                        shaped = self._conform(batch)
                        _count(shaped, read)
                        compare.add(shaped, self.data_columns)
            kept: dict[tuple[str | None, bool], int] = {}
            files: list[str] = []
            out: Any = None
            try:
                for batch in compare.changed(_ROW_GROUP_ROWS):
                    if out is None or out[2] >= _ROWS_PER_FILE:
                        self._close_file(out)
                        path, out = self._new_file(batch)
                        files.append(path)
                    out[0].write_batch(batch, row_group_size=_ROW_GROUP_ROWS)
                    out[2] += batch.num_rows
                    _count(batch, kept)
            finally:
                self._close_file(out)
        finally:
            compare.close()
        dropped = {k: n - kept.get(k, 0) for k, n in read.items() if n > kept.get(k, 0)}
        old, self.files = (files, self.files) if not dropped else (self.files, files)
        for path in old:
            self.table.io.delete(path)  # never committed: every earlier attempt was refused
        self.rows -= sum(dropped.values())
        return dropped

    def _conform(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        """One of this load's written batches in the current target schema (columns added since as nulls)."""
        n = batch.num_rows
        return pa.RecordBatch.from_arrays(
            [batch.column(f.name).cast(f.type) if f.name in batch.schema.names else pa.nulls(n, f.type)
             for f in self.target], schema=self.target)

    def _evolve(self, tx: Any, table: Table) -> None:
        current = {f.name: f.type for f in arrow_schema(table)}
        with tx.update_schema() as upd:
            for f in self.target:
                if f.name in current and current[f.name] != f.type:
                    upd.update_column(f.name, field_type=_iceberg_type(f.type))
            new = [f for f in self.target if f.name not in current]
            if new:
                upd.union_by_name(pa.schema(new))

    def abort(self) -> None:
        """Stop writing and delete the files of this load, unless a commit of them was sent and not
        refused: then they may be the table's (Iceberg's "commit state unknown" rule) and stay for orphan
        cleanup."""
        try:
            self._finish()
        except BaseException:
            pass
        if self._sent:
            self.files = []
            return
        for path in self.files:
            try:
                self.table.io.delete(path)
            except OSError:
                pass
        self.files = []


def _count(batch: pa.RecordBatch, into: dict[tuple[str | None, bool], int]) -> None:
    """Add a batch's rows per (``_source_file``, ``_deleted``) to ``into``."""
    counts = pa.Table.from_batches([batch]).group_by(["_source_file", "_deleted"], use_threads=False).aggregate(
        [([], "count_all")])
    for row in counts.to_pylist():
        where = (row["_source_file"], bool(row["_deleted"]))
        into[where] = into.get(where, 0) + row["count_all"]


def hash_sql(columns: list[str]) -> str:
    """DuckDB's 63-bit row hash over ``columns`` as a SQL expression: ``row_hash`` and ``LakeCompare`` hash
    both sides of a compare with this one expression."""
    return f"(hash({', '.join(_quote(c) for c in columns)}) >> 1)::BIGINT"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def row_hash(batch: pa.RecordBatch | pa.Table, columns: list[str]) -> pa.Array:
    """A 63-bit hash of each row's ``columns`` (DuckDB's hash). Only ever compared within one run:
    the lake's rows are hashed when read back, so a DuckDB upgrade cannot make stale hashes disagree."""
    if batch.num_rows == 0:
        return pa.array([], pa.int64())
    con = _hash_connection()
    tbl = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    con.register("tbl", tbl)
    try:
        out = con.sql(f"SELECT {hash_sql(columns)} AS h FROM tbl").to_arrow_table()
    finally:
        con.unregister("tbl")
    return out.column("h").combine_chunks()


_HASHING = threading.local()


def _hash_connection() -> Any:
    """One small DuckDB per thread for ``row_hash``: a new database per batch cost a buffer pool and
    allocator arenas each time (RSS grew with the number of batches)."""
    con = getattr(_HASHING, "con", None)
    if con is None:
        import duckdb

        con = _HASHING.con = duckdb.connect()
    return con
