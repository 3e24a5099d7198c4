"""Parquet drops: ``ParquetFile.iter_batches``; Parquet keeps its own types, declared types cast afterwards."""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.errors import FileRejected
from pipelines.extract.drops.listing import DropFile
from pipelines.extract.drops.opening import open_random_access
from pipelines.extract.drops.reject import one_line
from pipelines.extract.drops.typing import Typer, typed
from pipelines.registry import DropTable
from pipelines.settings import Settings


def read_parquet(f: DropFile, table: DropTable, settings: Settings, batch_rows: int) -> Iterator[pa.RecordBatch]:
    with open_random_access(f, settings) as source:
        try:
            parquet = pq.ParquetFile(source)
        except pa.ArrowInvalid as exc:
            raise FileRejected(f.name, f"不是有效的 Parquet 文件 ({one_line(str(exc))})", None) from None
        schema = parquet.schema_arrow
        typer = Typer(f, table, [name.strip() for name in schema.names], lambda row: None)

        def data() -> Iterator[pa.RecordBatch]:
            try:
                yield from parquet.iter_batches(batch_size=batch_rows)
            except pa.ArrowInvalid as exc:
                raise FileRejected(f.name, f"Parquet 无法读取 ({one_line(str(exc))})", None) from None

        empty = pa.RecordBatch.from_pylist([], schema=schema)
        yield from typed(data(), typer, batch_rows, empty=empty)
