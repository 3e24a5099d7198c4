"""Encodings of drop files: a streaming GBK/GB18030 → UTF-8 transcoder that names the line of bad bytes."""

from __future__ import annotations

import codecs
import io
from typing import Any

from pipelines.errors import FileRejected

_ENCODING_LABEL = {"utf-8": "UTF-8", "utf-8-sig": "UTF-8", "gbk": "GBK", "gb18030": "GB18030"}


class Utf8Stream(io.RawIOBase):
    """A read-only binary stream of UTF-8 bytes over a raw stream in ``encoding``.

    The raw stream is read ``chunk_bytes`` at a time. GBK/GB18030 chunks go through an
    incremental decoder and are re-encoded as UTF-8 (``\\n`` is one byte in every supported encoding,
    so line numbers are preserved). UTF-8 is passed through untouched unless ``validate`` is set.
    A leading BOM is always dropped. Invalid bytes raise :class:`FileRejected` naming the line of the
    first bad byte (also kept in ``self.error``, in case a C reader wraps the exception).
    """

    def __init__(
        self, raw: Any, encoding: str, file_name: str, *, validate: bool = False, chunk_bytes: int = 4 << 20
    ) -> None:
        super().__init__()
        self._raw = raw
        self._chunk_bytes = chunk_bytes
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
        chunk = self._raw.read(self._chunk_bytes)
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
