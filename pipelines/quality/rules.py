"""Quality rules generated from the standards and a dataset contract, evaluated vectorised over Arrow.

Each rule has a GB/T 36344 dimension, a severity (critical blocks, warning reports, info), a blocking
threshold (the failing share of a batch above which the whole batch is held) and a tag shared with the
seed manifest's defect names, so results can be scored against the truth.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.contracts import DatasetContract
from pipelines.quality import validators as v
from pipelines.standards import Standards

Severity = Literal["critical", "warning", "info"]
Check = Callable[[pa.Table], pa.Array]  # True where the row passes; null counts as passing


@dataclass(frozen=True)
class Rule:
    id: str
    dataset: str
    column: str
    element: str
    dimension: str
    severity: Severity
    tag: str
    description: str
    check: Check
    threshold: float = 0.2
    """A critical rule failing on more than this share of a batch holds the batch."""


def _col(name: str) -> Callable[[pa.Table], pa.Array]:
    return lambda t: t.column(name).combine_chunks()


def build_rules(contract: DatasetContract, standards: Standards, reference_date: date) -> list[Rule]:
    """The rules of one dataset: required, format, validators, code lists, dates, bounds, keys."""
    rules: list[Rule] = []
    codes = frozenset(standards.code_list("division"))

    def add(column: str, element: str, suffix: str, dimension: str, severity: Severity, tag: str,
            description: str, check: Check) -> None:
        rules.append(Rule(f"{contract.dataset}.{column}.{suffix}", contract.dataset, column, element, dimension,
                          severity, tag, description, check))

    for col in contract.columns:
        e = standards.element(col.element)
        c = _col(col.name)
        if col.required:
            add(col.name, e.code, "required", "完整性", "critical", "null_required", f"{e.name_zh}不得为空",
                lambda t, c=c: pc.is_valid(c(t)))
        if e.validator == "resident_id":
            add(col.name, e.code, "format", "规范性", "critical", "resident_id_format", "18位, 末位为数字或大写X",
                lambda t, c=c: v.resident_id_format(c(t)))
            add(col.name, e.code, "check_digit", "准确性", "critical", "resident_id_check_digit",
                "GB 11643 校验码正确", lambda t, c=c: v.resident_id_check_digit(c(t)))
            add(col.name, e.code, "birth_date", "准确性", "critical", "resident_id_birth_date",
                "出生日期为真实日期且不晚于当日", lambda t, c=c: v.resident_id_birth_date(c(t), reference_date))
            add(col.name, e.code, "region", "准确性", "warning", "resident_id_region",
                "地址码存在于 GB/T 2260", lambda t, c=c: v.resident_id_region(c(t), codes))
        elif e.validator == "uscc":
            add(col.name, e.code, "check_digit", "准确性", "critical", "uscc_check_digit", "GB 32100 校验码正确",
                lambda t, c=c: v.uscc_valid(c(t)))
            add(col.name, e.code, "org_code", "准确性", "warning", "uscc_org_code", "内嵌组织机构代码校验正确",
                lambda t, c=c: v.uscc_org_code_valid(c(t)))
        elif e.validator == "division_code":
            add(col.name, e.code, "known_division", "准确性", "critical", "unknown_district_code",
                "行政区划代码存在于 GB/T 2260 (含开发区扩展)", lambda t, c=c: v.division_code_valid(c(t), codes))
        elif e.validator == "mobile":
            add(col.name, e.code, "format", "规范性", "warning", "mobile_format", "11位手机号码",
                lambda t, c=c: v.mobile_valid(c(t)))
        elif e.validator == "date_not_future":
            add(col.name, e.code, "not_future", "时效性", "critical", "future_date", "不晚于当日",
                lambda t, c=c: v.date_not_future(c(t), reference_date))
        elif e.validator == "hefei_bounds" and e.code == "longitude":
            lat = next((x.name for x in contract.columns if x.element == "latitude"), None)
            if lat:
                add(col.name, e.code, "in_city", "准确性", "warning", "out_of_bounds", "坐标位于合肥市范围内",
                    lambda t, c=c, la=_col(lat): v.in_bounds(c(t), la(t)))
        if e.code_list and e.validator != "division_code":
            known = pa.array(sorted(standards.code_list(e.code_list)), pa.string())
            add(col.name, e.code, "code_list", "规范性", "critical", "unknown_code", f"取值于代码表 {e.code_list}",
                lambda t, c=c, k=known: pc.is_in(c(t).cast(pa.string()), value_set=k))
    names = {c.element: c.name for c in contract.columns}
    if "sex_code" in names and "resident_id" in names:
        ids, sex = _col(names["resident_id"]), _col(names["sex_code"])
        add(names["sex_code"], "sex_code", "agrees_with_id", "一致性", "warning", "sex_id_mismatch",
            "性别代码与身份证号第17位奇偶一致", lambda t: v.resident_id_sex(ids(t), sex(t)))
    return rules


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


def evaluate(table: pa.Table, rules: list[Rule]) -> list[RuleResult]:
    """Run every rule; a rule that raises on a value fails the rows, it does not crash the batch."""
    out = []
    for rule in rules:
        try:
            passed = pc.fill_null(rule.check(table), True)
            failed = pc.invert(passed)
            out.append(RuleResult(rule, table.num_rows, failed))
        except Exception as exc:  # noqa: BLE001 - contract: a failing validator fails rows, never the batch
            out.append(RuleResult(rule, table.num_rows, pa.repeat(pa.scalar(True), table.num_rows),
                                  f"{type(exc).__name__}: {exc}"))
    return out
