"""Dataset contracts: ``schemas/datasets/<dataset>.yml``, everything later stages read.

A contract names the source table it is built from, maps every column to a data element, and
carries the catalog attributes (政务信息资源目录: 资源分类 类/项/目/细目 and 顺序码, 提供方代码 = ``owner``, 共享属性,
开放属性, 更新周期) and the GB/T 43697 grade. Sharing rules follow STANDARDS.md: 无条件共享 → 共享条件 "无条件";
有条件共享 → conditions stated; 不予共享 → the legal or policy basis cited.

Defaults (``attribute_defaults``): the grade of 一般数据 is that of the most sensitive column's element
(敏感个人信息 4, 个人信息 3, 内部 2, 公开 1); sharing and open follow the grade table of STANDARDS.md for the
DECLARED level and grade (an approved classification override moves them; ``overrides`` shows that knock-on).
The hard rules (``pipelines.grading``) bind whatever the declared classification and always win: Hefei's
base resources 人口/法人单位/社会信用/自然资源和空间地理 无条件共享 and 社会保障 (incl. 住房公积金) 有条件共享, even
at 核心/重要数据; other 核心/重要数据 不予共享; 核心/重要数据 不予开放; grade 4 (declared, or set by a 敏感个人信息
column) 不予开放. Any other departure from a default, stricter or looser, needs an ``override: {reason,
approved_by}`` beside it; an override on an attribute a rule fixes is an error (it cannot lift the rule).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from pipelines.contract_todos import with_todos
from pipelines.departments import DepartmentCode
from pipelines.errors import ConfigError
from pipelines.grading import (
    CLOSED_GRADE,
    GRADE_TIERS,
    HEFEI_CONDITIONAL,
    HEFEI_UNCONDITIONAL,
    SENSITIVITY_GRADE,
    STRICTEST_LEVELS,
)
from pipelines.registry import SourceSystem, check_code, line_of, parse_yaml_model
from pipelines.standards import Standards

SharingType = Literal["无条件共享", "有条件共享", "不予共享"]
Method = Literal["database", "file", "service"]
OpenType = Literal["无条件开放", "有条件开放", "不予开放"]
UpdateCycle = Literal["实时", "每小时", "每日", "每周", "每月", "每季度", "每半年", "每年"]
OVERRIDE_LABELS = {"classification.level": "数据级别", "classification.grade": "分级", "sharing.type": "共享类型",
                   "open.type": "开放类型"}
"""Chinese names of the attributes an override can set (``DatasetContract.overrides``), for the catalog pages."""

UPDATE_CYCLE_LAG: dict[str, timedelta] = {
    "实时": timedelta(hours=1), "每小时": timedelta(hours=2), "每日": timedelta(days=2), "每周": timedelta(days=8),
    "每月": timedelta(days=32), "每季度": timedelta(days=93), "每半年": timedelta(days=184), "每年": timedelta(days=367),
}
"""How long after its last publish a dataset of each update cycle still counts as on time (one cycle plus
grace: an hour for 实时/每小时, a day otherwise); the governance report's freshness reads it."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _known_element(code: str, info: ValidationInfo) -> str:
    standards = (info.context or {}).get("standards")
    if standards is not None and code not in standards.elements:
        raise ValueError(f"unknown data element {code!r} (not in schemas/standards/elements.yml)")
    return code


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
        return _known_element(v, info)


class Override(_Model):
    """An approved departure from a STANDARDS.md default (shown in the catalog and the report)."""

    reason: str = Field(min_length=4)
    """Why, citing the rule or decision that grounds it."""
    approved_by: str = Field(min_length=2)
    """Who approved it (body and, where there is one, the decision's number or date)."""


class CatalogCode(_Model):
    """信息资源分类 and 顺序码 of the 政务信息资源目录 (codes: code_lists/resource_classification.csv)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    class_: str = Field(alias="class", pattern=r"^[1-9]$")
    """类: 1 基础信息资源, 2 主题信息资源, 3 部门信息资源."""
    item: str = Field(pattern=r"^\d{2}$")
    """项, 2 digits."""
    category: str = Field(pattern=r"^\d{3}$")
    """目, 3 digits."""
    subcategory: str = Field(default="", pattern=r"^(\d{3})?$")
    """细目, 3 digits or empty."""
    sequence: int = Field(ge=1, le=9999)
    """顺序码: unique among the provider's resources."""

    @field_validator("class_", mode="before")
    @classmethod
    def _class(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and 0 < v < 10 else v  # one digit: no leading zero to lose

    @field_validator("item", "category", "subcategory", mode="before")
    @classmethod
    def _quoted(cls, v: Any) -> Any:
        if isinstance(v, int):
            raise ValueError(f"quote the code (e.g. \"{v:03d}\"): YAML reads {v} as a number and drops its zeros")
        return "" if v is None else v

    @property
    def code(self) -> str:
        """分类码: 类 + 项 + 目 + 细目."""
        return f"{self.class_}{self.item}{self.category}{self.subcategory}"

    def parts(self) -> list[tuple[str, str]]:
        return [("catalog.class", self.class_), ("catalog.item", self.item), ("catalog.category", self.category),
                ("catalog.subcategory", self.subcategory)]


class Classification(_Model):
    level: Literal["核心数据", "重要数据", "一般数据"] = "一般数据"
    grade: int | None = Field(default=None, ge=1, le=4)
    """For 一般数据: 4 (most sensitive) … 1."""
    override: Override | None = None
    """Needed when level or grade departs from the default (一般数据, grade of the most sensitive element)."""

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
    override: Override | None = None
    """Needed when ``type`` departs from the grade table's default."""

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
    override: Override | None = None
    """Needed when ``type`` departs from the grade table's default."""

    @model_validator(mode="after")
    def _rules(self) -> Opening:
        if self.type == "有条件开放" and not self.condition:
            raise ValueError("有条件开放: state the opening conditions under 'condition'")
        return self


class ContractBase(_Model):
    """What every contract shares, std (``DatasetContract``) and curated (``CuratedContract``): identity, owner,
    the catalog block and the graded attributes, with the file and lines it was read from."""

    dataset: str
    name: str
    description: str
    owner: DepartmentCode
    """Owning department's code (提供方代码, schemas/departments.yml)."""
    resource_category: str
    """信息资源分类 at 项 level: the name of ``catalog``'s 项 (人口, 法人单位, 社会信用, 生态环保, 社会保障, …)."""
    catalog: CatalogCode
    """类/项/目/细目 and 顺序码: with ``owner`` they make the 信息资源代码 (``resource_code``)."""
    classification: Classification
    sharing: Sharing
    open: Opening
    update_cycle: UpdateCycle
    format: Literal["电子文件", "电子表格", "数据库", "图形图像", "流媒体", "自描述格式", "服务接口"] = "数据库"
    _file: Path | None = PrivateAttr(default=None)
    _lines: dict[tuple[Any, ...], int] = PrivateAttr(default_factory=dict)
    _path: list[str] = PrivateAttr(default_factory=list)
    _overrides: list[dict[str, Any]] | None = PrivateAttr(default=None)

    @field_validator("dataset")
    @classmethod
    def _code(cls, v: str) -> str:
        return check_code(v, "dataset code")

    @property
    def file(self) -> Path | None:
        """The YAML file it was read from (None when built in code)."""
        return self._file

    @property
    def resource_code(self) -> str:
        """信息资源代码: 分类码 "/" 提供方代码 "-" 顺序码 (4 digits), e.g. ``101001/11340100003001113F-0001``."""
        return f"{self.catalog.code}/{self.owner}-{self.catalog.sequence:04d}"

    @property
    def catalog_path(self) -> str:
        """The classification in Chinese, e.g. ``基础信息资源/人口/人口基本信息``."""
        if not self._path:
            from pipelines.resource_classification import FILE, cached_classification, resolve
            from pipelines.settings import load_settings

            classes = cached_classification(load_settings().root / FILE)
            self._path = [c.name for c in resolve(classes, self.catalog.parts())]
        return "/".join(self._path)

    @property
    def overrides(self) -> list[dict[str, Any]]:
        """Every approved departure: ``{attribute, value, default, reason, approved_by}`` (``default`` is None
        for a contract read on its own, without the elements that set it)."""
        if self._overrides is not None:
            return list(self._overrides)
        return [{"attribute": attr, "value": value, "default": None, "reason": o.reason, "approved_by": o.approved_by}
                for attr, value, o in (("classification.grade", self.classification.grade, self.classification.override),
                                       ("sharing.type", self.sharing.type, self.sharing.override),
                                       ("open.type", self.open.type, self.open.override)) if o is not None]

    def where(self, *loc: Any) -> str:
        """``file:line`` of a key path of this contract, e.g. ``where("columns", 3, "source")``."""
        return f"{self._file}:{line_of(self._lines, *loc)}" if self._file else f"dataset {self.dataset}"


def _check_columns(names: list[str], keys: list[str], what: str) -> None:
    """A contract's column names are unique and each of ``keys`` (its ``what``) is one of them."""
    if len(set(names)) != len(names):
        raise ValueError("column names repeat")
    for k in keys:
        if k not in names:
            raise ValueError(f"{k!r} ({what}) is not one of the columns")


class DatasetContract(ContractBase):
    """A std dataset: ``std.<dataset>`` built from one raw source table (``schemas/datasets/<dataset>.yml``)."""

    kind: Literal["std"] = "std"
    source: dict[str, str]
    """{system, table}: the raw table ``raw.<system>__<table>`` it is built from."""
    primary_key: list[str] = Field(min_length=1)
    cursor: str | None = None
    """Column ordering versions of a key (latest wins in std)."""
    columns: list[ColumnSpec] = Field(min_length=1)

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
        _check_columns([c.name for c in self.columns], [*self.primary_key, *([self.cursor] if self.cursor else [])],
                       "primary key/cursor")
        # grade, sharing and open against their defaults and the rules: load_contracts (needs the elements)
        return self

    @property
    def raw_table(self) -> str:
        return f"raw.{self.source['system']}__{self.source['table']}"

    @property
    def std_table(self) -> str:
        return f"std.{self.dataset}"

    @property
    def table(self) -> str:
        """The lake table it describes (``std.<dataset>``; ``curated.<dataset>`` for a CuratedContract)."""
        return self.std_table

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


Deid = Literal["keep", "drop", "mask", "year", "district", "grid", "suppress"]
"""What the OPEN release does to a curated column: keep it, drop it, mask it (display mask of its element),
generalise it (birth date → year, address → district, coordinates → grid cell) or suppress small cells (an
integer count below ``open.k`` is withheld). ``curated.<dataset>`` itself always holds the full values."""
CURATE_DIR = Path(__file__).parent / "curate"
"""Where the curated models live: ``pipelines/curate/<dataset>.sql`` (one DuckDB SELECT each)."""


class CuratedColumn(_Model):
    """One column of a curated dataset: its element and what the open release does to it."""

    name: str
    """Column code in ``curated.<dataset>`` (usually the element code)."""
    element: str
    """Data element code (schemas/standards/elements.yml)."""
    required: bool = False
    deid: Deid = "keep"
    """What the OPEN release does to this column (curated.<dataset> keeps full values)."""
    grid: float = Field(default=0.01, gt=0, le=1)
    """Cell size in degrees for deid ``grid`` (coordinates floored to the cell's south-west corner)."""

    @field_validator("name")
    @classmethod
    def _codes(cls, v: str) -> str:
        return check_code(v, "column code")

    @field_validator("element")
    @classmethod
    def _element(cls, v: str, info: ValidationInfo) -> str:
        return _known_element(v, info)

    @model_validator(mode="after")
    def _grid_used(self) -> CuratedColumn:
        if "grid" in self.model_fields_set and self.deid != "grid":
            raise ValueError(f"grid is the cell size of deid grid; column {self.name} has deid {self.deid}: remove "
                             "grid or use deid: grid")
        return self


class CuratedOpening(Opening):
    """``open`` of a curated contract: the open attribute plus how the dataset meets its condition."""

    met_by: str | None = None
    """Required for 有条件开放: how the curated dataset meets the condition by construction (an aggregate, a
    generalisation, a dropped column)."""
    k: int = Field(default=5, ge=5)
    """Small-cell threshold for columns with deid ``suppress``: a count below k is withheld."""

    @model_validator(mode="after")
    def _met(self) -> CuratedOpening:
        if self.type == "有条件开放" and not (self.met_by or "").strip():
            raise ValueError("有条件开放: say under 'met_by' how this curated dataset meets the condition by "
                             "construction (an aggregate, a generalisation, a dropped column)")
        if self.type != "有条件开放" and self.met_by:
            raise ValueError(f"met_by explains how a 有条件开放 condition is met; open type is {self.type}: remove it")
        return self


class ReleaseCard(_Model):
    """高质量数据集 card (optional ``card:`` block): released beside the data as card.md / card.json."""

    intended_use: str = Field(min_length=4)
    limitations: str | None = None
    licence: str | None = None
    """Overrides the contract's ``licence`` for the card when set (SPDX id)."""


class CuratedContract(ContractBase):
    """A curated dataset: ``curated.<dataset>`` built by ``pipelines/curate/<model>`` from std (or curated)
    inputs (``schemas/curated/<dataset>.yml``); the only kind the open release exports."""

    kind: Literal["curated"] = "curated"
    domain: str
    """Groups datasets into one DAG, ``curate__<domain>``."""
    inputs: list[str] = Field(min_length=1)
    """``std.<dataset>`` or ``curated.<dataset>``: the contract exists, no cycles."""
    model: str | None = None
    """The model file in pipelines/curate/ (default ``<dataset>.sql``)."""
    primary_key: list[str] = Field(min_length=1)
    columns: list[CuratedColumn] = Field(min_length=1)
    open: CuratedOpening
    licence: str = Field(default="CC-BY-4.0", pattern=r"^[A-Za-z0-9.+-]+$")
    """Open-data licence of the release (SPDX id)."""
    card: ReleaseCard | None = None
    _models_dir: Path = PrivateAttr(default=CURATE_DIR)

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        return check_code(v, "domain code")

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, v: list[str]) -> list[str]:
        for x in v:
            ns, _, name = x.partition(".")
            if ns not in ("std", "curated") or not name:
                raise ValueError(f"input {x!r}: write std.<dataset> or curated.<dataset>")
            check_code(name, "dataset code")
        if len(set(v)) != len(v):
            raise ValueError("inputs repeat")
        return v

    @field_validator("model")
    @classmethod
    def _model(cls, v: str | None) -> str | None:
        if v is not None and (not v.endswith(".sql") or "/" in v or "\\" in v):
            raise ValueError(f"model {v!r}: a file name in pipelines/curate/ ending .sql")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> CuratedContract:
        _check_columns([c.name for c in self.columns], self.primary_key, "primary key")
        return self

    @property
    def table(self) -> str:
        return f"curated.{self.dataset}"

    @property
    def std_table(self) -> str:
        """The lake table, for code that treats every contract like a std one (suites, results, catalog)."""
        return self.table

    @property
    def model_path(self) -> Path:
        return self._models_dir / (self.model or f"{self.dataset}.sql")

    @property
    def input_datasets(self) -> list[tuple[str, str]]:
        """``(namespace, dataset)`` of every input, e.g. ``("std", "person")``."""
        return [(x.partition(".")[0], x.partition(".")[2]) for x in self.inputs]

    def open_columns(self) -> list[CuratedColumn]:
        """The columns the open release carries (every column whose deid is not ``drop``), in order."""
        return [c for c in self.columns if c.deid != "drop"]


AnyContract = DatasetContract | CuratedContract
"""Either kind: what the grading, the catalog block checks and the suites read."""


def _read(path: Path, context: dict[str, Any] | None, model: type[ContractBase] = DatasetContract) -> Any:
    lines: dict[tuple[Any, ...], int] = {}
    try:
        contract: ContractBase = parse_yaml_model(path, model, context, lines)
    except ConfigError as exc:  # a `TODO` left by `citylake contract new` is reported as such, with its line
        raise ConfigError(*with_todos(path, lines, exc.problems)) from None
    if todos := with_todos(path, lines, []):  # a TODO in a free-text field parses: still undecided
        raise ConfigError(*todos)
    contract._file, contract._lines = path, lines
    return contract


def load_contracts(directory: Path, standards: Standards, systems: dict[str, SourceSystem],
                   departments: dict[str, Any] | None = None) -> dict[str, DatasetContract]:
    """Every contract, cross-checked with the standards (elements exist), the registry (source system and
    table exist; a column source is not a name the registry renames; ``owner`` is the source system's
    department) and the departments (``owner``; default: the project's schemas/departments.yml). Every problem of every file is reported together, each with its
    file and line."""
    from pipelines.departments import department_name, load_departments

    departments = load_departments() if departments is None else departments
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
        system = systems[c.source["system"]]
        if c.owner != system.department:  # alerts, pages and the resource code name one provider
            problems.append(f"{c.where('owner')}: owner: {c.owner} ({department_name(departments, c.owner)}) is not "
                            f"the department of its source system {system.system}, {system.department} "
                            f"({department_name(departments, system.department)}); the 提供方 is the source "
                            f"system's department: write owner: \"{system.department}\" or fix the system's "
                            "registry file")
        renamed = system.table(c.source["table"]).columns
        for i, col in enumerate(c.columns):
            if col.source in renamed and col.source not in renamed.values():  # the source's name, not the raw's
                problems.append(f"{c.where('columns', i, 'source')}: columns.{i}.source: column {col.name}: source {col.source!r} is "
                                f"renamed by the registry; the raw column is {renamed[col.source]!r}")
        out[c.dataset] = c
    for c in out.values():
        problems += catalog_problems(c, standards)
    problems += _sequences(out.values())
    problems += _unmapped_references(standards, out)
    if problems:
        raise ConfigError(*problems)
    return out


def _sequences(contracts: Iterable[ContractBase], only: type[ContractBase] = ContractBase) -> list[str]:
    """顺序码 is unique within the provider: two contracts of one owner with one sequence share a resource code
    (std and curated contracts alike; ``only``: report the clashes of that kind, the other's were reported)."""
    seen: dict[tuple[str, int], ContractBase] = {}
    problems = []
    for c in contracts:
        first = seen.setdefault((c.owner, c.catalog.sequence), c)
        if first is not c and isinstance(c, only):
            problems.append(f"{c.where('catalog', 'sequence')}: catalog.sequence: {c.catalog.sequence} is already "
                            f"used by {first.dataset} ({first.where('catalog', 'sequence')}) of the same provider "
                            f"{c.owner}; a 顺序码 is unique within the provider")
    return problems


class Defaults(NamedTuple):
    """What ``catalog_problems`` checks a contract's graded attributes against."""

    declared: dict[str, Any]
    """attribute → default: grade from the columns, sharing/open from the declared level and grade's tier."""
    columns: dict[str, Any]
    """sharing/open defaults had the classification kept its default (一般数据, the columns' grade): where
    ``declared`` differs, the value is a knock-on of the classification override and listed as such."""
    rules: dict[str, tuple[Any, str]]
    """attribute → (value, why) of the hard rules that bind it whatever the declared classification."""
    why: str
    """What sets the default grade."""


def _tier(level: str, grade: int | None) -> tuple[str, str]:
    return ("不予共享", "不予开放") if level in STRICTEST_LEVELS or grade is None else GRADE_TIERS[grade]


def attribute_defaults(c: AnyContract, standards: Standards, item: str, base: bool) -> Defaults:
    """The default of each graded attribute and the hard rules (pipelines.grading) that fix one whatever the
    declared classification: a rule always wins, and a Hefei sharing rule wins over 核心/重要数据's 不予共享."""
    cols: list[ColumnSpec | CuratedColumn] = list(c.columns)
    worst = max(cols, key=lambda col: SENSITIVITY_GRADE[standards.elements[col.element].sensitivity])
    sensitivity = standards.elements[worst.element].sensitivity
    by_columns = SENSITIVITY_GRADE[sensitivity]
    why = f"its most sensitive column {worst.name} is {sensitivity}"
    level, grade = c.classification.level, c.classification.grade
    strict = level in STRICTEST_LEVELS
    rules: dict[str, tuple[Any, str]] = {}
    if base and item in HEFEI_UNCONDITIONAL:
        rules["sharing.type"] = ("无条件共享", f"{item} is a base resource: Hefei shares it 无条件共享 whatever its "
                                             "level or grade")
    elif item in HEFEI_CONDITIONAL:
        rules["sharing.type"] = ("有条件共享", f"{item}: Hefei shares it 有条件共享 (with fast response) whatever "
                                             "its level or grade")
    elif strict:
        rules["sharing.type"] = ("不予共享", f"{level} is 不予共享 (STANDARDS.md; no Hefei sharing rule names {item})")
    if strict:
        rules["open.type"] = ("不予开放", f"{level} is 不予开放 (STANDARDS.md)")
    elif grade == CLOSED_GRADE:
        rules["open.type"] = ("不予开放", f"一般数据 grade {CLOSED_GRADE} is 不予开放")
    elif by_columns == CLOSED_GRADE:
        rules["open.type"] = ("不予开放", f"{why} (grade {CLOSED_GRADE}): 不予开放 whatever the declared grade")
    declared_tier, columns_tier = _tier(level, grade), GRADE_TIERS[by_columns]
    declared: dict[str, Any] = {"classification.level": "一般数据",
                                "classification.grade": None if strict else by_columns}
    columns: dict[str, Any] = {}
    for i, attr in enumerate(("sharing.type", "open.type")):
        declared[attr] = rules[attr][0] if attr in rules else declared_tier[i]
        columns[attr] = rules[attr][0] if attr in rules else columns_tier[i]
    return Defaults(declared, columns, rules, why)


def catalog_problems(c: AnyContract, standards: Standards) -> list[str]:
    """The catalog block resolves in the classification code list, ``resource_category`` names its 项, and
    each graded attribute keeps its default or carries an override, and keeps every rule; records
    ``c.overrides`` (with the sharing/open values a classification override moved)."""
    from pipelines.resource_classification import UnknownClass, resolve

    try:
        path = resolve(standards.resource_classes, c.catalog.parts())
    except UnknownClass as exc:
        return [f"{c.where(*exc.field.split('.'))}: {exc}"]
    c._path = [p.name for p in path]
    item = path[1].name
    problems = []
    if c.resource_category != item:
        problems.append(f"{c.where('resource_category')}: resource_category: {c.resource_category!r} is not the 项 of "
                        f"catalog {c.catalog.code} ({c.catalog_path}); write resource_category: {item}")
    d = attribute_defaults(c, standards, item, path[0].code == "1")
    cls = c.classification
    values = {"classification.level": cls.level, "classification.grade": cls.grade,
              "sharing.type": c.sharing.type, "open.type": c.open.type}
    owners = {"classification.level": cls.override, "classification.grade": cls.override,
              "sharing.type": c.sharing.override, "open.type": c.open.override}
    overrides: list[dict[str, Any]] = []
    used: set[str] = set()
    fixed: dict[str, str] = {}  # block → the rule its override would try to lift
    for attr, value in values.items():
        block, _ = attr.split(".")
        where = c.where(*attr.split("."))
        if attr in d.rules:
            rule_value, rule_why = d.rules[attr]
            if owners[attr] is not None:
                fixed[block] = f"{attr} is fixed by a rule ({rule_why})"
            if value != rule_value:
                problems.append(f"{where}: {attr}: {value} breaks a rule: {rule_why} (default {rule_value}; a rule "
                                "is not lifted by an override)")
            continue
        default = d.declared[attr]
        if value == default or (attr == "classification.grade" and default is None):
            if cls.override is not None and attr in d.columns and value != d.columns[attr]:
                # a knock-on of the approved grade, listed so the catalog shows why it is not the columns' tier
                overrides.append({"attribute": attr, "value": value, "default": d.columns[attr],
                                  "reason": f"随分级覆盖：{value}是核定的{cls.grade}级的默认取值（按各列定级为 "
                                            f"{d.declared['classification.grade']} 级时应为{d.columns[attr]}）；定级理由见"
                                            "本数据集「分级」的审批记录",
                                  "approved_by": cls.override.approved_by})
            continue
        override = owners[attr]
        basis = d.why if attr == "classification.grade" else (
            "GB/T 43697" if attr == "classification.level" else f"grade {cls.grade}: STANDARDS.md grade table")
        if override is None:
            problems.append(f"{where}: {attr}: {value} departs from its default {default} ({basis}); use "
                            f"{default} or give {block}.override: {{reason, approved_by}}")
            continue
        used.add(block)
        overrides.append({"attribute": attr, "value": value, "default": default, "reason": override.reason,
                          "approved_by": override.approved_by})
    for block, override in (("classification", cls.override), ("sharing", c.sharing.override),
                            ("open", c.open.override)):
        if override is not None and block not in used:
            idle = (f"{fixed[block]} and an override cannot lift it" if block in fixed
                    else "nothing departs from its default here")
            problems.append(f"{c.where(block, 'override')}: {block}.override: {idle}; remove the override (it "
                            "records a departure)")
    c._overrides = overrides
    return problems


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


def contract_files_of_table(directory: Path, system: str, table: str) -> list[tuple[Path, dict[str, Any]]]:
    """(file, plain YAML) of every contract in ``directory`` whose ``source`` is ``{system, table}``, in file
    order. Plain YAML on purpose: a draft still holding TODOs, or a contract another check rejects, is still
    this table's contract (an alert links to its page; ``contract new`` redrafts it, never a second file).
    A file that is not YAML is nobody's contract here; its own load reports it."""
    import yaml

    from pipelines.registry import SAFE_LOADER

    found = []
    for path in sorted(directory.glob("*.yml")):
        try:
            doc = yaml.load(path.read_text(encoding="utf-8"), Loader=SAFE_LOADER)  # noqa: S506 - a safe loader
        except (yaml.YAMLError, OSError, UnicodeDecodeError):
            continue
        if isinstance(doc, dict) and doc.get("source") == {"system": system, "table": table}:
            found.append((path, doc))
    return found


def contracts_of_table(directory: Path, system: str, table: str) -> list[DatasetContract]:
    """The contracts built from ``raw.<system>__<table>``, read on their own (ingest checks their columns
    against the source; a contract that does not parse is reported by the gate, not by ingest)."""
    found = []
    for path, _doc in contract_files_of_table(directory, system, table):
        try:
            found.append(_read(path, None))
        except ConfigError:
            continue
    return found


# --- curated contracts (issue 10) ------------------------------------------------------------------


def _coordinate(e: Any) -> bool:
    return bool(e.type == "float" and e.unit == "度")


def _address(e: Any) -> bool:
    return bool(e.code.endswith("address") or e.name_zh.endswith("地址"))


DEID_FITS: dict[str, tuple[Any, str]] = {
    "suppress": (lambda e: e.type == "integer", "an integer count (element type integer)"),
    "year": (lambda e: e.type in ("date", "timestamp"), "a date or timestamp"),
    "grid": (_coordinate, "a longitude or latitude (element type float, unit 度)"),
    "district": (_address, "an address (element …address / …地址)"),
    "mask": (lambda e: e.type == "string", "a text (element type string)"),
}
"""deid → (does the column's element fit, what it needs): a generalisation on the wrong kind of column would
release the value unchanged or fail at release time."""


def load_curated_contracts(directory: Path, standards: Standards, contracts: dict[str, DatasetContract],
                           departments: dict[str, Any] | None = None,
                           models_dir: Path | None = None, only: set[str] | None = None) -> dict[str, CuratedContract]:
    """Every curated contract (``schemas/curated/*.yml``), cross-checked with the standards (elements exist;
    each element's ``derived_by`` names a curated column carrying it), the std ``contracts`` (inputs exist; the
    provider owns an input; 顺序码 unique per provider across both kinds), one another (inputs, no cycles) and
    the models (``models_dir``, default pipelines/curate/: the model file exists). The catalog block, defaults
    and hard rules are those of std contracts (grade from the most sensitive column); the open release's
    de-identification is checked per column. Every problem of every file together, each ``file:line: field:``."""
    from pipelines.departments import load_departments

    departments = load_departments() if departments is None else departments
    out: dict[str, CuratedContract] = {}
    problems: list[str] = []
    broken: set[str] = set()  # files that did not parse: their own problems say why, references to them are not news
    for path in sorted(directory.glob("*.yml")) if directory.is_dir() else []:
        if only is not None and path.stem not in only:
            continue  # a build reads its own contract and its curated inputs' (a broken other file is not its)
        try:
            c: CuratedContract = _read(path, {"standards": standards, "departments": departments}, CuratedContract)
        except ConfigError as exc:
            problems.extend(exc.problems)
            broken.add(path.stem)
            continue
        c._models_dir = CURATE_DIR if models_dir is None else models_dir
        if c.dataset != path.stem:
            problems.append(f"{c.where('dataset')}: dataset: {c.dataset!r} must equal the file name {path.stem!r}")
        if c.dataset in contracts:  # one suite file, one catalog entry, one open-data name per dataset
            problems.append(f"{c.where('dataset')}: dataset: {c.dataset!r} is also a std contract "
                            f"({contracts[c.dataset].where('dataset')}); a curated dataset needs its own name")
        if not c.model_path.is_file():
            problems.append(f"{c.where('model' if c.model else 'dataset')}: model: {c.model_path} does not exist; "
                            "write the model (one DuckDB SELECT) or name it under model:")
        out[c.dataset] = c
    for c in out.values():
        problems += _input_problems(c, contracts, out, departments, broken)
        problems += catalog_problems(c, standards)
        problems += _open_problems(c, standards)
        problems += _sharing_problems(c, standards, contracts, out)
    problems += _cycles(out)
    problems += _sequences([*contracts.values(), *out.values()], only=CuratedContract)
    problems += _derived_problems(standards, out, broken if only is None else broken | (
        {e.derived_by.dataset for e in standards.elements.values() if e.derived_by} - set(out)))
    if problems:
        raise ConfigError(*problems)
    return out


def _input_problems(c: CuratedContract, contracts: dict[str, DatasetContract], curated: dict[str, CuratedContract],
                    departments: dict[str, Any], broken: set[str]) -> list[str]:
    """Each input has a contract of its kind; the provider (``owner``) owns one of them."""
    from pipelines.departments import department_name

    problems = []
    owners: list[str] = []
    for i, (ns, ds) in enumerate(c.input_datasets):
        known: dict[str, Any] = contracts if ns == "std" else curated
        if ds == c.dataset and ns == "curated":
            problems.append(f"{c.where('inputs', i)}: inputs.{i}: {c.table} cannot be built from itself")
        elif ns == "curated" and ds in broken:
            continue
        elif ds not in known:
            near = difflib.get_close_matches(ds, list(known), n=1)
            hint = f"did you mean {ns}.{near[0]}?" if near else f"known: {', '.join(f'{ns}.{k}' for k in sorted(known))}"
            folder = "schemas/datasets" if ns == "std" else "schemas/curated"
            problems.append(f"{c.where('inputs', i)}: inputs.{i}: {ns}.{ds} has no contract in {folder} ({hint})")
        else:
            owners.append(known[ds].owner)
    if owners and c.owner not in owners:
        problems.append(f"{c.where('owner')}: owner: {c.owner} ({department_name(departments, c.owner)}) owns none of "
                        f"its inputs ({', '.join(c.inputs)}); the 提供方 of a curated dataset is the department of "
                        f"its primary input: write owner: \"{owners[0]}\" "
                        f"({department_name(departments, owners[0])})")
    return problems


def _cycles(curated: dict[str, CuratedContract]) -> list[str]:
    from graphlib import CycleError, TopologicalSorter

    graph = {name: [ds for ns, ds in c.input_datasets if ns == "curated" and ds in curated and ds != name]
             for name, c in curated.items()}
    try:
        TopologicalSorter(graph).prepare()
    except CycleError as exc:
        cycle = exc.args[1]
        first = curated[cycle[0]]
        return [f"{first.where('inputs')}: inputs: {' → '.join(f'curated.{d}' for d in reversed(cycle))} is a cycle: "
                "a curated dataset cannot depend on itself"]
    return []


def _open_problems(c: CuratedContract, standards: Standards) -> list[str]:
    """What the open release does to each column fits the column and the open attribute: an open dataset
    never keeps a 敏感个人信息 (grade 4) column, never keeps a 个人信息 column as is; a generalisation fits its
    column's element; the key survives (releases are compared by it)."""
    opened = c.open.type != "不予开放"
    problems = []
    for i, col in enumerate(c.columns):
        e = standards.elements[col.element]
        where = f"{c.where('columns', i, 'deid')}: columns.{i}.deid: column {col.name} ({e.code}, {e.name_zh})"
        if opened and e.sensitivity == "内部" and col.deid == "keep":
            problems.append(f"{where} is 内部 (internal: not for the public) and the open release keeps it in a "
                            f"{c.open.type} dataset: write deid: drop (or open type 不予开放)")
        if opened and col.deid == "mask" and _identifier(e):
            problems.append(f"{where} is an identifier: a masked one (6+4 of an ID, 3+4 of a mobile) still singles "
                            "a person out in open data; write deid: drop")
        if opened and e.sensitivity == "敏感个人信息" and col.deid != "drop":
            problems.append(f"{where} is 敏感个人信息 (grade 4) and the open release keeps it (deid {col.deid}) in a "
                            f"{c.open.type} dataset: grade 4 is never opened; write deid: drop (or open type 不予开放)")
        elif opened and e.sensitivity == "个人信息" and col.deid == "keep":
            problems.append(f"{where} is 个人信息 and the open release keeps it as is in a {c.open.type} dataset: "
                            "drop, mask or generalise it (deid: drop | mask | year | district | grid)")
        if col.deid in DEID_FITS and not DEID_FITS[col.deid][0](e):
            problems.append(f"{where}: deid {col.deid} needs {DEID_FITS[col.deid][1]}; {e.code} is "
                            f"{e.type}{f' ({e.unit})' if e.unit else ''}")
        if opened and col.name in c.primary_key and col.deid != "keep":
            problems.append(f"{where}: deid {col.deid} on a primary key column: releases are compared by key; keep "
                            "it or build the curated dataset on a key that may be opened")
    if "k" in c.open.model_fields_set and not any(col.deid == "suppress" for col in c.columns):
        problems.append(f"{c.where('open', 'k')}: open.k: the small-cell threshold applies to deid suppress; no "
                        "column suppresses: remove k")
    return problems


IDENTIFIER_VALIDATORS = frozenset({"resident_id", "mobile", "bank_card", "passport"})
"""Validators whose values identify a person; an element with one is never masked for open data, only dropped."""
_IDENTIFIER_CODE = re.compile(r"(^|_)(resident_id|id_number|mobile|phone|account|card|card_no|passport)(_|$)")


def _identifier(e: Any) -> bool:
    """A personal identifier: its validator is an identifier kind, or a personal element named as an account,
    card, phone or ID number (housing_fund_account, bank_card_no, mobile_phone)."""
    return e.validator in IDENTIFIER_VALIDATORS or (
        e.sensitivity in ("个人信息", "敏感个人信息") and _IDENTIFIER_CODE.search(e.code) is not None)


SHARING_RANK = {"无条件共享": 0, "有条件共享": 1, "不予共享": 2}


def _sharing_problems(c: CuratedContract, standards: Standards, contracts: dict[str, DatasetContract],
                      curated: dict[str, CuratedContract]) -> list[str]:
    """A curated dataset is shared no more loosely than the input its column's values come from: the input
    carrying the column's element as its authority (else the inputs carrying the element); a derived personal
    column may come from any input. Looser needs a ``sharing.override`` saying why; when a hard rule fixes the
    curated dataset's sharing type, no override lifts it: the column moves out."""
    from pipelines.resource_classification import UnknownClass, resolve

    inputs: list[tuple[str, Any]] = []
    for ns, ds in c.input_datasets:
        known: dict[str, Any] = contracts if ns == "std" else curated
        if ds in known and ds != c.dataset:
            inputs.append((f"{ns}.{ds}", known[ds]))
    try:
        path = resolve(standards.resource_classes, c.catalog.parts())
        fixed = "sharing.type" in attribute_defaults(c, standards, path[1].name, path[0].code == "1").rules
    except (UnknownClass, IndexError):
        fixed = False  # catalog_problems reports the catalog
    problems = []
    for i, col in enumerate(c.columns):
        e = standards.elements[col.element]
        carriers = [(n, k) for n, k in inputs if any(x.element == e.code for x in k.columns)]
        ref = e.authority
        if ref is not None:
            own = [(n, k) for n, k in carriers
                   if getattr(k, "source", None) and (k.source["system"], k.source["table"]) == (ref.system, ref.table)]
            carriers = own or carriers
        elif e.sensitivity in ("个人信息", "敏感个人信息"):
            carriers = inputs  # derived from personal data: from any input
        if not carriers:
            continue
        name, strict = max(carriers, key=lambda x: SHARING_RANK[x[1].sharing.type])
        if SHARING_RANK[strict.sharing.type] <= SHARING_RANK[c.sharing.type]:
            continue
        where = (f"{c.where('columns', i, 'element')}: columns.{i}: column {col.name} ({e.code}, {e.name_zh}) comes "
                 f"from {name}, shared {strict.sharing.type} ({strict.where('sharing', 'type')}), and "
                 f"curated.{c.dataset} is shared {c.sharing.type}")
        if fixed:
            problems.append(f"{where} by a hard rule ({c.resource_category}): no override lifts it; move the column "
                            f"out to a dataset shared {strict.sharing.type}")
        elif c.sharing.override is None:
            problems.append(f"{where}: share it {strict.sharing.type} (or stricter), say under sharing.override "
                            "{reason, approved_by} why these values may be shared more widely, or move the column out")
    return problems


def _derived_problems(standards: Standards, curated: dict[str, CuratedContract], broken: set[str]) -> list[str]:
    """An element's ``derived_by: {dataset, column}`` names a curated column that carries that element."""
    problems = []
    for e in standards.elements.values():
        ref = e.derived_by
        if ref is None or ref.dataset in broken:
            continue
        where = standards.places.get((e.code, "derived_by", 0), f"element {e.code}")
        c = curated.get(ref.dataset)
        if c is None:
            problems.append(f"{where}: element {e.code}: derived_by names {ref.dataset!r}, which has no curated "
                            f"contract (schemas/curated/; have: {', '.join(sorted(curated)) or 'none'})")
            continue
        col = next((x for x in c.columns if x.name == ref.column), None)
        if col is None:
            problems.append(f"{where}: element {e.code}: curated.{c.dataset} has no column {ref.column!r} "
                            f"({c.where('columns')})")
        elif col.element != e.code:
            i = c.columns.index(col)
            problems.append(f"{where}: element {e.code}: column {ref.column} of curated.{c.dataset} carries element "
                            f"{col.element} ({c.where('columns', i, 'element')}), not {e.code}")
    return problems
