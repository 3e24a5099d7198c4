"""Opening drop files as streams (local or S3), the read tunables, and clean shutdown of live reads.

The tunables live here, read as ``opening.NAME`` at call time, so tests can change them in one place.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path, PurePosixPath
from time import monotonic, sleep
from typing import Any

import pyarrow as pa
import pyarrow.fs  # noqa: F401  (its S3 finalizer registers before ours: ours runs first at exit)

from pipelines.errors import FileRejected
from pipelines.extract.drops.encoding import Utf8Stream
from pipelines.extract.drops.listing import DropFile, open_listed
from pipelines.extract.drops.reject import one_line
from pipelines.extract.drops.s3 import s3_filesystem, split_s3
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
def open_binary(f: DropFile, settings: Settings) -> Iterator[Any]:
    """A sequential, read-only pyarrow stream of the file (S3: ranged reads through pyarrow's filesystem).
    Native, so Arrow's read-ahead thread never has to call back into Python."""
    if f.uri.startswith("s3://"):
        bucket, key = split_s3(f.uri)
        path = f"{bucket}/{key}"
        with s3_filesystem(settings, bucket).open_input_stream(
            path, compression=None, buffer_size=READ_CHUNK_BYTES
        ) as stream:
            yield stream
    else:
        with open_listed(f) as fd, _fd_file(fd) as handle:
            yield handle


@contextmanager
def _fd_file(fd: int) -> Iterator[Any]:
    """A native pyarrow file over an open descriptor: ``/proc/self/fd/N`` re-opens that very file (not
    the path, which may have changed since), so reads stay native; a Python file elsewhere."""
    if os.path.isdir("/proc/self/fd"):
        with pa.OSFile(f"/proc/self/fd/{fd}", "rb") as handle:
            yield handle
    else:
        with pa.PythonFile(os.fdopen(os.dup(fd), "rb"), mode="r") as handle:
            yield handle


_LIVE_STREAMS: weakref.WeakSet[Utf8Stream] = weakref.WeakSet()
LIVE_READS: weakref.WeakSet[Any] = weakref.WeakSet()


@contextmanager
def arrow_source(f: DropFile, table: DropTable, settings: Settings) -> Iterator[tuple[Any, Utf8Stream | None]]:
    """What Arrow's CSV/JSON readers pull from: UTF-8 files natively; GBK/GB18030 through a
    ``PythonFile`` over the transcoding :class:`Utf8Stream` (closed afterwards, so any late read-ahead
    call sees end-of-file)."""
    with open_binary(f, settings) as raw:
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
    for gen in list(LIVE_READS):
        with suppress(Exception):
            gen.close()
    deadline = monotonic() + 2.0
    while any(s.busy for s in list(_LIVE_STREAMS)) and monotonic() < deadline:
        sleep(0.01)
    sleep(0.05)


def peek_head(f: DropFile, table: DropTable, settings: Settings) -> tuple[bytes, bool]:
    """Up to ``HEADER_MAX_BYTES`` leading UTF-8 bytes (BOM dropped) and whether that is the whole file."""
    with open_binary(f, settings) as raw:
        return Utf8Stream(raw, table.encoding, f.name, chunk_bytes=READ_CHUNK_BYTES).peek_head(HEADER_MAX_BYTES)


@contextmanager
def open_random_access(f: DropFile, settings: Settings) -> Iterator[Any]:
    """A seekable source for Parquet: a local path or pyarrow's S3 random-access file."""
    if f.uri.startswith("s3://"):
        bucket, key = split_s3(f.uri)
        with s3_filesystem(settings, bucket).open_input_file(f"{bucket}/{key}") as handle:
            yield handle
    else:
        with open_listed(f) as fd, _fd_file(fd) as handle:
            yield handle


@contextmanager
def local_copy(f: DropFile, settings: Settings) -> Iterator[str]:
    """A local path of the file (S3 objects are spooled to a temporary file, deleted afterwards)."""
    suffix = PurePosixPath(f.name).suffix
    if not f.uri.startswith("s3://") and os.path.isdir("/proc/self/fd"):
        with open_listed(f) as fd:
            yield f"/proc/self/fd/{fd}"  # the listed file itself, whatever its path points to now
        return
    with tempfile.TemporaryDirectory(prefix="citylake-drop-") as tmp:
        path = Path(tmp) / f"file{suffix}"
        with open_binary(f, settings) as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst, READ_CHUNK_BYTES)
        yield str(path)


def raise_stream_error(stream: Utf8Stream | None) -> None:
    if stream is not None and stream.error is not None:
        raise stream.error from None


def guarded_batches(read_next: Callable[[], pa.RecordBatch], stream: Utf8Stream | None,
                    rejection: Callable[[Exception], FileRejected]) -> Iterator[pa.RecordBatch]:
    """``read_next`` until StopIteration, as the text readers (CSV, JSON lines) need it: a decoding error the
    UTF-8 stream recorded wins over whatever Arrow made of it, and an Arrow parse error becomes the file's
    rejection (``rejection`` finds the line)."""
    while True:
        try:
            batch = read_next()
        except StopIteration:
            raise_stream_error(stream)
            return
        except FileRejected:
            raise
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            raise_stream_error(stream)
            raise rejection(exc) from None
        except Exception:
            raise_stream_error(stream)
            raise
        raise_stream_error(stream)
        yield batch


def arrow_reason(what: str, exc: Exception) -> str:
    if "straddl" in str(exc):
        size = f"{BLOCK_BYTES // (1 << 20)} MiB" if BLOCK_BYTES >= 1 << 20 else f"{BLOCK_BYTES} bytes"
        return f"有一行超过 {size}, 无法分块读取 (a row is longer than the {size} read block)"
    return f"{what} 无法解析 ({one_line(str(exc))})"
