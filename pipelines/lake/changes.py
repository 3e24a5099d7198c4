"""Which rows changed: extracted rows against raw (the compare), and std's published changes (sharing).

Raw compare
-----------
Which extracted rows are new or changed, and which keys are gone: compared in DuckDB, on local disk.

A full refresh compares every row of the source with the latest version of every key in the lake. Holding
both sides' keys and hashes in Python (5 M keys: ~1 GB) made memory follow the table; here both sides go
into a DuckDB database file under ``$TMPDIR`` with a memory limit (it spills beyond it), the extracted rows
are staged in a local Parquet file while they stream in, and only the positions of the new/changed rows
come back to pick them out of that file. Memory follows a record batch, not the table.

"Latest version of a key" is the lake's order of versions: ``_load_seq`` (the table's load sequence), then
``_extracted_at``; rows written before ``_load_seq`` existed read null and order first. Every row of that
latest load counts (a source without a unique key has several).

std changes (departmental sharing)
----------------------------------
``std_changes`` says which raw batches a std table published after a consumer's last delivered snapshot,
from snapshot summaries (``citylake.batches``) checked against ``meta.batches``: metadata only, std data is
never scanned. ``deleted_keys`` reads back the keys those batches deleted at the source (the gate records
them in ``meta.deleted_keys``, ``key_json``). Curated tables have no batches and do not come through here.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.expressions import And, EqualTo, In, NotEqualTo

from pipelines.lake.raw import (
    BATCH_ID,
    PUBLISHED_BATCHES,
    file_batches,
    hash_sql,
    open_table,
    stream_scan,
    summary_value,
    total_records,
)

MEMORY_LIMIT = "48MB"
"""DuckDB's buffer limit for a compare; beyond it DuckDB spills to the compare's folder."""
ROWS_PER_BUCKET = 4_000_000
"""Lake rows per bucket: what one bucket's window and joins handle within ``MEMORY_LIMIT``."""


def latest_order(cursor: str | None = None) -> str:
    """The one rule for "latest version of a key" (raw compares, the gate's dedup and its cross-run guard),
    as SQL ``ORDER BY`` terms, latest first: ``_load_seq``, then the contract's ``cursor`` (it only orders
    copies within one load: deletion rows have none), then ``_extracted_at``. The load sequence comes first
    because it is the only order every version has (deletion rows, drops without a cursor) and the one a
    later run sees: a late drop file loaded after a newer one wins, in one run or across runs."""
    terms = ["_load_seq", *([cursor] if cursor and cursor not in ("_load_seq", "_extracted_at") else []),
             "_extracted_at"]
    return ", ".join(f'"{c}" DESC NULLS LAST' for c in terms)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class LakeCompare:
    """One table's compare: ``load_lake`` (the lake side) and ``add`` per extracted batch, in either order
    (a full refresh and a file drop read the source first), then ``changed`` and ``gone``. ``hashed=False``
    compares keys only (the key-only deletion check; nothing is staged). ``close`` removes the folder
    (database, spill files, staged rows)."""

    def __init__(self, keys: list[str], *, hashed: bool = True) -> None:
        import duckdb

        self.keys = keys
        self.hashed = hashed
        self.dir = Path(tempfile.mkdtemp(prefix="citylake-compare-"))
        self.con = duckdb.connect(str(self.dir / "compare.duckdb"), config={
            "memory_limit": MEMORY_LIMIT, "temp_directory": str(self.dir / "spill"), "threads": 1,
            "preserve_insertion_order": False})
        self.lake_rows = 0
        self.rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._key_list = ", ".join(_q(k) for k in keys)
        self._tables: set[str] = set()
        self.buckets = 1
        """Each side is split by a hash of the key into buckets of about ``ROWS_PER_BUCKET`` lake rows,
        compared one at a time: DuckDB's window and joins failed to pin blocks on 20 M keys at this limit.
        Rows keep their key hash (``_kh``), not a bucket number: a file drop adds its rows before
        ``load_lake`` knows the count, so the bucket is worked out per query from the one count."""

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.con.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _insert(self, name: str, table: pa.Table, select: str = "*") -> None:
        """Append ``SELECT select FROM table`` to ``name``, with the row's key hash (``_kh``)."""
        self.con.register("_part", table)
        try:
            self._append(name, f"SELECT {select}, hash({self._key_list}) AS _kh FROM _part")
        finally:
            self.con.unregister("_part")

    def _in_bucket(self, i: int) -> str:
        """The rows of bucket ``i`` of ``self.buckets`` (a predicate on ``_kh``)."""
        return f"_kh % {self.buckets} = {i}" if self.buckets > 1 else "true"

    def _append(self, name: str, query: str) -> None:
        if name in self._tables:
            self.con.execute(f"INSERT INTO {name} {query}")
        else:
            self.con.execute(f"CREATE TABLE {name} AS {query}")
            self._tables.add(name)

    def _hash_sql(self, columns: list[str]) -> str:
        """The row hash, computed by this compare's DuckDB for both sides (the same expression as
        ``row_hash``; one connection, not a new database per batch, whose allocator arenas kept growing)."""
        if not self.hashed or not columns:
            return "0::BIGINT AS _h"
        return f"{hash_sql(columns)} AS _h"

    # --- the lake's side ------------------------------------------------------------------------------

    def load_lake(self, table: Any, columns: list[pa.Field], exclude_batch: str | None = None,
                  row_filter: Any = None) -> int:
        """Stream the lake's (key, hash, _deleted, _load_seq, _extracted_at) into DuckDB; returns the rows.

        Rows are hashed as they stream back (over ``columns``, the load's data columns, cast to the load's
        types; columns the lake lacks hash as nulls), excluding the batch being replaced. ``row_filter``
        (a pyiceberg expression over key columns, e.g. the key ranges of a file drop) narrows the read to
        the data files that can hold those keys; it must keep every version of a key it keeps."""
        present = set(table.schema().column_names)
        types = {c.name: c.type for c in columns}
        wanted = [c.name for c in columns if c.name in present] if self.hashed else []
        lineage = [c for c in ("_deleted", "_load_seq", "_extracted_at") if c in present]
        expr = NotEqualTo("_batch_id", exclude_batch) if exclude_batch else None
        if row_filter is not None:
            expr = And(expr, row_filter) if expr is not None else row_filter
        scan = table.scan(selected_fields=tuple(dict.fromkeys([*self.keys, *wanted, *lineage])),
                          **({"row_filter": expr} if expr is not None else {}))
        hashed = [c.name for c in columns] if self.hashed else []
        select = f"{self._key_list}, {self._hash_sql(hashed)}, _deleted, _load_seq, _extracted_at"
        snap = table.current_snapshot()
        total = total_records(snap) or 0
        self.buckets = max(1, -(-total // ROWS_PER_BUCKET))
        for batch in stream_scan(scan):
            n = batch.num_rows

            def col(name: str, t: pa.DataType, batch: pa.RecordBatch = batch, n: int = n) -> Any:
                return batch.column(name).cast(t) if name in batch.schema.names else pa.nulls(n, t)

            data = {name: col(name, types[name]) for name in dict.fromkeys([*self.keys, *hashed])}
            self._insert("lake", pa.table({**data, "_deleted": col("_deleted", pa.bool_()),
                                           "_load_seq": col("_load_seq", pa.int64()),
                                           "_extracted_at": col("_extracted_at", pa.timestamp("us", tz="UTC"))}),
                         select)
            self.lake_rows += n
        for i in range(self.buckets) if self.lake_rows else ():
            # Every row of each key's latest load that is not a deletion row: what the source is compared with.
            self.con.execute(
                f"CREATE TABLE live_{i} AS SELECT {self._key_list}, _h FROM ("
                f"SELECT *, rank() OVER (PARTITION BY {self._key_list} ORDER BY {latest_order()}) AS _r "
                f"FROM lake WHERE {self._in_bucket(i)}) "
                "WHERE _r = 1 AND NOT coalesce(_deleted, false)")
            self._tables.add(f"live_{i}")
        if self._has("lake"):
            self.con.execute("DROP TABLE lake")
        release_memory()
        return self.lake_rows

    # --- the source's side ----------------------------------------------------------------------------

    def add(self, shaped: pa.RecordBatch, data_columns: list[str] | None = None) -> None:
        """One extracted batch (in the table's schema): its keys and hashes go to DuckDB, the rows to the
        staged file (when hashed)."""
        n = shaped.num_rows
        if not n:
            return
        part = pa.Table.from_batches([shaped]).append_column(
            "_pos", pa.array(np.arange(self.rows, self.rows + n, dtype=np.int64)))
        self._insert("src", part, f"{self._key_list}, {self._hash_sql(data_columns or [])}, _pos")
        if self.hashed:
            if self._writer is None:
                self._writer = pq.ParquetWriter(self.dir / "staged.parquet", shaped.schema, compression="lz4")
            self._writer.write_batch(shaped)
        self.rows += n

    def changed(self, batch_rows: int = 64 * 1024) -> Iterator[pa.RecordBatch]:
        """The staged rows whose (key, hash) is not live in the lake, in extraction order. Their positions
        come sorted from DuckDB in chunks, merged with the staged file as it is read (every row of a table
        can have changed: a column added at the source changes every hash)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        release_memory()
        if not self.rows:
            return
        staged = pq.ParquetFile(self.dir / "staged.parquet")
        if not (self.lake_rows and self._has("live_0")):
            yield from file_batches(staged, batch_rows)
            return
        for i in range(self.buckets):
            self._append("changed", f"SELECT s._pos FROM (SELECT * FROM src WHERE {self._in_bucket(i)}) s "
                                    f"ANTI JOIN live_{i} l ON {self._on('s', 'l')} AND s._h = l._h")
        reader = iter(self.con.sql("SELECT _pos FROM changed ORDER BY _pos").to_arrow_reader(batch_rows))
        pending, done, start = np.empty(0, np.int64), False, 0
        for batch in file_batches(staged, batch_rows):
            end = start + batch.num_rows
            while not done and (not len(pending) or pending[-1] < end):
                chunk = next(reader, None)
                if chunk is None:
                    done = True
                else:
                    pending = np.concatenate([pending, chunk.column(0).to_numpy().astype(np.int64)])
            cut = int(np.searchsorted(pending, end))
            if cut:
                yield batch.take(pa.array(pending[:cut] - start))
                pending = pending[cut:]
            start = end

    def _has(self, name: str) -> bool:
        return name in self._tables

    def _on(self, left: str, right: str) -> str:
        return " AND ".join(f"{left}.{_q(k)} IS NOT DISTINCT FROM {right}.{_q(k)}" for k in self.keys)

    def gone(self, batch_rows: int = 64 * 1024) -> Iterator[pa.Table]:
        """Keys live in the lake that the source no longer has (each once)."""
        for i in range(self.buckets):
            if not self.lake_rows or not self._has(f"live_{i}"):
                return
            source = (f"(SELECT {self._key_list} FROM src WHERE {self._in_bucket(i)})" if self._has("src")
                      else f"(SELECT {self._key_list} FROM live_{i} LIMIT 0)")
            reader = self.con.sql(
                f"SELECT DISTINCT {', '.join('l.' + _q(k) for k in self.keys)} FROM live_{i} l "
                f"ANTI JOIN {source} s ON {self._on('l', 's')}").to_arrow_reader(batch_rows)
            for batch in reader:
                if batch.num_rows:
                    yield pa.Table.from_batches([batch])


def release_memory() -> None:
    """Hand freed memory back to the OS between phases: Arrow's pool and glibc keep freed pages,
    so each phase would start from the previous one's peak."""
    import ctypes

    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


# --- which batches a raw table holds --------------------------------------------------------------

_RAW_FILE = re.compile(r"^(?P<batch>.+)-[0-9a-f]{32}\.parquet$")
BATCH_PROPERTY = BATCH_ID


def raw_batch_ids(table: Any) -> set[str]:
    """Every batch id in a raw table, from metadata rather than a scan of ``_batch_id``.

    Each load's snapshots carry ``citylake.batch-id`` in their summary (``RawWriter.commit``). Expired
    snapshots take their summaries with them, but the data files they added stay: those are found in the
    manifests, and their batch is the writer's file-name prefix (``<batch>-<uuid hex>.parquet``, one batch
    per file) or, for a file named otherwise (rewritten by maintenance), its ``_batch_id`` column."""
    current = table.current_snapshot()
    if current is None:
        return set()
    by_id = {s.snapshot_id: s for s in table.metadata.snapshots}
    known: dict[int, str] = {}  # ancestor snapshot → the batch it loaded
    snap = current
    while snap is not None:
        batch = summary_value(snap, BATCH_PROPERTY)
        if batch:
            known[snap.snapshot_id] = batch
        snap = by_id.get(snap.parent_snapshot_id) if snap.parent_snapshot_id is not None else None
    found = set(known.values())
    for manifest in current.manifests(table.io):
        if manifest.added_snapshot_id in known and not manifest.has_existing_files():
            continue  # every entry was added by a load whose summary we have: not even read
        for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=True):
            if entry.snapshot_id in known:
                continue
            path = entry.data_file.file_path
            named = _RAW_FILE.match(path.rsplit("/", 1)[-1])
            if named:
                found.add(named.group("batch"))
                continue
            with table.io.new_input(path).open() as f:
                ids = pq.ParquetFile(f).read(columns=["_batch_id"]).column(0)
            found.update(v for v in pc.unique(ids).to_pylist() if v)
    return {str(b) for b in found}


# --- std changes since a consumer's last delivery (departmental sharing) ------------------------------

DELIVERABLE = ("published", "released")
"""Latest ``meta.batches`` statuses of a batch whose publish is complete (its deletions recorded too)."""


@dataclass
class StdChanges:
    snapshot_id: int | None
    """The std snapshot to deliver through (None: the table is empty or missing)."""
    batches: list[str]
    """Raw batch ids published in the snapshots after ``since`` up to ``snapshot_id``."""
    full: bool
    """First delivery (``since`` None), or ``since`` is no longer in the table's history."""
    reason: str
    blocked: str | None = None
    """Chinese: the raw batch (and the run that published it) that stops delivery before a newer snapshot:
    in std but not recorded as published in ``meta.batches`` (the run stopped between the two), and how to
    finish it; None when nothing newer waits."""


def _blocked_text(dataset: str, snap: Any, batch: str, status: dict[str, Any] | None) -> str:
    run_id = summary_value(snap, "citylake.run-id")
    where = "未记录到 meta.batches（该运行中断）" if status is None else \
        f"在 meta.batches 中的最新状态为 {status['status']}（运行 {status['run_id']}），不是已发布"
    if run_id is None:  # a snapshot written before run ids were kept: the operator has to find the run
        return (f"批次 {batch} 已发布到 std.{dataset}（该快照未记运行 id）但{where}："
                f"以该运行的 run id 重跑 `citylake quality run {dataset} --run-id <run id>` 后继续交付")
    return (f"批次 {batch} 已由运行 {run_id} 发布到 std.{dataset} 但{where}："
            f"重跑 `citylake quality run {dataset} --run-id {run_id}` 后继续交付")


def std_changes(catalog: Any, dataset: str, since: int | None) -> StdChanges:
    """What ``std.<dataset>`` published after snapshot ``since`` (a consumer's last delivery), from metadata.

    The current snapshot's ancestry is walked back to ``since``; each snapshot's batches come from its
    summary. Delivery goes only through the newest snapshot whose batches, and every earlier one's, are
    recorded as published or released in ``meta.batches``: the gate records a batch after its std commit and
    its deleted keys, so a publish that crashed before recording is picked up by a later delivery, never
    skipped (``blocked`` names its batch and run). A full delivery (``since`` None or gone from the history)
    applies the same rule from the start."""
    from pyiceberg.table.snapshots import ancestors_of

    from pipelines.lake.meta import batch_status  # meta imports tables, which imports raw: no cycle, kept local

    table = open_table(catalog, f"std.{dataset}")
    current = table.current_snapshot() if table is not None else None
    ancestry = list(ancestors_of(current, table.metadata)) if table is not None else []  # newest first
    ids = [s.snapshot_id for s in ancestry]
    if since is None:
        full, reason = True, "首次交付"
    elif since not in ids:
        full, reason = True, "上次交付的快照已不在表历史中"
    else:
        full, reason = False, ""
        ancestry = ancestry[: ids.index(since)]
    if current is None:
        return StdChanges(None, [], full, reason or "增量: 0 个批次")
    status = batch_status(catalog, dataset)
    recorded = {b for b, row in status.items() if row["status"] in DELIVERABLE}
    through = None if full else since
    batches: list[str] = []
    blocked = None
    for snap in reversed(ancestry):  # oldest first: stop at the first snapshot with an unrecorded batch
        text = summary_value(snap, PUBLISHED_BATCHES)
        carried = [str(b) for b in json.loads(text)] if text else []
        missing = [b for b in carried if b not in recorded]
        if missing:
            blocked = _blocked_text(dataset, snap, missing[0], status.get(missing[0]))
            break
        through = snap.snapshot_id
        batches.extend(b for b in carried if b not in batches)
    return StdChanges(through, batches, full, reason or f"增量: {len(batches)} 个批次", blocked)


def key_json(table: pa.Table, keys: list[str], rows: int = 64 * 1024) -> pa.ChunkedArray:
    """Each row's key as ``meta.deleted_keys`` stores it: the JSON array of its values as text, in
    ``keys`` order (null stays null); ``deleted_keys`` parses it back. Built a slice at a time: Python
    objects for one slice, Arrow strings for the rest."""
    texts = [pc.cast(table.column(k), pa.string()) for k in keys]
    chunks = []
    for start in range(0, table.num_rows, rows):
        columns = [t.slice(start, rows).to_pylist() for t in texts]
        chunks.append(pa.array([json.dumps(list(values), ensure_ascii=False)
                                for values in zip(*columns, strict=True)], pa.string()))
    return pa.chunked_array(chunks, pa.string())


def deleted_keys(catalog: Any, dataset: str, batches: list[str], key_schema: pa.Schema) -> pa.Table:
    """The distinct keys the publishes of ``batches`` deleted at the source (``meta.deleted_keys``), one
    column per key column, typed as ``key_schema``."""
    import duckdb

    empty = key_schema.empty_table()
    table = open_table(catalog, "meta.deleted_keys")
    if not batches or table is None or table.current_snapshot() is None:
        return empty
    scan = table.scan(row_filter=And(EqualTo("dataset", dataset), In("raw_batch_id", sorted(set(batches)))),
                      selected_fields=("key",))
    con = duckdb.connect()
    try:
        con.register("rows", stream_scan(scan))
        parts = ", ".join(f"json_extract_string(key, '$[{i}]') AS {_q(f.name)}" for i, f in enumerate(key_schema))
        texts = con.sql(f"SELECT {parts} FROM (SELECT DISTINCT key FROM rows)").to_arrow_table()
    finally:
        con.close()
    return pa.table({f.name: texts.column(f.name).cast(f.type) for f in key_schema}, schema=key_schema)
