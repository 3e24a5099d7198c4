"""File-drop extraction: list the files of a drop (local folder or S3 prefix), stream each one as Arrow
record batches with bounded memory, and copy an unparseable file aside with its reason.

One module per concern: ``listing`` (local, S3), ``opening`` (streams, tunables), ``encoding``
(GBK/GB18030 → UTF-8), one reader per format (``csv``, ``jsonl``, ``parquet``, ``xlsx``), ``typing``
(declared types), ``reject``, ``identity`` (content ids) and ``ledger`` (what each file delivered);
this module is the public face.

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

from collections.abc import Callable, Iterator

import pyarrow as pa

from pipelines.errors import ConfigError
from pipelines.extract.drops.csv import read_csv
from pipelines.extract.drops.encoding import Utf8Stream
from pipelines.extract.drops.identity import content_id
from pipelines.extract.drops.jsonl import read_jsonl
from pipelines.extract.drops.ledger import DropLedger, spec_id
from pipelines.extract.drops.listing import DropFile, list_drop_files
from pipelines.extract.drops.opening import LIVE_READS
from pipelines.extract.drops.parquet import read_parquet
from pipelines.extract.drops.reject import reject_file
from pipelines.extract.drops.s3 import s3_client
from pipelines.extract.drops.typing import TIMESTAMP, arrow_type
from pipelines.extract.drops.xlsx import read_xlsx
from pipelines.registry import DropTable
from pipelines.settings import Settings

__all__ = [
    "TIMESTAMP", "DropFile", "DropLedger", "Utf8Stream", "arrow_type", "content_id", "list_drop_files",
    "read_drop_file", "reject_file", "s3_client", "spec_id",
]

_READERS: dict[str, Callable[[DropFile, DropTable, Settings, int], Iterator[pa.RecordBatch]]] = {
    "csv": read_csv,
    "jsonl": read_jsonl,
    "parquet": read_parquet,
    "xlsx": read_xlsx,
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
    LIVE_READS.add(batches)
    return batches
