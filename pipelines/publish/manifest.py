"""``manifest.json``: what the portal checks before it trusts a release folder — every file with its size,
SHA-256 and rows, the schema version, the quality score, the data cut-off (input snapshots, latest event
time), the coverage (first and last date, district codes), the build, the release date, the change summary
and the generator's version. The release rebuilds a DatasetRelease from it for the catalog of a later date."""

from __future__ import annotations

from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pipelines.publish.datapackage import created
from pipelines.publish.model import DatasetRelease

MANIFEST_VERSION = 1
"""Version of this manifest's own layout (a consumer checks it before reading the rest)."""


def generator_version() -> str:
    try:
        return version("citylake")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "0+unknown"


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def manifest(release: DatasetRelease, schema_version: str) -> dict[str, Any]:
    """The manifest of one dataset's release folder. ``files`` lists every file the release wrote before the
    manifest (the manifest cannot hold its own checksum); ``schema_version`` is
    ``datapackage.schema_version(release)``."""
    c = release.contract
    return {
        "manifest_version": MANIFEST_VERSION,
        "dataset": release.dataset,
        "title": c.name,
        "resource_code": c.resource_code,
        "release_date": release.release_date.isoformat(),
        "created": created(release),
        "folder": release.folder,
        "publisher": {"code": release.publisher[0], "name": release.publisher[1]},
        "open": {"type": c.open.type, "condition": c.open.condition, "met_by": c.open.met_by},
        "licence": c.licence,
        "schema_version": schema_version,
        "primary_key": list(c.primary_key),
        "rows": release.rows,
        "quality_score": release.quality_score,
        "cutoff": {"inputs": dict(sorted(release.inputs.items())),
                   "latest_event_time": _iso(release.latest_event_time)},
        "coverage": {"temporal": [d.isoformat() for d in release.temporal] if release.temporal else None,
                     "spatial": sorted(release.spatial)},
        "build_id": release.build_id,
        "changes": release.changes,
        "files": [{"name": f.name, "format": f.format, "media_type": f.media_type, "bytes": f.bytes,
                   "sha256": f.sha256, "rows": f.rows} for f in release.files],
        "generator": {"name": "citylake", "version": generator_version()},
    }
