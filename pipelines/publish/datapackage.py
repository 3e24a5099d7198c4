"""``datapackage.json``: the release folder as a Frictionless Data Package (v1).

One resource per data file (CSV, JSON Lines, Parquet), each with the same Table Schema: Chinese titles from
the data elements, types of the released values, ``required``/``unique``/``pattern``/``enum`` constraints,
``primaryKey``, ``missingValues``, and ``bytes`` + ``hash`` (``sha256:…``).

What ``frictionless validate datapackage.json`` (frictionless-py 5.21) checks:

- CSV (UTF-8 with BOM, CRLF) and JSON Lines are tabular resources (``tabular-data-resource``): every row
  against the Table Schema, and the declared ``bytes`` and ``hash`` against the bytes it read.
- Parquet is declared ``"type": "file"`` (``profile: data-resource``), so frictionless checks its ``bytes`` and
  ``hash`` only; the Table Schema stays on the resource for consumers (and the Parquet file carries its own).
  Read as a table, frictionless goes through ``pyarrow → pandas`` and misreads nulls: a null in an integer or
  year column becomes NaN (a ``type-error`` on ``nan``, and ``1990.0`` is no year), an all-null row is a
  ``blank-row``, and a null in a date column raises (``NaTType does not support time``) — an open release with
  a suppressed count or an unknown date would fail or crash the validator though the file is right. It also
  loads the whole file into memory. Declared as a table, Parquet also fails ``byte-count`` (no byte stream).
- A dataset of 0 rows: the CSV is its header line (a valid empty table); the JSON Lines file is empty, which
  frictionless cannot read as a table (it takes the keys from the first line), so that file alone is declared
  ``"type": "file"`` too (``bytes`` and ``hash`` checked).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, time
from typing import Any

from pipelines.publish.model import DatasetRelease, FileInfo, OpenColumn
from pipelines.settings import TZ

PROFILE = "data-package"
"""Not ``tabular-data-package``: the Parquet resource is a file resource (see above)."""
LICENCES: dict[str, tuple[str, str]] = {
    "CC-BY-4.0": ("https://creativecommons.org/licenses/by/4.0/", "Creative Commons Attribution 4.0 International"),
    "CC-BY-SA-4.0": ("https://creativecommons.org/licenses/by-sa/4.0/",
                     "Creative Commons Attribution Share-Alike 4.0 International"),
    "CC0-1.0": ("https://creativecommons.org/publicdomain/zero/1.0/", "Creative Commons Zero v1.0 Universal"),
    "ODbL-1.0": ("https://opendatacommons.org/licenses/odbl/1-0/", "Open Data Commons Open Database License v1.0"),
    "ODC-By-1.0": ("https://opendatacommons.org/licenses/by/1-0/", "Open Data Commons Attribution License v1.0"),
    "PDDL-1.0": ("https://opendatacommons.org/licenses/pddl/1-0/",
                 "Open Data Commons Public Domain Dedication & License 1.0"),
}
"""SPDX id → (licence text URL, title) of the usual open-data licences; another SPDX id points at its
page on spdx.org."""
CSV_DIALECT = {"delimiter": ",", "lineTerminator": "\r\n", "quoteChar": '"', "doubleQuote": True, "header": True}
"""RFC 4180 as the CSV writer produces it (CRLF). Encoding is declared ``utf-8``: the IANA name; the BOM in
front is read as such by frictionless and by every UTF-8 reader that expects one (Excel needs it)."""
MISSING_VALUES = [""]
"""A null is an empty CSV cell (JSON Lines and Parquet have real nulls)."""


def licence(spdx: str) -> dict[str, str]:
    """A Data Package ``licenses`` entry (name = the SPDX id, path, title) of an SPDX licence id."""
    path, title = LICENCES.get(spdx, (f"https://spdx.org/licenses/{spdx}.html", spdx))
    return {"name": spdx, "path": path, "title": title}


def field(column: OpenColumn, *, required: bool, unique: bool) -> dict[str, Any]:
    """One Table Schema field. ``unit`` and the data element are custom properties (``x-…`` is not needed:
    Table Schema allows extra properties); the de-identification applied is said in the description."""
    out: dict[str, Any] = {"name": column.name, "title": column.title, "type": column.type, "format": "default",
                           "description": column.description}
    if column.unit:
        out["unit"] = column.unit
    out["element"] = column.element
    constraints: dict[str, Any] = {}
    if required:
        constraints["required"] = True
    if unique:
        constraints["unique"] = True
    if column.pattern:
        constraints["pattern"] = column.pattern
    if column.enum:
        constraints["enum"] = list(column.enum)
    if constraints:
        out["constraints"] = constraints
    return out


def table_schema(release: DatasetRelease) -> dict[str, Any]:
    """The Table Schema of the released columns (the same for every format)."""
    keys = list(release.contract.primary_key)
    declared = {c.name: c.required for c in release.contract.columns}
    # a suppressed cell (< k) or a generalised address is released empty on purpose: such a column is never
    # "required" in the package, whatever the curated contract says (a key column is never suppressed:
    # the contract load refuses it)
    fields = [field(c, required=(declared.get(c.name, False) or c.name in keys)
                    and c.deid not in ("suppress", "district"), unique=keys == [c.name])
              for c in release.columns]
    names = {c.name for c in release.columns}
    schema: dict[str, Any] = {"fields": fields, "missingValues": MISSING_VALUES}
    if keys and set(keys) <= names:  # a key column dropped from the release leaves no key to declare
        schema["primaryKey"] = keys
    return schema


def schema_version(release: DatasetRelease) -> str:
    """``sha256:`` + 16 hex of the canonical Table Schema: the same columns, types, titles and constraints
    give the same version in every release, so a consumer sees at a glance whether its parser still fits."""
    text = json.dumps(table_schema(release), ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _resource(release: DatasetRelease, file: FileInfo, schema: dict[str, Any]) -> dict[str, Any]:
    # see the module docstring; an empty JSON Lines file (0 rows) is no table to frictionless (its reader takes
    # the first line for the keys and fails on none), so it is declared a file resource like Parquet
    tabular = file.format != "parquet" and not (file.format in ("jsonl", "ndjson") and file.bytes == 0)
    out: dict[str, Any] = {"name": f"{release.dataset}-{file.format}".lower(), "path": file.name,
                           "profile": "tabular-data-resource" if tabular else "data-resource",
                           "title": f"{release.contract.name}（{file.format.upper()}）", "format": file.format,
                           "mediatype": file.media_type}
    if not tabular:
        out["type"] = "file"
    if file.format == "csv":
        out["encoding"] = "utf-8"
        out["dialect"] = CSV_DIALECT
    elif file.format in ("jsonl", "ndjson"):
        out["encoding"] = "utf-8"
    out["bytes"] = file.bytes
    out["hash"] = f"sha256:{file.sha256}"
    out["schema"] = schema
    return out


def created(release: DatasetRelease) -> str:
    """When the release was made: ``release.extra["created_at"]`` (a datetime) when the orchestration gives
    it, else the release date's midnight in Asia/Shanghai (deterministic for a rebuilt folder)."""
    at = release.extra.get("created_at")
    if not isinstance(at, datetime):
        at = datetime.combine(release.release_date, time(0), TZ)
    return at.isoformat(timespec="seconds")


def keywords(release: DatasetRelease) -> list[str]:
    c = release.contract
    words = [c.name, c.resource_category, *c.catalog_path.split("/"), c.open.type, c.update_cycle]
    return list(dict.fromkeys(w for w in words if w))


def datapackage(release: DatasetRelease) -> dict[str, Any]:
    """The ``datapackage.json`` of one dataset's release folder (Frictionless Data Package v1)."""
    c = release.contract
    schema = table_schema(release)
    description = c.description
    if c.open.type == "有条件开放":
        met_by = c.open.met_by
        description += f"\n开放条件：{c.open.condition}" + (f"（{met_by}）" if met_by else "")
    d = release.release_date
    return {
        "profile": PROFILE,
        "name": release.dataset.lower(),
        "id": c.resource_code,
        "title": c.name,
        "description": description,
        "version": f"{d.year}.{d.month}.{d.day}",  # calendar version (valid SemVer: no leading zeros)
        "created": created(release),
        "licenses": [licence(c.licence)],
        "sources": [{"title": f"{name}（快照 {snapshot}）"} for name, snapshot in sorted(release.inputs.items())],
        "contributors": [{"title": release.publisher[1], "role": "publisher", "organization": release.publisher[1]}],
        "keywords": keywords(release),
        "resources": [_resource(release, f, schema) for f in release.data_files],
    }
