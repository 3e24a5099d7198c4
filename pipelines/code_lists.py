"""Code lists (``schemas/standards/code_lists/*.csv``) and the configured division extension.

One floor below both ``standards`` (which loads every list) and ``quality.validators`` (which reads one
list as a value set), so neither imports the other.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.errors import ConfigError

DEV_ZONES = {"340171": "高新区", "340172": "经开区", "340173": "新站区"}
"""Hefei's development zones: a configured extension of GB/T 2260 (not in every division table)."""
HEFEI_BBOX = (116.68, 30.93, 117.98, 32.55)
"""(min_lon, min_lat, max_lon, max_lat): Hefei's administrative extent incl. 庐江县 and 巢湖市 (GCJ-02/WGS-84
differ by < 1 km, inside the margin); the quality rule and the station registry check against it."""


STANDARD_COLUMNS = ("code", "name", "parent", "valid_from", "valid_to", "note", "aliases")
"""The columns every code list has; a list may add its own after them (air_station: longitude, latitude)."""


@dataclass(frozen=True)
class CodeList:
    name: str
    codes: dict[str, str]
    aliases: dict[str, str]
    """Source value → standard code (e.g. '男' → '1'), the map standardization applies."""
    parents: dict[str, str] = field(default_factory=dict)
    """code → parent code ("" at the top): 大类 → 门类, station → district."""
    extra: dict[str, dict[str, str]] = field(default_factory=dict)
    """code → {column: value} of the columns beyond the standard ones (text as written; empty when none)."""
    columns: tuple[str, ...] = STANDARD_COLUMNS
    """Every column of the CSV, in file order."""
    lines: dict[str, int] = field(default_factory=dict)
    """code → its line in the file, for messages."""


def load_code_list(path: Path) -> CodeList:
    """One ``code,name,parent,valid_from,valid_to,note,aliases`` CSV, plus any columns of its own after those
    (kept in ``extra``); every problem names its line."""
    codes: dict[str, str] = {}
    parents: dict[str, str] = {}
    extra: dict[str, dict[str, str]] = {}
    first_line: dict[str, int] = {}
    aliases: dict[str, str] = {}
    problems: list[str] = []
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"code", "name"} <= set(reader.fieldnames):
            raise ConfigError(f"{path}:1: a code list needs the columns code,name")
        columns = tuple(reader.fieldnames)
        own = [c for c in columns if c not in STANDARD_COLUMNS]
        for row in reader:
            line = reader.line_num
            code = (row["code"] or "").strip()
            if not code:
                problems.append(f"{path}:{line}: empty code")
                continue
            if code in codes:
                problems.append(f"{path}:{line}: code {code} repeats line {first_line[code]}; codes must be unique")
                continue
            if None in row:  # more fields than the header names: a comma inside an unquoted value
                problems.append(f"{path}:{line}: {len(columns) + len(row[None])} fields, the header has "  # type: ignore[index]
                                f"{len(columns)}; quote a value that holds a comma")
                continue
            codes[code], first_line[code] = row["name"], line
            parents[code] = (row.get("parent") or "").strip()
            if own:
                extra[code] = {c: (row.get(c) or "").strip() for c in own}
            for alias in filter(None, (row.get("aliases") or "").split("|")):
                aliases[alias] = code
    if problems:
        raise ConfigError(*problems)
    return CodeList(path.stem, codes, aliases, parents, extra, columns, first_line)
