"""File-drop extraction: list the files of a drop (local folder or S3 prefix), stream each one as Arrow
record batches with bounded memory, and copy an unparseable file aside with its reason.

Drops are read-only to the lake: nothing here moves, deletes or writes a file in a drop location.

Streaming, per format:

- CSV: ``pyarrow.csv.open_csv`` (a streaming reader, one block at a time). Every column is read as
  text (empty → null); declared ``types`` are parsed afterwards, batch by batch. UTF-8 files go to
  Arrow as native streams (local file or pyarrow's S3 stream). GBK/GB18030 files are transcoded on
  the fly by :class:`Utf8Stream` (an incremental decoder over raw chunks, re-encoded as UTF-8) behind
  a ``pa.PythonFile``, so a 5 GB file never sits in memory.
- JSON lines: ``pyarrow.json.open_json`` (streaming) over the same sources; JSON keeps its own
  types, then ``types`` casts. Arrow's JSON reader does not check UTF-8, so each batch is validated.
- Parquet: ``ParquetFile.iter_batches``; Parquet keeps its own types, then ``types`` casts.
- XLSX: python-calamine (the sheet is held by calamine in Rust memory — at most 1,048,576 rows by the
  format — and converted to Arrow ``batch_rows`` rows at a time).

The fast path never tracks line numbers. When a file turns out to be bad, an error-path rescan in
plain Python finds the 1-based line of the first problem (bad bytes, wrong field count, bad JSON,
the row of a value that does not cast), so the reason names the line without slowing good files.
A :class:`FileRejected` may come after some batches of the file were already yielded: the caller
must discard the file's batches (the file is all-or-nothing).
"""

from __future__ import annotations

import atexit
import codecs
import csv
import io
import json
import os
import re
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from pathlib import Path, PurePosixPath
from time import monotonic, sleep
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs  # noqa: F401  (its S3 finalizer registers before ours: ours runs first at exit)
import pyarrow.json as pajson
import pyarrow.parquet as pq

from pipelines.errors import ConfigError, FileRejected, SourceError
from pipelines.registry import DropTable, FileDrop, check_code
from pipelines.settings import TZ, Settings

TZ_NAME = "Asia/Shanghai"
TIMESTAMP = pa.timestamp("us", tz=TZ_NAME)
"""Declared ``timestamp`` columns land as this type; naive source times are read as Shanghai time."""

READ_CHUNK_BYTES = 4 << 20
"""Raw bytes read (and, for GBK/GB18030, decoded) per step; on S3 each step is one ranged GET."""
BLOCK_BYTES = 2 << 20
"""Arrow CSV/JSON block size: one CSV row or JSON line must fit in it. Arrow's streaming readers read
up to 32 blocks ahead in the background (not configurable), so memory is ~32 blocks + one batch
whatever the file size. Measured on an 800 MB CSV (2 CPUs): 1 MiB → ~290 MB peak RSS, 2 MiB → ~340,
4 MiB → ~410, 8 MiB → ~640, all at the same speed (~330 MB/s with typed columns)."""
HEADER_MAX_BYTES = 1 << 20
"""The CSV header must end within the first ~1 MiB of the file."""
USE_THREADS = True
"""Arrow's CSV/JSON readers parse blocks on its thread pool (same memory either way)."""

_ENCODING_LABEL = {"utf-8": "UTF-8", "utf-8-sig": "UTF-8", "gbk": "GBK", "gb18030": "GB18030"}


@dataclass(frozen=True)
class DropFile:
    """One file of a drop, as listed."""

    uri: str
    """Absolute local path or ``s3://bucket/key``."""
    name: str
    """Path relative to the drop location (posix separators): lineage ``_source_file`` and ledger key."""
    size: int
    fingerprint: str
    """ETag on S3, ``f"{size}-{mtime_ns}"`` locally: a changed file gets a new fingerprint."""


# --- S3 -----------------------------------------------------------------------------------------


def s3_client(settings: Settings) -> Any:
    """A boto3 S3 client honouring ``settings.s3_endpoint`` and the standard ``AWS_*`` variables."""
    import boto3
    from botocore.config import Config

    kwargs: dict[str, Any] = {}
    s3_config: dict[str, Any] = {}
    if settings.s3_endpoint:
        kwargs["endpoint_url"] = settings.s3_endpoint
        s3_config["addressing_style"] = "path"
    config = Config(retries={"max_attempts": 5, "mode": "standard"}, s3=s3_config or None)
    return boto3.client("s3", config=config, **kwargs)


def _s3_filesystem(settings: Settings, bucket: str) -> Any:
    """pyarrow's S3 filesystem (random access for Parquet); credentials come from the AWS chain."""
    from pyarrow import fs

    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if settings.s3_endpoint:
        parts = urlsplit(settings.s3_endpoint if "://" in settings.s3_endpoint else f"https://{settings.s3_endpoint}")
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
        return fs.S3FileSystem(
            endpoint_override=host,
            scheme=parts.scheme or "https",
            region=region or "us-east-1",
            force_virtual_addressing=False,
        )
    return fs.S3FileSystem(region=region or fs.resolve_s3_region(bucket))


def _split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/key`` → (``bucket``, ``some/key``)."""
    rest = uri[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ConfigError(f"{uri!r}: an S3 location needs a bucket (s3://bucket/prefix)")
    return bucket, key


def _s3_error(exc: Exception) -> str:
    """A short, credential-free description of a botocore error."""
    response = getattr(exc, "response", None) or {}
    code = (response.get("Error") or {}).get("Code")
    return str(code) if code else type(exc).__name__


# --- listing ------------------------------------------------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """Glob over posix relative paths: ``*``/``?``/``[..]`` stay within one folder, ``**`` crosses."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:[^/]+/)*")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1 : end]
            body = "^" + body[1:] if body.startswith("!") else body
            out.append("[" + body.replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def _hidden(name: str) -> bool:
    """Dot files and Office lock files (``~$report.xlsx``) are never data."""
    return any(part.startswith((".", "~$")) for part in name.split("/"))


def list_drop_files(drop: FileDrop, table: DropTable, settings: Settings) -> list[DropFile]:
    """The files of ``drop`` matching ``table.glob``, sorted by name. Reads nothing but the listing."""
    matcher = _glob_regex(table.glob)
    recursive = "/" in table.glob or "**" in table.glob
    location = settings.resolve(drop.location)
    if location.startswith("s3://"):
        files = _list_s3(location, matcher, recursive, settings)
    else:
        base = Path(location)
        files = _list_local(base, matcher, recursive)
    return sorted(files, key=lambda f: f.name)


def _list_local(base: Path, matcher: re.Pattern[str], recursive: bool) -> list[DropFile]:
    if not base.is_dir():
        raise SourceError(f"drop folder {base} does not exist or is not a folder")
    found: list[DropFile] = []
    for folder, dirs, names in os.walk(base):
        if not recursive:
            dirs.clear()
        dirs[:] = [d for d in dirs if not _hidden(d)]
        for file_name in names:
            path = Path(folder) / file_name
            name = path.relative_to(base).as_posix()
            if _hidden(name) or not matcher.match(name) or not path.is_file():
                continue
            st = path.stat()
            found.append(DropFile(str(path.resolve()), name, st.st_size, f"{st.st_size}-{st.st_mtime_ns}"))
    return found


def _list_s3(location: str, matcher: re.Pattern[str], recursive: bool, settings: Settings) -> list[DropFile]:
    bucket, prefix = _split_s3(location)
    prefix = prefix.strip("/")
    list_prefix = f"{prefix}/" if prefix else ""
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": list_prefix}
    if not recursive:
        kwargs["Delimiter"] = "/"
    found: list[DropFile] = []
    try:
        for page in s3_client(settings).get_paginator("list_objects_v2").paginate(**kwargs):
            for obj in page.get("Contents", []):
                key: str = obj["Key"]
                name = key[len(list_prefix) :]
                if not name or key.endswith("/") or _hidden(name) or not matcher.match(name):
                    continue
                etag = str(obj.get("ETag", "")).strip('"')
                found.append(DropFile(f"s3://{bucket}/{key}", name, int(obj["Size"]), etag))
    except Exception as exc:  # botocore errors: name the location, never the credentials
        if type(exc).__module__.startswith(("botocore", "boto3")):
            raise SourceError(f"cannot list {location}: {_s3_error(exc)}") from None
        raise
    return found


# --- opening ------------------------------------------------------------------------------------


@contextmanager
def _open_binary(f: DropFile, settings: Settings) -> Iterator[Any]:
    """A sequential, read-only pyarrow stream of the file (S3: ranged reads through pyarrow's filesystem).
    Native, so Arrow's read-ahead thread never has to call back into Python."""
    if f.uri.startswith("s3://"):
        bucket, key = _split_s3(f.uri)
        path = f"{bucket}/{key}"
        with _s3_filesystem(settings, bucket).open_input_stream(
            path, compression=None, buffer_size=READ_CHUNK_BYTES
        ) as stream:
            yield stream
    else:
        with pa.OSFile(f.uri, "rb") as handle:
            yield handle


_LIVE_STREAMS: weakref.WeakSet[Utf8Stream] = weakref.WeakSet()
_LIVE_READS: weakref.WeakSet[Any] = weakref.WeakSet()


@contextmanager
def _arrow_source(f: DropFile, table: DropTable, settings: Settings) -> Iterator[tuple[Any, Utf8Stream | None]]:
    """What Arrow's CSV/JSON readers pull from: UTF-8 files natively; GBK/GB18030 through a
    ``PythonFile`` over the transcoding :class:`Utf8Stream` (closed afterwards, so any late read-ahead
    call sees end-of-file)."""
    with _open_binary(f, settings) as raw:
        if table.encoding in ("utf-8", "utf-8-sig"):
            yield raw, None
            return
        stream = Utf8Stream(raw, table.encoding, f.name)
        _LIVE_STREAMS.add(stream)
        try:
            yield pa.PythonFile(stream, mode="r"), stream
        finally:
            stream.close()


@atexit.register
def _close_abandoned_reads() -> None:
    """A generator left unfinished at interpreter exit would let Arrow's read-ahead thread call into
    a finalizing interpreter (a hard crash): close them first and let transcoding reads drain."""
    for gen in list(_LIVE_READS):
        with suppress(Exception):
            gen.close()
    deadline = monotonic() + 2.0
    while any(s.busy for s in list(_LIVE_STREAMS)) and monotonic() < deadline:
        sleep(0.01)
    sleep(0.05)


def _peek_head(f: DropFile, table: DropTable, settings: Settings) -> tuple[bytes, bool]:
    """Up to ``HEADER_MAX_BYTES`` leading UTF-8 bytes (BOM dropped) and whether that is the whole file."""
    with _open_binary(f, settings) as raw:
        return Utf8Stream(raw, table.encoding, f.name).peek_head(HEADER_MAX_BYTES)


@contextmanager
def _open_random_access(f: DropFile, settings: Settings) -> Iterator[Any]:
    """A seekable source for Parquet: a local path or pyarrow's S3 random-access file."""
    if f.uri.startswith("s3://"):
        bucket, key = _split_s3(f.uri)
        with _s3_filesystem(settings, bucket).open_input_file(f"{bucket}/{key}") as handle:
            yield handle
    else:
        with pa.OSFile(f.uri, "rb") as handle:
            yield handle


@contextmanager
def _local_copy(f: DropFile, settings: Settings) -> Iterator[str]:
    """A local path of the file (S3 objects are spooled to a temporary file, deleted afterwards)."""
    if not f.uri.startswith("s3://"):
        yield f.uri
        return
    suffix = PurePosixPath(f.name).suffix
    with tempfile.TemporaryDirectory(prefix="citylake-drop-") as tmp:
        path = Path(tmp) / f"file{suffix}"
        with _open_binary(f, settings) as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst, READ_CHUNK_BYTES)
        yield str(path)


class Utf8Stream(io.RawIOBase):
    """A read-only binary stream of UTF-8 bytes over a raw stream in ``encoding``.

    The raw stream is read ``READ_CHUNK_BYTES`` at a time. GBK/GB18030 chunks go through an
    incremental decoder and are re-encoded as UTF-8 (``\\n`` is one byte in every supported encoding,
    so line numbers are preserved). UTF-8 is passed through untouched unless ``validate`` is set.
    A leading BOM is always dropped. Invalid bytes raise :class:`FileRejected` naming the line of the
    first bad byte (also kept in ``self.error``, in case a C reader wraps the exception).
    """

    def __init__(self, raw: Any, encoding: str, file_name: str, *, validate: bool = False) -> None:
        super().__init__()
        self._raw = raw
        self._encoding = encoding
        self._file_name = file_name
        transcode = encoding not in ("utf-8", "utf-8-sig")
        self._transcode = transcode
        codec = "utf-8-sig" if not transcode else encoding
        self._decoder = codecs.getincrementaldecoder(codec)("strict") if transcode or validate else None
        self._buf = b""
        self._pos = 0
        self._lines = 0
        self._first = True
        self._eof = False
        self.error: FileRejected | None = None
        self.busy = False
        """True while a read is running (Arrow calls from its read-ahead thread)."""

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes, short only at the end; b"" once closed (so read-ahead just stops)."""
        if self.closed:
            return b""
        self.busy = True
        try:
            parts: list[bytes] = []
            want = size if size is not None and size >= 0 else None
            got = 0
            while want is None or got < want:
                if self._pos >= len(self._buf):
                    if self._eof or self.closed:
                        break
                    self._fill()
                    continue
                take = len(self._buf) - self._pos if want is None else min(want - got, len(self._buf) - self._pos)
                parts.append(self._buf[self._pos : self._pos + take])
                self._pos += take
                got += take
            return b"".join(parts)
        finally:
            self.busy = False

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def peek_head(self, limit: int) -> tuple[bytes, bool]:
        """Up to ``limit`` leading UTF-8 bytes, and whether that is the whole file."""
        while len(self._buf) < limit and not self._eof:
            self._fill(append=True)
        return self._buf[:limit], self._eof and len(self._buf) <= limit

    def _fill(self, append: bool = False) -> None:
        chunk = self._raw.read(READ_CHUNK_BYTES)
        final = not chunk
        if self._decoder is not None:
            try:
                text = self._decoder.decode(chunk, final)
            except UnicodeDecodeError as exc:
                line = self._lines + exc.object[: exc.start].count(b"\n") + 1
                bad = exc.object[exc.start : exc.start + 4].hex(" ").upper()
                label = _ENCODING_LABEL[self._encoding]
                self.error = FileRejected(
                    self._file_name,
                    f"第 {line} 行: 不是有效的 {label} 编码, 字节 {bad} (invalid {label} bytes)",
                    line,
                )
                raise self.error from None
            data = text.encode("utf-8") if self._transcode else chunk
        else:
            data = chunk
        if self._first and data:
            self._first = False
            if data.startswith(codecs.BOM_UTF8):
                data = data[len(codecs.BOM_UTF8) :]
        self._lines += chunk.count(b"\n")
        if append:
            self._buf += data
        else:
            self._buf, self._pos = data, 0
        self._eof = final


# --- declared types -----------------------------------------------------------------------------

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


def _declared_types(table: DropTable) -> dict[str, tuple[str, pa.DataType]]:
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


def _show(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    text = text if len(text) <= 32 else text[:32] + "…"
    return json.dumps(text, ensure_ascii=False)


class _Typer:
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
        self.types = _declared_types(table)
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
            f"{where}, 列 {name}: 值 {_show(value)} 不能转换为 {spec} (column {self.codes[col]}: cannot cast to {spec})"
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


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:300]


# --- CSV ----------------------------------------------------------------------------------------


def _csv_header(head: bytes, whole: bool, f: DropFile, delimiter: str) -> list[str] | None:
    """Header names (the first non-empty record) parsed from the head of the file; None if no rows."""
    text = head.decode("utf-8", errors="replace")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        for record in reader:
            if record:
                if not whole and text.count("\n") < reader.line_num:
                    raise FileRejected(f.name, "表头超过 1 MiB 或没有换行 (header line too long)", 1)
                return [name.strip() for name in record]
    except csv.Error as exc:
        line = reader.line_num
        raise FileRejected(f.name, f"第 {line} 行: 表头无法解析 ({_one_line(str(exc))})", line) from None
    return None


def _csv_scan(
    f: DropFile, table: DropTable, settings: Settings, stop_at_row: int | None = None
) -> tuple[int, str | None] | None:
    """Error path: walk the file in Python. Returns (line, reason) of the first problem (bad bytes,
    wrong field count) or, with ``stop_at_row``, (line, None) of that data row; None if nothing found."""
    csv.field_size_limit(max(csv.field_size_limit(), BLOCK_BYTES))
    with _open_binary(f, settings) as raw:
        stream = Utf8Stream(raw, table.encoding, f.name, validate=True)
        text = io.TextIOWrapper(io.BufferedReader(stream, READ_CHUNK_BYTES), encoding="utf-8", newline="")
        reader = csv.reader(text, delimiter=table.delimiter)
        width: int | None = None
        row = 0
        previous = 0
        try:
            for record in reader:
                start, previous = previous + 1, reader.line_num
                if not record:
                    continue
                if sum(map(len, record)) * 3 >= BLOCK_BYTES and _row_bytes(record, table.delimiter) >= BLOCK_BYTES:
                    return start, f"第 {start} 行: {_arrow_reason('CSV', ValueError('straddling'))}"
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
            return reader.line_num, f"第 {reader.line_num} 行: CSV 无法解析 ({_one_line(str(exc))})"
    return None


def _row_bytes(record: list[str], delimiter: str) -> int:
    return len(delimiter.join(record).encode("utf-8"))


def _read_csv(f: DropFile, table: DropTable, settings: Settings, batch_rows: int) -> Iterator[pa.RecordBatch]:
    header = _csv_header(*_peek_head(f, table, settings), f, table.delimiter)
    if header is None:
        raise FileRejected(f.name, "空文件, 没有表头 (empty file: no header)", None)
    width = len(header)
    slots = [f"c{i}" for i in range(width)]  # the header row is read as data, then cut off
    string = pa.string()
    typer = _Typer(f, table, header, lambda row: _locate_row(f, table, settings, row))
    with _arrow_source(f, table, settings) as (source, stream):

        def open_reader() -> Any:
            return pacsv.open_csv(
                source,
                read_options=pacsv.ReadOptions(column_names=slots, block_size=BLOCK_BYTES, use_threads=USE_THREADS),
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
        yield from _typed(data(), typer, batch_rows, empty=empty)


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
    while True:
        try:
            if reader is None:  # opening already parses the first block
                reader = open_reader()
            batch = reader.read_next_batch()
        except StopIteration:
            _raise_stream_error(stream)
            return
        except FileRejected:
            raise
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            _raise_stream_error(stream)
            found = _csv_scan(f, table, settings)
            if found and found[1]:
                raise FileRejected(f.name, found[1], found[0]) from None
            raise FileRejected(f.name, _arrow_reason("CSV", exc), None) from None
        except Exception:
            _raise_stream_error(stream)
            raise
        _raise_stream_error(stream)
        yield batch


def _raise_stream_error(stream: Utf8Stream | None) -> None:
    if stream is not None and stream.error is not None:
        raise stream.error from None


def _arrow_reason(what: str, exc: Exception) -> str:
    if "straddl" in str(exc):
        size = f"{BLOCK_BYTES // (1 << 20)} MiB" if BLOCK_BYTES >= 1 << 20 else f"{BLOCK_BYTES} bytes"
        return f"有一行超过 {size}, 无法分块读取 (a row is longer than the {size} read block)"
    return f"{what} 无法解析 ({_one_line(str(exc))})"


def _typed(
    batches: Iterable[pa.RecordBatch], typer: _Typer, batch_rows: int, empty: pa.RecordBatch
) -> Iterator[pa.RecordBatch]:
    produced = False
    for batch in _rebatch(batches, batch_rows):
        produced = True
        yield typer.apply(batch)
    if not produced:  # header only: one empty batch still tells the caller the columns
        yield typer.apply(empty)


# --- JSON lines ---------------------------------------------------------------------------------


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
    with _open_binary(f, settings) as raw:
        stream = Utf8Stream(raw, table.encoding, f.name, validate=True)
        text = io.TextIOWrapper(io.BufferedReader(stream, READ_CHUNK_BYTES), encoding="utf-8", newline="\n")
        row = 0
        for line_no, line in enumerate(text, start=1):
            if not line.strip():
                continue
            if len(line) * 3 >= BLOCK_BYTES and len(line.encode("utf-8")) >= BLOCK_BYTES:
                return line_no, f"第 {line_no} 行: {_arrow_reason('JSON', ValueError('straddling'))}"
            try:
                record = json.loads(line)
            except ValueError as exc:
                return line_no, f"第 {line_no} 行: 不是有效的 JSON ({_one_line(str(exc))})"
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
                            f"第 {line_no} 行: 字段 {key!r} 的值 {_show(value)} 与前面推断的类型 {fields[key]} 不一致 "
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
    for code, (_spec, target) in _declared_types(table).items():
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


def _read_jsonl(f: DropFile, table: DropTable, settings: Settings, batch_rows: int) -> Iterator[pa.RecordBatch]:
    head, whole = _peek_head(f, table, settings)
    if whole and not head.endswith(b"\n"):
        head += b"\n"
    if not head.strip():
        raise FileRejected(f.name, "空文件 (empty file)", None)
    explicit = _explicit_json_schema(table, _head_keys(head))
    with _arrow_source(f, table, settings) as (source, stream):
        schema: pa.Schema | None = None
        try:
            reader = pajson.open_json(
                source,
                read_options=pajson.ReadOptions(block_size=BLOCK_BYTES, use_threads=USE_THREADS),
                parse_options=pajson.ParseOptions(explicit_schema=explicit, unexpected_field_behavior="infer"),
            )
            schema = reader.schema
            names = [name.strip() for name in schema.names]
        except FileRejected:
            raise
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            raise _json_rejection(f, table, settings, stream, None, exc) from None
        except Exception:
            _raise_stream_error(stream)
            raise
        typer = _Typer(f, table, names, lambda row: _jsonl_line(f, table, settings, schema, row))

        def data() -> Iterator[pa.RecordBatch]:
            while True:
                try:
                    batch = reader.read_next_batch()
                    if stream is None:
                        batch.validate(full=True)  # Arrow's JSON reader does not check UTF-8 itself
                except StopIteration:
                    _raise_stream_error(stream)
                    return
                except FileRejected:
                    raise
                except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
                    raise _json_rejection(f, table, settings, stream, schema, exc) from None
                except Exception:
                    _raise_stream_error(stream)
                    raise
                _raise_stream_error(stream)
                yield batch

        yield from _typed(data(), typer, batch_rows, empty=pa.RecordBatch.from_pylist([], schema=schema))


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
    return FileRejected(f.name, _arrow_reason("JSON lines", exc), None)


# --- Parquet ------------------------------------------------------------------------------------


def _read_parquet(f: DropFile, table: DropTable, settings: Settings, batch_rows: int) -> Iterator[pa.RecordBatch]:
    with _open_random_access(f, settings) as source:
        try:
            parquet = pq.ParquetFile(source)
        except pa.ArrowInvalid as exc:
            raise FileRejected(f.name, f"不是有效的 Parquet 文件 ({_one_line(str(exc))})", None) from None
        schema = parquet.schema_arrow
        typer = _Typer(f, table, [name.strip() for name in schema.names], lambda row: None)

        def data() -> Iterator[pa.RecordBatch]:
            try:
                yield from parquet.iter_batches(batch_size=batch_rows)
            except pa.ArrowInvalid as exc:
                raise FileRejected(f.name, f"Parquet 无法读取 ({_one_line(str(exc))})", None) from None

        empty = pa.RecordBatch.from_pylist([], schema=schema)
        yield from _typed(data(), typer, batch_rows, empty=empty)


# --- XLSX ---------------------------------------------------------------------------------------


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


def _read_xlsx(f: DropFile, table: DropTable, settings: Settings, batch_rows: int) -> Iterator[pa.RecordBatch]:
    from python_calamine import CalamineError, CalamineWorkbook, WorksheetNotFound

    with _local_copy(f, settings) as path:
        try:
            workbook = CalamineWorkbook.from_path(path)
        except (CalamineError, OSError, ValueError) as exc:
            raise FileRejected(f.name, f"不是有效的 XLSX 文件 ({_one_line(str(exc))})", None) from None
        try:
            try:
                sheet = workbook.get_sheet_by_name(table.sheet) if table.sheet else workbook.get_sheet_by_index(0)
            except (WorksheetNotFound, IndexError):
                names = ", ".join(workbook.sheet_names)
                raise FileRejected(
                    f.name, f"没有工作表 {table.sheet!r}, 现有: {names} (sheet not found)", None
                ) from None
            except CalamineError as exc:
                raise FileRejected(f.name, f"工作表无法读取 ({_one_line(str(exc))})", None) from None
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
    typer = _Typer(f, table, header, lambda row: _xlsx_line(state, typer, row))
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
    typer: _Typer, state: dict[str, Any], columns: list[list[str | None]], lines: list[int]
) -> pa.RecordBatch:
    state["lines"] = lines
    batch = pa.RecordBatch.from_arrays(
        [pa.array(c, pa.string()) for c in columns], names=[f"c{i}" for i in range(len(columns))]
    )
    return typer.apply(batch)


def _xlsx_line(state: dict[str, Any], typer: _Typer, row: int) -> int | None:
    index = row - typer.rows_done
    lines: list[int] = state["lines"]
    return lines[index] if 0 <= index < len(lines) else None


# --- public reading entry -----------------------------------------------------------------------

_READERS: dict[str, Callable[[DropFile, DropTable, Settings, int], Iterator[pa.RecordBatch]]] = {
    "csv": _read_csv,
    "jsonl": _read_jsonl,
    "parquet": _read_parquet,
    "xlsx": _read_xlsx,
}


def read_drop_file(
    f: DropFile, table: DropTable, settings: Settings, batch_rows: int = 65536
) -> Iterator[pa.RecordBatch]:
    """Stream the file as record batches of at most ``batch_rows`` rows, columns renamed to codes and
    declared types applied; every batch has the same schema (a header-only file yields one empty
    batch). Unparseable content raises :class:`FileRejected` (possibly after earlier batches: discard
    them); an unmapped non-code column name raises :class:`ConfigError`; I/O failures propagate."""
    if batch_rows < 1:
        raise ValueError("batch_rows must be at least 1")
    if table.format in ("csv",) and len(table.delimiter) != 1:
        raise ConfigError(f"table {table.code}: delimiter must be one character, got {table.delimiter!r}")
    batches = _READERS[table.format](f, table, settings, batch_rows)
    _LIVE_READS.add(batches)
    return batches


# --- rejecting ----------------------------------------------------------------------------------

_BATCH_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:+-]*$")
_LINE_IN_REASON = re.compile(r"第\s*(\d+)\s*行")


def _safe_relative(name: str) -> str:
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in name:
        raise ValueError(f"file name {name!r} must be a relative path without '..'")
    return "/".join(parts)


def reject_file(
    f: DropFile,
    reason: str,
    settings: Settings,
    system: str,
    table: str,
    batch_id: str,
    *,
    line: int | None = None,
) -> str:
    """COPY the file (the drop is never touched) to ``<rejected_dir>/<system>/<table>/<batch_id>/<name>``
    with ``<name>.reason.json`` beside it; returns where the copy went. Rerunning overwrites (idempotent).
    ``line`` defaults to the ``第 N 行`` in ``reason``, if any."""
    check_code(system, "system code")
    check_code(table, "table code")
    if not _BATCH_ID_RE.match(batch_id) or ".." in batch_id:
        raise ValueError(f"batch id {batch_id!r} must match {_BATCH_ID_RE.pattern} without '..'")
    name = _safe_relative(f.name)
    if line is None and (m := _LINE_IN_REASON.search(reason)):
        line = int(m.group(1))
    record = {
        "file": f.name,
        "reason": _one_line(reason) if "\n" in reason else reason,
        "line": line,
        "batch_id": batch_id,
        "system": system,
        "table": table,
        "source_uri": f.uri,
        "size": f.size,
        "fingerprint": f.fingerprint,
    }
    payload = (json.dumps(record, ensure_ascii=False, indent=2) + "\n").encode("utf-8")
    relative = f"{system}/{table}/{batch_id}/{name}"
    target_root = settings.rejected_dir
    if target_root.startswith("s3://"):
        bucket, prefix = _split_s3(target_root)
        key = f"{prefix.strip('/')}/{relative}" if prefix.strip("/") else relative
        client = s3_client(settings)
        if f.uri.startswith("s3://"):
            src_bucket, src_key = _split_s3(f.uri)
            client.copy({"Bucket": src_bucket, "Key": src_key}, bucket, key)
        else:
            client.upload_file(f.uri, bucket, key)
        client.put_object(Bucket=bucket, Key=f"{key}.reason.json", Body=payload, ContentType="application/json")
        return f"s3://{bucket}/{key}"
    root = Path(target_root)
    if not root.is_absolute():
        root = settings.root / root
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    if f.uri.startswith("s3://"):
        src_bucket, src_key = _split_s3(f.uri)
        s3_client(settings).download_file(src_bucket, src_key, str(target))
    else:
        shutil.copyfile(f.uri, target)
    Path(f"{target}.reason.json").write_bytes(payload)
    return str(target)
