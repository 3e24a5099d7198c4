"""JSON-lines drops: Arrow's streaming JSON reader; JSON keeps its types, declared types cast afterwards."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.json as pajson

from pipelines.errors import FileRejected
from pipelines.extract.drops import opening
from pipelines.extract.drops.encoding import Utf8Stream
from pipelines.extract.drops.listing import DropFile
from pipelines.extract.drops.opening import (
    arrow_reason,
    arrow_source,
    guarded_batches,
    peek_head,
    raise_stream_error,
)
from pipelines.extract.drops.reject import one_line
from pipelines.extract.drops.typing import TIMESTAMP, Typer, declared_types, typed
from pipelines.privacy import quote
from pipelines.registry import DropTable
from pipelines.settings import Settings


def _json_kind_fits(value: Any, type_: pa.DataType) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):
        return pa.types.is_boolean(type_)
    if isinstance(value, int):
        return pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_decimal(type_)
    if isinstance(value, float):
        return pa.types.is_floating(type_) or pa.types.is_decimal(type_)
    if isinstance(value, str):
        return pa.types.is_string(type_) or pa.types.is_timestamp(type_) or pa.types.is_date(type_)
    if isinstance(value, dict):
        return pa.types.is_struct(type_)
    if isinstance(value, list):
        return pa.types.is_list(type_) or pa.types.is_large_list(type_)
    return False


def _jsonl_scan(
    f: DropFile, table: DropTable, settings: Settings, schema: pa.Schema | None, stop_at_row: int | None = None
) -> tuple[int, str | None] | None:
    """Error path for JSON lines: (line, reason) of the first bad line, or (line, None) of data row
    ``stop_at_row``; None if nothing found."""
    fields = {field.name: field.type for field in schema} if schema is not None else None
    with opening.open_binary(f, settings) as raw:
        stream = Utf8Stream(raw, table.encoding, f.name, validate=True, chunk_bytes=opening.READ_CHUNK_BYTES)
        text = io.TextIOWrapper(io.BufferedReader(stream, opening.READ_CHUNK_BYTES), encoding="utf-8", newline="\n")
        row = 0
        for line_no, line in enumerate(text, start=1):
            if not line.strip():
                continue
            if len(line) * 3 >= opening.BLOCK_BYTES and len(line.encode("utf-8")) >= opening.BLOCK_BYTES:
                return line_no, f"第 {line_no} 行: {arrow_reason('JSON', ValueError('straddling'))}"
            try:
                record = json.loads(line)
            except ValueError as exc:
                return line_no, f"第 {line_no} 行: 不是有效的 JSON ({one_line(str(exc))})"
            if not isinstance(record, dict):
                return line_no, f"第 {line_no} 行: 不是 JSON 对象 (each line must be a JSON object)"
            if fields is not None:
                for key, value in record.items():
                    if key not in fields:
                        return line_no, (
                            f"第 {line_no} 行: 字段 {key!r} 在文件开头没有出现, 请在 types 中声明 "
                            f"(field {key!r} first appears late; declare it under types:)"
                        )
                    if not _json_kind_fits(value, fields[key]):
                        return line_no, (
                            f"第 {line_no} 行: 字段 {key!r} 的值 {quote(value)} 与前面推断的类型 {fields[key]} 不一致 "
                            f"(value does not fit the inferred type; declare it under types:)"
                        )
            if stop_at_row is not None and row == stop_at_row:
                return line_no, None
            row += 1
    return None


def _head_keys(head: bytes) -> set[str]:
    """Keys of the JSON objects on the complete lines at the head of the file."""
    keys: set[str] = set()
    for line in head.split(b"\n")[:-1]:
        try:
            record = json.loads(line)
        except ValueError:
            break
        if isinstance(record, dict):
            keys.update(record)
    return keys


def _explicit_json_schema(table: DropTable, present: set[str]) -> pa.Schema | None:
    """Declared types fix the JSON reader's type of those fields (so inference cannot flip them).
    Only fields seen at the head of the file, so a declared type never invents a missing column."""
    source_of = {code: source for source, code in table.columns.items()}
    fields = []
    for code, (_spec, target) in declared_types(table).items():
        name = source_of.get(code, code)
        if name not in present:
            continue
        if target.equals(TIMESTAMP) or pa.types.is_date(target):
            fields.append(pa.field(name, pa.string()))  # parsed afterwards, as Shanghai wall time
        elif pa.types.is_decimal(target):
            continue  # numbers or text: converted exactly afterwards
        else:
            fields.append(pa.field(name, target))
    return pa.schema(fields) if fields else None


def read_jsonl(f: DropFile, table: DropTable, settings: Settings, batch_rows: int) -> Iterator[pa.RecordBatch]:
    head, whole = peek_head(f, table, settings)
    if whole and not head.endswith(b"\n"):
        head += b"\n"
    if not head.strip():
        raise FileRejected(f.name, "空文件 (empty file)", None)
    explicit = _explicit_json_schema(table, _head_keys(head))
    with arrow_source(f, table, settings) as (source, stream):
        schema: pa.Schema | None = None
        try:
            reader = pajson.open_json(
                source,
                read_options=pajson.ReadOptions(block_size=opening.BLOCK_BYTES, use_threads=opening.USE_THREADS),
                parse_options=pajson.ParseOptions(explicit_schema=explicit, unexpected_field_behavior="infer"),
            )
            schema = reader.schema
            names = [name.strip() for name in schema.names]
        except FileRejected:
            raise
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            raise _json_rejection(f, table, settings, stream, None, exc) from None
        except Exception:
            raise_stream_error(stream)
            raise
        typer = Typer(f, table, names, lambda row: _jsonl_line(f, table, settings, schema, row))

        def read_next() -> pa.RecordBatch:
            batch = reader.read_next_batch()
            if stream is None:
                batch.validate(full=True)  # Arrow's JSON reader does not check UTF-8 itself
            return batch

        data = guarded_batches(read_next, stream,
                               lambda exc: _json_rejection(f, table, settings, stream, schema, exc))
        yield from typed(data, typer, batch_rows, empty=pa.RecordBatch.from_pylist([], schema=schema))


def _jsonl_line(f: DropFile, table: DropTable, settings: Settings, schema: pa.Schema, row: int) -> int | None:
    found = _jsonl_scan(f, table, settings, schema, stop_at_row=row)
    if found and found[1] is not None:
        raise FileRejected(f.name, found[1], found[0])
    return found[0] if found else None


def _json_rejection(
    f: DropFile,
    table: DropTable,
    settings: Settings,
    stream: Utf8Stream | None,
    schema: pa.Schema | None,
    exc: Exception,
) -> FileRejected:
    if stream is not None and stream.error is not None:
        return stream.error
    found = _jsonl_scan(f, table, settings, schema)
    if found and found[1]:
        return FileRejected(f.name, found[1], found[0])
    return FileRejected(f.name, arrow_reason("JSON lines", exc), None)
