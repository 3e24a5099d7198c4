"""The leak gate: every written open file read back and scanned with the privacy detectors before a
pointer moves.

Each format is read as it is published (Parquet by its types; CSV with the released column types, so a
text cell is the text a reader gets; JSON Lines by its values), a record batch at a time, and every
column is scanned:
- every string column, whatever its name says, for resident IDs (check character), mobiles, bank cards
  (issuer prefix + Luhn), USCCs of individual businesses (个体工商户) and house-number addresses ANYWHERE
  inside the text (``detect.identifiers_in_text``: one candidate scan per column, then only the
  candidates are checked);
- integer columns for IDs, cards and (unless the element is a measure with a unit) mobiles;
- person names: every value of a column whose data element is a person's name, and of any string column
  where most values of a batch's sample read as names (``detect.person_names``).
A hit blocks the dataset; hits are reported with the value masked (``mask_kind``), never in clear.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.privacy import detect
from pipelines.privacy.mask import mask_kind

SAMPLE = 1000
NAME_SHARE = 0.5
BATCH_ROWS = 64 * 1024
KEEP_HITS = 20
"""Hits kept per file for the record (every hit is counted)."""


@dataclass(frozen=True)
class ScanColumn:
    """A released column as the scan sees it: name, Arrow type and what its data element says."""

    name: str
    type: pa.DataType
    person_name: bool = False
    """Its element is a person's name (any value that reads as a name is a leak)."""
    measure: bool = False
    """Its element is a quantity with a unit (an 11-digit amount is not a mobile)."""


@dataclass(frozen=True)
class LeakHit:
    file: str
    column: str
    row: int
    """1-based data row in the file (the header is not a row)."""
    kind: str
    value: str
    """Masked (``mask_kind``)."""

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "column": self.column, "row": self.row, "kind": self.kind, "value": self.value}


@dataclass
class FileScan:
    file: str
    rows: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    hits: list[LeakHit] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, column: str, row: int, kind: str, value: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if len(self.hits) < KEEP_HITS:
            self.hits.append(LeakHit(self.file, column, row, kind, mask_kind(value, kind) or ""))


def is_person_name_element(element: Any) -> bool:
    """A data element that holds a natural person's name (姓名, 法定代表人): personal, free text, no code
    list, and named or defined as a name."""
    if element is None or element.sensitivity not in ("个人信息", "敏感个人信息"):
        return False
    if element.code_list or element.validator or element.type != "string":
        return False
    text = f"{element.code} {element.name_en} {element.name_zh} {element.definition}".lower()
    return "姓名" in text or "name" in text or "代表人" in text


def scan_columns(schema: pa.Schema, elements: dict[str, Any]) -> list[ScanColumn]:
    """The scan's view of a released schema; ``elements``: column → its DataElement (None: undeclared)."""
    out = []
    for f in schema:
        e = elements.get(f.name)
        out.append(ScanColumn(f.name, f.type, person_name=is_person_name_element(e),
                              measure=bool(e is not None and e.unit)))
    return out


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _scanned(columns: Sequence[ScanColumn]) -> list[ScanColumn]:
    return [c for c in columns if _is_text(c.type) or pa.types.is_integer(c.type)]


def _batches(path: Path, fmt: str, columns: Sequence[ScanColumn]) -> Iterator[pa.RecordBatch]:
    names = [c.name for c in columns]
    if fmt == "parquet":
        import pyarrow.parquet as pq

        f = pq.ParquetFile(path)
        for group in range(f.num_row_groups):
            yield from f.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=names)
    elif fmt == "csv":
        import pyarrow.csv as pcsv

        types = {c.name: (pa.string() if _is_text(c.type) else pa.int64()) for c in columns}
        reader = pcsv.open_csv(
            path, read_options=pcsv.ReadOptions(block_size=8 << 20),
            parse_options=pcsv.ParseOptions(newlines_in_values=True),
            convert_options=pcsv.ConvertOptions(column_types=types, include_columns=names,
                                                strings_can_be_null=False, quoted_strings_can_be_null=False))
        yield from reader
    elif fmt == "jsonl":
        import pyarrow.json as pj

        schema = pa.schema([(c.name, pa.string() if _is_text(c.type) else pa.int64()) for c in columns])
        reader = pj.open_json(path, read_options=pj.ReadOptions(block_size=8 << 20),
                              parse_options=pj.ParseOptions(explicit_schema=schema,
                                                            unexpected_field_behavior="ignore"))
        yield from reader
    else:
        raise ValueError(f"leak scan: unknown format {fmt!r}")


def _count_rows(path: Path, fmt: str, first: str) -> int:
    """Data rows of a file whose released columns hold nothing to scan (numbers with decimals, dates)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    import pyarrow.csv as pcsv

    if fmt == "csv":
        reader = pcsv.open_csv(path, parse_options=pcsv.ParseOptions(newlines_in_values=True),
                               convert_options=pcsv.ConvertOptions(include_columns=[first],
                                                                   column_types={first: pa.string()}))
    else:  # JSON Lines: one line per row; a delimiter and no quoting make each line one text cell
        reader = pcsv.open_csv(path, read_options=pcsv.ReadOptions(column_names=["line"]),
                               parse_options=pcsv.ParseOptions(delimiter="\x1f", quote_char=False))
    return sum(b.num_rows for b in reader)


def scan_file(path: Path, fmt: str, columns: Sequence[ScanColumn]) -> FileScan:
    """Scan one written file (``fmt``: parquet, csv or jsonl) for personal values."""
    result = FileScan(path.name)
    scanned = _scanned(columns)
    if not scanned:
        result.rows = _count_rows(path, fmt, columns[0].name)
        return result
    for batch in _batches(path, fmt, scanned):
        base = result.rows + 1
        for c in scanned:
            scan_array(batch.column(c.name), c, base, result)
        result.rows += batch.num_rows
    return result


def scan_array(values: pa.Array | pa.ChunkedArray, column: ScanColumn, base: int, into: FileScan) -> None:
    """Scan one column of one batch; ``base`` is the file row number of its first value."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_integer(arr.type):
        for row, kind, text in detect.identifiers_in_numbers(arr, mobile=not column.measure):
            into.add(column.name, base + row, kind, text)
        return
    for row, kind, text in detect.identifiers_in_text(arr):
        into.add(column.name, base + row, kind, text)
    if column.person_name or _mostly_names(arr):
        for i in np.flatnonzero(detect.person_names(arr)):
            into.add(column.name, base + int(i), detect.PERSON_NAME, arr[int(i)].as_py())


def _mostly_names(arr: pa.Array) -> bool:
    """Whether most of a sample (the batch's first ``SAMPLE`` non-null, non-empty values) read as names."""
    sample = arr.drop_null().slice(0, SAMPLE * 2)
    sample = sample.filter(pc.greater(pc.utf8_length(sample), 0)).slice(0, SAMPLE)
    return len(sample) > 0 and float(detect.person_names(sample).mean()) >= NAME_SHARE


def scan_files(files: Sequence[tuple[Path, str]], columns: Sequence[ScanColumn],
               workers: int = 3) -> list[FileScan]:
    """Scan several files at once (pyarrow's readers and kernels release the GIL: threads use every core)."""
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(files)))) as pool:
        return list(pool.map(lambda f: scan_file(f[0], f[1], columns), files))
