"""The Iceberg SQL catalog: SQLite under ``lake/`` by default, any SQLAlchemy URL by setting."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pyiceberg.catalog.sql import SqlCatalog
from sqlalchemy.exc import DBAPIError

from pipelines.settings import Settings, load_settings

NAMESPACES = ("raw", "std", "curated", "quarantine", "meta")


@lru_cache(maxsize=8)
def _catalog(uri: str, warehouse: str, props: tuple[tuple[str, str], ...]) -> SqlCatalog:
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if warehouse.startswith("file://"):
        Path(warehouse.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    for attempt in range(3):
        try:
            catalog = SqlCatalog("citylake", **dict(props))
            for ns in NAMESPACES:
                catalog.create_namespace_if_not_exists(ns)
            return catalog
        except DBAPIError:
            # Two processes initialising a fresh catalog at once (two Airflow tasks, a CLI run beside
            # the DAG): the loser's CREATE/INSERT hits the winner's row; what it wanted now exists.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def get_catalog(settings: Settings | None = None) -> SqlCatalog:
    """The catalog for these settings, with every namespace of the lake created (cached per process)."""
    s = settings or load_settings()
    props = s.catalog_properties
    return _catalog(s.catalog_uri, s.warehouse, tuple(sorted(props.items())))
