"""One environment switch for the whole platform.

Everything that differs between the embedded default (local lake, SQLite catalog) and production
(PostgreSQL catalog, S3/MinIO warehouse) is read here from ``CITYLAKE_*`` environment variables.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TZ = ZoneInfo("Asia/Shanghai")


@dataclass(frozen=True)
class Settings:
    """Resolved platform settings."""

    root: Path
    """Project root: relative paths in config are resolved against it."""
    registry_dir: Path
    """Folder of ``<system>.yml`` source registry files."""
    data_dir: Path
    """Seeded source systems and file drops (``data/sources``, ``data/drops``)."""
    lake_dir: Path
    """Local lake root: SQLite catalog, warehouse, rejected files."""
    catalog_uri: str
    """SQLAlchemy URL of the Iceberg SQL catalog."""
    warehouse: str
    """Warehouse location: a local path or ``s3://bucket/prefix``."""
    s3_endpoint: str | None
    """S3 endpoint (MinIO, moto) for the warehouse and S3 drops; None means AWS."""
    rejected_dir: str
    """Where unparseable drop files are copied with their reason (local path or s3:// URI)."""
    exports_dir: str = ""
    """Root of the open-data release (``<exports>/open/…``): a local path or ``s3://bucket/prefix``
    (``CITYLAKE_EXPORTS_DIR``; default ``<lake>/exports``; empty in a hand-built Settings means that too)."""
    open_keep: int = 30
    """Release-date folders the open release keeps (``CITYLAKE_OPEN_KEEP``); a folder ``latest.json``
    points into is never deleted."""
    snapshot_retention_days: int = 7
    """Days a table's snapshots stay before lake maintenance may expire them
    (``CITYLAKE_SNAPSHOT_RETENTION_DAYS``): time travel reaches this far back; snapshots still needed
    (held batches, sharing's last deliveries, the current and latest data snapshot) stay longer."""
    open_base_url: str | None = None
    """Public URL the portal serves ``<exports>`` at (``CITYLAKE_OPEN_BASE_URL``), for the DCAT catalog's
    download links; None: links relative to the catalog."""
    artifacts_dir: str = ""
    """Root of the files every worker must see (``CITYLAKE_ARTIFACTS_DIR``): GX validation results
    (``gx/validations/``), GX Data Docs (``gx/data_docs/``) and the governance report (``report/``), a local
    path or ``s3://bucket/prefix``. Default: the warehouse when it is on S3, else the lake folder, where they
    are written anyway: no copy is made (empty in a hand-built Settings means the lake folder too)."""
    grants_dir: Path | None = None
    """Folder of the sharing grants, ``<grants>/*.yml`` (``CITYLAKE_GRANTS_DIR``; default
    ``<root>/schemas/grants``; None in a hand-built Settings means that too)."""

    @property
    def grants(self) -> Path:
        """``grants_dir``, or ``<root>/schemas/grants`` when it is None."""
        return self.grants_dir or self.root / "schemas" / "grants"

    @property
    def artifacts(self) -> str:
        """``artifacts_dir``, or the lake folder when it is empty."""
        return self.artifacts_dir or str(self.lake_dir)

    @property
    def exports(self) -> str:
        """``exports_dir``, or ``<lake>/exports`` when it is empty."""
        return self.exports_dir or str(self.lake_dir / "exports")

    def resolve(self, location: str) -> str:
        """A configured path: ``{data_dir}``/``{lake_dir}`` expanded, relative paths under the project root."""
        text = location.replace("{data_dir}", str(self.data_dir)).replace("{lake_dir}", str(self.lake_dir))
        if "://" in text or Path(text).is_absolute():
            return text
        return str(self.root / text)

    @property
    def catalog_properties(self) -> dict[str, str]:
        props = {
            "uri": self.catalog_uri,
            "warehouse": self.warehouse,
            # pyarrow's FileIO for S3 too: s3fs pulls aiobotocore, which pins botocore below boto3's.
            "py-io-impl": "pyiceberg.io.pyarrow.PyArrowFileIO",
        }
        if self.s3_endpoint:
            props["s3.endpoint"] = self.s3_endpoint
            props["s3.path-style-access"] = "true"
        for env, prop in (
            ("AWS_ACCESS_KEY_ID", "s3.access-key-id"),
            ("AWS_SECRET_ACCESS_KEY", "s3.secret-access-key"),
            ("AWS_DEFAULT_REGION", "s3.region"),
        ):
            if os.environ.get(env):
                props[prop] = os.environ[env]
        return props


def _path(env: str, default: Path) -> Path:
    value = os.environ.get(env)
    return Path(value).expanduser().resolve() if value else default


MIN_SNAPSHOT_RETENTION_DAYS = 7
"""Lake maintenance keeps snapshots at least this long: the governance report counts raw landings of its
7-day window (``report.data.RECENT_DAYS``) from raw snapshots' summaries."""


def _retention_days() -> int:
    days = _int_env("CITYLAKE_SNAPSHOT_RETENTION_DAYS", 7)
    if days < MIN_SNAPSHOT_RETENTION_DAYS:
        raise ValueError(f"CITYLAKE_SNAPSHOT_RETENTION_DAYS={days}: expected {MIN_SNAPSHOT_RETENTION_DAYS} or more "
                         "(the report's 7-day window of raw landings reads snapshots that old)")
    return days


def _int_env(env: str, default: int) -> int:
    value = os.environ.get(env)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"{env}={value!r}: expected a whole number") from None
    if number < 1:
        raise ValueError(f"{env}={value!r}: expected 1 or more")
    return number


def _artifacts_dir(lake_dir: Path, warehouse: str) -> str:
    """``CITYLAKE_ARTIFACTS_DIR`` (a local path is resolved); unset: the warehouse on S3 (where the report
    went before this setting existed), else the lake folder."""
    value = os.environ.get("CITYLAKE_ARTIFACTS_DIR")
    if value:
        return value.rstrip("/") if "://" in value else str(Path(value).expanduser().resolve())
    return warehouse.rstrip("/") if warehouse.startswith("s3://") else str(lake_dir)


def load_settings() -> Settings:
    """Read the settings from the environment (cheap: no I/O)."""
    root = _path("CITYLAKE_ROOT", PROJECT_ROOT)
    lake_dir = _path("CITYLAKE_LAKE_DIR", root / "lake")
    warehouse = os.environ.get("CITYLAKE_WAREHOUSE", f"file://{lake_dir / 'warehouse'}")
    return Settings(
        root=root,
        registry_dir=_path("CITYLAKE_REGISTRY_DIR", root / "schemas" / "sources"),
        data_dir=_path("CITYLAKE_DATA_DIR", root / "data"),
        lake_dir=lake_dir,
        catalog_uri=os.environ.get("CITYLAKE_CATALOG_URI", f"sqlite:///{lake_dir / 'catalog.db'}"),
        warehouse=warehouse,
        s3_endpoint=os.environ.get("CITYLAKE_S3_ENDPOINT") or None,
        rejected_dir=os.environ.get("CITYLAKE_REJECTED_DIR", str(lake_dir / "rejected")),
        exports_dir=os.environ.get("CITYLAKE_EXPORTS_DIR") or str(lake_dir / "exports"),
        open_keep=_int_env("CITYLAKE_OPEN_KEEP", 30),
        snapshot_retention_days=_retention_days(),
        open_base_url=os.environ.get("CITYLAKE_OPEN_BASE_URL") or None,
        grants_dir=_path("CITYLAKE_GRANTS_DIR", root / "schemas" / "grants"),
        artifacts_dir=_artifacts_dir(lake_dir, warehouse),
    )
