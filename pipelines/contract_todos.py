"""``TODO`` markers in a dataset contract: what a person still has to decide before the contract loads.

``citylake contract new`` (``pipelines.catalog.draft``) drafts a contract from a raw table and writes
``TODO`` where nothing can be inferred (catalog classification, grade, sharing, open, update cycle, an
unrecognised column's element). The contract loader reports each remaining marker as its own problem,
``file:line: sharing.type: still TODO — decide …``, instead of the type errors the marker would cause.
One module so the drafting comments and the loader's messages say the same thing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from pipelines.grading import OPEN_RULES, OPEN_TIERS, SENSITIVITY_TEXT, SHARING_RULES, SHARING_TIERS
from pipelines.registry import line_of

TODO = "TODO"

# built from pipelines.grading's constants: the hints cannot drift from what the loader enforces
_SHARING_RULE = f"STANDARDS.md 分类分级 defaults: {SHARING_TIERS}; rules, which win: {SHARING_RULES}"
_OPEN_RULE = f"STANDARDS.md 分类分级 defaults: {OPEN_TIERS}; rules, which win: {OPEN_RULES}"

HINTS: dict[str, str] = {
    "name": "give the 信息资源名称 (Chinese name of the resource)",
    "description": "give the 摘要 (what the resource holds)",
    "owner": "give the 提供方代码: a department code from schemas/departments.yml",
    "resource_category": "write the name of the catalog's 项 (e.g. 人口, 社会保障): the load checks it equals catalog.item's",
    "catalog.class": ("decide the 类: 1 基础信息资源 / 2 主题信息资源 / 3 部门信息资源 "
                      "(STANDARDS.md 资源目录: 信息资源代码 = 类 项 目 细目 / 顺序码)"),
    "catalog.item": "decide the 项 (2 digits) under the 类, from the resource classification code list",
    "catalog.category": "decide the 目 (3 digits) under the 项, from the resource classification code list",
    "catalog.subcategory": "decide the 细目 (may be empty: \"\")",
    "catalog.sequence": "give the 顺序码: an integer unique among this provider's contracts",
    "classification.level": "decide 核心数据 / 重要数据 / 一般数据 (GB/T 43697, STANDARDS.md 分类分级)",
    "classification.grade": ("decide the grade 1–4 of 一般数据 (4 most sensitive; default: the most sensitive column "
                             f"element, {SENSITIVITY_TEXT}; any other grade needs classification.override)"),
    "sharing.type": f"decide 无条件共享/有条件共享/不予共享 ({_SHARING_RULE})",
    "sharing.condition": ("state the 共享条件: 无条件 for 无条件共享, the conditions for 有条件共享; for 不予共享 "
                          "delete it and cite the basis under 'basis'"),
    "sharing.basis": "cite the legal or policy basis of 不予共享",
    "sharing.methods": "choose the 共享方式: database, file and/or service",
    "open.type": f"decide 无条件开放/有条件开放/不予开放 ({_OPEN_RULE})",
    "open.condition": "state the 开放条件 for 有条件开放; otherwise delete the line",
    "update_cycle": "decide the 更新周期: 实时/每小时/每日/每周/每月/每季度/每半年/每年 (how often the data changes)",
    "format": "decide the 格式: 电子文件/电子表格/数据库/图形图像/流媒体/自描述格式/服务接口",
    "primary_key": "give the primary-key column names",
    "columns.*.element": ("choose a data element from schemas/standards/elements.yml, add one there (this column as "
                          "its authoritative source), or delete the column to leave it out of std"),
    "columns.*.name": "give the column's name in std (usually the element code)",
}


def hint(dotted: str) -> str:
    """What to decide for a TODO at ``dotted`` (``columns.3.element`` → the ``columns.*.element`` hint)."""
    generic = re.sub(r"\.\d+(?=\.|$)", ".*", dotted)
    for key in (dotted, generic, generic.removesuffix(".*")):
        if key in HINTS:
            return HINTS[key]
    return "fill it in"


def todo_places(data: Any, loc: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Key paths whose value is the marker ``TODO`` (a list holding it counts once, at the list)."""
    if isinstance(data, str):
        return [loc] if data.strip() == TODO else []
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in todo_places(v, (*loc, k))]
    if isinstance(data, list):
        if any(isinstance(v, str) and v.strip() == TODO for v in data):
            return [loc]
        return [p for i, v in enumerate(data) for p in todo_places(v, (*loc, i))]
    return []


def todo_problems(path: Path, data: Any, lines: dict[tuple[Any, ...], int]) -> list[str]:
    """One ``file:line: field.path: still TODO — <what to decide>`` per marker, in file order."""
    places = sorted(todo_places(data), key=lambda loc: line_of(lines, *loc))
    out = []
    for loc in places:
        dotted = ".".join(str(p) for p in loc)
        out.append(f"{path}:{line_of(lines, *loc)}: {dotted}: still TODO — {hint(dotted)}")
    return out


def under_todo(problem: str, path: Path, data: Any) -> bool:
    """Whether a validation problem (``file:line: field.path: …``) is about a field still marked TODO, so
    the marker's own problem replaces it (a ``TODO`` grade is no "invalid integer" to report)."""
    rest = problem.removeprefix(f"{path}:")
    parts = rest.split(": ", 2)
    if len(parts) < 3:
        return False
    field = parts[1]
    return any(field == d or field.startswith(d + ".")
               for d in (".".join(str(p) for p in loc) for loc in todo_places(data)))


def with_todos(path: Path, lines: dict[tuple[Any, ...], int], problems: list[str]) -> list[str]:
    """``problems`` of a contract file with each TODO marker's own problem in place of the errors it causes
    (``lines`` empty: the YAML did not parse, nothing to add)."""
    if not lines:
        return problems
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    todos = todo_problems(path, data, lines)
    return [*todos, *(p for p in problems if not under_todo(p, path, data))] if todos else problems
