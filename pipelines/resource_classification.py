"""信息资源分类 (类/项/目/细目) of the resource catalog: ``schemas/standards/code_lists/resource_classification.csv``.

The 政务信息资源目录编制指南 gives the structure (分类码 = 类 1 digit + 项 2 + 目 3 + 细目, variable); the numbering
is local practice (STANDARDS.md), so it lives in that one CSV (``code,name,level,parent,note``) with cumulative
codes (``1`` → ``101`` → ``101001`` → ``101001001``): a contract's ``catalog`` block names the parts, this
module resolves them to Chinese names and says which part is unknown.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import ConfigError

LEVELS = ("类", "项", "目", "细目")
WIDTHS = (1, 2, 3, 3)
"""Digits of each level's own part: 类 1, 项 2, 目 3 (the guide's), 细目 3 (local: the guide leaves it variable)."""
FILE = Path("schemas") / "standards" / "code_lists" / "resource_classification.csv"


@dataclass(frozen=True)
class ResourceClass:
    code: str
    """Cumulative code: ``101001`` is 目 001 of 项 01 of 类 1."""
    name: str
    level: str
    parent: str


def _cumulative(level: int) -> int:
    return sum(WIDTHS[: level + 1])


def load_resource_classification(path: Path) -> dict[str, ResourceClass]:
    """cumulative code → entry; every problem names its line (length against level, parent, repeats)."""
    out: dict[str, ResourceClass] = {}
    problems = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"code", "name", "level", "parent"} <= set(reader.fieldnames):
            raise ConfigError(f"{path}:1: the classification needs the columns code,name,level,parent")
        for row in reader:
            line, code, level = reader.line_num, (row["code"] or "").strip(), (row["level"] or "").strip()
            parent, name = (row["parent"] or "").strip(), (row["name"] or "").strip()
            if level not in LEVELS:
                problems.append(f"{path}:{line}: level {level!r} must be one of {'/'.join(LEVELS)}")
                continue
            depth = LEVELS.index(level)
            if not code.isdigit() or len(code) != _cumulative(depth):
                problems.append(f"{path}:{line}: code {code!r}: a {level} code has {_cumulative(depth)} digits "
                                f"(类 {WIDTHS[0]} + 项 {WIDTHS[1]} + 目 {WIDTHS[2]} + 细目 {WIDTHS[3]}, cumulative)")
            elif depth and (parent != code[: _cumulative(depth - 1)] or parent not in out):
                problems.append(f"{path}:{line}: code {code}: parent must be {code[: _cumulative(depth - 1)]}, "
                                "listed above it")
            elif not depth and parent:
                problems.append(f"{path}:{line}: code {code}: a 类 has no parent")
            elif code in out:
                problems.append(f"{path}:{line}: code {code} is listed twice")
            elif not name:
                problems.append(f"{path}:{line}: code {code} has no name")
            else:
                out[code] = ResourceClass(code, name, level, parent)
    if problems:
        raise ConfigError(*problems)
    return out


_CACHE: dict[Path, tuple[tuple[int, int], dict[str, ResourceClass]]] = {}


def cached_classification(path: Path) -> dict[str, ResourceClass]:
    """``load_resource_classification`` once per file version."""
    stat = path.stat()
    version = (stat.st_mtime_ns, stat.st_size)
    hit = _CACHE.get(path)
    if hit is None or hit[0] != version:
        hit = (version, load_resource_classification(path))
        _CACHE[path] = hit
    return hit[1]


class UnknownClass(ValueError):
    """A part of a classification code that the code list does not have; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def resolve(classes: dict[str, ResourceClass], parts: list[tuple[str, str]]) -> list[ResourceClass]:
    """The entries of ``[(field, own code), ...]`` from 类 down (empty trailing parts are left out); an
    UnknownClass names the first unknown part and what its parent has."""
    out: list[ResourceClass] = []
    prefix = ""
    for depth, (field, own) in enumerate(parts):
        if not own:
            break
        code = prefix + own
        if code not in classes:
            level = LEVELS[depth]
            under = f" under {out[-1].level} {out[-1].code} {out[-1].name}" if out else ""
            have = [f"{c.code[len(prefix):]} {c.name}" for c in classes.values()
                    if c.parent == prefix and c.level == level]
            raise UnknownClass(field, f"unknown {level} code {own!r}{under} (have: {', '.join(have) or 'none'}; "
                                      f"{FILE.as_posix()})")
        out.append(classes[code])
        prefix = code
    return out
