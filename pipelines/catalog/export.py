"""The catalog as files: ``catalog.json`` (the entries) and ``catalog.csv`` for Excel.

The CSV is UTF-8 with a BOM (``utf-8-sig``): without the BOM Excel on a Chinese Windows reads a CSV as GBK
and every Chinese header turns into mojibake. Headers are the catalog field names of 政务信息资源目录 in Chinese.
A text cell that begins with ``= + - @`` gets a leading apostrophe so Excel does not run it as a formula.
A code made of digits only (a 统一社会信用代码 such as ``113401000030022204``) is written ``="…"``: Excel would
otherwise read it as a number, show ``1.13401E+17`` and keep 15 significant digits, or drop leading zeros.
Times are Beijing time (``2026-11-20 10:00``), as on the site, and the header says so; ``catalog.json`` keeps
ISO UTC. The CSV is for people in Excel; programs read ``catalog.json``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from pipelines.catalog.build import CatalogEntry
from pipelines.formats import TIME_ZONE_LABEL, beijing_time, percent

SEP = "；"


def _path(e: CatalogEntry) -> str:
    return (e.classification or {}).get("path") or ""


def _grade(e: CatalogEntry) -> str:
    if not e.grade:
        return ""
    level, grade = e.grade.get("level"), e.grade.get("grade")
    return f"{level} {grade}级" if grade else str(level or "")


def _score(e: CatalogEntry) -> str:
    return percent(e.quality_score)  # as the site shows it: rounded down, never 100 % with failures


def _lineage(e: CatalogEntry) -> str:
    return " → ".join(f"{s['identifier']}" + (f"@{s['snapshot_id']}" if s.get("snapshot_id") else "")
                      for s in e.lineage)


def _requests(e: CatalogEntry) -> str:
    """Each request naming the dataset as ``REQ-…（已受理）``: contacts never go into the CSV."""
    return SEP.join(f"{r['request_id']}（{r['status']}）" for r in e.requests)


def _release(e: CatalogEntry) -> str:
    return (e.release or {}).get("path") or ""


def _overrides(e: CatalogEntry) -> str:
    return SEP.join(f"{o.get('attribute')}: {o.get('value')}（默认 {o.get('default')}；{o.get('reason')}；"
                    f"批准 {o.get('approved_by')}）" for o in e.overrides)


def _get(section: str, key: str) -> Callable[[CatalogEntry], Any]:
    return lambda e: (getattr(e, section) or {}).get(key)


COLUMNS: list[tuple[str, Callable[[CatalogEntry], Any]]] = [
    ("标识", lambda e: e.identifier),
    ("层", lambda e: e.layer),
    ("数据集", lambda e: e.dataset),
    ("信息资源名称", lambda e: e.name),
    ("信息资源代码", lambda e: e.resource_code),
    ("信息资源分类", _path),
    ("提供方", _get("provider", "name")),
    ("提供方代码", _get("provider", "code")),
    ("摘要", lambda e: e.summary),
    ("格式", lambda e: e.format),
    ("信息项", lambda e: "、".join(i.get("element_name") or i["name"] for i in e.items)),
    ("共享类型", _get("sharing", "type")),
    ("共享条件", _get("sharing", "condition")),
    ("共享方式", lambda e: "、".join((e.sharing or {}).get("methods") or [])),
    ("开放属性", _get("open", "type")),
    ("开放条件", _get("open", "condition")),
    ("更新周期", lambda e: e.update_cycle),
    ("分级", _grade),
    ("行数", lambda e: e.rows),
    (f"最近更新（{TIME_ZONE_LABEL}）", lambda e: beijing_time(e.last_updated) if e.last_updated else None),
    ("质量得分", _score),
    ("登记状态", lambda e: e.registration_status),
    ("登记代码", _get("registration", "code")),
    ("登记日期", _get("registration", "date")),
    ("编目状态", lambda e: e.status),
    ("待办", lambda e: e.fix),
    ("源系统", lambda e: e.system),
    ("源表", lambda e: e.source_table),
    ("部门", _get("department", "name")),
    ("血缘", _lineage),
    ("例外审批", _overrides),
    ("当前开放版本", _release),
    ("开放需求", _requests),
]
HEADERS = [h for h, _ in COLUMNS]


CODE_COLUMNS = {"信息资源代码", "提供方代码", "登记代码"}


def _cell(value: Any, header: str) -> Any:
    if value is None:
        return ""
    if isinstance(value, str) and header in CODE_COLUMNS and value.isascii() and value.isdigit():
        return f'="{value}"'  # Excel keeps it as text: every digit, leading zeros included
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return value


def csv_rows(entries: Iterable[CatalogEntry]) -> list[list[Any]]:
    """The CSV body: one row per entry, in ``HEADERS`` order."""
    return [[_cell(get(e), header) for header, get in COLUMNS] for e in entries]


def write_catalog(entries: list[CatalogEntry], out_dir: Path) -> tuple[Path, Path]:
    """Write ``catalog.json`` and ``catalog.csv`` (UTF-8 with BOM) into ``out_dir``; returns both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out_dir / "catalog.json", out_dir / "catalog.csv"
    json_path.write_text(json.dumps([e.to_dict() for e in entries], ensure_ascii=False, indent=2) + "\n",
                         encoding="utf-8")
    with csv_path.open("w", encoding="utf-8-sig", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADERS)
        writer.writerows(csv_rows(entries))
    return json_path, csv_path
