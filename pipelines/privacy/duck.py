"""One in-memory DuckDB connection per thread for the vectorised masks and pseudonyms: opening one costs
~40 ms, paid per record batch and column it would add ~12 s to a 10 M-row delivery."""

from __future__ import annotations

import os
import threading
from typing import Any

import pyarrow as pa

_local = threading.local()
# DuckDB does not survive a fork: a forked child (a Celery or multiprocessing worker) opens its own. The
# inherited connection is kept referenced, never destroyed: its destructor joins threads the child does not
# have and segfaults (seen: a fork after `citylake sql`'s masks, the child died with SIGSEGV on clear()).
_inherited: list[dict[str, Any]] = []


def _after_fork_in_child() -> None:
    _inherited.append(dict(_local.__dict__))
    _local.__dict__.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def column_sql(values: pa.Array, expression: str, params: dict[str, Any] | None = None) -> pa.Array:
    """``expression`` over column ``v`` of ``values`` (row order kept), as one Arrow array."""
    import duckdb

    con = getattr(_local, "con", None)
    if con is None:
        con = _local.con = duckdb.connect()
        con.execute("SET enable_progress_bar = false")  # a long column would draw a bar on the terminal
    con.register("t", pa.table({"v": values}))
    try:
        out = con.sql(f"SELECT {expression} AS r FROM t", params=params) if params else \
            con.sql(f"SELECT {expression} AS r FROM t")
        return out.to_arrow_table().column("r").combine_chunks()
    finally:
        con.unregister("t")
