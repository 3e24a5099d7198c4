"""The leak gate: every written open file read back and scanned with the privacy detectors before a
pointer moves (the three data files, the metadata files, the dataset's catalog entry).

Each format is read as it is published, a block at a time (memory follows a block, not the file):
- Parquet by its columns (string columns read dictionary-encoded, so a low-cardinality column costs its
  distinct values) and CSV parsed with every scanned column as text (dictionary-encoded the same way): each
  string column, whatever its name says, is scanned for resident IDs (check character), mobiles, bank
  cards (issuer prefix + Luhn), USCCs of individual businesses (个体工商户) and house-number addresses
  ANYWHERE inside the text (``detect.identifiers_in_text``: one candidate scan, then only the candidates
  are checked); integer columns for IDs, cards and (unless the element is a measure with a unit) mobiles.
  Person names (``detect.person_names``, a whole cell that reads as a name): EVERY value of a column whose
  data element is a person's name; in any other string column a sample (the first ``SAMPLE`` values of the
  first block, then of a block every ``NAME_EVERY`` rows), and the whole column from then on once most of a
  sample reads as names. A name inside a longer free text is not looked for (no word segmenter).
- JSON Lines as text, line by line (every byte of every value is scanned, keys too) for identifiers: a
  line with a candidate is parsed and the hit attributed to its field under the same per-column rules.
  Names are not re-checked there: they are the Parquet's and CSV's values, already checked.
Snapshot ids (``exempt``) are exempt only as the value of a ``"snapshot"`` key in a provenance column.
- The metadata files (``METADATA_FILES``) and the date's ``catalog.jsonld`` as text, line by line, for
  identifiers and house numbers (``scan_text``: a contract's or card's text quoting a resident ID).
A hit blocks the dataset; hits are reported with the value masked (``mask_kind``), never in clear.
"""

from __future__ import annotations

import json
import re
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

LEAK_VERSION = 2
"""The detectors' version: part of every release's fingerprint (``release.fingerprint``), so a detector fix
re-releases, and so re-scans, datasets whose builds did not change. Bump it with every detector change."""
SAMPLE = 1000
NAME_SHARE = 0.5
NAME_EVERY = 1_000_000
"""Rows between two samples of a column for person names (the first block is always sampled). A column
found to hold mostly names is scanned whole from then on."""
BATCH_ROWS = 64 * 1024
BLOCK_BYTES = 1 << 20
KEEP_HITS = 20
"""Hits kept per file for the record (every hit is counted)."""
TEXT = pa.dictionary(pa.int32(), pa.string())


@dataclass(frozen=True)
class ScanColumn:
    """A released column as the scan sees it: name, Arrow type and what its data element says."""

    name: str
    type: pa.DataType
    person_name: bool = False
    """Its element is a person's name (any value that reads as a name is a leak)."""
    measure: bool = False
    """Its element is a quantity with a unit (an 11-digit amount is not a mobile)."""
    provenance: bool = False
    """Its element is a ``*_field_provenance`` element (lineage JSON quoting the lake's snapshot ids under
    ``"snapshot"``): the only place the snapshot-id exemption applies."""

    @property
    def text(self) -> bool:
        return _is_text(self.type)

    @property
    def integer(self) -> bool:
        return pa.types.is_integer(self.type)


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
    name_columns: set[str] = field(default_factory=set)
    """Columns found to hold mostly person names (scanned whole from then on)."""
    sampled_at: dict[str, int] = field(default_factory=dict)
    """Column → file row of its last name sample."""

    def names_due(self, column: str, row: int) -> bool:
        """Whether the block starting at ``row`` samples ``column`` for names (first block, then every
        ``NAME_EVERY`` rows)."""
        last = self.sampled_at.get(column)
        if last is not None and row - last < NAME_EVERY:
            return False
        self.sampled_at[column] = row
        return True

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, column: str, rows: Sequence[int] | np.ndarray, kind: str, value: str) -> None:
        """``value`` (in clear: masked here) found at file rows ``rows`` (1-based)."""
        if not len(rows):
            return
        self.counts[kind] = self.counts.get(kind, 0) + len(rows)
        for row in rows[:max(0, KEEP_HITS - len(self.hits))]:
            self.hits.append(LeakHit(self.file, column, int(row), kind, mask_kind(value, kind) or ""))


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
                              measure=bool(e is not None and e.unit),
                              provenance=bool(e is not None and str(e.code).endswith("field_provenance"))))
    return out


def _is_text(t: pa.DataType) -> bool:
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


# --- one column of one block -------------------------------------------------------------------------


def _snapshot_pattern(exempt: frozenset[str]) -> str | None:
    """A JSON ``"snapshot": <id>`` pair quoting one of ``exempt`` (escaped quotes too: JSON Lines holds the
    provenance JSON as a string), or None when nothing is exempt."""
    ids = sorted(t for t in exempt if t.isdigit())
    if not ids:
        return None
    return r'(\\?"snapshot\\?"\s*:\s*)(?:' + "|".join(ids) + r")([^0-9]|$)"


def without_snapshots(values: pa.Array, exempt: frozenset[str]) -> pa.Array:
    """Provenance text with the exempt snapshot ids under ``"snapshot"`` replaced by 0: the lake's own
    bookkeeping (a random 63-bit id reads as a bank card about one time in 35), and nothing else exempt."""
    pattern = _snapshot_pattern(exempt)
    if pattern is None:
        return values
    if pa.types.is_dictionary(values.type):
        return pa.DictionaryArray.from_arrays(values.indices, without_snapshots(values.dictionary, exempt))
    return pc.replace_substring_regex(values, pattern, r"\10\2")  # RE2 rewrites: \1, then a literal 0


def scan_array(values: pa.Array | pa.ChunkedArray, column: ScanColumn, base: int, into: FileScan,
               exempt: frozenset[str] = frozenset()) -> None:
    """Scan one column of one block; ``base`` is the file row number of its first value. A dictionary-encoded
    column is scanned by its distinct values, each hit counted on every row that holds it. ``exempt``: snapshot
    ids, exempt only under ``"snapshot"`` in a provenance column (``without_snapshots``)."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if column.provenance and column.text:
        arr = without_snapshots(arr, exempt)
    indices: np.ndarray | None = None
    distinct = arr
    if pa.types.is_dictionary(arr.type):
        distinct = arr.dictionary
        indices = arr.indices.fill_null(-1).to_numpy(zero_copy_only=False)

    def rows_of(i: int) -> np.ndarray:
        return base + (np.array([i]) if indices is None else np.flatnonzero(indices == i))

    found = detect.identifiers_in_numbers(distinct, mobile=not column.measure) if column.integer \
        else detect.identifiers_in_text(distinct)
    for i, kind, text in found:
        into.add(column.name, rows_of(i), kind, text)
    if column.integer:
        return
    if not (column.person_name or column.name in into.name_columns):
        if not into.names_due(column.name, base) or not _mostly_names(arr):
            return
        into.name_columns.add(column.name)
    for k in np.flatnonzero(detect.person_names(distinct)):
        into.add(column.name, rows_of(int(k)), detect.PERSON_NAME, distinct[int(k)].as_py())


def _mostly_names(arr: pa.Array) -> bool:
    """Whether most of a sample (the block's first ``SAMPLE`` non-null, non-empty values) read as names."""
    sample = arr.slice(0, SAMPLE * 2)
    if pa.types.is_dictionary(sample.type):
        sample = sample.dictionary_decode()
    sample = sample.drop_null()
    sample = sample.filter(pc.greater(pc.utf8_length(sample), 0)).slice(0, SAMPLE)
    return len(sample) > 0 and float(detect.person_names(sample).mean()) >= NAME_SHARE


# --- the three formats -------------------------------------------------------------------------------


def _scanned(columns: Sequence[ScanColumn]) -> list[ScanColumn]:
    return [c for c in columns if c.text or c.integer]


def low_cardinality(parquet: Path, columns: Sequence[ScanColumn], share: float = 0.5) -> frozenset[str]:
    """Text columns with few distinct values (under ``share`` of the first block's rows): read dictionary-
    encoded, such a column is scanned by its distinct values (and Parquet skips building its strings). A
    column of unique values is read plain: a dictionary would cost more than it saves."""
    import pyarrow.parquet as pq

    text = [c.name for c in columns if c.text]
    if not text:
        return frozenset()
    f = pq.ParquetFile(parquet, read_dictionary=text)
    if not f.metadata.num_row_groups:
        return frozenset()
    first = next(f.iter_batches(batch_size=BATCH_ROWS, row_groups=[0], columns=text), None)
    if first is None or not first.num_rows:
        return frozenset()
    return frozenset(n for n in text if len(first.column(n).dictionary) < share * first.num_rows)


def _parquet(path: Path, columns: Sequence[ScanColumn], dictionary: frozenset[str]) -> Iterator[pa.RecordBatch]:
    import pyarrow.parquet as pq

    names = [c.name for c in columns]
    f = pq.ParquetFile(path, read_dictionary=[c.name for c in columns if c.name in dictionary])
    for group in range(f.num_row_groups):
        yield from f.iter_batches(batch_size=BATCH_ROWS, row_groups=[group], columns=names)


def _csv(path: Path, columns: Sequence[ScanColumn], dictionary: frozenset[str] = frozenset(),
         newlines: bool = True) -> Iterator[pa.RecordBatch]:
    """The CSV's scanned columns; ``newlines``: values may hold line breaks (the parser's slower mode)."""
    import pyarrow.csv as pcsv

    names = [c.name for c in columns]
    types = {c.name: (TEXT if c.name in dictionary else pa.string()) if c.text else pa.int64() for c in columns}
    yield from pcsv.open_csv(
        path, read_options=pcsv.ReadOptions(block_size=BLOCK_BYTES, use_threads=False),
        parse_options=pcsv.ParseOptions(newlines_in_values=newlines),
        convert_options=pcsv.ConvertOptions(column_types=types, include_columns=names, strings_can_be_null=False,
                                            quoted_strings_can_be_null=False))


def _lines(path: Path) -> Iterator[pa.Array]:
    """The lines of a JSON Lines file as text, a block at a time (a delimiter and no quoting: one cell per
    line; JSON escapes every control character, so the delimiter never occurs)."""
    import pyarrow.csv as pcsv

    if path.stat().st_size == 0:  # a dataset of 0 rows: the CSV reader refuses an empty file
        return
    reader = pcsv.open_csv(path, read_options=pcsv.ReadOptions(column_names=["line"], block_size=BLOCK_BYTES,
                                                               use_threads=False),
                           parse_options=pcsv.ParseOptions(delimiter="\x1f", quote_char=False),
                           convert_options=pcsv.ConvertOptions(column_types={"line": pa.string()},
                                                               strings_can_be_null=False))
    for batch in reader:
        yield batch.column(0)


def _regrouped(blocks: Iterator[Any], rows: int = BATCH_ROWS) -> Iterator[list[Any]]:
    """Small reader blocks gathered to about ``rows`` rows: the readers keep a few dozen blocks in flight, so
    blocks stay small (memory), while each scan call costs a regex compilation, so calls stay few."""
    pending: list[Any] = []
    count = 0
    for block in blocks:
        pending.append(block)
        count += len(block)
        if count >= rows:
            yield pending
            pending, count = [], 0
    if pending:
        yield pending


def _scan_table_file(batches: Iterator[pa.RecordBatch], scanned: Sequence[ScanColumn], result: FileScan,
                     exempt: frozenset[str]) -> None:
    for group in _regrouped(batches):
        table = pa.Table.from_batches(group)
        base = result.rows + 1
        for c in scanned:
            scan_array(table.column(c.name), c, base, result, exempt)
        result.rows += table.num_rows


def _scan_jsonl(path: Path, scanned: Sequence[ScanColumn], result: FileScan, exempt: frozenset[str]) -> None:
    """Identifiers only: every line as text (keys and values), the lines with a hit parsed to name its column.
    Person names are not looked for here: the Parquet and CSV scans check the same values column by column.
    A line-level hit is often no hit in any column (digits of neighbouring fields read together, e.g. a
    decimal's ``1234567.00``): the hit lines are parsed once each and every column checked over all of them
    at once, so such lines cost a parse, not a detector call per hit and column."""
    provenance = any(c.provenance for c in scanned)
    for group in _regrouped(_lines(path)):
        lines = pa.concat_arrays(group)
        base = result.rows + 1
        # the exempt snapshot ids dropped from the whole line first (no parse for them), then again per column
        # below: a hit counts only where its column holds it, the exemption only in a provenance column
        hits = detect.identifiers_in_text(without_snapshots(lines, exempt) if provenance else lines)
        if hits:
            _attribute(lines, hits, scanned, base, result, exempt)
        result.rows += len(lines)


def _attribute(lines: pa.Array, hits: list[tuple[int, str, str]], scanned: Sequence[ScanColumn], base: int,
               result: FileScan, exempt: frozenset[str]) -> None:
    """Line-level hits → the columns that hold them, under each column's rules (text: anywhere inside;
    integer: the whole number, a mobile only where the element is no measure)."""
    rows = sorted({i for i, _kind, _token in hits})
    wanted = {(i, kind, token) for i, kind, token in hits}
    records = [json.loads(lines[i].as_py()) for i in rows]
    for c in scanned:
        values = [r.get(c.name) if isinstance(r, dict) else None for r in records]
        if c.text:
            arr = pa.array([v if isinstance(v, str) else None for v in values], pa.string())
            if c.provenance:
                arr = without_snapshots(arr, exempt)
            found = detect.identifiers_in_text(arr)
        elif c.integer:
            ints = [v if isinstance(v, int) and not isinstance(v, bool) else None for v in values]
            found = detect.identifiers_in_numbers(pa.array(ints, pa.int64()), mobile=not c.measure)
        else:
            continue
        for j, kind, token in found:
            if (rows[j], kind, token) in wanted:
                result.add(c.name, [base + rows[j]], kind, token)


def _count_rows(path: Path, fmt: str, first: str) -> int:
    """Data rows of a file whose released columns hold nothing to scan (numbers with decimals, dates)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    if fmt == "csv":
        return sum(b.num_rows for b in _csv(path, [ScanColumn(first, pa.string())]))
    return sum(len(lines) for lines in _lines(path))


def scan_file(path: Path, fmt: str, columns: Sequence[ScanColumn], exempt: frozenset[str] = frozenset(),
              dictionary: frozenset[str] = frozenset()) -> FileScan:
    """Scan one written file (``fmt``: parquet, csv or jsonl) for personal values; ``exempt``: the lake's
    snapshot ids, exempt only under ``"snapshot"`` in a provenance column (``without_snapshots``); ``dictionary``: text
    columns to read dictionary-encoded (``low_cardinality``: a speed choice, the result is the same)."""
    result = FileScan(path.name)
    scanned = _scanned(columns)
    if not scanned and fmt != "jsonl":
        result.rows = _count_rows(path, fmt, columns[0].name)
    elif fmt == "parquet":
        _scan_table_file(_parquet(path, scanned, dictionary), scanned, result, exempt)
    elif fmt == "csv":
        try:  # the fast parser first: a quoted line break splits a row, which the parser refuses
            _scan_table_file(_csv(path, scanned, dictionary, newlines=False), scanned, result, exempt)
        except pa.ArrowInvalid:
            result = FileScan(path.name)
            _scan_table_file(_csv(path, scanned, dictionary, newlines=True), scanned, result, exempt)
    elif fmt == "jsonl":
        _scan_jsonl(path, scanned, result, exempt)
    else:
        raise ValueError(f"leak scan: unknown format {fmt!r}")
    return result


METADATA_FILES = ("datapackage.json", "dictionary.csv", "card.md", "card.json", "changes.json", "manifest.json")
"""The metadata files of a release folder, scanned as text (``scan_text``) like the date's ``catalog.jsonld``."""
TEXT_COLUMN = "(文本)"
"""The ``column`` of a hit in a metadata file (its ``row`` is the line number)."""
_DIGEST = re.compile(r"(?<![0-9A-Za-z])(?=[0-9]*[a-f])[0-9a-f]{16,}(?![0-9A-Za-z])")
"""A lower-case hex run of 16+ characters holding a letter: the digests and ids the release itself writes
(SHA-256 of files, build ids, fingerprints), whose digit runs could pass a card's Luhn check."""


def scan_text(name: str, data: bytes, exempt: frozenset[str] = frozenset()) -> FileScan:
    """A metadata file (``name``; JSON, JSON-LD, CSV or Markdown) read as text, line by line, with the
    identifier and house-number detectors (``detect.identifiers_in_text``): a contract's description, card or
    element text that quotes a resident ID blocks like a data value. Exempt, as the release's own
    bookkeeping: hex digests (``_DIGEST``) and the lake's snapshot ids in ``exempt`` (the manifest and the
    catalog quote the inputs' snapshots), each as a whole number only."""
    result = FileScan(name)
    lines = data.decode("utf-8-sig").splitlines()
    ids = sorted((t for t in exempt if t.isdigit()), key=len, reverse=True)
    snapshots = re.compile(r"(?<![0-9])(?:" + "|".join(ids) + r")(?![0-9])") if ids else None
    cleaned = []
    for line in lines:
        line = _DIGEST.sub("0", line)
        cleaned.append(snapshots.sub("0", line) if snapshots is not None else line)
    for i, kind, token in detect.identifiers_in_text(pa.array(cleaned, pa.string())):
        result.add(TEXT_COLUMN, [i + 1], kind, token)
    result.rows = len(lines)
    return result


def scan_files(files: Sequence[tuple[Path, str]], columns: Sequence[ScanColumn],
               exempt: frozenset[str] = frozenset(), workers: int = 3) -> list[FileScan]:
    """Scan several files at once (pyarrow's readers and kernels release the GIL: threads use every core)."""
    parquet = next((p for p, fmt in files if fmt == "parquet"), None)
    dictionary = low_cardinality(parquet, _scanned(columns)) if parquet is not None else frozenset()
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(files)))) as pool:
        return list(pool.map(lambda f: scan_file(f[0], f[1], columns, exempt, dictionary), files))
