"""OpenLineage datasets of a load, and how an Airflow task reports them.

Names follow the OpenLineage dataset naming spec: a SQL source is ``postgres://host:port`` +
``database.schema.table``, ``mysql://host:port`` + ``database.table``, ``sqlite://<absolute file>`` + ``main.table``
(SQLite's database name); a file drop is ``file://`` (or ``s3://bucket``) + the folder and glob; a lake table is
``iceberg://citylake`` + its identifier (``raw.<system>__<table>``), the namespace of the Airflow Assets
(``pipelines.lake.assets``). Never a user or password: only driver, host, port and database are read from a URL.

How the event gets them: the OpenLineage provider's listener builds a task's event after it ran. A TaskFlow task
(``_PythonDecoratedOperator``) has no extractor; hook-level lineage (``add_input_asset``) and inlets/outlets as
Assets are translated only for URI schemes some installed provider registers a converter for (only ``file``
here), and static inlets cannot name a mapped instance's table. The provider's documented operator hook
``get_openlineage_facets_on_complete`` (its ``DefaultExtractor``) takes OpenLineage datasets as they are, so the
running task sets it on its own operator instance (``attach``) once it knows what it read and wrote. With no
OpenLineage transport configured the provider is disabled and nothing is sent or imported.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LAKE_NAMESPACE = "iceberg://citylake"


def sql_dataset(url: str, table: str, schema: str | None = None) -> tuple[str, str] | None:
    """(namespace, name) of a source table behind a SQLAlchemy URL; None when the URL does not say enough to
    name it by the spec (a Unix-socket URL without a host, a MySQL URL without a database): no input is better
    than a wrong one (``postgres://None:5432``)."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    backend = u.get_backend_name()
    if backend == "sqlite":
        return f"sqlite://{Path(u.database or '').resolve()}", f"{schema or 'main'}.{table}"
    if not u.host:
        return None
    if backend in ("postgresql", "postgres"):
        return (f"postgres://{u.host}:{u.port or 5432}", f"{u.database}.{schema or 'public'}.{table}") \
            if u.database else None
    if backend in ("mysql", "mariadb"):
        return (f"mysql://{u.host}:{u.port or 3306}", f"{schema or u.database}.{table}") \
            if schema or u.database else None
    return f"{backend}://{u.host}" + (f":{u.port}" if u.port else ""), ".".join(
        p for p in (u.database, schema, table) if p)


def drop_dataset(location: str, glob: str, root: Path) -> tuple[str, str]:
    """(namespace, name) of a file drop's files: the folder (or bucket and prefix) and the glob."""
    if location.startswith("s3://"):
        bucket, _, prefix = location.removeprefix("s3://").partition("/")
        return f"s3://{bucket}", f"{prefix.strip('/')}/{glob}".lstrip("/")
    folder = Path(location) if Path(location).is_absolute() else root / location
    return "file", f"{folder.resolve()}/{glob}"


def ingest_datasets(system: Any, table_code: str, settings: Any) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Inputs and outputs of one table's load: the source table (or drop) and ``raw.<system>__<table>``."""
    from pipelines.registry import SqlTable

    spec = system.table(table_code)
    source: tuple[str, str] | None
    if isinstance(spec, SqlTable):
        from pipelines.connections import resolve_url

        source = sql_dataset(resolve_url(system, settings), spec.source, spec.source_schema)
    else:
        source = drop_dataset(system.drop.location if system.drop else "", spec.glob, settings.root)
    return [source] if source else [], [(LAKE_NAMESPACE, system.raw_table(table_code))]


def enabled() -> bool:
    """Whether OpenLineage events are sent: the provider is installed and a transport is configured."""
    try:
        from airflow.providers.openlineage.conf import is_disabled
    except ImportError:
        return False
    return not is_disabled()


def attach(context: Any, inputs: list[tuple[str, str]], outputs: list[tuple[str, str]]) -> bool:
    """Make the running task's OpenLineage event name ``inputs`` and ``outputs`` (module docstring). Returns
    whether it did (False without the provider, or when OpenLineage is disabled: no transport configured)."""
    if not enabled():
        return False
    try:
        from airflow.providers.openlineage.extractors import OperatorLineage
        from openlineage.client.event_v2 import Dataset
    except ImportError:
        return False
    lineage: Any = OperatorLineage(inputs=[Dataset(namespace=ns, name=n) for ns, n in inputs],
                                   outputs=[Dataset(namespace=ns, name=n) for ns, n in outputs])
    task = context["task"]
    # the provider's DefaultExtractor calls it with the task instance after the task ran (success or failure)
    task.get_openlineage_facets_on_complete = lambda task_instance: lineage
    task.get_openlineage_facets_on_failure = lambda task_instance: lineage
    return True


def attach_ingest(context: Any, system: Any, table_code: str, settings: Any) -> None:
    """``attach`` a load's datasets; lineage never fails a load (a problem is a warning in the task log). When
    OpenLineage is off nothing is computed: resolving the source URL may look up an Airflow connection."""
    try:
        if not enabled():
            return
        attach(context, *ingest_datasets(system, table_code, settings))
    except Exception as exc:  # noqa: BLE001 - observation only
        log.warning("OpenLineage: datasets of %s.%s not attached: %s", system.system, table_code,
                    type(exc).__name__)
