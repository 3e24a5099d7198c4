"""Arrow-native PostgreSQL extraction (also openGauss/KingbaseES, which speak its protocol).

ADBC's PostgreSQL driver runs ``COPY … TO STDOUT (FORMAT binary)`` and decodes it into Arrow in C++,
off the GIL. Large tables are split into ctid page ranges, one connection each, so the server's scans
and the decoding run in parallel and overlap the Parquet writer downstream. Types stay exact:
numeric arrives in binary, rendered as text by ADBC, and is cast to decimal128(p, s) (never float); dates
stay date32.

The ranges read one snapshot, as ``pg_dump -j`` does: the first range's connection opens a REPEATABLE
READ transaction and exports its snapshot (``pg_export_snapshot()``), every other range imports it
(``SET TRANSACTION SNAPSHOT``) before any COPY starts, and the exporter stays open until its own range
is read. Without it, a row an UPDATE moves to another page between two ranges' starts is read twice or
not at all (and a full refresh then writes a deletion row for a live key). ``parallel`` ranges use
exactly ``parallel`` connections.

An extract that stops early (a range failed, or the consumer stopped reading) cancels the other ranges'
statements (``adbc_cancel``) rather than waiting for them: a range queued behind a lock (``VACUUM FULL``,
``ALTER TABLE``) would otherwise keep the load, and the snapshot-holding transaction, open for as long as
the lock is held. Every range connection also sets ``lock_timeout`` (``CITYLAKE_PG_LOCK_TIMEOUT_S``,
default 600 s, 0 = wait forever), so a range blocked while the others still stream fails the load instead
of holding the source's connections indefinitely.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import ConfigError, SourceError

log = logging.getLogger(__name__)

_MIN_PAGES_TO_SPLIT = 2048  # below ~16 MB one stream is as fast as two
LOCK_TIMEOUT_ENV = "CITYLAKE_PG_LOCK_TIMEOUT_S"
# Path of the ADBC PostgreSQL driver library to decode with, or "package" for the adbc-driver-postgresql
# package's own; unset: READ_DRIVER when it is installed, else the package's.
DRIVER_ENV = "CITYLAKE_ADBC_POSTGRESQL_DRIVER"
# adbc-driver-postgresql 1.8.0's library, which `make install` (and the image) put beside the package
# (requirements-read-driver.txt): the 1.9.0-1.13.0 wheels' library is built without inlining and decodes COPY
# at ~2.8x the CPU. Reads only: deliveries write through the package (1.8.0's writes drop a decimal's scale).
READ_DRIVER = Path(sys.prefix) / "lib" / "citylake-read-driver" / "adbc_driver_postgresql" / "libadbc_driver_postgresql.so"
# Long enough to ride out a short ALTER TABLE or a small table's VACUUM FULL, short enough that a load
# stuck behind a long one fails (and Airflow retries it) well within its schedule.
_LOCK_TIMEOUT_S = 600.0
_STOP_GRACE_S = 30.0  # how long a stopping extract waits for cancelled ranges to end
_CANCEL_EVERY_S = 0.5  # a cancel that reached a range between statements is lost: send it again
_UNCONSTRAINED_NUMERIC = pa.decimal128(38, 10)
# ADBC's batch size hint: a range hands over a batch about this big. Per-batch costs (the driver, shaping, the
# writer's calls) made 4 MB batches cost a 5 M-row load ~0.3 s more CPU than 8 MB; 12 MB took its peak RSS
# from ~460 to 540-570 MB.
_BATCH_BYTES = 8 << 20

_TYPES: dict[str, pa.DataType] = {
    "int2": pa.int16(), "int4": pa.int32(), "int8": pa.int64(), "float4": pa.float32(), "float8": pa.float64(),
    "bool": pa.bool_(), "date": pa.date32(), "timestamp": pa.timestamp("us"),
    "timestamptz": pa.timestamp("us", tz="UTC"), "time": pa.time64("us"), "bytea": pa.binary(),
    "text": pa.string(), "varchar": pa.string(), "bpchar": pa.string(), "name": pa.string(),
}
# ADBC decodes these itself; everything else is selected as ::text. numeric travels in binary (the server only
# copies its digits) and ADBC renders it as text, cast here to decimal(p, s): on 5 M rows of numeric(12,2) the
# server spent ~2 s more CPU on (x * 100)::int8 and ~1 s more on x::text, for the same values on our side.
_NATIVE = {*_TYPES, "numeric"}


def read_driver() -> str | None:
    """The driver library ranges are read with (None: the adbc-driver-postgresql package's own)."""
    driver = os.environ.get(DRIVER_ENV, "").strip()
    if driver == "package" or (not driver and not READ_DRIVER.is_file()):
        return None
    driver = driver or str(READ_DRIVER)
    if not os.path.isfile(driver):
        raise ConfigError(f"{DRIVER_ENV}={driver!r}: no such file (the ADBC PostgreSQL driver library, or 'package')")
    return driver


class _Cursor:
    """The DB-API cursor calls a range makes, over the driver manager's low-level statement (the DB-API module,
    ``adbc_driver_manager.dbapi``, imports pyarrow.dataset and with it pandas: ~0.6 s before a CLI load's first
    COPY could start)."""

    def __init__(self, conn: Any) -> None:
        import adbc_driver_manager

        self.adbc_statement = adbc_driver_manager.AdbcStatement(conn)
        self._reader: pa.RecordBatchReader | None = None
        self.closed = False

    def execute(self, sql: str) -> None:
        self._reader = None
        self.adbc_statement.set_sql_query(sql)
        handle, _ = self.adbc_statement.execute_query()
        self._reader = pa.RecordBatchReader.from_stream(handle)  # the Arrow C stream interface

    def fetchone(self) -> tuple[Any, ...] | None:
        assert self._reader is not None
        rows = self._reader.read_all().to_pylist()
        return tuple(rows[0].values()) if rows else None

    def fetch_record_batch(self) -> pa.RecordBatchReader:
        assert self._reader is not None
        return self._reader

    def close(self) -> None:
        if not self.closed:  # a second close of the statement raises
            self.closed = True
            self._reader = None
            self.adbc_statement.close()


class _Connection:
    """An ADBC PostgreSQL connection with autocommit off (as the DB-API's): what a range needs of it."""

    def __init__(self, url: str) -> None:
        import adbc_driver_manager

        driver = read_driver()
        if driver is None:
            from adbc_driver_postgresql import _driver_path

            driver = _driver_path()
        # Loaded through the driver manager exactly as adbc_driver_postgresql loads the library in its package.
        self._db = adbc_driver_manager.AdbcDatabase(driver=driver, uri=url)
        self._cursors: list[_Cursor] = []
        try:
            self._conn = adbc_driver_manager.AdbcConnection(self._db)
            self._conn.set_autocommit(False)
        except BaseException:
            self._db.close()
            raise

    def cursor(self) -> _Cursor:
        cur = _Cursor(self._conn)
        self._cursors.append(cur)
        return cur

    def adbc_cancel(self) -> None:
        self._conn.cancel()

    def close(self) -> None:
        try:
            for cur in self._cursors:  # the driver manager refuses to close a connection with open statements
                cur.close()
        finally:
            try:
                self._conn.close()
            finally:
                self._db.close()


def _connect(url: str) -> Any:
    return _Connection(url)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _relation(schema: str | None, table: str) -> str:
    return f"{_quote(schema)}.{_quote(table)}" if schema else _quote(table)


def _catalog(url: str, schema: str | None, table: str) -> tuple[list[tuple[str, str, int]], int, str, float]:
    """[(column, type name, typmod)], relpages, relkind and reltuples (−1: never analyzed) of a table or view."""
    import psycopg

    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=10) as conn:
        row = conn.execute(
            "SELECT c.oid, c.relpages, c.relkind, c.reltuples FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = %s AND (n.nspname = %s::text OR (%s::text IS NULL AND pg_table_is_visible(c.oid)))",
            (table, schema, schema)).fetchone()
        if row is None:
            raise SourceError(f"table {table!r} does not exist at the source")
        cols = conn.execute(
            "SELECT a.attname, t.typname, a.atttypmod FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
            "WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum", (row[0],)).fetchall()
    return [(c[0], c[1], c[2]) for c in cols], int(row[1]), str(row[2]), float(row[3])


def _arrow_type(typname: str, typmod: int) -> pa.DataType:
    if typname == "numeric":
        if typmod < 4:
            return _UNCONSTRAINED_NUMERIC
        precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
        return pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)
    return _TYPES.get(typname, pa.string())


def pg_arrow_schema(url: str, schema: str | None, table: str) -> pa.Schema:
    """The exact Arrow schema of a table: numeric(p,s) → decimal128(p,s) (unconstrained → (38,10)),
    timestamp → timestamp[us] (naive: Asia/Shanghai), timestamptz → timestamp[us, UTC], others as text."""
    cols, *_ = _catalog(url, schema, table)
    return pa.schema([pa.field(name, _arrow_type(t, m)) for name, t, m in cols])


def sql_literal(value: Any) -> str:
    """A value as a quoted PostgreSQL literal (psycopg's quoting)."""
    from psycopg import sql

    return sql.Literal(value).as_string(None)


def _render(where: str | None, params: dict[str, Any] | None) -> str | None:
    """Inline bound values as quoted literals so the query stays a plain COPY (the fast protocol)."""
    if where is None:
        return None
    for name, value in (params or {}).items():
        where = where.replace(f"%({name})s", sql_literal(value))
    return where


def _ranges(pages: int, parallel: int) -> list[tuple[int, int | None]]:
    if parallel <= 1 or pages < _MIN_PAGES_TO_SPLIT:
        return [(0, None)]
    # The last range is open-ended: rows on pages added since ANALYZE still belong to a range.
    cuts = [pages * i // parallel for i in range(parallel)]
    return [(lo, cuts[i + 1] if i + 1 < parallel else None) for i, lo in enumerate(cuts)]


def _select(name: str, typname: str) -> str:
    q = _quote(name)
    return q if typname in _NATIVE else f"{q}::text AS {q}"


def _conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    arrays = []
    for col, field in zip(batch.columns, schema, strict=True):
        if isinstance(col.type, pa.ExtensionType):
            col = col.storage
        arrays.append(col if col.type == field.type else pc.cast(col, field.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _lock_timeout_ms() -> int:
    raw = os.environ.get(LOCK_TIMEOUT_ENV, "").strip()
    try:
        seconds = float(raw) if raw else _LOCK_TIMEOUT_S
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also NaN
        raise ConfigError(f"{LOCK_TIMEOUT_ENV}={raw!r} is not a number of seconds (0 = no lock timeout)")
    return int(seconds * 1000)


_END = object()
_READ_SNAPSHOT = "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY"


def _snapshot_connections(url: str, n: int) -> list[Any]:
    """``n`` connections whose transactions read one snapshot (n = 1: a single COPY is consistent alone).

    ADBC connections start with autocommit off, so each is in a fresh transaction whose isolation can
    still be set. A snapshot can only be imported while its exporting transaction is open: every import
    runs here, before any COPY starts (the exporter's own COPY included), so it always is. Each
    connection's ``lock_timeout`` is set after its snapshot statements (they must come first).
    """
    lock_timeout = f"SET lock_timeout = {_lock_timeout_ms()}"
    conns: list[Any] = []
    try:
        conns.append(_connect(url))
        cur = conns[0].cursor()
        if n > 1:
            cur.execute(_READ_SNAPSHOT)
            cur.execute("SELECT pg_export_snapshot()")
            snapshot = cur.fetchone()[0]
        cur.execute(lock_timeout)
        cur.close()
        for _ in range(n - 1):
            conns.append(_connect(url))
            cur = conns[-1].cursor()
            cur.execute(_READ_SNAPSHOT)
            cur.execute(f"SET TRANSACTION SNAPSHOT {sql_literal(snapshot)}")
            cur.execute(lock_timeout)
            cur.close()
        return conns
    except BaseException:
        for conn in conns:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - the first error is the one to report
                pass
        raise


class _Range:
    """One range's connection: cancelled from the consumer's thread, closed by its own; the lock keeps a
    cancel off a connection that is being (or has been) closed."""

    def __init__(self, conn: Any) -> None:
        self.conn, self.lock, self.closed = conn, threading.Lock(), False

    def cancel(self) -> None:
        with self.lock:
            if not self.closed:
                try:
                    self.conn.adbc_cancel()
                except Exception:  # noqa: BLE001 - the range may be between statements; cancel is retried
                    pass

    def close(self) -> None:
        with self.lock:
            if not self.closed:
                self.closed = True
                try:
                    self.conn.close()
                except Exception:  # noqa: BLE001 - closing a cancelled or broken connection
                    pass


class _Buffer:
    """Batches between the range threads and the consumer, bounded in bytes: ``early`` until the consumer first
    asks (a read started ahead of the load's own start-up keeps the server busy meanwhile), then ``steady`` (a
    few batches: the writer sets the pace). At least one item always fits; once closed, puts are dropped."""

    def __init__(self, early: int, steady: int) -> None:
        self._items: deque[tuple[Any, int]] = deque()
        self._bytes, self._limit, self._steady = 0, max(early, steady), steady
        self._cond = threading.Condition()
        self._closed = False

    def put(self, item: Any, nbytes: int = 0) -> None:
        with self._cond:
            while not self._closed and self._items and self._bytes + nbytes > self._limit:
                self._cond.wait()
            if not self._closed:
                self._items.append((item, nbytes))
                self._bytes += nbytes
                self._cond.notify_all()

    def get(self) -> Any:
        with self._cond:
            self._limit = self._steady
            while not self._items:
                self._cond.wait()
            item, nbytes = self._items.popleft()
            self._bytes -= nbytes
            self._cond.notify_all()
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self._bytes = 0
            self._cond.notify_all()


class PgRead:
    """A started read of ``columns`` of a table: its ranges connected to one snapshot and their COPYs running into a
    bounded buffer from construction on; iterate it for record batches of exact types. ``where`` is built by the
    caller from checked parts (the registry filter as ``pipelines.sql_filter`` rendered it, quoted literals);
    ``%(name)s`` placeholders take ``params`` as quoted literals. ``read_ahead``: bytes the ranges may decode
    before the first batch is taken (default: as many as once reading, a few batches). Always ``close()`` it
    (iterating to the end does): an abandoned read holds its connections and the snapshot."""

    def __init__(self, url: str, schema: str | None, table: str, columns: list[str], where: str | None = None,
                 params: dict[str, Any] | None = None, parallel: int = 2, batch_rows: int = 100_000,
                 read_ahead: int = 0) -> None:
        self.table, self.batch_rows, self.columns, self.where = table, batch_rows, list(columns), where
        cols, pages, relkind, tuples = _catalog(url, schema, table)
        # The server's estimate of the rows a whole read returns (None for a filtered or windowed read, or a
        # table never analyzed): a load may size its writing to it (``RawWriter.expect``).
        self.estimated_rows = int(tuples) if where is None and tuples >= 0 else None
        types = {name: (t, m) for name, t, m in cols}
        missing = [c for c in self.columns if c not in types]
        if missing:
            raise SourceError(f"table {table!r} has no column(s) {missing}")
        self.target = pa.schema([pa.field(c, _arrow_type(*types[c])) for c in self.columns])
        select = ", ".join(_select(c, types[c][0]) for c in self.columns)
        predicate = _render(self.where, params)
        ranges = _ranges(pages, parallel) if relkind in ("r", "m") else [(0, None)]
        queries = []
        for lo, hi in ranges:
            parts = [predicate] if predicate else []
            if len(ranges) > 1:
                parts.append(f"ctid >= '({lo},0)'::tid")
                if hi is not None:
                    parts.append(f"ctid < '({hi},0)'::tid")
            cond = f" WHERE {' AND '.join(parts)}" if parts else ""
            queries.append(f"SELECT {select} FROM {_relation(schema, table)}{cond}")
        try:
            conns = _snapshot_connections(url, len(queries))
        except Exception as exc:
            raise SourceError(f"table {table!r}: {str(exc).strip().splitlines()[0]}") from None
        self._out = _Buffer(read_ahead, (len(queries) + 1) * _BATCH_BYTES)
        self._stop = threading.Event()
        self._ranges = [_Range(c) for c in conns]
        self._threads = [threading.Thread(target=self._scan, args=(r, q), daemon=True, name=f"pg-scan-{i}")
                         for i, (r, q) in enumerate(zip(self._ranges, queries, strict=True))]
        self._closed = False
        for t in self._threads:
            t.start()

    def _scan(self, r: _Range, query: str) -> None:
        try:
            if self._stop.is_set():
                return
            cur = r.conn.cursor()
            cur.adbc_statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(_BATCH_BYTES)})
            cur.execute(query)
            for batch in cur.fetch_record_batch():
                if self._stop.is_set():
                    break
                self._out.put(batch, batch.nbytes)
        except BaseException as exc:  # surfaced by the consumer
            self._out.put(exc)
        finally:
            r.close()  # ends the range's transaction: its locks (and the exported snapshot) go with it
            self._out.put(_END)

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        done = 0
        try:
            while done < len(self._threads):
                item = self._out.get()
                if item is _END:
                    done += 1
                elif isinstance(item, BaseException):
                    raise SourceError(f"table {self.table!r}: {str(item).strip().splitlines()[0]}") from None
                elif item.num_rows:
                    for start in range(0, item.num_rows, self.batch_rows):
                        yield _conform(item.slice(start, self.batch_rows), self.target)
        finally:
            self.close()

    def close(self) -> None:
        """End every range still running: cancel its statement (a flag read between batches never reaches a
        COPY waiting on a lock); bounded by _STOP_GRACE_S. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._out.close()  # a range blocked on a full buffer goes on to see the stop flag
        deadline = time.monotonic() + _STOP_GRACE_S
        next_cancel = 0.0
        while any(t.is_alive() for t in self._threads):
            now = time.monotonic()
            if now >= deadline:
                log.warning("table %r: %d source range(s) did not stop within %.0f s of being cancelled", self.table,
                            sum(t.is_alive() for t in self._threads), _STOP_GRACE_S)
                return
            if now >= next_cancel:
                for r, t in zip(self._ranges, self._threads, strict=True):
                    if t.is_alive():
                        r.cancel()
                next_cancel = now + _CANCEL_EVERY_S
            for t in self._threads:
                t.join(timeout=0.05)


def iter_pg_batches(url: str, schema: str | None, table: str, columns: list[str], where: str | None = None,
                    params: dict[str, Any] | None = None, parallel: int = 2,
                    batch_rows: int = 100_000) -> Iterator[pa.RecordBatch]:
    """Stream ``columns`` of a table as record batches of exact types, ``parallel`` ctid ranges at once
    (``PgRead``, started at the first ``next``). Memory is bounded by a few batches whatever the table size."""
    yield from PgRead(url, schema, table, columns, where, params, parallel, batch_rows)
