"""Which extractor reads a relational source system: chosen by its URL's scheme."""

from __future__ import annotations

from typing import Any

from pipelines.registry import SourceSystem


def open_source(system: SourceSystem, url: str) -> Any:
    """The source object for ``system`` at ``url``: PostgreSQL (and its protocol relatives) through the
    Arrow-native COPY path, everything else through SQLAlchemy streaming."""
    from pipelines.extract.sql import PostgresSource, SqlSource

    cls = PostgresSource if url.startswith("postgresql") else SqlSource
    return cls(system.system, url, system.max_connections)
