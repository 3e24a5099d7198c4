"""What one dataset's open release is: the description the release orchestration builds (files written,
checksums, rows, cut-off) and every metadata writer reads (datapackage, DCAT, dictionary, manifest, card).

Plain dataclasses: no I/O here, so a metadata writer is tested on a hand-built release."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any, Literal

from pipelines.grading import SENSITIVITY_GRADE

if TYPE_CHECKING:
    from pipelines.contracts import CuratedContract
    from pipelines.standards import Standards

FrictionlessType = Literal["string", "integer", "number", "date", "datetime", "boolean", "year"]

ELEMENT_TYPES: dict[str, FrictionlessType] = {
    "string": "string", "integer": "integer", "decimal": "number", "float": "number", "date": "date",
    "timestamp": "datetime", "boolean": "boolean",
}
"""Data element type (elements.yml) → Frictionless Table Schema field type."""
ENUM_MAX = 50
"""A code list up to this size is written into the Table Schema as ``enum`` (a larger one, e.g. GB/T 2260
divisions, is named in the description instead: the schema stays readable)."""


@dataclass(frozen=True)
class OpenColumn:
    """One column as the open release has it (after de-identification)."""

    name: str
    title: str
    """The element's Chinese name (name_zh)."""
    type: FrictionlessType
    """Frictionless type of the RELEASED values: a date generalised to its year is ``year``."""
    element: str
    unit: str | None
    description: str
    """The element's definition."""
    deid: str
    """keep | mask | year | district | grid | suppress (drop never reaches the release)."""
    grade: int
    """1–4, from the element's sensitivity (before de-identification: what the column is about)."""
    pattern: str | None = None
    """The element's whole-value regular expression (``^…$``), for a string column released as is (Table
    Schema ``pattern``)."""
    enum: tuple[str, ...] | None = None
    """The element's code list when small (≤ ``ENUM_MAX`` codes) and the column is released as is."""


@dataclass(frozen=True)
class FileInfo:
    """One written file of the release folder."""

    name: str
    """File name inside the dataset folder, e.g. ``air_quality_daily.csv``."""
    media_type: str
    """IANA media type, e.g. ``text/csv``."""
    format: str
    """csv | jsonl | parquet | json | …"""
    bytes: int
    sha256: str
    """Hex digest (64 characters)."""
    rows: int | None
    """Data rows (None for a metadata file such as ``datapackage.json``)."""


@dataclass
class DatasetRelease:
    """One dataset's release on one date."""

    dataset: str
    contract: CuratedContract
    columns: list[OpenColumn]
    release_date: date
    folder: str
    """Relative to ``<exports>``: ``open/<YYYY-MM-DD>/<dataset>/``."""
    files: list[FileInfo]
    rows: int
    build_id: str
    inputs: dict[str, int]
    """Input identifier (``std.<ds>`` / ``curated.<ds>``) → snapshot id the build read."""
    latest_event_time: datetime | None
    temporal: tuple[date, date] | None
    """First and last date the data covers."""
    spatial: list[str]
    """GB/T 2260 district codes the data covers."""
    quality_score: float | None
    changes: dict[str, Any]
    """``{added, changed, removed, previous}`` (``previous``: the previous release's folder or None)."""
    publisher: tuple[str, str]
    """(department code, department name) of the owner."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Anything else the orchestration wants recorded (run id, …); not read by the writers."""

    def file(self, fmt: str) -> FileInfo | None:
        return next((f for f in self.files if f.format == fmt), None)

    @property
    def data_files(self) -> list[FileInfo]:
        """The data in its formats: ``<dataset>.csv|jsonl|parquet`` (``dictionary.csv`` is metadata)."""
        return [f for f in self.files if f.name.rsplit(".", 1)[0] == self.dataset]


def open_type(element_type: str, deid: str) -> FrictionlessType:
    """The Frictionless type of a released column: a generalised value changes type (a birth date kept as its
    year is ``year``, an address generalised to its district is a code string); a grid cell stays a number."""
    if deid == "year":
        return "year"
    if deid in ("district", "mask"):
        return "string"
    return ELEMENT_TYPES[element_type]


def _anchored(regex: str | None) -> bool:
    """A whole-value regex (``^…$``): Table Schema's ``pattern`` must match the entire value, so an element
    format that only checks a prefix (``^(?:安徽省)?合肥市``) would reject every real value."""
    return regex is not None and regex.startswith("^") and regex.endswith("$") and not regex.endswith("\\$")


def open_columns(contract: CuratedContract, standards: Standards) -> list[OpenColumn]:
    """The columns the open release has (deid != drop), in contract order, typed and titled from their
    data elements."""
    out = []
    for col in contract.open_columns():
        deid = col.deid
        e = standards.element(col.element)
        kind = open_type(e.type, deid)
        as_is = deid == "keep" and kind == "string"  # a generalised or masked value no longer matches
        codes = standards.code_lists[e.code_list].codes if as_is and e.code_list in standards.code_lists else {}
        out.append(OpenColumn(name=col.name, title=e.name_zh, type=kind, element=e.code, unit=e.unit,
                              description=e.definition, deid=deid, grade=SENSITIVITY_GRADE[e.sensitivity],
                              pattern=e.format if as_is and _anchored(e.format) else None,
                              enum=tuple(codes) if 0 < len(codes) <= ENUM_MAX else None))
    return out
