"""Start a whole-table PostgreSQL read before the load's own start-up, so the two overlap.

A CLI load spends its first ~2 s importing pyiceberg, pandas and SQLAlchemy, opening the catalog,
reflecting the source and taking its load sequence number, all on one core, while the other core and the
source's server wait. A read of the whole table needs none of that to begin: its columns and ranges come
from the source's own catalog. So the CLI starts it first (``start``), the ranges decode into a buffer of
at most ``READ_AHEAD_BYTES`` meanwhile, and the load takes the started read over when it gets to its read
(``PostgresSource.batches(prefetched=…)``), provided it asks for exactly what was started (same columns,
same filter); otherwise the started read is closed and the load reads as usual.

Only what reads the whole table is started ahead: a full refresh, or any load of a table without a cursor
(an incremental window needs the watermark from the lake). Anything that goes wrong here is left to the
load, which reads again and reports it in its own words.
"""

from __future__ import annotations

import logging
from typing import Any

from pipelines.registry import EXTRACT_RANGES, SourceSystem, SqlTable
from pipelines.settings import Settings

log = logging.getLogger(__name__)

# What the ranges may decode before the load takes its first batch: ~1-2 s of two ranges' output, under a tenth
# of the 512 MB a load may use. The buffer shrinks to a few batches once the load reads.
READ_AHEAD_BYTES = 128 << 20


def whole_read(spec: Any, mode: str) -> bool:
    """Whether a load of ``spec`` in ``mode`` reads every row of a SQL table (``ingest._load_sql``'s ``full``)."""
    return isinstance(spec, SqlTable) and mode != "deletions" and (mode == "full" or spec.cursor is None)


def start(system: SourceSystem, code: str, settings: Settings, mode: str) -> Any:
    """The started read of table ``code`` (a ``postgres_fast.PgRead``), or None where none applies or it failed."""
    from pipelines.connections import resolve_url

    try:
        spec = system.table(code)
        if not whole_read(spec, mode):
            return None
        url = resolve_url(system, settings)
        if not url.startswith("postgresql"):
            return None
        from pipelines.extract.postgres_fast import PgRead, libpq_url

        where = None
        if spec.filter:
            from pipelines.sql_filter import dialect_of, render_filter

            def where(names: list[str]) -> str:  # as PostgresSource.filter_sql renders it
                rendered = render_filter(spec.filter, dialect_of("postgresql"), names,
                                         f"system {system.system}, table {spec.source!r}")
                return f"({rendered})"

        return PgRead(libpq_url(url), spec.source_schema, spec.source, None, where=where,
                      parallel=min(EXTRACT_RANGES, system.max_connections), batch_rows=spec.batch_rows,
                      read_ahead=READ_AHEAD_BYTES)
    except Exception as exc:  # noqa: BLE001 - the load reads again and reports the failure itself
        log.debug("system %s, table %s: no read ahead (%s)", system.system, code, type(exc).__name__)
        return None
