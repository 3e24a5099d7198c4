"""Dataset contracts: ``schemas/datasets/<dataset>.yml``, everything later stages read.

A contract names the source table it is built from, maps every column to a data element, and
carries the catalog attributes (政务信息资源目录: 共享属性, 开放属性, 更新周期) and the GB/T 43697 grade.
Sharing rules follow STANDARDS.md: 无条件共享 → 共享条件 "无条件"; 有条件共享 → conditions stated;
不予共享 → the legal or policy basis cited; Hefei's base resources are 无条件共享 whatever the grade.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from pipelines.errors import ConfigError
from pipelines.registry import SourceSystem, check_code, line_of, parse_yaml_model
from pipelines.standards import Standards

SharingType = Literal["无条件共享", "有条件共享", "不予共享"]
Method = Literal["database", "file", "service"]
OpenType = Literal["无条件开放", "有条件开放", "不予开放"]
BASE_RESOURCES = ("人口", "法人单位", "社会信用", "自然资源和空间地理", "电子证照")
_STRICTEST = {"核心数据": 0, "重要数据": 1}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ColumnSpec(_Model):
    name: str
    """Column code in std/curated (usually the element code)."""
    element: str
    """Data element code (schemas/standards/elements.yml)."""
    source: str
    """Column code in the raw table."""
    required: bool = False

    @field_validator("name", "source")
    @classmethod
    def _codes(cls, v: str) -> str:
        return check_code(v, "column code")

    @field_validator("element")
    @classmethod
    def _known_element(cls, v: str, info: ValidationInfo) -> str:
        standards = (info.context or {}).get("standards")
        if standards is not None and v not in standards.elements:
            raise ValueError(f"unknown data element {v!r} (not in schemas/standards/elements.yml)")
        return v


class Classification(_Model):
    level: Literal["核心数据", "重要数据", "一般数据"] = "一般数据"
    grade: int | None = Field(default=None, ge=1, le=4)
    """For 一般数据: 4 (most sensitive) … 1."""

    @model_validator(mode="after")
    def _grade(self) -> Classification:
        if self.level == "一般数据" and self.grade is None:
            raise ValueError("一般数据 needs a grade 1–4 (GB/T 43697)")
        return self


class Sharing(_Model):
    type: SharingType
    condition: str | None = None
    basis: str | None = None
    methods: list[Method] = Field(default_factory=lambda: list[Method](["file"]))

    @model_validator(mode="after")
    def _rules(self) -> Sharing:
        if self.type == "无条件共享" and self.condition not in (None, "无条件"):
            raise ValueError("无条件共享: condition must be 无条件")
        if self.type == "有条件共享" and not self.condition:
            raise ValueError("有条件共享: state the sharing conditions under 'condition'")
        if self.type == "不予共享" and not self.basis:
            raise ValueError("不予共享: cite the legal or policy basis under 'basis'")
        return self


class Opening(_Model):
    type: OpenType
    condition: str | None = None

    @model_validator(mode="after")
    def _rules(self) -> Opening:
        if self.type == "有条件开放" and not self.condition:
            raise ValueError("有条件开放: state the opening conditions under 'condition'")
        return self


class DatasetContract(_Model):
    dataset: str
    name: str
    description: str
    owner: str
    """Owning department's code (提供方代码, schemas/departments.yml)."""
    resource_category: str
    """信息资源分类 (e.g. 人口, 法人单位, 社会信用, 自然资源和空间地理, 生态环境, 交通运输, 社会保障)."""
    source: dict[str, str]
    """{system, table}: the raw table ``raw.<system>__<table>`` it is built from."""
    primary_key: list[str] = Field(min_length=1)
    cursor: str | None = None
    """Column ordering versions of a key (latest wins in std)."""
    columns: list[ColumnSpec] = Field(min_length=1)
    classification: Classification
    sharing: Sharing
    open: Opening
    update_cycle: Literal["实时", "每小时", "每日", "每周", "每月", "每季度", "每半年", "每年"]
    format: Literal["电子文件", "电子表格", "数据库", "图形图像", "流媒体", "自描述格式", "服务接口"] = "数据库"
    _file: Path | None = PrivateAttr(default=None)
    _lines: dict[tuple[Any, ...], int] = PrivateAttr(default_factory=dict)

    @field_validator("dataset")
    @classmethod
    def _code(cls, v: str) -> str:
        return check_code(v, "dataset code")

    @field_validator("owner")
    @classmethod
    def _known_owner(cls, v: str, info: ValidationInfo) -> str:
        from pipelines.departments import check_department

        # always checked: without a registry in the context, the project's departments.yml (cached)
        return check_department(v, (info.context or {}).get("departments"))

    @field_validator("source")
    @classmethod
    def _known_source(cls, v: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        if set(v) != {"system", "table"}:
            raise ValueError("source needs exactly system and table")
        systems = (info.context or {}).get("systems")
        if systems is None:
            return v
        system = systems.get(v["system"])
        if system is None:
            raise ValueError(f"source system {v['system']!r} is not in the registry (known: {', '.join(sorted(systems))})")
        tables = [t.code for t in system.all_tables]
        if v["table"] not in tables:
            raise ValueError(f"system {v['system']} has no table {v['table']!r} (known: {', '.join(tables)})")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> DatasetContract:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError("column names repeat")
        for k in [*self.primary_key, *([self.cursor] if self.cursor else [])]:
            if k not in names:
                raise ValueError(f"{k!r} (primary key/cursor) is not one of the columns")
        level = _STRICTEST.get(self.classification.level)
        if level is not None and (self.sharing.type != "不予共享" or self.open.type != "不予开放"):
            raise ValueError(f"{self.classification.level}: 不予共享 and 不予开放 (GB/T 43697 default tiers)")
        if self.resource_category in BASE_RESOURCES and self.sharing.type != "无条件共享":
            raise ValueError(f"{self.resource_category} is a base resource: Hefei shares it 无条件共享")
        if self.classification.grade == 4 and self.open.type != "不予开放":
            raise ValueError("一般数据 grade 4 is 不予开放")
        return self

    @property
    def raw_table(self) -> str:
        return f"raw.{self.source['system']}__{self.source['table']}"

    @property
    def std_table(self) -> str:
        return f"std.{self.dataset}"

    def where(self, *loc: Any) -> str:
        """``file:line`` of a key path of this contract, e.g. ``where("columns", 3, "source")``."""
        return f"{self._file}:{line_of(self._lines, *loc)}" if self._file else f"dataset {self.dataset}"

    def check_sources(self, present: Iterable[str], where: str) -> None:
        """Every column's ``source`` is one of ``present`` (the columns ``where`` has), else one ConfigError
        listing each missing one with its file and line: a missing source would publish an all-null column."""
        have = sorted(c for c in present if not c.startswith("_"))
        problems = []
        for i, col in enumerate(self.columns):
            if col.source not in have:
                near = difflib.get_close_matches(col.source, have, n=1)
                hint = f"did you mean {near[0]!r}?" if near else f"columns: {', '.join(have)}"
                problems.append(f"{self.where('columns', i, 'source')}: columns.{i}.source: column {col.name}: source column "
                                f"{col.source!r} is not in {where} ({hint})")
        if problems:
            raise ConfigError(*problems)


def _read(path: Path, context: dict[str, Any] | None) -> DatasetContract:
    lines: dict[tuple[Any, ...], int] = {}
    contract: DatasetContract = parse_yaml_model(path, DatasetContract, context, lines)
    contract._file, contract._lines = path, lines
    return contract


def load_contracts(directory: Path, standards: Standards, systems: dict[str, SourceSystem],
                   departments: dict[str, Any] | None = None) -> dict[str, DatasetContract]:
    """Every contract, cross-checked with the standards (elements exist), the registry (source system and
    table exist; a column source is not a name the registry renames) and the departments (``owner``; default:
    the project's schemas/departments.yml). Every problem of every file is reported together, each with its
    file and line."""
    from pipelines.departments import default_departments

    departments = default_departments() if departments is None else departments
    out: dict[str, DatasetContract] = {}
    problems: list[str] = []
    for path in sorted(directory.glob("*.yml")):
        try:
            c = _read(path, {"standards": standards, "systems": systems, "departments": departments})
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if c.dataset != path.stem:
            problems.append(f"{c.where('dataset')}: dataset {c.dataset!r} must equal the file name {path.stem!r}")
        renamed = systems[c.source["system"]].table(c.source["table"]).columns
        for i, col in enumerate(c.columns):
            if col.source in renamed and col.source not in renamed.values():  # the source's name, not the raw's
                problems.append(f"{c.where('columns', i, 'source')}: columns.{i}.source: column {col.name}: source {col.source!r} is "
                                f"renamed by the registry; the raw column is {renamed[col.source]!r}")
        out[c.dataset] = c
    problems += _unmapped_references(standards, out)
    if problems:
        raise ConfigError(*problems)
    return out


def _unmapped_references(standards: Standards, contracts: dict[str, DatasetContract]) -> list[str]:
    """An element's authority or copy on a table a contract is built from must be one of that contract's
    column sources: otherwise the item never reaches std and the consistency check cannot compare it."""
    by_table = {(c.source["system"], c.source["table"]): c for c in contracts.values()}
    problems = []
    for e in standards.elements.values():
        for kind, refs in (("authoritative", e.authoritative), ("copies", e.copies)):
            for j, ref in enumerate(refs):
                c = by_table.get((ref.system, ref.table))
                if c is not None and ref.column not in {col.source for col in c.columns}:
                    where = standards.places.get((e.code, kind, j), f"element {e.code}")
                    mapped = [(i, col) for i, col in enumerate(c.columns) if col.element == e.code]
                    there = (f"{c.where('columns', mapped[0][0], 'source')} maps it from {mapped[0][1].source!r}"
                             if mapped else c.where("columns"))
                    problems.append(f"{where}: element {e.code}: column {ref.column!r} is no column source of "
                                    f"contract {c.dataset} ({there})")
    return problems


def contracts_of_table(directory: Path, system: str, table: str) -> list[DatasetContract]:
    """The contracts built from ``raw.<system>__<table>``, read on their own (ingest checks their columns
    against the source; a contract that does not parse is reported by the gate, not by ingest)."""
    found = []
    for path in sorted(directory.glob("*.yml")):
        try:
            c = _read(path, None)
        except ConfigError:
            continue
        if c.source == {"system": system, "table": table}:
            found.append(c)
    return found
