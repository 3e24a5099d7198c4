"""XLSX drops through python-calamine: the sheet converted to Arrow ``batch_rows`` rows at a time."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from typing import Any

import pyarrow as pa

from pipelines.errors import FileRejected
from pipelines.extract.drops.listing import DropFile
from pipelines.extract.drops.opening import local_copy
from pipelines.extract.drops.reject import one_line
from pipelines.extract.drops.typing import Typer
from pipelines.registry import DropTable
from pipelines.settings import Settings


def _cell_text(value: Any) -> str | None:
    """An XLSX cell as text, the way the sheet shows it (1.0 → "1", dates ISO); empty → None."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(value)
    return str(value)


def read_xlsx(f: DropFile, table: DropTable, settings: Settings, batch_rows: int) -> Iterator[pa.RecordBatch]:
    from python_calamine import CalamineError, CalamineWorkbook, WorksheetNotFound

    with local_copy(f, settings) as path:
        try:
            workbook = CalamineWorkbook.from_path(path)
        except (CalamineError, OSError, ValueError) as exc:
            raise FileRejected(f.name, f"不是有效的 XLSX 文件 ({one_line(str(exc))})", None) from None
        try:
            try:
                sheet = workbook.get_sheet_by_name(table.sheet) if table.sheet else workbook.get_sheet_by_index(0)
            except (WorksheetNotFound, IndexError):
                names = ", ".join(workbook.sheet_names)
                raise FileRejected(
                    f.name, f"没有工作表 {table.sheet!r}, 现有: {names} (sheet not found)", None
                ) from None
            except CalamineError as exc:
                raise FileRejected(f.name, f"工作表无法读取 ({one_line(str(exc))})", None) from None
            yield from _xlsx_batches(f, table, sheet, batch_rows)
        finally:
            workbook.close()


def _xlsx_batches(f: DropFile, table: DropTable, sheet: Any, batch_rows: int) -> Iterator[pa.RecordBatch]:
    rows = iter(sheet.iter_rows())  # python-calamine yields from sheet row 1, leading empty rows included
    header: list[str] | None = None
    line = 0
    for cells in rows:
        line += 1
        texts = [_cell_text(c) for c in cells]
        if any(t is not None for t in texts):
            while texts and texts[-1] is None:
                texts.pop()
            header = [(t or "").strip() for t in texts]
            break
    if header is None:
        raise FileRejected(f.name, "工作表为空, 没有表头 (empty sheet: no header)", None)
    width = len(header)
    state: dict[str, Any] = {"lines": []}
    typer = Typer(f, table, header, lambda row: _xlsx_line(state, typer, row))
    columns: list[list[str | None]] = [[] for _ in range(width)]
    lines: list[int] = []
    produced = False
    for cells in rows:
        line += 1
        texts = [_cell_text(c) for c in cells]
        if all(t is None for t in texts):
            continue
        if any(t is not None for t in texts[width:]):
            count = max(i for i, t in enumerate(texts) if t is not None) + 1
            raise FileRejected(
                f.name,
                f"第 {line} 行: 字段数 {count}, 表头 {width} (wrong field count: {count} fields, header has {width})",
                line,
            )
        for i in range(width):
            columns[i].append(texts[i] if i < len(texts) else None)
        lines.append(line)
        if len(lines) >= batch_rows:
            produced = True
            yield _xlsx_batch(typer, state, columns, lines)
            columns, lines = [[] for _ in range(width)], []
    if lines or not produced:
        yield _xlsx_batch(typer, state, columns, lines)


def _xlsx_batch(
    typer: Typer, state: dict[str, Any], columns: list[list[str | None]], lines: list[int]
) -> pa.RecordBatch:
    state["lines"] = lines
    batch = pa.RecordBatch.from_arrays(
        [pa.array(c, pa.string()) for c in columns], names=[f"c{i}" for i in range(len(columns))]
    )
    return typer.apply(batch)


def _xlsx_line(state: dict[str, Any], typer: Typer, row: int) -> int | None:
    index = row - typer.rows_done
    lines: list[int] = state["lines"]
    return lines[index] if 0 <= index < len(lines) else None
