"""The MySQL-family fast path: ConnectorX decodes the binary protocol into Arrow in Rust, off the GIL.

The read plan (``pipelines.extract.mysql``) has already rewritten every column ConnectorX could read wrong
(DECIMAL, BIGINT UNSIGNED, dates and times, JSON) into text or bytes on the server, so what arrives is
exact; ``mysql.finish`` converts it.

ConnectorX's ``arrow_stream`` decodes a statement in its own threads into an unbounded queue: what it holds
for a slower consumer is bounded only by the statement. So a read from which no deletion row comes (a
cursor window, a first load into an empty table) of a table with a single integer primary key is read in
rounds of chunks: ``parallel`` key ranges (one when the table is small), each round one ``cx.read_sql`` with
a ``… ORDER BY key LIMIT n`` statement per range that goes on after the last key the range read, the next
round started once every row of this one has arrived (its statements are done: one connection per range
reads). What waits in memory is at most one round and the batch being consumed; ``n`` holds the round's
share of ``_IN_FLIGHT_BYTES`` at the bytes per row of the last round. A chunk is bounded in rows whatever
the keys' spread (a ``LIMIT``, not a key width). The first and last ranges are open-ended, so a key inserted
outside the minimum and maximum read at the start still belongs to a range.

Ranges and chunks read on separate connections see separate snapshots (MySQL cannot share one between
connections without a global read lock), so the caller asks for them only where no deletion row comes of
the read; a full refresh of a table with rows and the key-only check are one statement on one connection,
whose read-ahead stays unbounded (``consistent``).
"""

from __future__ import annotations

import bisect
import ctypes
import functools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from pipelines.extract.mysql import SESSION, quote_name, session

if TYPE_CHECKING:
    from pipelines.extract.mysql import ReadPlan

_MIN_ROWS_TO_SPLIT = 200_000  # below this one range is as fast as two
_CX_BATCH_ROWS = 50_000
"""The largest batch (and so row group in the lake's files): 1 M rows × 12 columns loaded at ~380 MB peak
RSS with 50,000 against ~490 MB with 100,000, at the same speed."""
_IN_FLIGHT_BYTES = 128 << 20
"""What ConnectorX may hold decoded and not yet taken, all ranges of a chunked read together (Arrow bytes at
the last round's width). 5 M rows of the benchmark table, first load, a consumer slowed to 0.2 s a batch: 438
MB peak RSS (372 MB at 64 MiB; 989 MB unchunked); at full speed each round boundary costs ~35 ms of idle
range (the faster one waits for the slower), so 64 MiB's twice as many rounds cost ~3 % more time."""
_FIRST_ROWS = 10_000
"""Rows per range of the first chunk, taken before a row's size is known."""


def cx_url(url: Any) -> str:
    """The ConnectorX form of a SQLAlchemy MySQL URL (driver and query options dropped: the session
    statements set the character set and zone)."""
    return str(url.set(drivername="mysql", query={}).render_as_string(hide_password=False))


def _bounds(engine: Any, relation: str, key: str, clauses: list[str]) -> tuple[int | None, int | None]:
    """The key's range within the window, on the source's own engine (its session set as for reading)."""
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    with session(engine) as conn:
        low, high = conn.execution_options(no_parameters=True).exec_driver_sql(
            f"SELECT MIN({quote_name(key)}), MAX({quote_name(key)}) FROM {relation}{where}").one()
    return low, high


def split_keys(parallel: int, low: int | None, high: int | None) -> list[int]:
    """The keys at which ranges 2…``parallel`` start (none: one range)."""
    if parallel <= 1 or low is None or high is None or high - low < parallel:
        return []
    return [low + (high - low) * i // parallel for i in range(1, parallel)]


def range_bounds(key: str, cuts: list[int]) -> list[list[str]]:
    """Each range's predicates on the key. The first and last are open-ended: a key inserted outside the
    minimum and maximum read at the start still belongs to a range."""
    if not cuts:
        return [[]]
    k = quote_name(key)
    return [[f"{k} < {cuts[0]}"], *([f"{k} >= {a}", f"{k} < {b}"] for a, b in zip(cuts, cuts[1:], strict=False)),
            [f"{k} >= {cuts[-1]}"]]


def chunk_query(select: str, relation: str, where: list[str], key: str, after: int | None, limit: int) -> str:
    """The next chunk of a range: its first ``limit`` rows in key order after key ``after``."""
    k = quote_name(key)
    where = [*where, *([f"{k} > {after}"] if after is not None else [])]
    return (f"SELECT {select} FROM {relation}" + (f" WHERE {' AND '.join(where)}" if where else "")
            + f" ORDER BY {k} LIMIT {limit}")


@dataclass
class _Range:
    """One key range of a chunked read, and its chunk in flight."""

    bounds: list[str]
    after: int | None = None
    """The last key read."""
    rows: int = 0
    nbytes: int = 0
    """Rows and Arrow bytes its chunk in flight has delivered."""
    ended: bool = False
    """Its chunk in flight has delivered every row: its last batch, or ``limit`` rows."""


@dataclass
class _Call:
    """One ``cx.read_sql``: a statement per range, each on its own connection."""

    ranges: list[_Range]
    batches: Iterator[pa.RecordBatch]
    batch: int
    """ConnectorX's batch size."""
    limit: int
    """Rows each statement asks for: a range that returned fewer is read to its end."""
    ends: int = 0
    """Short batches seen. ConnectorX ends each statement it read to the end with one batch shorter than the
    batch size (empty when the rows filled whole batches), so fewer than the statements means one stopped."""


def _start(cx: Any, url: str, queries: list[str], batch: int) -> Iterator[pa.RecordBatch]:
    _trim()
    reader = cx.read_sql(url, queries if len(queries) > 1 else queries[0], return_type="arrow_stream",
                         batch_size=batch, pre_execution_query=list(SESSION))
    return iter(reader)


def chunk_size(rows: int, nbytes: int, batch: int, budget: int) -> tuple[int, int]:
    """(batch size, rows per statement) of a range's next chunk: ``budget`` bytes at the bytes per row of
    what was read (``nbytes`` over ``rows``), in whole batches (the lake's row groups) of at most ``batch``
    rows, at least one row."""
    fit = max(1, budget // max(1, nbytes // max(1, rows)))
    size = min(batch, fit)
    return size, size * max(1, fit // size)


def iter_mysql_batches(engine: Any, plan: ReadPlan, relation: str, clauses: list[str], parallel: int,
                       batch_rows: int, *, consistent: bool) -> Iterator[pa.RecordBatch]:
    """Record batches of ``plan.read_schema`` (columns ``c0``…), in batches of at most ``min(batch_rows,
    50,000)`` rows.

    ``consistent``: the read must be one snapshot — one statement on one
    connection, which ConnectorX reads ahead of the consumer without bound. Otherwise a table with a single
    integer key is read in rounds of chunks: ``parallel`` key ranges, every round one ``cx.read_sql`` with an
    ``ORDER BY key LIMIT n`` statement per range not yet read to its end, the next round started when this
    one's last rows have arrived. What waits in memory is at most one round and the batch being consumed,
    ``n`` sized to ``_IN_FLIGHT_BYTES`` between the ranges."""
    import connectorx as cx

    url = cx_url(engine.url)
    batch = min(batch_rows, _CX_BATCH_ROWS)
    schema = plan.read_schema
    names = [c.name for c in plan.columns]
    if consistent or plan.key is None or plan.key not in names:
        query = f"SELECT {plan.select_list()} FROM {relation}" + (f" WHERE {' AND '.join(clauses)}" if clauses else "")
        one = _Call([], _start(cx, url, [query], batch), batch, 0)
        for b in one.batches:
            one.ends += b.num_rows < batch
            if b.num_rows:
                yield pa.RecordBatch.from_arrays(b.columns, names=schema.names)
        _check_ended(one, 1)
        return

    key, at = plan.key, plan.read_index(plan.key)
    low = high = None
    if parallel > 1 and plan.rows >= _MIN_ROWS_TO_SPLIT:
        low, high = _bounds(engine, relation, key, clauses)
    cuts = split_keys(parallel, low, high)
    ranges = [_Range(b) for b in range_bounds(key, cuts)]
    select = plan.select_list()

    def start(of: list[_Range], size: int, limit: int) -> _Call:
        for r in of:
            r.rows = r.nbytes = 0
            r.ended = False
        queries = [chunk_query(select, relation, [*clauses, *r.bounds], key, r.after, limit) for r in of]
        return _Call(of, _start(cx, url, queries, size), size, limit)

    def following(c: _Call) -> _Call | None:
        """The next round: the ranges whose chunk was full, sized by what this round read."""
        full = [r for r in c.ranges if r.rows >= c.limit]
        if not full:
            return None
        size, limit = chunk_size(sum(r.rows for r in c.ranges), sum(r.nbytes for r in c.ranges), batch,
                                 _IN_FLIGHT_BYTES // len(full))
        return start(full, size, limit)

    first = min(batch, _FIRST_ROWS)
    current: _Call | None = start(ranges, first, first)
    pending: deque[_Call] = deque([current] if current else [])  # the round read, and its successor once started
    while pending:
        c = pending[0]
        b = next(c.batches, None)
        if b is None:  # only a round whose every range has ended runs out
            _check_ended(pending.popleft(), len(c.ranges))
            if c is current:  # a range whose rows filled whole batches ends with an empty batch: no key
                current = following(c)
                if current is not None:
                    pending.append(current)
            continue
        c.ends += b.num_rows < c.batch
        if not b.num_rows:
            continue
        keys = b.column(at)
        r = ranges[bisect.bisect_right(cuts, int(keys[0].as_py()))]
        r.rows += b.num_rows
        r.nbytes += b.nbytes
        r.after = int(keys[-1].as_py())
        r.ended = b.num_rows < c.batch or r.rows >= c.limit
        if c is current and all(x.ended for x in c.ranges):
            # Every statement of the round has read its rows: start the next one now, so its first batch is
            # decoded while this one is consumed (its connections are done: at most one per range reads).
            current = following(c)
            if current is not None:
                pending.append(current)
        yield pa.RecordBatch.from_arrays(b.columns, names=schema.names)


@functools.cache
def _libc() -> Any:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


def _trim() -> None:
    """Give the pages of freed batches back to the OS before the next statement decodes. ConnectorX decodes
    in its own threads, in glibc's per-thread arenas, which keep freed pages: 40 rounds of 2 × 50,000 rows
    of the benchmark table held 180 MB RSS without this, 85 MB with it."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def _check_ended(call: _Call, statements: int) -> None:
    if call.ends < statements:
        raise RuntimeError(f"ConnectorX ended {statements - call.ends} of {statements} statement(s) before "
                           "their last batch")
