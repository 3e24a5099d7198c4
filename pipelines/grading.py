"""Grading (GB/T 43697) and the sharing/open attributes it sets: STANDARDS.md's default tiers and Hefei's hard
rules as constants, and their one wording, which the contract loader, the TODO hints and the drafted
contracts share (so a changed tier or rule is changed in one place, never retyped as prose).

Its own module because ``pipelines.contracts`` imports ``pipelines.contract_todos``: both read these.
"""

from __future__ import annotations

BASE_RESOURCES = ("人口", "法人单位", "社会信用", "自然资源和空间地理", "电子证照")
"""项 of 类 1 基础信息资源 (政务信息资源目录编制指南)."""
HEFEI_UNCONDITIONAL = ("人口", "法人单位", "社会信用", "自然资源和空间地理")
"""Base resources Hefei shares 无条件共享 whatever the grade (STANDARDS.md; 电子证照 is not named there)."""
HEFEI_CONDITIONAL = ("社会保障",)
"""项 Hefei shares 有条件共享 with fast response: social insurance and the housing fund (a 目 of 社会保障 here)."""
STRICTEST_LEVELS = ("核心数据", "重要数据")
"""Levels above 一般数据: 不予开放, and 不予共享 unless a Hefei sharing rule names the resource."""
SENSITIVITY_GRADE = {"公开": 1, "内部": 2, "个人信息": 3, "敏感个人信息": 4}
"""Default grade of 一般数据: that of the most sensitive element among the columns."""
GRADE_TIERS: dict[int, tuple[str, str]] = {4: ("有条件共享", "不予开放"), 3: ("有条件共享", "有条件开放"),
                                           2: ("无条件共享", "有条件开放"), 1: ("无条件共享", "无条件开放")}
"""Grade → (sharing, open) defaults (STANDARDS.md, until the Yangtze River Delta / Anhui guide is adopted)."""
CLOSED_GRADE = 4
"""一般数据 of this grade is 不予开放 by rule: declared so, or set so by a 敏感个人信息 column."""


def _tiers(column: int) -> str:
    """One column of GRADE_TIERS grouped by value, e.g. ``4/3 → 有条件共享, 2/1 → 无条件共享``."""
    groups: dict[str, list[str]] = {}
    for grade in sorted(GRADE_TIERS, reverse=True):
        groups.setdefault(GRADE_TIERS[grade][column], []).append(str(grade))
    return ", ".join(f"{'/'.join(grades)} → {value}" for value, grades in groups.items())


_STRICT = "/".join(level.removesuffix("数据") for level in STRICTEST_LEVELS) + "数据"
SHARING_TIERS = f"一般数据 {_tiers(0)}, {_STRICT} → 不予共享"
OPEN_TIERS = f"一般数据 {_tiers(1)}, {_STRICT} → 不予开放"
SENSITIVITY_TEXT = ", ".join(f"{name} {grade}" for name, grade in sorted(SENSITIVITY_GRADE.items(), key=lambda x: -x[1]))
"""``敏感个人信息 4, 个人信息 3, 内部 2, 公开 1``."""
SHARING_RULES = (f"合肥: 基础资源 {'/'.join(HEFEI_UNCONDITIONAL)} 无条件共享, {'/'.join(HEFEI_CONDITIONAL)} 有条件共享 "
                 f"(不论分类分级, {_STRICT}亦然); 其余{_STRICT} 不予共享")
OPEN_RULES = f"{_STRICT} 不予开放; 一般数据 {CLOSED_GRADE} 级 (所定级别, 或含敏感个人信息的列) 不予开放"
HARD_RULES = f"{SHARING_RULES}; {OPEN_RULES}"
"""Every rule that binds whatever the declared classification and wins over the defaults; no override lifts one."""
