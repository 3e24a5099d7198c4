"""Code lists (``schemas/standards/code_lists/*.csv``) and the configured division extension.

One floor below both ``standards`` (which loads every list) and ``quality.validators`` (which reads one
list as a value set), so neither imports the other.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import ConfigError

DEV_ZONES = {"340171": "高新区", "340172": "经开区", "340173": "新站区"}
"""Hefei's development zones: a configured extension of GB/T 2260 (not in every division table)."""


@dataclass(frozen=True)
class CodeList:
    name: str
    codes: dict[str, str]
    aliases: dict[str, str]
    """Source value → standard code (e.g. '男' → '1'), the map standardization applies."""


def load_code_list(path: Path) -> CodeList:
    """One ``code,name,parent,valid_from,valid_to,note,aliases`` CSV; every problem names its line."""
    codes: dict[str, str] = {}
    first_line: dict[str, int] = {}
    aliases: dict[str, str] = {}
    problems: list[str] = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"code", "name"} <= set(reader.fieldnames):
            raise ConfigError(f"{path}:1: a code list needs the columns code,name")
        for row in reader:
            line = reader.line_num
            code = (row["code"] or "").strip()
            if not code:
                problems.append(f"{path}:{line}: empty code")
                continue
            if code in codes:
                problems.append(f"{path}:{line}: code {code} repeats line {first_line[code]}; codes must be unique")
                continue
            codes[code], first_line[code] = row["name"], line
            for alias in filter(None, (row.get("aliases") or "").split("|")):
                aliases[alias] = code
    if problems:
        raise ConfigError(*problems)
    return CodeList(path.stem, codes, aliases)
