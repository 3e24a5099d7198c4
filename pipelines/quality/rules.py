"""Quality rules: GX expectations generated from the standards and a contract, evaluated vectorised.

The spec is a GX Core suite (``expectations/<dataset>.json``): each expectation carries its GX
``severity`` (critical blocks, warning reports, info) and in ``meta`` the rule id, GB/T 36344 dimension,
data element, the defect tag shared with the seed manifest, and the blocking threshold. citylake compiles
each expectation to a vectorised check over Arrow (``compile_rule``); plain GX can run the same suite
(``pipelines.quality.gx_expectations`` registers the custom types).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.contracts import AnyContract
from pipelines.privacy import mask_message
from pipelines.quality import validators as v
from pipelines.standards import Standards

Check = Callable[[pa.Table], pa.Array]  # True where the row passes; null counts as passing
REFERENCE = {"$PARAMETER": "reference_date"}
DEFAULT_THRESHOLD = 0.2


@dataclass(frozen=True)
class Rule:
    id: str
    dataset: str
    column: str
    element: str
    dimension: str
    severity: str
    tag: str
    description: str
    check: Check
    threshold: float = DEFAULT_THRESHOLD
    """A critical rule failing on more than this share of a batch holds the batch."""
    expectation: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    """The GX expectation configuration it came from, parameters resolved (for GX results and Data Docs)."""


def expectations(contract: AnyContract, standards: Standards) -> list[dict[str, Any]]:
    """The generated GX expectation configurations of one dataset (deterministic, no ids)."""
    out: list[dict[str, Any]] = []

    def add(name: str, element: str, suffix: str, dimension: str, severity: str, tag: str, description: str,
            type_: str, **kwargs: Any) -> None:
        out.append({"type": type_, "kwargs": kwargs, "severity": severity,
                    "meta": {"rule_id": f"{contract.dataset}.{name}.{suffix}", "dimension": dimension,
                             "element": element, "tag": tag, "description": description,
                             "threshold": DEFAULT_THRESHOLD}})

    for col in contract.columns:
        e = standards.element(col.element)
        n = col.name
        if col.required:
            add(n, e.code, "required", "完整性", "critical", "null_required", f"{e.name_zh}不得为空",
                "expect_column_values_to_not_be_null", column=n)
        if e.validator == "resident_id":
            add(n, e.code, "format", "规范性", "critical", "resident_id_format", "18位, 末位为数字或大写X",
                "expect_column_values_to_match_regex", column=n, regex=r"^\d{17}[\dX]$")
            add(n, e.code, "check_digit", "准确性", "critical", "resident_id_check_digit", "GB 11643 校验码正确",
                "expect_column_values_to_have_valid_resident_id_check_digit", column=n)
            add(n, e.code, "birth_date", "准确性", "critical", "resident_id_birth_date", "出生日期真实且不晚于当日",
                "expect_column_values_to_have_real_resident_id_birth_date", column=n, reference_date=REFERENCE)
            add(n, e.code, "region", "准确性", "warning", "resident_id_region", "地址码存在于 GB/T 2260 (含历史代码)",
                "expect_column_values_to_have_known_resident_id_region", column=n)
        elif e.validator == "uscc":
            add(n, e.code, "check_digit", "准确性", "critical", "uscc_check_digit", "GB 32100 校验码正确",
                "expect_column_values_to_be_valid_uscc", column=n)
            add(n, e.code, "org_code", "准确性", "warning", "uscc_org_code", "内嵌组织机构代码校验正确",
                "expect_column_values_to_have_valid_uscc_org_code", column=n)
        elif e.validator == "mobile":
            add(n, e.code, "format", "规范性", "warning", "mobile_format", "11位手机号码",
                "expect_column_values_to_be_valid_mobile_number", column=n)
        elif e.validator == "date_not_future":
            add(n, e.code, "not_future", "时效性", "critical", "future_date", "不晚于当日",
                "expect_column_values_to_not_be_in_the_future", column=n, reference_date=REFERENCE)
        elif e.validator == "hefei_bounds" and e.code == "longitude":
            lat = next((x.name for x in contract.columns if x.element == "latitude"), None)
            if lat:
                add(n, e.code, "in_city", "准确性", "warning", "out_of_bounds", "坐标位于合肥市范围内",
                    "expect_column_pair_values_to_be_inside_hefei", column_A=n, column_B=lat)
        # with a code list too: a list may hold several levels (门类 letters and 大类 digits), the format says which
        if e.format and e.format.startswith("^") and not e.validator:
            add(n, e.code, "format", "规范性", "warning", "format", f"符合格式 {e.format}",
                "expect_column_values_to_match_regex", column=n, regex=e.format)
        if e.min_length is not None or e.max_length is not None:
            add(n, e.code, "length", "规范性", "warning", "length",
                f"长度 {e.min_length or 0}–{e.max_length or '∞'} 个字符",
                "expect_column_value_lengths_to_be_between", column=n, min_value=e.min_length, max_value=e.max_length)
        if e.min_value is not None or e.max_value is not None:
            add(n, e.code, "range", "准确性", "warning", "out_of_range",
                f"取值范围 {e.min_value if e.min_value is not None else '-∞'} 至 "
                f"{e.max_value if e.max_value is not None else '∞'}",
                "expect_column_values_to_be_between", column=n, min_value=e.min_value, max_value=e.max_value)
        if e.code_list and e.validator == "division_code":  # 3,000+ codes: a named table, not an inline set
            add(n, e.code, "known_division", "准确性", "critical", "unknown_district_code",
                f"取值于代码表 {e.code_list} (GB/T 2260, 含开发区扩展)",
                "expect_column_values_to_be_valid_division_code", column=n, code_list=e.code_list)
        elif e.code_list:
            add(n, e.code, "code_list", "规范性", "critical", "unknown_code", f"取值于代码表 {e.code_list}",
                "expect_column_values_to_be_in_set", column=n, value_set=sorted(standards.code_list(e.code_list)))
    names = {c.element: c.name for c in contract.columns}
    if "sex_code" in names and "resident_id" in names:
        add(names["sex_code"], "sex_code", "agrees_with_id", "一致性", "warning", "sex_id_mismatch",
            "性别代码与身份证号第17位奇偶一致", "expect_column_pair_values_sex_code_to_agree_with_resident_id",
            column_A=names["resident_id"], column_B=names["sex_code"])
    if "birth_date" in names and "resident_id" in names:
        add(names["birth_date"], "birth_date", "agrees_with_id", "一致性", "warning", "birth_date_id_mismatch",
            "出生日期与身份证号第7-14位一致", "expect_column_pair_values_birth_date_to_agree_with_resident_id",
            column_A=names["resident_id"], column_B=names["birth_date"])
    return out


def _col(name: str) -> Callable[[pa.Table], pa.Array]:
    return lambda t: t.column(name).combine_chunks()


def _between(values: pa.Array, low: Any, high: Any) -> pa.Array:
    """GX's inclusive between; the bounds take the column's type (an ISO date string becomes a date)."""
    ok = pa.repeat(pa.scalar(True), len(values))
    if low is not None:
        ok = pc.and_(ok, pc.greater_equal(values, pa.scalar(low).cast(values.type)))
    if high is not None:
        ok = pc.and_(ok, pc.less_equal(values, pa.scalar(high).cast(values.type)))
    return ok


def _division_check(kw: dict[str, Any], standards: Standards | None) -> Check:
    """The code table resolved once per rule (not per chunk): the caller's standards, else the project's."""
    codes = pa.array(sorted(standards.code_list(kw["code_list"])), pa.string()) if standards \
        else v.code_table(kw["code_list"])
    return lambda t: v.division_code_valid(_col(kw["column"])(t), codes)


def _in_set(values: pa.Array, value_set: list[Any]) -> pa.Array:
    return pc.or_(pc.is_null(values), pc.is_in(values, value_set=pa.array([str(x) for x in value_set])))


def _checks(reference_date: date, standards: Standards | None = None) -> dict[str, Callable[[dict[str, Any]], Check]]:
    """Expectation type → vectorised check, given the expectation's kwargs."""
    return {
        "expect_column_values_to_not_be_null": lambda k: lambda t: pc.is_valid(_col(k["column"])(t)),
        "expect_column_values_to_match_regex": lambda k: lambda t: pc.match_substring_regex(
            _col(k["column"])(t).cast(pa.string()), k["regex"]),
        # null passes (as in GX and every other check here): a missing value is the not-null rule's finding
        "expect_column_values_to_be_in_set": lambda k: lambda t: _in_set(
            _col(k["column"])(t).cast(pa.string()), k["value_set"]),
        "expect_column_values_to_be_valid_division_code": lambda k: _division_check(k, standards),
        "expect_column_values_to_have_valid_resident_id_check_digit": lambda k: lambda t: v.resident_id_check_digit(
            _col(k["column"])(t)),
        "expect_column_values_to_have_real_resident_id_birth_date": lambda k: lambda t: v.resident_id_birth_date(
            _col(k["column"])(t), reference_date),
        "expect_column_values_to_have_known_resident_id_region": lambda k: lambda t: v.resident_id_region(
            _col(k["column"])(t), v.division_codes()),
        "expect_column_values_to_be_valid_uscc": lambda k: lambda t: v.uscc_valid(_col(k["column"])(t)),
        "expect_column_values_to_have_valid_uscc_org_code": lambda k: lambda t: v.uscc_org_code_valid(
            _col(k["column"])(t)),
        "expect_column_values_to_be_valid_mobile_number": lambda k: lambda t: v.mobile_valid(_col(k["column"])(t)),
        "expect_column_values_to_not_be_in_the_future": lambda k: lambda t: v.date_not_future(
            _col(k["column"])(t), reference_date),
        "expect_column_pair_values_sex_code_to_agree_with_resident_id": lambda k: lambda t: v.resident_id_sex(
            _col(k["column_A"])(t), _col(k["column_B"])(t)),
        "expect_column_pair_values_birth_date_to_agree_with_resident_id": lambda k: lambda t:
            v.resident_id_birth_date_agrees(_col(k["column_A"])(t), _col(k["column_B"])(t)),
        "expect_column_value_lengths_to_be_between": lambda k: lambda t: _between(
            pc.utf8_length(_col(k["column"])(t).cast(pa.string())), k.get("min_value"), k.get("max_value")),
        "expect_column_values_to_be_between": lambda k: lambda t: _between(
            _col(k["column"])(t), k.get("min_value"), k.get("max_value")),
        "expect_column_pair_values_to_be_inside_hefei": lambda k: lambda t: v.in_bounds(
            _col(k["column_A"])(t), _col(k["column_B"])(t)),
    }


def compile_rule(dataset: str, expectation: dict[str, Any], reference_date: date,
                 standards: Standards | None = None) -> Rule:
    """One expectation configuration → a vectorised rule. KeyError for a type citylake cannot run.
    ``standards`` supplies named code lists (else they are read from the project's standards)."""
    kw, meta = expectation["kwargs"], expectation.get("meta", {})
    check = _checks(reference_date, standards)[expectation["type"]](kw)
    resolved = {**expectation, "kwargs": {k: reference_date.isoformat() if val == REFERENCE else val
                                          for k, val in kw.items()}}
    return Rule(meta["rule_id"], dataset, kw.get("column", kw.get("column_A", "")), meta.get("element", ""),
                meta.get("dimension", ""), str(expectation.get("severity", "critical")), meta.get("tag", ""),
                meta.get("description", ""), check, float(meta.get("threshold", DEFAULT_THRESHOLD)), resolved)


def build_rules(contract: AnyContract, standards: Standards, reference_date: date) -> list[Rule]:
    return [compile_rule(contract.dataset, e, reference_date, standards) for e in expectations(contract, standards)]


@dataclass
class RuleResult:
    rule: Rule
    evaluated: int
    failed_mask: pa.Array
    """True where the row failed (a check that raised fails every row it could not judge)."""
    error: str | None = None

    @property
    def failed(self) -> int:
        return int(pc.sum(self.failed_mask).as_py() or 0)


_BISECT_BUDGET = 4096
"""Checks a raising rule may re-run to find the rows it raises on; past that the rest fail as a block."""


def _failed(rule: Rule, table: pa.Table) -> pa.Array:
    return pc.invert(pc.fill_null(rule.check(table), True))


def _isolate(rule: Rule, table: pa.Table, budget: list[int]) -> pa.Array:
    """Failed mask of a slice on which the check raised: halve it until the raising rows stand alone,
    so only they fail (a value-dependent error costs about 2·log2(n) checks per bad row)."""
    if table.num_rows <= 1 or budget[0] <= 0:
        return pa.repeat(pa.scalar(True), table.num_rows)
    mid = table.num_rows // 2
    parts = []
    for half in (table.slice(0, mid), table.slice(mid)):
        budget[0] -= 1
        try:
            parts.append(_failed(rule, half))
        except Exception:  # noqa: BLE001 - narrowing down where it raises
            parts.append(_isolate(rule, half, budget))
    return pa.concat_arrays([p.combine_chunks() if isinstance(p, pa.ChunkedArray) else p for p in parts])


def evaluate(table: pa.Table, rules: list[Rule]) -> list[RuleResult]:
    """Run every rule; a rule that raises on a value fails the rows it raises on, it does not crash the
    batch (the error is kept with the result)."""
    out = []
    for rule in rules:
        try:
            out.append(RuleResult(rule, table.num_rows, _failed(rule, table)))
        except Exception as exc:  # noqa: BLE001 - contract: a failing validator fails rows, never the batch
            out.append(RuleResult(rule, table.num_rows, _isolate(rule, table, [_BISECT_BUDGET]),
                                  f"{type(exc).__name__}: {mask_message(exc)}"))  # may quote a value
    return out
