"""Declared column types of a drop table: header names → column codes, text → typed Arrow, batch by batch."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from datetime import date, datetime, time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import ConfigError, FileRejected
from pipelines.extract.drops.listing import DropFile
from pipelines.privacy import quote
from pipelines.registry import DropTable
from pipelines.settings import TZ

TZ_NAME = "Asia/Shanghai"
TIMESTAMP = pa.timestamp("us", tz=TZ_NAME)
"""Declared ``timestamp`` columns land as this type; naive source times are read as Shanghai time."""


_DECIMAL_RE = re.compile(r"^decimal\(\s*(\d+)\s*,\s*(\d+)\s*\)$")
_SIMPLE_TYPES: dict[str, pa.DataType] = {
    "int64": pa.int64(),
    "float64": pa.float64(),
    "date": pa.date32(),
    "timestamp": TIMESTAMP,
    "string": pa.string(),
    "bool": pa.bool_(),
}


def arrow_type(spec: str) -> pa.DataType:
    """The Arrow type of a ``types:`` entry (``int64``, ``float64``, ``decimal(p,s)``, ``date``,
    ``timestamp``, ``string``, ``bool``)."""
    s = spec.strip().lower()
    if s in _SIMPLE_TYPES:
        return _SIMPLE_TYPES[s]
    m = _DECIMAL_RE.match(s)
    if m:
        precision, scale = int(m.group(1)), int(m.group(2))
        if 1 <= precision <= 38 and scale <= precision:
            return pa.decimal128(precision, scale)
        if precision <= 76 and scale <= precision:
            return pa.decimal256(precision, scale)
    raise ConfigError(
        f"type {spec!r} is not supported; use int64, float64, decimal(p,s), date, timestamp, string or bool"
    )


def declared_types(table: DropTable) -> dict[str, tuple[str, pa.DataType]]:
    out: dict[str, tuple[str, pa.DataType]] = {}
    for code, spec in table.types.items():
        try:
            out[code] = (spec, arrow_type(spec))
        except ConfigError as exc:
            raise ConfigError(f"table {table.code}: types.{code}: {exc}") from None
    return out


_DATETIME_FORMATS = (
    "%Y/%m/%d %H:%M:%S",
    "%Y/%m/%d %H:%M:%S.%f",
    "%Y/%m/%d %H:%M",
    "%Y/%m/%d",
    "%Y.%m.%d %H:%M:%S",
    "%Y.%m.%d",
    "%Y%m%d%H%M%S",
    "%Y年%m月%d日 %H:%M:%S",
    "%Y年%m月%d日 %H时%M分%S秒",
    "%Y年%m月%d日",
)


def _parse_datetime(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        pass
    for fmt in _DATETIME_FORMATS:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    return None


def _clean_text(arr: pa.Array) -> pa.Array:
    """Trim whitespace; blank → null (for parsing typed values out of text)."""
    trimmed = pc.utf8_trim_whitespace(arr)
    return pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.string()), trimmed)


def _first_failing(arr: pa.Array, fn: Callable[[pa.Array], Any]) -> int:
    """Index of the first element for which ``fn`` fails on the prefix up to it (binary search)."""
    lo, hi = 0, len(arr)  # fn(arr[:lo]) succeeds, fn(arr[:hi]) fails
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            fn(arr.slice(0, mid))
            lo = mid
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, ValueError, OverflowError):
            hi = mid
    return hi - 1


def _cast_or_locate(arr: pa.Array, fn: Callable[[pa.Array], pa.Array]) -> tuple[pa.Array | None, int | None]:
    try:
        return fn(arr), None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, ValueError, OverflowError):
        return None, _first_failing(arr, fn)


def _bad_where_null(source: pa.Array, result: pa.Array) -> int | None:
    bad = pc.and_(pc.is_valid(source), pc.is_null(result))
    if not pc.any(bad).as_py():
        return None
    return int(pc.index(bad, True).as_py())


def _text_to_timestamp(arr: pa.Array) -> tuple[pa.Array | None, int | None]:
    text = _clean_text(arr)
    try:  # ISO 8601 without offset: Shanghai wall time
        naive = pc.cast(text, pa.timestamp("us"))
        return pc.assume_timezone(naive, TZ_NAME, ambiguous="earliest", nonexistent="earliest"), None
    except pa.ArrowInvalid:
        pass
    try:  # ISO 8601, every value with an offset
        return pc.cast(pc.cast(text, pa.timestamp("us", tz="UTC")), TIMESTAMP), None
    except pa.ArrowInvalid:
        pass
    values: list[datetime | None] = []
    for i, value in enumerate(text.to_pylist()):
        if value is None:
            values.append(None)
            continue
        parsed = _parse_datetime(value)
        if parsed is None:
            return None, i
        values.append(parsed if parsed.tzinfo else parsed.replace(tzinfo=TZ))
    return pa.array(values, type=TIMESTAMP), None


def _text_to_date(arr: pa.Array) -> tuple[pa.Array | None, int | None]:
    text = _clean_text(arr)
    try:
        return pc.cast(text, pa.date32()), None
    except pa.ArrowInvalid:
        pass
    values: list[date | None] = []
    for i, value in enumerate(text.to_pylist()):
        if value is None:
            values.append(None)
            continue
        parsed = _parse_datetime(value)
        if parsed is None or parsed.tzinfo is not None or parsed.time() != time(0):
            return None, i
        values.append(parsed.date())
    return pa.array(values, type=pa.date32()), None


_TRUE = ["true", "t", "1", "y", "yes", "是", "真"]
_FALSE = ["false", "f", "0", "n", "no", "否", "假"]


def _text_to_bool(arr: pa.Array) -> tuple[pa.Array | None, int | None]:
    text = pc.utf8_lower(_clean_text(arr))
    result = pc.if_else(
        pc.is_in(text, pa.array(_TRUE)),
        True,
        pc.if_else(pc.is_in(text, pa.array(_FALSE)), False, pa.scalar(None, pa.bool_())),
    )
    bad = _bad_where_null(text, result)
    return (None, bad) if bad is not None else (result, None)


def _convert(arr: pa.Array, target: pa.DataType) -> tuple[pa.Array | None, int | None]:
    """Cast one column to its declared type: (result, None) or (None, index of the first bad value)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    source = arr.type
    if source.equals(target):
        return arr, None
    is_text = pa.types.is_string(source) or pa.types.is_large_string(source)
    if is_text and target.equals(TIMESTAMP):
        return _text_to_timestamp(arr)
    if is_text and pa.types.is_date32(target):
        return _text_to_date(arr)
    if is_text and pa.types.is_boolean(target):
        return _text_to_bool(arr)
    if is_text and not pa.types.is_string(target):
        text = _clean_text(arr)
        result, bad = _cast_or_locate(text, lambda a: pc.cast(a, target))
        return result, bad
    if pa.types.is_timestamp(source) and target.equals(TIMESTAMP):
        if source.tz is None:
            local = pc.cast(arr, pa.timestamp("us"), safe=False)  # ns → us truncates, never overflows
            return pc.assume_timezone(local, TZ_NAME, ambiguous="earliest", nonexistent="earliest"), None
        return pc.cast(arr, TIMESTAMP, safe=False), None
    if pa.types.is_date(source) and target.equals(TIMESTAMP):
        naive = pc.cast(arr, pa.timestamp("us"))
        return pc.assume_timezone(naive, TZ_NAME, ambiguous="earliest", nonexistent="earliest"), None
    if pa.types.is_timestamp(source) and pa.types.is_date32(target):
        local = pc.local_timestamp(arr) if source.tz else arr
        return pc.cast(local, pa.date32(), safe=False), None
    if (pa.types.is_integer(source) or pa.types.is_floating(source)) and pa.types.is_decimal(target):
        # via the shortest decimal text, so 12.345 → decimal(12,2) is refused instead of rounded
        return _cast_or_locate(arr, lambda a: pc.cast(pc.cast(a, pa.string()), target))
    return _cast_or_locate(arr, lambda a: pc.cast(a, target))


class Typer:
    """Renames columns to codes and applies declared types batch by batch, keeping one schema."""

    def __init__(
        self,
        f: DropFile,
        table: DropTable,
        source_names: list[str],
        locate: Callable[[int], int | None],
    ) -> None:
        self.f = f
        self.source_names = source_names
        self.codes = _column_codes(f, table, source_names)
        self.types = declared_types(table)
        self.locate = locate
        self.rows_done = 0
        self.schema: pa.Schema | None = None

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        columns: list[pa.Array] = []
        for i, code in enumerate(self.codes):
            column = batch.column(i)
            if code in self.types:
                spec, target = self.types[code]
                converted, bad = _convert(column, target)
                if converted is None:
                    self._reject_value(i, spec, column, 0 if bad is None else bad)
                column = converted
            columns.append(column)
        out = pa.RecordBatch.from_arrays(columns, names=self.codes)
        if self.schema is None:
            self.schema = out.schema
        elif not out.schema.equals(self.schema):
            out = out.cast(self.schema)
        self.rows_done += batch.num_rows
        return out

    def _reject_value(self, col: int, spec: str, column: pa.Array, index: int) -> None:
        row = self.rows_done + index
        line = self.locate(row)
        value = column[index].as_py() if index < len(column) else None
        name = self.source_names[col]
        where = f"第 {line} 行" if line else f"第 {row + 1} 条记录"
        reason = (
            f"{where}, 列 {name}: 值 {quote(value)} 不能转换为 {spec} (column {self.codes[col]}: cannot cast to {spec})"
        )
        raise FileRejected(self.f.name, reason, line)


def _column_codes(f: DropFile, table: DropTable, source_names: list[str]) -> list[str]:
    codes: list[str] = []
    seen: dict[str, str] = {}
    for position, name in enumerate(source_names, start=1):
        if not name:
            raise FileRejected(f.name, f"表头第 {position} 列没有列名 (header column {position} is empty)", 1)
        code = table.column_code(name)  # ConfigError for an unmapped non-code name: a config problem
        if code in seen:
            raise FileRejected(
                f.name,
                f"表头列 {name!r} 与 {seen[code]!r} 对应同一列代码 {code} (two header columns map to {code})",
                1,
            )
        seen[code] = name
        codes.append(code)
    return codes


def _rebatch(batches: Iterable[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """Re-cut a stream of batches into batches of exactly ``rows`` rows (the last one shorter)."""
    pending: list[pa.RecordBatch] = []
    count = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        count += batch.num_rows
        while count >= rows:
            pieces: list[pa.RecordBatch] = []
            need = rows
            while need:
                head = pending[0]
                if head.num_rows <= need:
                    pieces.append(pending.pop(0))
                    need -= head.num_rows
                else:
                    pieces.append(head.slice(0, need))
                    pending[0] = head.slice(need)
                    need = 0
            count -= rows
            yield pieces[0] if len(pieces) == 1 else pa.concat_batches(pieces)
    if pending:
        yield pending[0] if len(pending) == 1 else pa.concat_batches(pending)


def typed(
    batches: Iterable[pa.RecordBatch], typer: Typer, batch_rows: int, empty: pa.RecordBatch
) -> Iterator[pa.RecordBatch]:
    produced = False
    for batch in _rebatch(batches, batch_rows):
        produced = True
        yield typer.apply(batch)
    if not produced:  # header only: one empty batch still tells the caller the columns
        yield typer.apply(empty)
