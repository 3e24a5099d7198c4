"""Load one source table into its raw Iceberg table: the function the DAG task and the CLI both run.

Modes:
- incremental: rows with ``cursor >= watermark - lookback`` are extracted; those already in the lake
  (same key and same row hash) are skipped, so rows equal to the watermark and late rows are neither
  lost nor duplicated.
- full: the whole table; unchanged rows are skipped, changed rows appended, and keys gone from the
  source recorded as deletion rows (``_deleted = true``).
- backfill: ``since <= cursor < until``, deduplicated the same way; the watermark never moves back, and moves
  forward only when the window starts at or before ``watermark - lookback`` (a window after a gap, or on a table
  with no watermark, leaves it: the next incremental run loads the gap).
- deletions: the key-only check: only the primary-key columns are read from the source; keys live in the
  lake that the source no longer has get deletion rows (a cursor table sees deletions no other way).
Versions of a key are ordered by the table's load sequence (``_load_seq``, allocated when a load starts).
Re-running a batch id replaces that batch (delete by batch id and append in one commit).
"""

from __future__ import annotations

import functools
import logging
import re
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, get_args

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import And, EqualTo, GreaterThanOrEqual, In, LessThan, LessThanOrEqual, NotEqualTo

from pipelines.contracts import contracts_of_table
from pipelines.errors import CitylakeError, FileRejected, SchemaDriftError
from pipelines.extract.read_ahead import whole_read
from pipelines.lake.catalog import get_catalog
from pipelines.lake.changes import LakeCompare, latest_order, raw_batch_ids, release_memory
from pipelines.lake.raw import (
    LINEAGE_NAMES,
    RawWriter,
    TableState,
    arrow_schema,
    commit_state,
    normalize_array,
    open_table,
    plan_schema,
    row_hash,
    stream_scan,
)
from pipelines.privacy import mask_file_name, mask_message
from pipelines.registry import DropTable, SourceSystem, SqlTable
from pipelines.settings import TZ, Settings, load_settings

Mode = Literal["incremental", "full", "backfill", "deletions"]

log = logging.getLogger(__name__)


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
    files_repeated: list[dict[str, str]] = field(default_factory=list)
    """Files whose bytes the table already had (``of``: the earlier file's name): nothing loaded."""
    watermark_gap: str | None = None
    """Set when a window (mode backfill) started after the watermark, so the watermark did not move (one line)."""
    invalid_values: dict[str, int] = field(default_factory=dict)
    """Source values that are no value of their type (MySQL zero or invalid dates, the zero YEAR, a TIME outside a
    day, a TINYINT(1) other than 0/1, a DATETIME wall time skipped by DST), landed as null: column code → count.
    Also in ``meta.standardization_log`` under the raw table's name."""

    def to_dict(self) -> dict[str, Any]:
        """The result as a task returns it (XCom, shown in the Airflow UI): drop file names masked, since
        people name files after the person; the attributes keep the real names."""
        d = asdict(self)
        d["files_loaded"] = [mask_file_name(n) for n in self.files_loaded]
        d["files_rejected"] = [{**r, "file": mask_file_name(r["file"]), "copied_to": mask_file_name(r.get("copied_to"))}
                               for r in self.files_rejected]
        d["files_repeated"] = [{**r, "file": mask_file_name(r["file"]), "of": mask_file_name(r["of"])}
                               for r in self.files_repeated]
        return d


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
    if pa.types.is_decimal(t):  # MySQL BIGINT UNSIGNED lands as decimal(20,0): compared as numbers, never text
        try:
            return Decimal(text)
        except InvalidOperation:  # a watermark from before the column changed type: schema drift reports it
            return text
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


def _contiguous(since: Any, old_wm: Any, lookback: float) -> bool:
    """Whether a window starting at ``since`` may move the watermark: only when it read everything the next
    incremental run would have read (below its ``until``): from the start of the cursor (``since`` None), or from
    at or before ``watermark - lookback``. Otherwise rows between the watermark and ``since`` (or late rows inside
    the lookback) were never read, and a watermark moved past them would drop them for good. An empty table's
    window (no watermark) is a slice, not a start: the watermark stays unset and the next incremental run loads
    everything (the window's rows are skipped as unchanged). Keeping the watermark costs a re-read, never a row."""
    if since is None:
        return True
    if old_wm is None:
        return False
    old_wm = _minus_lookback(old_wm, lookback)
    try:
        return bool(since <= old_wm)
    except TypeError:
        pass
    if isinstance(since, date) and isinstance(old_wm, date):  # a date cursor and a date-time bound (or reverse)
        def as_dt(v: date) -> datetime:
            return v if isinstance(v, datetime) else datetime(v.year, v.month, v.day, tzinfo=TZ)

        return as_dt(since) <= as_dt(old_wm)
    return False  # not comparable: keeping the watermark only costs the next run a re-read


def _gap_note(since: Any, old_wm: Any) -> str:
    where = f"the watermark {_to_text(old_wm)} (less the lookback)" if old_wm is not None else \
        "a watermark (none yet)"
    return (f"window from {_to_text(since)} does not start at or before {where}: the watermark is kept, so the "
            "next incremental run loads the rows before the window")


def _iceberg_literal(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(TZ).isoformat() if value.tzinfo else value.replace(tzinfo=TZ).isoformat()
    if isinstance(value, date):
        return value.isoformat()
    return value


# --- what the lake already holds ------------------------------------------------------------------


def _existing(table: Any, keys: list[str], columns: list[pa.Field], cursor: str | None, since: Any,
              until: Any, batch_id: str) -> pa.Table:
    """(key..., _h, _deleted) of the latest version of each key in an incremental load's cursor window,
    excluding the batch being replaced.

    Rows are hashed as they stream back (over ``columns``, the load's data columns; columns the lake
    does not have yet hash as nulls), so only keys and hashes are held in memory: the window's, not the
    table's (a full refresh compares through ``LakeCompare`` instead). A key's older versions in the
    window do not count, and neither does a version a later deletion row superseded: deletion rows have
    no cursor, so the window never holds them; they are read for the window's keys and ranked with it
    (else a key restored at the source with its old values would match its old row and stay deleted).
    """
    expr: Any = NotEqualTo("_batch_id", batch_id)
    if cursor and since is not None:
        expr = And(expr, GreaterThanOrEqual(cursor, _iceberg_literal(since)))
    if cursor and until is not None:
        expr = And(expr, LessThan(cursor, _iceberg_literal(until)))
    present = set(table.schema().column_names)
    fields = [c.name for c in columns if c.name in present]
    lineage = [c for c in _ORDER if c in present]
    reader = stream_scan(table.scan(row_filter=expr, selected_fields=tuple(dict.fromkeys(
        [*keys, *fields, "_deleted", *lineage]))))
    key_types = {c.name: c.type for c in columns}
    parts = []
    for batch in reader:
        data = [batch.column(c.name).cast(c.type) if c.name in present else pa.nulls(batch.num_rows, c.type)
                for c in columns]
        hashed = row_hash(pa.RecordBatch.from_arrays(data, names=[c.name for c in columns]),
                          [c.name for c in columns])
        parts.append(_versions(batch, keys, key_types, hashed))
    if not parts:
        return pa.table({k: [] for k in [*keys, "_h"]})
    window = pa.concat_tables(parts)
    return _latest(pa.concat_tables([window, *_deletion_rows(table, keys, key_types, window, batch_id)]), keys)


_ORDER = {"_load_seq": pa.int64(), "_extracted_at": pa.timestamp("us", tz="UTC")}
"""The lake's order of a key's versions: ``_load_seq``, then ``_extracted_at`` (as ``LakeCompare``)."""


def _versions(batch: pa.RecordBatch, keys: list[str], key_types: dict[str, pa.DataType],
              hashed: pa.Array) -> pa.Table:
    """(key..., _h, _deleted, _load_seq, _extracted_at) of lake rows (lineage a table lacks reads null)."""
    n = batch.num_rows
    order = [batch.column(c).cast(t) if c in batch.schema.names else pa.nulls(n, t) for c, t in _ORDER.items()]
    return pa.table([*(batch.column(k).cast(key_types[k]) for k in keys), hashed,
                     batch.column("_deleted").cast(pa.bool_()), *order],
                    names=[*keys, "_h", "_deleted", *_ORDER])


def _deletion_rows(table: Any, keys: list[str], key_types: dict[str, pa.DataType], window: pa.Table,
                   batch_id: str) -> Iterator[pa.Table]:
    """The deletion rows of the window's keys (read within the window's key ranges, then matched)."""
    if "_deleted" not in table.schema().column_names:
        return
    expr: Any = And(NotEqualTo("_batch_id", batch_id), EqualTo("_deleted", True))
    narrowed = _key_ranges({k: tuple(pc.min_max(window[k]).as_py().values()) for k in keys
                            if not window[k].null_count})
    if narrowed is not None:
        expr = And(expr, narrowed)
    present = set(table.schema().column_names)
    wanted = window.select(keys).group_by(keys).aggregate([])
    for batch in stream_scan(table.scan(row_filter=expr, selected_fields=tuple(dict.fromkeys(
            [*keys, "_deleted", *(c for c in _ORDER if c in present)])))):
        rows = _versions(batch, keys, key_types, pa.nulls(batch.num_rows, pa.int64()))
        rows = rows.join(wanted, keys=keys, join_type="left semi")
        if rows.num_rows:
            yield rows.select(window.column_names)


def _key_ranges(ranges: dict[str, tuple[Any, ...]]) -> Any:
    """A row filter keeping each key column within its (low, high) range (None: nothing to narrow), so a
    scan reads only the data files whose key statistics overlap; a column without a range is not narrowed."""
    ranged = [And(GreaterThanOrEqual(k, _iceberg_literal(low)), LessThanOrEqual(k, _iceberg_literal(high)))
              for k, (low, high) in ranges.items() if low is not None]
    return functools.reduce(And, ranged) if ranged else None


def _latest(versions: pa.Table, keys: list[str]) -> pa.Table:
    """Every row of each key's latest load (a source without a unique key has several per load)."""
    import duckdb

    con = duckdb.connect(config={"threads": 1})
    try:
        con.register("v", versions)
        on = ", ".join('"' + k.replace('"', '""') + '"' for k in keys)
        return con.sql(f"SELECT * EXCLUDE (_r) FROM (SELECT *, rank() OVER (PARTITION BY {on} ORDER BY "
                       f"{latest_order()}) AS _r FROM v) WHERE _r = 1").to_arrow_table()
    finally:
        con.close()


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
                 batch_id: str | None = None, extracted_at: datetime | None = None,
                 read_ahead: Any = None) -> LoadResult:
    """Load one table of one system into ``raw.<system>__<table>`` in one Iceberg commit. ``read_ahead``: this
    table's source opened and whole read started before the load (``pipelines.extract.read_ahead.Started``);
    the load owns it."""
    try:
        return _ingest_table(system, table_code, settings or load_settings(), mode, since, until, batch_id,
                             extracted_at, read_ahead)
    finally:
        if read_ahead is not None:  # not taken over (the load failed first, or read otherwise): release it
            read_ahead.close()


def _ingest_table(system: SourceSystem, table_code: str, settings: Settings, mode: Mode, since: Any, until: Any,
                  batch_id: str | None, extracted_at: datetime | None, read_ahead: Any) -> LoadResult:
    if mode not in get_args(Mode):  # a typo must not quietly run an incremental load
        raise CitylakeError(f"{system.system}.{table_code}: unknown ingest mode {mode!r} "
                            f"(one of {', '.join(get_args(Mode))})")
    spec = system.table(table_code)
    if mode == "deletions" and not isinstance(spec, SqlTable):
        raise CitylakeError(f"{system.system}.{table_code}: the key-only deletion check is for SQL tables "
                            "(a file drop delivers rows, not the source's whole key set)")
    extracted_at = (extracted_at or datetime.now(TZ)).astimezone(TZ)
    # Unnamed, a load is a batch of its own: two that start in the same second (concurrent CLI runs) must not
    # share an id, or the second is taken for a rerun of the first and replaces its rows. A retry names its
    # batch (Airflow's run id, `--batch-id`) to replace it.
    batch_id = make_batch_id(batch_id or f"{mode}_{extracted_at:%Y%m%dT%H%M%S%z}_{uuid.uuid4().hex[:6]}")
    result = LoadResult(system.system, spec.code, system.raw_table(spec.code), mode, batch_id)
    from pipelines.lake.runs import record_run

    # meta.runs: the batch id is the run id (an Airflow retry reuses it, so its row is replaced)
    with record_run("ingest", run_id=batch_id, target=result.identifier, settings=settings,
                    snapshot_of=result.identifier, system=system.system, table=result.identifier,
                    batch_id=batch_id) as run:
        started = time.perf_counter()
        if isinstance(spec, SqlTable):
            _load_sql(system, spec, settings, result, mode, since, until, extracted_at, read_ahead)
        else:
            _load_drop(system, spec, settings, result, extracted_at)
        result.seconds = round(time.perf_counter() - started, 3)
        run.done(rows_in=result.rows_extracted, rows_out=result.rows_written, snapshot=result.snapshot_id,
                 detail=f"mode {mode}" + (f", {len(result.files_rejected)} file(s) rejected"
                                          if result.files_rejected else ""))
    return result


INVALID_TO_NULL = "源值非法（零日期、无效日期、零年份或超出一天的时间）→ 空值"


def _log_invalid_values(catalog: Any, result: LoadResult, rerun: bool = False,
                        reasons: dict[str, str] | None = None) -> None:
    """The values a load landed as null because the source's value is no value of its type, in
    ``meta.standardization_log`` under the raw table's name (the gate logs std datasets under theirs);
    the load's batch id is the run id, so a retry replaces its rows rather than adding them again (a retry
    that found none erases the earlier attempt's; ``rerun`` is set only for sources that count them). ``reasons``:
    the source's transformation text per column (default ``INVALID_TO_NULL``)."""
    if not result.invalid_values and not rerun:
        return
    from pipelines.lake.meta import replace_run

    replace_run(catalog, "meta.standardization_log", result.batch_id,
                [{"dataset": result.identifier, "column": column,
                  "transformation": (reasons or {}).get(column, INVALID_TO_NULL), "rows_changed": n,
                  "run_id": result.batch_id} for column, n in sorted(result.invalid_values.items())],
                datasets=[result.identifier])


def _open_source(system: SourceSystem, settings: Settings) -> Any:
    from pipelines.connections import resolve_url
    from pipelines.extract.sources import open_source

    return open_source(system, resolve_url(system, settings))


def _load_sql(system: SourceSystem, spec: SqlTable, settings: Settings, result: LoadResult,
              mode: Mode, since: Any, until: Any, extracted_at: datetime, read_ahead: Any = None) -> None:
    catalog = get_catalog(settings)
    source = read_ahead.source if read_ahead is not None else _open_source(system, settings)
    try:
        reflected = read_ahead.reflected if read_ahead is not None else source.reflect(spec)
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
        keys_only = mode == "deletions"  # the key-only deletion check: reads the primary key, writes deletions
        full = whole_read(spec, mode)  # what the CLI may have started ahead (read_ahead.start) reads the same
        result.mode = "full" if full else mode
        if keys_only and (table is None or table.current_snapshot() is None):
            return  # nothing in the lake yet, so nothing that could have been deleted
        lookback = spec.lookback_hours if spec.lookback_hours is not None else system.lookback_hours
        cursor_type = cols.schema.field(spec.cursor).type if spec.cursor else None
        low = None
        if not full and mode == "incremental":
            low_text = state.windows[result.batch_id][0] if rerun else state.watermark
            low = _from_text(low_text, cursor_type)
            since = _minus_lookback(low, lookback) if low is not None else None
        window = [_to_text(since if mode == "backfill" else low), None]

        has_rows = table is not None and table.current_snapshot() is not None
        # A load into an empty table compares with nothing, so memory has room for a second writer thread
        # (a ~40 MB row group in progress): the writer is the load's longest thread on a large table.
        writer = RawWriter(catalog, result.identifier, cols.schema, batch_id=result.batch_id,
                           extracted_at=extracted_at, system=system.system, base=table,
                           writers=1 if has_rows else 2)
        # The version order of the table, taken from it now by a compare-and-swap commit: a load that starts
        # later is newer, whatever its _extracted_at (CLI wall clock vs an Airflow data interval), and two
        # concurrent loads never share one. This load's commit merges it with the rest of the state.
        try:
            state.load_seq = writer.allocate_load_seq()
        except BaseException:
            writer.abort()
            raise
        if read_ahead is not None and full:  # its rows have been waiting in a buffer since the load's start-up
            writer.expect(read_ahead.read.estimated_rows)
        result.schema_changes = writer.changes
        data_fields = [f for f in writer.target if f.name not in LINEAGE_NAMES]
        data_names = [f.name for f in data_fields]
        existing = None
        compare: LakeCompare | None = None
        high = None
        try:
            if keys_only:
                compare = LakeCompare(spec.primary_key, hashed=False)
                compare.load_lake(table, [f for f in data_fields if f.name in spec.primary_key],
                                  exclude_batch=result.batch_id)
            elif full and has_rows:
                # Full refresh: both sides through a spilling DuckDB, not held in memory (cost follows a batch).
                # The lake side is loaded after the source is read (below): a read the CLI started ahead holds
                # up to READ_AHEAD_BYTES of decoded rows until the load takes them, and held through the lake
                # scan it took a 5 M-row refresh to 602 MB. Read first, it drains before the scan, and the
                # source's snapshot transaction ends sooner. A rerun of the table's only batch compares with
                # nothing (the lake side leaves that batch out): its rows are written as read, as a first load's.
                if not (rerun and raw_batch_ids(table) <= {result.batch_id}):
                    compare = LakeCompare(spec.primary_key)
            elif has_rows:
                existing = _existing(table, spec.primary_key, data_fields, spec.cursor, since, until,
                                     result.batch_id)
                existing = existing if existing.num_rows else None
            whole = full or keys_only
            # One snapshot is needed only where deletions come of what the read did not return; a first load
            # may read in parallel ranges that start at slightly different moments (MySQL cannot share one).
            # A whole read the CLI started ahead (read_ahead.start) is taken over; its snapshot predates the load
            # sequence number taken above by the load's start-up (~1-2 s), as two loads' start-ups may overlap anyway.
            started = {"prefetched": read_ahead.read} if read_ahead is not None and full else {}
            for batch in source.batches(spec, since=None if whole else since, until=None if whole else until,
                                        reflected=reflected, only=spec.primary_key if keys_only else None,
                                        consistent=keys_only or (full and has_rows), **started):
                result.rows_extracted += batch.num_rows
                if keys_only:
                    assert compare is not None
                    compare.add(pa.RecordBatch.from_arrays(
                        [normalize_array(batch.column(k), writer.target.field(k).type) for k in spec.primary_key],
                        names=spec.primary_key))
                    continue
                if spec.cursor:
                    high = _later(high, _max(batch.column(spec.cursor)))
                shaped = writer.shape(batch)
                if compare is not None:
                    compare.add(shaped, data_names)
                elif existing is not None:  # a first load has nothing to compare with: no hashing at all
                    fresh = _new_rows(shaped, row_hash(shaped, data_names), existing, spec.primary_key)
                    result.rows_unchanged += shaped.num_rows - fresh.num_rows
                    writer.write_shaped(fresh)
                else:
                    writer.write_shaped(shaped)
            result.invalid_values = dict(getattr(source, "invalid_values", None) or {})
            if compare is not None and not keys_only:  # a full refresh: the lake side, now the source is read
                release_memory()
                compare.load_lake(table, data_fields, exclude_batch=result.batch_id)
            if compare is not None:
                for fresh_batch in compare.changed() if not keys_only else ():
                    writer.write_shaped(fresh_batch)
                result.rows_unchanged = result.rows_extracted - writer.rows
                for gone in compare.gone():
                    result.rows_deleted += gone.num_rows
                    writer.write(gone, deleted=True)
            result.rows_written = writer.rows
            old_wm = _from_text(state.watermark, cursor_type) if state.watermark else None
            new_wm = _later(old_wm, high) if spec.cursor else None
            if spec.cursor and mode == "backfill" and not full and not _contiguous(since, old_wm, lookback):
                # The window does not start at or before the watermark: rows in [watermark, since) were never
                # read, so moving the watermark past them would drop them for good. The next incremental run
                # reads from the old watermark (and skips what this window landed).
                new_wm = old_wm
                result.watermark_gap = _gap_note(since, old_wm)
                log.warning("%s: %s", result.identifier, result.watermark_gap)
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
            # A commit another writer beat is merged and retried; rows it landed meanwhile are not added again.
            result.snapshot_id = writer.commit(state, summary, replace_batch=rerun, keys=spec.primary_key)
            result.rows_written = writer.rows
            _log_invalid_values(catalog, result, rerun and hasattr(source, "invalid_values"),
                                getattr(source, "invalid_reasons", None))
            for (_, deleted), n in writer.dropped.items():  # another load landed these first: not ours
                if deleted:
                    result.rows_deleted -= n
                else:
                    result.rows_unchanged += n
        except BaseException:
            writer.abort()
            raise
        finally:
            if compare is not None:
                compare.close()
    finally:
        source.dispose()


class _DropSink:
    """Where one drop load's rows go. A first load writes them as read; once the table has rows, they are
    staged through ``LakeCompare`` and only rows whose (key, row hash) is not the latest version of their
    key land (as a full refresh compares, without deletions: a file holds some keys, not all). The lake
    side is read after the files, narrowed to the files' key ranges, so a drop of new keys (a new hour of
    readings) reads only the data files whose key statistics overlap them, not the whole table."""

    def __init__(self, catalog: Any, table: Any, result: LoadResult, spec: DropTable, system: str,
                 extracted_at: datetime, state: TableState) -> None:
        self.catalog, self.table, self.result, self.spec = catalog, table, result, spec
        self.system, self.extracted_at, self.state = system, extracted_at, state
        self.comparing = table is not None and table.current_snapshot() is not None
        self.writer: RawWriter | None = None
        self.compare: LakeCompare | None = None
        self.rejected: set[str] = set()
        self.written: dict[str, int] = {}
        self.key_ranges: dict[str, tuple[Any, Any]] = {}
        self.null_keys: set[str] = set()

    def mark(self) -> int:
        return self.writer.flush() if self.writer is not None and not self.comparing else 0

    def write(self, batch: pa.RecordBatch, source_file: str) -> None:
        if self.writer is None:
            self.writer = RawWriter(self.catalog, self.result.identifier, batch.schema,
                                    batch_id=self.result.batch_id, extracted_at=self.extracted_at,
                                    system=self.system, base=self.table)
            # taken by a compare-and-swap commit (see _load_sql); the state read at the start stays this
            # load's base, so the commit merges it with what others committed since
            self.state.load_seq = self.writer.allocate_load_seq()
        else:
            target, _ = plan_schema(self.result.identifier, self.writer.target, batch.schema)  # drift raises
            if target != self.writer.target:
                self._drain()  # staged rows have the old schema: land them before the table evolves
                self.writer.extend(batch.schema)
        shaped = self.writer.shape(batch, source_file=source_file)
        if not self.comparing:
            self.writer.write_shaped(shaped)
            self.written[source_file] = self.written.get(source_file, 0) + shaped.num_rows
            return
        if self.compare is None:
            self.compare = LakeCompare(self.spec.primary_key)
        self.compare.add(shaped, self.writer.data_columns)
        for k in self.spec.primary_key:
            column = shaped.column(k)
            if column.null_count:
                self.null_keys.add(k)
            low, high = (pc.min_max(column).as_py() or {}).values()
            if low is not None:
                old = self.key_ranges.get(k)
                self.key_ranges[k] = (min(old[0], low), max(old[1], high)) if old else (low, high)

    def reject(self, source_file: str, mark: int) -> None:
        """Forget a file's rows (it was rejected part way through)."""
        if self.comparing:
            self.rejected.add(source_file)  # its staged rows are skipped when the compare drains
        elif self.writer is not None and self.written.get(source_file):
            self.writer.rollback(mark, self.written.pop(source_file))

    def _drain(self) -> None:
        if self.compare is None or self.writer is None:
            return
        data_fields = [f for f in self.writer.target if f.name not in LINEAGE_NAMES]
        self.compare.load_lake(self.table, data_fields, exclude_batch=self.result.batch_id,
                               row_filter=self._key_filter())
        for batch in self.compare.changed():
            if self.rejected:
                batch = batch.filter(pc.invert(pc.is_in(batch.column("_source_file"),
                                                        pa.array(sorted(self.rejected), pa.string()))))
            for count in pc.value_counts(batch.column("_source_file")).to_pylist():
                self.written[count["values"]] = self.written.get(count["values"], 0) + count["counts"]
            self.writer.write_shaped(batch)
        self.compare.close()
        self.compare = None
        self.key_ranges, self.null_keys = {}, set()

    def _key_filter(self) -> Any:
        """Each key column within the range the files hold (a key column with nulls is not narrowed)."""
        return _key_ranges({k: r for k, r in self.key_ranges.items() if k not in self.null_keys})

    def finish(self) -> None:
        self._drain()

    def close(self) -> None:
        if self.compare is not None:
            self.compare.close()
            self.compare = None


def _load_drop(system: SourceSystem, spec: DropTable, settings: Settings, result: LoadResult,
               extracted_at: datetime) -> None:
    """Land the drop's new files in one commit. A file is known by its content: the same bytes again,
    under any name, are a repeat and land nothing; new bytes land only rows that are not already the
    latest version of their key (see ``_DropSink``). A bad file is copied aside with its reason (personal
    values masked) and recorded; the other files land."""
    from pipelines.extract.drops import DropLedger, content_id, list_drop_files, read_drop_file, reject_file, spec_id

    assert system.drop is not None
    catalog = get_catalog(settings)
    table = open_table(catalog, result.identifier)
    state = TableState.of(table) if table is not None else TableState()
    ledger = DropLedger(state.ledger, result.batch_id, spec_id(spec))
    sink = _DropSink(catalog, table, result, spec, system.system, extracted_at, state)
    landed: list[tuple[Any, str, int]] = []
    reread: list[str] = []  # the files this run looked at: all that a rerun of the batch replaces
    try:
        for f in list_drop_files(system.drop, spec, settings):
            if ledger.unchanged(f):
                continue
            content = content_id(f, settings)
            if ledger.still_rejected(f, content):
                continue
            reread.append(f.name)
            earlier = ledger.known(content)
            if earlier is not None:
                ledger.repeat(f, content, earlier)
                result.files_repeated.append({"file": f.name, "of": earlier})
                continue
            mark, rows = sink.mark(), 0
            try:
                for batch in read_drop_file(f, spec, settings):
                    sink.write(batch, f.name)
                    rows += batch.num_rows
            except (FileRejected, SchemaDriftError) as exc:
                sink.reject(f.name, mark)
                # reasons reach XCom and task logs: quoted cells and library text masked
                reason = mask_message(exc.reason if isinstance(exc, FileRejected) else str(exc)) or ""
                line = exc.line if isinstance(exc, FileRejected) else None
                where = reject_file(f, reason, settings, system.system, spec.code, result.batch_id, line=line)
                ledger.rejected(f, content, reason, line)
                result.files_rejected.append({"file": f.name, "reason": reason, "line": line, "copied_to": where})
                continue
            result.rows_extracted += rows
            landed.append((f, content, rows))
            ledger.loaded(f, content, rows, rows)  # written is known after the compare (below)
        sink.finish()
        for f, content, rows in landed:
            ledger.loaded(f, content, rows, sink.written.get(f.name, 0))
            result.files_loaded.append(f.name)
        writer = sink.writer
        if writer is None and ledger.rerun and reread and table is not None and table.current_snapshot() is not None:
            # The rerun re-read files of its batch and none landed (rejected or repeats now): what the earlier
            # attempt landed of them goes, as their ledger entries now say.
            data = pa.schema([f for f in arrow_schema(table) if f.name not in LINEAGE_NAMES])
            writer = sink.writer = RawWriter(catalog, result.identifier, data, batch_id=result.batch_id,
                                             extracted_at=extracted_at, system=system.system, base=table)
        result.rows_written = writer.rows if writer else 0
        result.rows_unchanged = result.rows_extracted - result.rows_written
        state.batch_id = result.batch_id
        if writer is None:
            if not (result.files_rejected or result.files_repeated or ledger.rerun):
                return
            # No rows (only rejections or repeats): the ledger still commits, so they are not retried.
            table = table or _empty_drop_table(catalog, result.identifier)
            commit_state(catalog, result.identifier, state)  # merged with a concurrent writer's, like a load
            return
        summary = {"citylake.batch-id": result.batch_id, "citylake.mode": "files",
                   "citylake.files": str(len(result.files_loaded))}
        # A rerun replaces only the rows of the files it re-read: a file of the batch that is gone from the
        # drop, or whose newer bytes a later batch loaded, keeps its rows (its ledger entry still says loaded).
        result.snapshot_id = writer.commit(state, summary, replace_batch=ledger.rerun, keys=spec.primary_key or None,
                                           batch_rows=In("_source_file", reread))
        result.rows_written = writer.rows
        result.rows_unchanged = result.rows_extracted - result.rows_written  # rows another load landed first
        result.schema_changes = writer.changes
    except BaseException:
        if sink.writer is not None:
            sink.writer.abort()
        raise
    finally:
        sink.close()


def _empty_drop_table(catalog: Any, identifier: str) -> Any:
    from pyiceberg.exceptions import TableAlreadyExistsError

    from pipelines.lake.raw import LINEAGE, TABLE_PROPERTIES

    try:
        return catalog.create_table(identifier, schema=LINEAGE, properties=TABLE_PROPERTIES)
    except TableAlreadyExistsError:  # a concurrent load created it first
        return catalog.load_table(identifier)


# --- a whole system -------------------------------------------------------------------------------


def ingest_system(system: SourceSystem, tables: Iterable[str] | None = None,
                  read_ahead: dict[str, Any] | None = None, **kw: Any) -> Iterator[
        tuple[str, LoadResult | BaseException]]:
    """Load each table; a failing table does not stop the others (each result or error is yielded).
    ``read_ahead``: reads started ahead, by table code (each handed to its table's load, which owns it)."""
    pending = dict(read_ahead or {})
    try:
        for code in tables or [t.code for t in system.all_tables]:
            try:
                yield code, ingest_table(system, code, read_ahead=pending.pop(code, None), **kw)
            except CitylakeError as exc:
                yield code, exc
            except Exception as exc:  # an unexpected failure of one table still lets the others land
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                yield code, CitylakeError(f"system {system.system}, table {code}: {type(exc).__name__}: "
                                          f"{mask_message(first)}")  # a library's message may quote values
    finally:
        for read in pending.values():  # tables never reached (the caller stopped early)
            read.close()
