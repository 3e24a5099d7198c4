"""Start a whole-table PostgreSQL read before the load's own start-up, so the two overlap.

A CLI load spends its first ~2 s importing pyiceberg and pandas, opening the catalog and taking its load
sequence number, all on one core, while the other core and the source's server wait. A read of the whole
table needs none of that to begin. So the CLI opens the source, reflects the table and starts its read
first (``start``); the ranges decode into a buffer of at most ``READ_AHEAD_BYTES`` meanwhile, and the load
takes all of it over (``Started``) when it gets to its read (``PostgresSource.batches(prefetched=…)``),
provided it asks for exactly what was started (same columns, same filter); otherwise the started read is
closed and the load reads as usual.

Only what reads the whole table is started ahead: a full refresh, or any load of a table without a cursor
(an incremental window needs the watermark from the lake). Anything that goes wrong here is left to the
load, which reads again and reports it in its own words.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pipelines.registry import SourceSystem, SqlTable
from pipelines.settings import Settings

log = logging.getLogger(__name__)

# What the ranges may decode before the load takes its first batch: ~1-2 s of two ranges' output, a quarter
# of the 512 MB a load may use. The buffer shrinks to a few batches once the load reads.
READ_AHEAD_BYTES = 128 << 20


def whole_read(spec: Any, mode: str) -> bool:
    """Whether a load of ``spec`` in ``mode`` reads every row of a SQL table (``ingest._load_sql``'s ``full``)."""
    return isinstance(spec, SqlTable) and mode != "deletions" and (mode == "full" or spec.cursor is None)


@dataclass
class Started:
    """A load's source work done ahead: the source object, its reflection of the table, and the whole read
    started (``PostgresSource.start_read``). The load reuses all three, so that while the ranges stream it
    opens no other connection to the source (``max_connections`` stays a real cap)."""

    source: Any
    reflected: Any
    read: Any

    def close(self) -> None:
        self.read.close()
        self.source.dispose()


def start(system: SourceSystem, code: str, settings: Settings, mode: str) -> Started | None:
    """Table ``code``'s whole read started, or None where none applies or starting failed."""
    from pipelines.connections import resolve_url

    source = None
    try:
        spec = system.table(code)
        if not whole_read(spec, mode):
            return None
        url = resolve_url(system, settings)
        if not url.startswith("postgresql"):
            return None
        from pipelines.extract.sources import open_source

        source = open_source(system, url)
        reflected = source.reflect(spec)
        return Started(source, reflected, source.start_read(spec, reflected, read_ahead=READ_AHEAD_BYTES))
    except Exception as exc:  # noqa: BLE001 - the load reads again and reports the failure itself
        log.debug("system %s, table %s: no read ahead (%s)", system.system, code, type(exc).__name__)
        if source is not None:
            source.dispose()
        return None
