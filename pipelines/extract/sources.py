"""Which extractor reads a relational source system: chosen by its URL's scheme."""

from __future__ import annotations

from typing import Any

from pipelines.registry import SourceSystem


def open_source(system: SourceSystem, url: str) -> Any:
    """The source object for ``system`` at ``url``: PostgreSQL (and its protocol relatives) through the
    Arrow-native COPY path, the MySQL family (MySQL, MariaDB, TiDB, OceanBase, GoldenDB) through its exact
    read plan and ConnectorX, everything else through SQLAlchemy streaming."""
    from pipelines.extract.sql import PostgresSource, SqlSource

    if url.startswith("postgresql"):
        return PostgresSource(system.system, url, system.max_connections)
    if url.startswith(("mysql", "mariadb")):
        from pipelines.extract.mysql import MySqlSource

        return MySqlSource(system.system, url, system.max_connections, system.time_zone)
    return SqlSource(system.system, url, system.max_connections)
