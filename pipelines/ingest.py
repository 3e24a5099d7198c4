"""Load one source table into its raw Iceberg table: the function the DAG task and the CLI both run.

Modes:
- incremental: rows with ``cursor >= watermark - lookback`` are extracted; those already in the lake
  (same key and same row hash) are skipped, so rows equal to the watermark and late rows are neither
  lost nor duplicated.
- full: the whole table; unchanged rows are skipped, changed rows appended, and keys gone from the
  source recorded as deletion rows (``_deleted = true``).
- backfill: ``since <= cursor < until``, deduplicated the same way; the watermark never moves back.
Re-running a batch id replaces that batch (delete by batch id and append in one commit).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from typing import Any, Literal, get_args

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import And, GreaterThanOrEqual, LessThan, NotEqualTo

from pipelines.contracts import contracts_of_table
from pipelines.errors import CitylakeError, FileRejected, SchemaDriftError
from pipelines.lake.catalog import get_catalog
from pipelines.lake.raw import LINEAGE_NAMES, RawWriter, TableState, open_table, row_hash, stream_scan
from pipelines.registry import DropTable, SourceSystem, SqlTable
from pipelines.settings import TZ, Settings, load_settings

Mode = Literal["incremental", "full", "backfill"]


@dataclass
class LoadResult:
    """What one load did; small enough for XCom (names, ids and counts, never data)."""

    system: str
    table: str
    identifier: str
    mode: str
    batch_id: str
    rows_extracted: int = 0
    rows_written: int = 0
    rows_unchanged: int = 0
    rows_deleted: int = 0
    snapshot_id: int | None = None
    watermark: str | None = None
    seconds: float = 0.0
    schema_changes: list[str] = field(default_factory=list)
    files_loaded: list[str] = field(default_factory=list)
    files_rejected: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_batch_id(text: str) -> str:
    """A batch id safe for file names and Iceberg filters (run ids carry ':' and '+')."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:120]


# --- watermark values -----------------------------------------------------------------------------


def _to_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=TZ)
        return value.astimezone(TZ).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return str(value)


def _from_text(text: str | None, t: pa.DataType) -> Any:
    if text is None:
        return None
    if pa.types.is_timestamp(t):
        return datetime.fromisoformat(text)
    if pa.types.is_date(t):
        return date.fromisoformat(text)
    if pa.types.is_integer(t):
        return int(text)
    if pa.types.is_floating(t):
        return float(text)
    return text


def _minus_lookback(value: Any, hours: float) -> Any:
    if isinstance(value, datetime):
        return value - timedelta(hours=hours)
    if isinstance(value, date):
        return value - timedelta(days=-(-hours // 24))
    return value  # sequence cursors have no time lookback: >= still re-reads the equal rows


def _max(values: pa.Array | pa.ChunkedArray) -> Any:
    m = pc.max(values).as_py()
    if isinstance(m, datetime) and m.tzinfo is None:
        m = m.replace(tzinfo=TZ)  # naive source times are Asia/Shanghai
    return m


def _later(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def _iceberg_literal(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(TZ).isoformat() if value.tzinfo else value.replace(tzinfo=TZ).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return value


# --- what the lake already holds ------------------------------------------------------------------


def _existing(table: Any, keys: list[str], columns: list[pa.Field], cursor: str | None, since: Any,
              until: Any, batch_id: str, latest_only: bool) -> pa.Table:
    """(key..., _h[, _deleted]) of lake rows in the window, excluding the batch being replaced.

    Rows are hashed as they stream back (over ``columns``, the load's data columns; columns the lake
    does not have yet hash as nulls), so only keys and hashes are held in memory.
    """
    expr: Any = NotEqualTo("_batch_id", batch_id)
    if cursor and since is not None:
        expr = And(expr, GreaterThanOrEqual(cursor, _iceberg_literal(since)))
    if cursor and until is not None:
        expr = And(expr, LessThan(cursor, _iceberg_literal(until)))
    present = set(table.schema().column_names)
    fields = [c.name for c in columns if c.name in present]
    reader = stream_scan(table.scan(row_filter=expr, selected_fields=tuple(dict.fromkeys(
        [*keys, *fields, "_deleted", "_extracted_at"]))))
    parts = []
    for batch in reader:
        data = [batch.column(c.name).cast(c.type) if c.name in present else pa.nulls(batch.num_rows, c.type)
                for c in columns]
        hashed = row_hash(pa.RecordBatch.from_arrays(data, names=[c.name for c in columns]),
                          [c.name for c in columns])
        key_types = {c.name: c.type for c in columns}
        parts.append(pa.table([*(batch.column(k).cast(key_types[k]) for k in keys), hashed, batch.column("_deleted"),
                               batch.column("_extracted_at")], names=[*keys, "_h", "_deleted", "_extracted_at"]))
    if not parts:
        return pa.table({k: [] for k in [*keys, "_h"]})
    got = pa.concat_tables(parts)
    if not latest_only:
        return got.select([*keys, "_h"])
    import duckdb

    key_list = ", ".join(_q(k) for k in keys)
    con = duckdb.connect()
    con.register("got", got)
    # Every version of a key from its latest extraction: the state a full refresh compares against.
    return con.sql(
        f"SELECT {key_list}, _h, _deleted FROM got "
        f"QUALIFY _extracted_at = max(_extracted_at) OVER (PARTITION BY {key_list})"
    ).to_arrow_table()


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _new_rows(shaped: pa.RecordBatch, hashes: pa.Array, existing: pa.Table, keys: list[str]) -> pa.Table:
    """The shaped rows whose (key, hash) is not live in the lake already."""
    live = existing
    if "_deleted" in existing.column_names:
        live = existing.filter(pc.invert(pc.fill_null(existing["_deleted"], False)))
    probe = pa.Table.from_batches([shaped]).append_column("_h", hashes)
    kept = probe.join(live.select([*keys, "_h"]), keys=[*keys, "_h"], join_type="left anti", use_threads=True)
    return kept.select(shaped.schema.names)


# --- the load -------------------------------------------------------------------------------------


def ingest_table(system: SourceSystem, table_code: str, *, settings: Settings | None = None,
                 mode: Mode = "incremental", since: Any = None, until: Any = None,
                 batch_id: str | None = None, extracted_at: datetime | None = None) -> LoadResult:
    """Load one table of one system into ``raw.<system>__<table>`` in one Iceberg commit."""
    settings = settings or load_settings()
    if mode not in get_args(Mode):  # a typo must not quietly run an incremental load
        raise CitylakeError(f"{system.system}.{table_code}: unknown ingest mode {mode!r} "
                            f"(one of {', '.join(get_args(Mode))})")
    spec = system.table(table_code)
    extracted_at = (extracted_at or datetime.now(TZ)).astimezone(TZ)
    batch_id = make_batch_id(batch_id or f"{mode}_{extracted_at:%Y%m%dT%H%M%S%z}")
    result = LoadResult(system.system, spec.code, system.raw_table(spec.code), mode, batch_id)
    started = time.perf_counter()
    if isinstance(spec, SqlTable):
        _load_sql(system, spec, settings, result, mode, since, until, extracted_at)
    else:
        _load_drop(system, spec, settings, result, extracted_at)
    result.seconds = round(time.perf_counter() - started, 3)
    return result


def _open_source(system: SourceSystem, settings: Settings) -> Any:
    from pipelines.connections import resolve_url

    url = resolve_url(system, settings)
    from pipelines.extract.sql import PostgresSource, SqlSource

    cls = PostgresSource if url.startswith("postgresql") else SqlSource
    return cls(system.system, url, system.max_connections)


def _load_sql(system: SourceSystem, spec: SqlTable, settings: Settings, result: LoadResult,
              mode: Mode, since: Any, until: Any, extracted_at: datetime) -> None:
    catalog = get_catalog(settings)
    source = _open_source(system, settings)
    try:
        reflected = source.reflect(spec)
        cols = source.columns(spec, reflected)
        for k in spec.primary_key + ([spec.cursor] if spec.cursor else []):
            if k not in cols.schema.names:
                raise CitylakeError(f"system {system.system}, table {spec.source!r}: column {k!r} "
                                    f"from the registry is not at the source (columns: {cols.schema.names})")
        # a contract column the source lacks would publish all-null: fail before anything is written
        for contract in contracts_of_table(settings.root / "schemas" / "datasets", system.system, spec.code):
            contract.check_sources(cols.schema.names, f"system {system.system}, table {spec.code}")
        table = open_table(catalog, result.identifier)
        state = TableState.of(table) if table is not None else TableState()
        rerun = result.batch_id in state.windows
        full = mode == "full" or spec.cursor is None
        result.mode = "full" if full else mode
        lookback = spec.lookback_hours if spec.lookback_hours is not None else system.lookback_hours
        cursor_type = cols.schema.field(spec.cursor).type if spec.cursor else None
        low = None
        if not full and mode == "incremental":
            low_text = state.windows[result.batch_id][0] if rerun else state.watermark
            low = _from_text(low_text, cursor_type)
            since = _minus_lookback(low, lookback) if low is not None else None
        window = [_to_text(since if mode == "backfill" else low), None]

        writer = RawWriter(catalog, result.identifier, cols.schema, batch_id=result.batch_id,
                           extracted_at=extracted_at, system=system.system)
        result.schema_changes = writer.changes
        data_fields = [f for f in writer.target if f.name not in LINEAGE_NAMES]
        existing = None
        if table is not None and table.current_snapshot() is not None:
            existing = _existing(table, spec.primary_key, data_fields, None if full else spec.cursor,
                                 None if full else since, None if full else until,
                                 result.batch_id, latest_only=full)
        compare = existing is not None and existing.num_rows > 0
        high = None
        seen_keys: list[pa.Table] = []
        try:
            for batch in source.batches(spec, since=None if full else since, until=None if full else until,
                                        reflected=reflected):
                result.rows_extracted += batch.num_rows
                if spec.cursor:
                    high = _later(high, _max(batch.column(spec.cursor)))
                shaped = writer.shape(batch)
                if compare:  # a first load has nothing to compare with: no hashing at all
                    if full:
                        seen_keys.append(pa.Table.from_batches([shaped]).select(spec.primary_key))
                    fresh = _new_rows(shaped, row_hash(shaped, [f.name for f in data_fields]), existing,
                                      spec.primary_key)
                    result.rows_unchanged += shaped.num_rows - fresh.num_rows
                    writer.write_shaped(fresh)
                else:
                    writer.write_shaped(shaped)
            if full and compare:
                gone = _deleted_keys(existing, seen_keys, spec.primary_key)
                result.rows_deleted = gone.num_rows
                writer.write(gone, deleted=True)
            result.rows_written = writer.rows
            old_wm = _from_text(state.watermark, cursor_type) if state.watermark else None
            new_wm = _later(old_wm, high) if spec.cursor else None
            state.cursor = spec.cursor
            state.watermark = _to_text(new_wm)
            state.batch_id = result.batch_id
            window[1] = state.watermark
            state.windows[result.batch_id] = window
            result.watermark = state.watermark
            if writer.rows == 0 and not rerun and state.watermark == _to_text(old_wm) and table is not None:
                writer.abort()  # nothing new: no empty snapshot
                result.snapshot_id = table.current_snapshot().snapshot_id if table.current_snapshot() else None
                return
            summary = {"citylake.batch-id": result.batch_id, "citylake.mode": result.mode,
                       "citylake.rows-extracted": str(result.rows_extracted),
                       "citylake.watermark": state.watermark or ""}
            result.snapshot_id = writer.commit(state, summary, replace_batch=rerun)
        except BaseException:
            writer.abort()
            raise
    finally:
        source.dispose()


def _deleted_keys(existing: pa.Table, seen: list[pa.Table], keys: list[str]) -> pa.Table:
    live = existing.filter(pc.invert(pc.fill_null(existing["_deleted"], False))).select(keys)
    if not seen:
        return live.group_by(keys).aggregate([])
    extracted = pa.concat_tables(seen)
    gone = live.join(extracted.group_by(keys).aggregate([]), keys=keys, join_type="left anti")
    return gone.group_by(keys).aggregate([]).select(keys)


def _load_drop(system: SourceSystem, spec: DropTable, settings: Settings, result: LoadResult,
               extracted_at: datetime) -> None:
    from pipelines.extract.drops import list_drop_files, read_drop_file, reject_file

    assert system.drop is not None
    catalog = get_catalog(settings)
    table = open_table(catalog, result.identifier)
    state = TableState.of(table) if table is not None else TableState()
    rerun = any(v.get("batch") == result.batch_id for v in state.ledger.values())
    todo = [f for f in list_drop_files(system.drop, spec, settings)
            if f.name not in state.ledger or state.ledger[f.name]["fp"] != f.fingerprint
            or state.ledger[f.name].get("batch") == result.batch_id]
    writer: RawWriter | None = None
    try:
        for f in todo:
            mark, rows = (writer.flush() if writer else 0), 0
            try:
                for batch in read_drop_file(f, spec, settings):
                    if writer is None:
                        writer = RawWriter(catalog, result.identifier, batch.schema, batch_id=result.batch_id,
                                           extracted_at=extracted_at, system=system.system)
                    else:
                        writer.extend(batch.schema)
                    writer.write(batch, source_file=f.name)
                    rows += batch.num_rows
            except (FileRejected, SchemaDriftError) as exc:
                if writer is not None and rows:
                    writer.rollback(mark, rows)
                reason = exc.reason if isinstance(exc, FileRejected) else str(exc)
                line = exc.line if isinstance(exc, FileRejected) else None
                where = reject_file(f, reason, settings, system.system, spec.code, result.batch_id, line=line)
                state.ledger[f.name] = {"fp": f.fingerprint, "batch": result.batch_id, "status": "rejected",
                                        "reason": reason, "line": line}
                result.files_rejected.append({"file": f.name, "reason": reason, "line": line, "copied_to": where})
                continue
            result.rows_extracted += rows
            state.ledger[f.name] = {"fp": f.fingerprint, "batch": result.batch_id, "status": "loaded", "rows": rows}
            result.files_loaded.append(f.name)
        result.rows_written = writer.rows if writer else 0
        state.batch_id = result.batch_id
        if writer is None and not result.files_rejected and not rerun:
            return
        if writer is None:
            # Only rejections: the ledger still commits so the files are not retried unchanged.
            table = table or _empty_drop_table(catalog, result.identifier)
            with table.transaction() as tx:
                tx.set_properties({"citylake.state": state.to_property()})
            return
        summary = {"citylake.batch-id": result.batch_id, "citylake.mode": "files",
                   "citylake.files": str(len(result.files_loaded))}
        result.snapshot_id = writer.commit(state, summary, replace_batch=rerun)
        result.schema_changes = writer.changes
    except BaseException:
        if writer is not None:
            writer.abort()
        raise


def _empty_drop_table(catalog: Any, identifier: str) -> Any:
    from pipelines.lake.raw import LINEAGE, TABLE_PROPERTIES

    return catalog.create_table(identifier, schema=LINEAGE, properties=TABLE_PROPERTIES)


# --- a whole system -------------------------------------------------------------------------------


def ingest_system(system: SourceSystem, tables: Iterable[str] | None = None, **kw: Any) -> Iterator[
        tuple[str, LoadResult | BaseException]]:
    """Load each table; a failing table does not stop the others (each result or error is yielded)."""
    for code in tables or [t.code for t in system.all_tables]:
        try:
            yield code, ingest_table(system, code, **kw)
        except CitylakeError as exc:
            yield code, exc
        except Exception as exc:  # an unexpected failure of one table still lets the others land
            yield code, CitylakeError(f"system {system.system}, table {code}: {type(exc).__name__}: "
                                      f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}")
