"""The three open formats written in one streamed pass: Parquet (zstd), CSV (UTF-8 with BOM, RFC 4180,
CRLF) and JSON Lines, each hashed (SHA-256) and counted while it is written.

Every record batch goes to the three writers in turn, so memory follows a batch (plus Parquet's current
row group), never the dataset. Parquet and CSV are pyarrow's C++ writers; JSON Lines is DuckDB's
``to_json`` over the batch (one vectorised call, the JSON text of a batch written as one buffer). The CSV
and JSON text of a timestamp is ISO 8601 in Asia/Shanghai with its offset; Parquet keeps the types.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

BOM = b"\xef\xbb\xbf"
CSV_OPTIONS = {"eol": "\r\n", "quoting_style": "needed", "batch_size": 16 * 1024}
ROW_GROUP_ROWS = 512 * 1024
ROW_GROUP_BYTES = 64 * 1024 * 1024
"""A row group is written at ROW_GROUP_ROWS rows or when the pending batches hold this many bytes, whichever
comes first: wide rows (golden_legal_person's field_provenance JSON) keep the pending memory bounded."""
LANE_DEPTH = 4
FORMATS = {"parquet": "application/vnd.apache.parquet", "csv": "text/csv", "jsonl": "application/jsonl"}
"""Data file format → IANA media type (JSON Lines has none registered; application/jsonl is common use)."""


@dataclass(frozen=True)
class Written:
    """One data file as written: name, format, media type, size, SHA-256 and data rows."""

    name: str
    format: str
    media_type: str
    path: Path
    bytes: int
    sha256: str
    rows: int


class HashingSink:
    """A binary file that hashes (SHA-256) and counts what is written through it: the checksum comes
    with the write instead of a second read of a gigabyte file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f: BinaryIO = path.open("wb")
        self._hash = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._f.write(view)
        self._hash.update(view)
        self.size += len(view)
        return len(view)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if not self.closed:
            # on disk before the folder is renamed into place: a crash after the rename must not leave a
            # published name over bytes that were only in the page cache
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
            self.closed = True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


def text_batch(batch: pa.RecordBatch) -> pa.RecordBatch:
    """The batch as CSV and JSON Lines show it: a timestamp as ISO 8601 text in Asia/Shanghai with its offset
    (``2026-11-20T08:00:00+08:00``); other types as they are (dates are ISO 8601 already)."""
    if not any(pa.types.is_timestamp(f.type) for f in batch.schema):
        return batch
    arrays = []
    for col, f in zip(batch.columns, batch.schema, strict=True):
        if pa.types.is_timestamp(f.type):
            local = col.cast(pa.timestamp("s", tz="Asia/Shanghai"), safe=False) if f.type.tz else col.cast(
                pa.timestamp("s"), safe=False)
            col = pc.strftime(local, "%Y-%m-%dT%H:%M:%S%z" if f.type.tz else "%Y-%m-%dT%H:%M:%S")
            if f.type.tz:  # +0800 → +08:00 (ISO 8601 extended, as GB/T 7408.1 writes it)
                col = pc.replace_substring_regex(col, r"([+-]\d{2})(\d{2})$", r"\1:\2")
        arrays.append(col)
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def text_schema(schema: pa.Schema) -> pa.Schema:
    return pa.schema([pa.field(f.name, pa.string()) if pa.types.is_timestamp(f.type) else f for f in schema])


class _Jsonl:
    """JSON Lines through DuckDB's ``to_json`` (one call per batch; keys in column order, null as null)."""

    def __init__(self, sink: HashingSink) -> None:
        import duckdb

        self.sink = sink
        self.con = duckdb.connect(config={"threads": 1})

    def write(self, batch: pa.RecordBatch) -> None:
        self.con.register("b", batch)
        try:
            out = self.con.sql("SELECT to_json(b) || chr(10) AS j FROM b").to_arrow_table().column(0)
        finally:
            self.con.unregister("b")
        for chunk in out.chunks:
            if pa.types.is_string_view(chunk.type):
                chunk = chunk.cast(pa.large_string())
            self.sink.write(_text_bytes(chunk))

    def close(self) -> None:
        self.con.close()


def _text_bytes(chunk: pa.Array) -> memoryview | bytes:
    """The concatenated text of a string array without nulls, straight from its data buffer."""
    if not len(chunk):
        return b""
    width = 8 if pa.types.is_large_string(chunk.type) else 4
    offsets = memoryview(chunk.buffers()[1]).cast("B")
    start = int.from_bytes(offsets[chunk.offset * width:(chunk.offset + 1) * width], "little", signed=True)
    end_at = (chunk.offset + len(chunk)) * width
    end = int.from_bytes(offsets[end_at:end_at + width], "little", signed=True)
    return memoryview(chunk.buffers()[2]).cast("B")[start:end]


class _Lane(threading.Thread):
    """One format's writer on a thread of its own, fed record batches through a short queue: the three
    writers (pyarrow's C++ encoders and DuckDB release the GIL) run side by side on the cores there are."""

    def __init__(self, name: str, write: Callable[[pa.RecordBatch], None], close: Callable[[], None]) -> None:
        super().__init__(name=f"open-{name}", daemon=True)
        self.queue: queue.Queue[pa.RecordBatch | None] = queue.Queue(maxsize=LANE_DEPTH)
        self._write, self._close = write, close
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while (batch := self.queue.get()) is not None:
                if self.error is None:
                    self._write(batch)
        except BaseException as exc:  # noqa: BLE001 - handed to the producer, which raises it
            self.error = exc
            while self.queue.get() is not None:  # drain, so the producer never blocks on a dead lane
                pass
        finally:
            try:
                self._close()
            except BaseException as exc:  # noqa: BLE001
                self.error = self.error or exc

    def put(self, batch: pa.RecordBatch | None) -> None:
        while True:
            if self.error is not None and batch is not None:
                raise self.error
            try:
                self.queue.put(batch, timeout=0.5)
                return
            except queue.Full:
                if not self.is_alive():
                    raise self.error or RuntimeError(f"{self.name} stopped") from None


class _Parquet:
    def __init__(self, sink: HashingSink, schema: pa.Schema) -> None:
        self.schema = schema
        self.writer = pq.ParquetWriter(sink, schema, compression="zstd", compression_level=3, write_statistics=True)
        self.pending: list[pa.RecordBatch] = []
        self.rows = 0
        self.nbytes = 0

    def write(self, batch: pa.RecordBatch) -> None:
        self.pending.append(batch)
        self.rows += batch.num_rows
        self.nbytes += batch.nbytes
        # one row group per ~0.5 M rows or ~64 MB of pending data, not per record batch
        if self.rows >= ROW_GROUP_ROWS or self.nbytes >= ROW_GROUP_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.writer.write_table(pa.Table.from_batches(self.pending, self.schema), row_group_size=self.rows)
            self.pending, self.rows, self.nbytes = [], 0, 0

    def close(self) -> None:
        try:
            self.flush()
        finally:
            self.writer.close()


def write_formats(batches: Iterable[pa.RecordBatch], schema: pa.Schema, folder: Path, dataset: str,
                  observe: Callable[[pa.RecordBatch], None] | None = None,
                  formats: Iterable[str] = tuple(FORMATS)) -> list[Written]:
    """Write ``<dataset>.parquet``, ``.csv`` and ``.jsonl`` (or only ``formats`` of them: a share delivery has
    no JSON Lines) into ``folder`` from one pass over ``batches`` (already de-identified, all of ``schema``);
    ``observe`` sees each batch (coverage statistics). Each format is written by a thread of its own; the
    first writer error is raised here."""
    wanted = set(formats)
    sinks = {fmt: HashingSink(folder / f"{dataset}.{fmt}") for fmt in FORMATS if fmt in wanted}
    lanes: list[_Lane] = []
    rows = 0
    try:
        if "parquet" in sinks:
            parquet = _Parquet(sinks["parquet"], schema)
            lanes.append(_Lane("parquet", parquet.write, parquet.close))
        if "csv" in sinks:
            sinks["csv"].write(BOM)
            csv = pcsv.CSVWriter(sinks["csv"], text_schema(schema), write_options=pcsv.WriteOptions(**CSV_OPTIONS))
            lanes.append(_Lane("csv", lambda b: csv.write_batch(text_batch(b)), csv.close))
        if "jsonl" in sinks:
            jsonl = _Jsonl(sinks["jsonl"])
            lanes.append(_Lane("jsonl", lambda b: jsonl.write(text_batch(b)), jsonl.close))
        for lane in lanes:
            lane.start()
        for batch in batches:
            if not batch.num_rows:
                continue
            if batch.schema != schema:
                batch = pa.RecordBatch.from_arrays(batch.columns, schema=schema)
            rows += batch.num_rows
            if observe is not None:
                observe(batch)
            for lane in lanes:
                lane.put(batch)
    finally:
        for lane in lanes:
            if lane.is_alive():
                try:
                    lane.put(None)
                except BaseException:  # noqa: BLE001 - a dead lane: its own error is raised below
                    pass
        for lane in lanes:
            lane.join()
        for sink in sinks.values():
            sink.close()
    errors = [lane.error for lane in lanes if lane.error is not None]
    if errors:
        raise errors[0]
    return [Written(f"{dataset}.{fmt}", fmt, FORMATS[fmt], sink.path, sink.size, sink.sha256, rows)
            for fmt, sink in sinks.items()]


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    """SHA-256 of a file, read in 8 MB blocks (hashlib releases the GIL: files hash in parallel threads)."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
