"""CSV drops: Arrow's streaming CSV reader over every column as text; an error-path rescan finds the line."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from pipelines.errors import FileRejected
from pipelines.extract.drops import opening
from pipelines.extract.drops.encoding import Utf8Stream
from pipelines.extract.drops.listing import DropFile
from pipelines.extract.drops.opening import (
    arrow_reason,
    arrow_source,
    guarded_batches,
    peek_head,
)
from pipelines.extract.drops.reject import one_line
from pipelines.extract.drops.typing import Typer, typed
from pipelines.registry import DropTable
from pipelines.settings import Settings

_BAD_BYTES = re.compile("[\udc80-\udcff]")


def _header_not_utf8(f: DropFile, record: list[str], line: int) -> FileRejected:
    """A header that is not UTF-8 (only UTF-8 heads get here undecoded): the file's encoding was not
    declared. Rejected like any bad file, naming the encoding, instead of a garbled unmapped-column error."""
    raw = ",".join(record).encode("utf-8", errors="surrogateescape")
    try:
        raw.decode("gb18030")
        hint = ", 像是 GBK/GB18030 编码, 请在登记中声明 encoding: gb18030"
        hint_en = "it decodes as GBK/GB18030: declare encoding: gb18030"
    except UnicodeDecodeError:
        hint, hint_en = ", 请在登记中声明文件的编码 (encoding)", "declare the file's encoding"
    return FileRejected(
        f.name, f"第 {line} 行: 表头不是有效的 UTF-8 编码{hint} (header is not valid UTF-8; {hint_en})", line
    )


def _csv_header(head: bytes, whole: bool, f: DropFile, delimiter: str) -> list[str] | None:
    """Header names (the first non-empty record) parsed from the head of the file; None if no rows."""
    text = head.decode("utf-8", errors="surrogateescape")  # bad bytes stay visible as lone surrogates
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        for record in reader:
            if record:
                if not whole and text.count("\n") < reader.line_num:
                    raise FileRejected(f.name, "表头超过 1 MiB 或没有换行 (header line too long)", 1)
                if _BAD_BYTES.search("".join(record)):
                    raise _header_not_utf8(f, record, reader.line_num)
                return [name.strip() for name in record]
    except csv.Error as exc:
        line = reader.line_num
        raise FileRejected(f.name, f"第 {line} 行: 表头无法解析 ({one_line(str(exc))})", line) from None
    return None


def _csv_scan(
    f: DropFile, table: DropTable, settings: Settings, stop_at_row: int | None = None
) -> tuple[int, str | None] | None:
    """Error path: walk the file in Python. Returns (line, reason) of the first problem (bad bytes,
    wrong field count) or, with ``stop_at_row``, (line, None) of that data row; None if nothing found."""
    csv.field_size_limit(max(csv.field_size_limit(), opening.BLOCK_BYTES))
    with opening.open_binary(f, settings) as raw:
        stream = Utf8Stream(raw, table.encoding, f.name, validate=True, chunk_bytes=opening.READ_CHUNK_BYTES)
        text = io.TextIOWrapper(io.BufferedReader(stream, opening.READ_CHUNK_BYTES), encoding="utf-8", newline="")
        reader = csv.reader(text, delimiter=table.delimiter)
        width: int | None = None
        row = 0
        previous = 0
        try:
            for record in reader:
                start, previous = previous + 1, reader.line_num
                if not record:
                    continue
                block = opening.BLOCK_BYTES
                if sum(map(len, record)) * 3 >= block and _row_bytes(record, table.delimiter) >= block:
                    return start, f"第 {start} 行: {arrow_reason('CSV', ValueError('straddling'))}"
                if width is None:
                    width = len(record)
                    continue
                if len(record) != width:
                    reason = (
                        f"第 {start} 行: 字段数 {len(record)}, 表头 {width} "
                        f"(wrong field count: {len(record)} fields, header has {width})"
                    )
                    return start, reason
                if stop_at_row is not None and row == stop_at_row:
                    return start, None
                row += 1
        except csv.Error as exc:
            return reader.line_num, f"第 {reader.line_num} 行: CSV 无法解析 ({one_line(str(exc))})"
    return None


def _row_bytes(record: list[str], delimiter: str) -> int:
    return len(delimiter.join(record).encode("utf-8"))


def read_csv(f: DropFile, table: DropTable, settings: Settings, batch_rows: int) -> Iterator[pa.RecordBatch]:
    header = _csv_header(*peek_head(f, table, settings), f, table.delimiter)
    if header is None:
        raise FileRejected(f.name, "空文件, 没有表头 (empty file: no header)", None)
    width = len(header)
    slots = [f"c{i}" for i in range(width)]  # the header row is read as data, then cut off
    string = pa.string()
    typer = Typer(f, table, header, lambda row: _locate_row(f, table, settings, row))
    with arrow_source(f, table, settings) as (source, stream):

        def open_reader() -> Any:
            return pacsv.open_csv(
                source,
                read_options=pacsv.ReadOptions(
                    column_names=slots, block_size=opening.BLOCK_BYTES, use_threads=opening.USE_THREADS
                ),
                parse_options=pacsv.ParseOptions(delimiter=table.delimiter, newlines_in_values=True),
                convert_options=pacsv.ConvertOptions(
                    column_types={slot: string for slot in slots},
                    null_values=[""],
                    strings_can_be_null=True,
                    quoted_strings_can_be_null=True,
                ),
            )

        def data() -> Iterator[pa.RecordBatch]:
            header_skipped = False
            for batch in _guard_csv(open_reader, stream, f, table, settings):
                if not header_skipped and batch.num_rows:
                    batch, header_skipped = batch.slice(1), True
                yield batch

        empty = pa.RecordBatch.from_arrays([pa.array([], string)] * width, names=slots)
        yield from typed(data(), typer, batch_rows, empty=empty)


def _locate_row(f: DropFile, table: DropTable, settings: Settings, row: int) -> int | None:
    found = _csv_scan(f, table, settings, stop_at_row=row)
    if found and found[1] is not None:  # an earlier structural problem: report that one instead
        raise FileRejected(f.name, found[1], found[0])
    return found[0] if found else None


def _guard_csv(
    open_reader: Callable[[], Any], stream: Utf8Stream | None, f: DropFile, table: DropTable, settings: Settings
) -> Iterator[pa.RecordBatch]:
    """Batches of the Arrow reader; a parse failure becomes a FileRejected with the line found by rescan."""
    reader = None

    def read_next() -> pa.RecordBatch:
        nonlocal reader
        if reader is None:  # opening already parses the first block
            reader = open_reader()
        return reader.read_next_batch()

    def rejection(exc: Exception) -> FileRejected:
        found = _csv_scan(f, table, settings)
        if found and found[1]:
            return FileRejected(f.name, found[1], found[0])
        return FileRejected(f.name, arrow_reason("CSV", exc), None)

    return guarded_batches(read_next, stream, rejection)
