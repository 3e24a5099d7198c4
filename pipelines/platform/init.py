"""``citylake platform init``: what a deployment's init service runs after ``airflow db migrate``.

Idempotent (every step creates what is missing and leaves what exists): the Airflow pools of the source
registry (``source__<system>``, size ``max_connections``), the Iceberg catalog's namespaces, and a probe
that the warehouse is writable (a small object written, read back and deleted through the catalog's own
FileIO, so the check uses exactly the credentials and endpoint the loads will use). One line per step;
a failing step raises ``InitError`` naming the step, with any URL's password masked.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable

from pipelines.errors import CitylakeError
from pipelines.settings import Settings, load_settings

_URL_PASSWORD = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]+)@")


class InitError(CitylakeError):
    """A step of ``citylake platform init`` failed: the message names the step (no secret in it)."""


def mask_urls(text: str) -> str:
    """Every ``scheme://user:password@`` in ``text`` with the password replaced by ``***``."""
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def _one_line(exc: BaseException) -> str:
    first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return mask_urls(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)


PLACEHOLDER = "change-me"
"""What ``.env.example`` puts in every secret: a deployment must not start with it."""


def check_secrets(settings: Settings) -> str:
    """No Airflow, lake or admin setting still holds ``.env.example``'s placeholder: ``${VAR:?}`` in the compose
    file only catches an unset variable, and PostgreSQL or MinIO would take ``change-me`` as a password."""
    import os

    left = sorted(k for k, v in os.environ.items()
                  if k.startswith(("AIRFLOW__", "CITYLAKE_", "AWS_")) or k == "AIRFLOW_ADMIN_PASSWORD"
                  if PLACEHOLDER in v)
    if left:
        raise InitError(f"secrets: {', '.join(left)} still hold the .env.example placeholder {PLACEHOLDER!r}: "
                        "set real values in .env (.env.example says how to generate each)")
    return "secrets: no .env.example placeholder left"


def init_pools(settings: Settings) -> str:
    """Create or update one Airflow pool per registered source system (needs the migrated metadata DB)."""
    from pipelines.demo import ensure_pools
    from pipelines.registry import load_registry

    systems, errors = load_registry(settings.registry_dir)
    if errors:
        # a broken registry file is a deployment error: the init service must not report success
        raise InitError("pools: " + "; ".join(str(e).splitlines()[0] for e in errors.values()))
    ensure_pools(systems)
    return f"pools: {len(systems)} created or updated ({', '.join(f'source__{s}' for s in sorted(systems))})"


def init_namespaces(settings: Settings) -> str:
    """Create the catalog's tables and every namespace of the lake (``get_catalog`` does both)."""
    from sqlalchemy.engine import make_url

    from pipelines.lake.catalog import get_catalog

    catalog = get_catalog(settings)
    names = sorted(".".join(ns) for ns in catalog.list_namespaces())
    shown = make_url(settings.catalog_uri).render_as_string(hide_password=True)
    return f"catalog: namespaces {', '.join(names)} at {shown}"


def check_warehouse(settings: Settings) -> str:
    """Write, read back and delete a small probe object under the warehouse through pyiceberg's FileIO."""
    from pyiceberg.io import load_file_io

    io = load_file_io(settings.catalog_properties, settings.warehouse)
    location = f"{settings.warehouse.rstrip('/')}/_citylake_init/probe-{uuid.uuid4().hex}"
    payload = b"citylake platform init probe\n"
    with io.new_output(location).create(overwrite=True) as stream:
        stream.write(payload)
    with io.new_input(location).open() as stream:
        if stream.read() != payload:
            raise InitError(f"warehouse: {settings.warehouse}: the probe object read back differs from what was written")
    io.delete(location)
    return f"warehouse: {mask_urls(settings.warehouse)} writable (probe written, read back, deleted)"


STEPS: tuple[tuple[str, Callable[[Settings], str]], ...] = (
    ("secrets", check_secrets), ("pools", init_pools), ("catalog", init_namespaces), ("warehouse", check_warehouse))


def run_init(settings: Settings | None = None, echo: Callable[[str], None] = print) -> list[str]:
    """Run every step in order, echoing one line each; the first failure raises ``InitError`` naming it."""
    settings = settings or load_settings()
    lines = []
    for name, step in STEPS:
        try:
            line = step(settings)
        except InitError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure of a step is reported as that step's one line
            raise InitError(f"{name}: {_one_line(exc)}") from exc
        echo(line)
        lines.append(line)
    return lines
