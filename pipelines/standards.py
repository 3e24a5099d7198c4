"""一标准 and 一源 as data: data elements (数据元), their authoritative source, and code lists.

``schemas/standards/elements.yml`` lists every data element with the attribute set of DB33/T 2426 /
GB/T 18391 and exactly one authoritative ``{system, table, column}``; ``schemas/standards/code_lists/*.csv``
hold the code lists (``code,name,parent,valid_from,valid_to,note,aliases``). Loading fails with the
file, the line and the element when a rule is broken.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from pipelines.code_lists import DEV_ZONES, HEFEI_BBOX, CodeList, load_code_list
from pipelines.errors import ConfigError
from pipelines.registry import SourceSystem, check_code, line_of, parse_yaml_model
from pipelines.resource_classification import ResourceClass, cached_classification

DIMENSIONS = ("规范性", "完整性", "准确性", "一致性", "时效性", "可访问性")


class SourceRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    system: str
    table: str
    column: str

    def key(self) -> tuple[str, str, str]:
        return (self.system, self.table, self.column)

    @model_validator(mode="after")
    def _in_registry(self, info: ValidationInfo) -> SourceRef:
        """System and table exist (when the registry is given); the column is not a source name the
        registry renames. Other columns only the source knows: ingest and the gate check those."""
        systems = (info.context or {}).get("systems")
        if systems is None:
            return self
        system = systems.get(self.system)
        if system is None:
            raise ValueError(f"system {self.system!r} is not in the registry (known: {', '.join(sorted(systems))})")
        tables = {t.code: t for t in system.all_tables}
        if self.table not in tables:
            raise ValueError(f"system {self.system} has no table {self.table!r} (known: {', '.join(tables)})")
        renamed = tables[self.table].columns
        if self.column in renamed and self.column not in renamed.values():
            raise ValueError(f"column {self.column!r} is the source's name; the registry maps it to "
                             f"{renamed[self.column]!r}")
        return self

    def __str__(self) -> str:
        return f"{self.system}.{self.table}.{self.column}"


class DerivedBy(BaseModel):
    """The curated column that computes an element no source system collects (a count, a daily mean, a
    provenance record): its one source, in place of ``authoritative``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    dataset: str
    """Curated dataset code (schemas/curated/<dataset>.yml)."""
    column: str

    def __str__(self) -> str:
        return f"curated.{self.dataset}.{self.column}"


class DataElement(BaseModel):
    """One data element (数据元) and its standard."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str = Field(pattern=r"^DE\d{4}$")
    code: str
    name_zh: str
    name_en: str
    definition: str
    type: Literal["string", "integer", "decimal", "date", "timestamp", "boolean", "float"]
    format: str | None = None
    code_list: str | None = None
    value_domain: str | None = None
    min_length: int | None = Field(default=None, ge=0)
    max_length: int | None = Field(default=None, ge=1)
    min_value: str | float | None = None
    """Lower bound of a date (ISO 8601) or number, checked as 准确性 (a warning)."""
    max_value: str | float | None = None
    validator: str | None = None
    unit: str | None = None
    sensitivity: Literal["公开", "内部", "个人信息", "敏感个人信息"] = "内部"
    object_class: str | None = None
    representation: str | None = None
    version: str = "1.0"
    release_date: str = "2026-11-20"
    note: str | None = None
    authoritative: list[SourceRef] = Field(default_factory=list)
    """Exactly one (or ``derived_by`` instead): the system, table and column that collect, review and update
    this item (一数一源)."""
    copies: list[SourceRef] = Field(default_factory=list)
    """Non-authoritative places carrying the same item; compared with the authority every night."""
    derived_by: DerivedBy | None = None
    """For an item the lake computes (issue 10): the curated column that derives it, instead of an authority;
    checked against the curated contracts when they load."""

    @property
    def authority(self) -> SourceRef | None:
        """The authoritative source column, None for a derived element."""
        return self.authoritative[0] if self.authoritative else None

    @field_validator("code")
    @classmethod
    def _code(cls, v: str) -> str:
        return check_code(v, "element code")

    @field_validator("code_list")
    @classmethod
    def _known_list(cls, v: str | None, info: ValidationInfo) -> str | None:
        lists = (info.context or {}).get("code_lists")
        if v is not None and lists is not None and v not in lists:
            raise ValueError(f"element {info.data.get('code')} ({info.data.get('name_zh')}): unknown code list "
                             f"{v!r} (have: {', '.join(sorted(lists))})")
        return v


class ElementFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    elements: list[DataElement]


@dataclass(frozen=True)
class Standards:
    elements: dict[str, DataElement]
    code_lists: dict[str, CodeList]
    places: dict[tuple[str, str, int], str] = field(default_factory=dict)
    """(element, "authoritative"/"copies", index) → ``file:line: field.path`` of that reference."""
    resource_classes: dict[str, ResourceClass] = field(default_factory=dict)
    """信息资源分类 (code_lists/resource_classification.csv): cumulative code → 类/项/目/细目 entry."""

    def element(self, code: str) -> DataElement:
        if code not in self.elements:
            raise ConfigError(f"unknown data element {code!r}")
        return self.elements[code]

    def authoritative_for(self, system: str, table: str, column: str) -> DataElement | None:
        return next((e for e in self.elements.values() if e.authority and e.authority.key() == (system, table, column)),
                    None)

    def element_at(self, system: str, table: str, column: str) -> DataElement | None:
        """The element a source column carries, as authority or as a copy."""
        for e in self.elements.values():
            if any(r.key() == (system, table, column) for r in [*e.authoritative, *e.copies]):
                return e
        return None

    def code_list(self, name: str) -> dict[str, str]:
        return self.code_lists[name].codes

    def aliases(self, name: str) -> dict[str, str]:
        return self.code_lists[name].aliases


def load_standards(directory: Path, systems: dict[str, SourceSystem] | None = None) -> Standards:
    """Every element and code list, checked: one authority per element, unique ids/codes, known lists and,
    given the registry, that each authoritative/copy system and table exists. Every problem is reported
    together, each with its file and line."""
    problems: list[str] = []
    lists: dict[str, CodeList] = {}
    for p in sorted((directory / "code_lists").glob("*.csv")):
        try:
            lists[p.stem] = load_code_list(p)
        except ConfigError as exc:
            problems.extend(exc.problems)
    problems += _parent_problems(directory / "code_lists", lists)
    classes: dict[str, ResourceClass] = {}
    classification = directory / "code_lists" / "resource_classification.csv"
    try:
        classes = cached_classification(classification)
    except FileNotFoundError:
        problems.append(f"{classification}:1: the 信息资源分类 code list (类/项/目/细目) is missing: contracts' "
                        "catalog blocks are checked against it")
    except ConfigError as exc:
        problems.extend(exc.problems)
    path = directory / "elements.yml"
    lines: dict[tuple[Any, ...], int] = {}
    try:
        # a list that failed to load is still a known name: its own lines say what is wrong with it
        known = {p.stem for p in (directory / "code_lists").glob("*.csv")}
        parsed: ElementFile = parse_yaml_model(path, ElementFile, {"code_lists": known, "systems": systems}, lines)
    except ConfigError as exc:
        raise ConfigError(*problems, *exc.problems) from None
    elements: dict[str, DataElement] = {}
    ids: dict[str, str] = {}
    authority: dict[tuple[str, str, str], str] = {}
    places: dict[tuple[str, str, int], str] = {}
    for i, e in enumerate(parsed.elements):
        where = f"{path}:{line_of(lines, 'elements', i, 'code')}: element {e.code} ({e.name_zh})"
        for kind in ("authoritative", "copies"):
            for j, _ref in enumerate(getattr(e, kind)):
                places[(e.code, kind, j)] = f"{path}:{line_of(lines, 'elements', i, kind, j)}: elements.{i}.{kind}.{j}"
        if e.code in elements or e.id in ids:
            problems.append(f"{where}: id {e.id} or code {e.code} is used twice")
            continue
        if e.derived_by is not None:
            places[(e.code, "derived_by", 0)] = f"{path}:{line_of(lines, 'elements', i, 'derived_by')}: elements.{i}.derived_by"
            if e.authoritative:  # one source: a system's column or the lake's computation, never both
                problems.append(f"{where}: has both authoritative ({', '.join(map(str, e.authoritative))}) and "
                                f"derived_by ({e.derived_by}); an element has exactly one of the two")
            if e.copies:
                problems.append(f"{where}: a derived element has no copies to compare (copies are checked against "
                                "a source system's authority)")
        elif len(e.authoritative) != 1:
            problems.append(f"{where}: needs exactly one authoritative source (一数一源) or derived_by, has "
                            f"{len(e.authoritative)}: {', '.join(map(str, e.authoritative)) or 'none'}")
        elif (key := e.authoritative[0].key()) in authority:
            problems.append(f"{where}: {e.authoritative[0]} is already the authority of element {authority[key]}")
        else:
            authority[key] = e.code
        elements[e.code], ids[e.id] = e, e.code
    if problems:
        raise ConfigError(*problems)
    return Standards(elements, lists, places, classes)


PARENT_LISTS = {"air_station": "division"}
"""Code lists whose ``parent`` is a code of another list (a station's district); any other list's parents are
its own codes (大类 → 门类). division's parents are checked by its generator (stdnum's table)."""
COORDINATE_COLUMNS = {"air_station": ("longitude", "latitude")}
"""Extra columns a list must fill with WGS-84 decimal degrees inside Hefei (the curated air quality reads them)."""


def _parent_problems(folder: Path, lists: dict[str, CodeList]) -> list[str]:
    problems = []
    for name, cl in lists.items():
        if name == "division":
            continue
        home = lists.get(PARENT_LISTS.get(name, name))
        path = folder / f"{name}.csv"
        for code, parent in cl.parents.items():
            if parent and home is not None and parent not in home.codes:
                problems.append(f"{path}:{cl.lines.get(code, 1)}: code {code}: parent {parent} is not a code of "
                                f"{home.name}")
        for axis, col in enumerate(COORDINATE_COLUMNS.get(name, ())):
            lo, hi = HEFEI_BBOX[axis], HEFEI_BBOX[axis + 2]
            for code, row in cl.extra.items():
                try:
                    ok = lo <= float(row.get(col, "")) <= hi
                except ValueError:
                    ok = False
                if not ok:
                    problems.append(f"{path}:{cl.lines.get(code, 1)}: code {code}: {col} {row.get(col)!r} is not a "
                                    f"decimal degree inside Hefei ({lo}–{hi})")
    return problems


def build_division_csv(path: Path, province: str = "34",
                       extension: dict[str, str] | None = None) -> int:
    """Regenerate the GB/T 2260 code list of a province from python-stdnum's maintained table.

    stdnum encodes validity in names ("[1983-2001]西市区,[2002-]蜀山区"): the current name is kept,
    the history goes to ``note``, years to valid_from/valid_to. Returns the number of codes.
    """
    from stdnum import numdb

    extension = DEV_ZONES if extension is None else extension
    rows = []
    for _n, prov, _hi, _props, counties in numdb.get("cn/loc").prefixes:
        if prov != province:
            continue
        for _m, county, _chi, cprops, _c in counties:
            history = cprops.get("county", "")
            spans = re.findall(r"\[(\d*)-(\d*)\]([^,]+)|([^,\[\]]+)", history)
            last = spans[-1] if spans else ("", "", history, "")
            name = last[2] or last[3]
            first_from = spans[0][0] if spans else ""
            rows.append({"code": prov + county, "name": name, "parent": _parent(prov + county),
                         "valid_from": first_from, "valid_to": last[1],
                         "note": history if len(spans) > 1 or "[" in history else "", "aliases": ""})
        for code, name in sorted(extension.items()):
            rows.append({"code": code, "name": name, "parent": _parent(code), "valid_from": "", "valid_to": "",
                         "note": "合肥市开发区扩展 (configured extension, not in every GB/T 2260 table)",
                         "aliases": ""})
    with path.open("w", encoding="utf-8", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["code", "name", "parent", "valid_from", "valid_to", "note", "aliases"])
        w.writeheader()
        w.writerows(sorted(rows, key=lambda r: r["code"]))
    return len(rows)


def _parent(code: str) -> str:
    if code.endswith("0000"):
        return ""
    return code[:2] + "0000" if code.endswith("00") else code[:4] + "00"
