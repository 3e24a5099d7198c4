"""``dictionary.csv`` (数据字典): one row per released column, Chinese headers, UTF-8 with BOM (Excel opens it
as UTF-8), RFC 4180 with CRLF — the same conventions as the data CSV and ``catalog.csv``."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from pipelines.publish.model import DatasetRelease

HEADERS = ["字段名", "中文名", "类型", "单位", "说明", "数据元", "分级", "脱敏处理", "是否主键"]
TYPE_NAMES = {"string": "字符串", "integer": "整数", "number": "数值", "date": "日期", "datetime": "日期时间",
              "boolean": "布尔", "year": "年份"}
"""Frictionless type → its Chinese name (the English type follows in brackets: it is what datapackage.json says)."""
DEID_NAMES = {"keep": "原样", "drop": "删除", "mask": "遮蔽", "year": "泛化到年", "district": "泛化到区县",
              "grid": "泛化到网格", "suppress": "小于k抑制（1≤n<k的计数留空，0照常公布）"}
"""De-identification (curated contract ``deid``) → how the dictionary names it."""


def deid_text(deid: str, *, k: int | None = None, grid: float | None = None) -> str:
    """The Chinese name of a column's de-identification, with its parameter where it has one."""
    if deid == "suppress" and k is not None:  # zeros are published: an empty cell is always 1 ≤ n < k
        return f"小于{k}抑制（1≤n<{k}的计数留空，0照常公布）"
    if deid == "grid" and grid is not None:
        return f"泛化到网格（{grid:g}°）"
    return DEID_NAMES[deid]


def dictionary_rows(release: DatasetRelease) -> list[dict[str, str]]:
    """One dict per released column, keyed by ``HEADERS``."""
    contract = release.contract
    keys = set(contract.primary_key)
    declared = {c.name: c for c in contract.columns}
    k = contract.open.k
    rows = []
    for col in release.columns:
        grid = getattr(declared.get(col.name), "grid", None)
        rows.append({
            "字段名": col.name, "中文名": col.title, "类型": f"{TYPE_NAMES[col.type]}（{col.type}）",
            "单位": col.unit or "", "说明": col.description, "数据元": col.element, "分级": f"{col.grade}级",
            "脱敏处理": deid_text(col.deid, k=k, grid=grid if col.deid == "grid" else None),
            "是否主键": "是" if col.name in keys else "否",
        })
    return rows


def dictionary_csv(release: DatasetRelease) -> bytes:
    """The ``dictionary.csv`` bytes: BOM, header, one row per column, CRLF line ends."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=HEADERS, lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(dictionary_rows(release))
    return buffer.getvalue().encode("utf-8-sig")


def write_dictionary(release: DatasetRelease, path: Path) -> Path:
    """Write ``dictionary.csv`` to ``path`` (a file, or a folder to write it into); returns the file."""
    target = path / "dictionary.csv" if path.is_dir() else path
    target.write_bytes(dictionary_csv(release))
    return target
