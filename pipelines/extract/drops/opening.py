"""Opening drop files as streams (local or S3), the read tunables, and clean shutdown of live reads.

The tunables live here, read as ``opening.NAME`` at call time, so tests can change them in one place.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path, PurePosixPath
from time import monotonic, sleep
from typing import Any

import pyarrow as pa
import pyarrow.fs  # noqa: F401  (its S3 finalizer registers before ours: ours runs first at exit)

from pipelines.extract.drops.encoding import Utf8Stream
from pipelines.extract.drops.listing import DropFile
from pipelines.extract.drops.reject import _one_line
from pipelines.extract.drops.s3 import _s3_filesystem, _split_s3
from pipelines.registry import DropTable
from pipelines.settings import Settings

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
        stream = Utf8Stream(raw, table.encoding, f.name, chunk_bytes=READ_CHUNK_BYTES)
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
        return Utf8Stream(raw, table.encoding, f.name, chunk_bytes=READ_CHUNK_BYTES).peek_head(HEADER_MAX_BYTES)


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


def _raise_stream_error(stream: Utf8Stream | None) -> None:
    if stream is not None and stream.error is not None:
        raise stream.error from None


def _arrow_reason(what: str, exc: Exception) -> str:
    if "straddl" in str(exc):
        size = f"{BLOCK_BYTES // (1 << 20)} MiB" if BLOCK_BYTES >= 1 << 20 else f"{BLOCK_BYTES} bytes"
        return f"有一行超过 {size}, 无法分块读取 (a row is longer than the {size} read block)"
    return f"{what} 无法解析 ({_one_line(str(exc))})"
