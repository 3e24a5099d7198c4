"""RawWriter's writer threads and file encoding: a large load into an empty table writes with two threads (a
file each) once it passes _SECOND_WRITER_FROM rows, a small one stays one file, a flush closes every open file
so a rollback forgets exactly the rows after its mark, and integer-like columns are delta-encoded."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.lake import raw
from pipelines.lake.catalog import get_catalog
from pipelines.lake.raw import RawWriter, TableState
from pipelines.settings import TZ, Settings

SCHEMA = pa.schema([pa.field("id", pa.int64()), pa.field("name", pa.string()), pa.field("kind", pa.string()),
                    pa.field("at", pa.timestamp("us", tz="UTC"))])
START = datetime(2026, 12, 1, tzinfo=TZ)


def _batch(lo: int, n: int) -> pa.Table:
    ids = list(range(lo, lo + n))
    return pa.table({"id": ids, "name": [f"居民{i}" for i in ids], "kind": ["甲" if i % 2 else "乙" for i in ids],
                     "at": [START + timedelta(seconds=i) for i in ids]}, schema=SCHEMA)


def _writer(settings: Settings, writers: int) -> RawWriter:
    return RawWriter(get_catalog(settings), "raw.rw_src__t", SCHEMA, batch_id="b1", extracted_at=START,
                     system="rw_src", writers=writers)


def _commit(writer: RawWriter) -> pa.Table:
    state = TableState()
    state.load_seq = writer.allocate_load_seq()
    writer.commit(state, {"citylake.batch-id": "b1"}, replace_batch=False)
    return writer.catalog.load_table("raw.rw_src__t").scan().to_arrow()


def _write_rows(writer: RawWriter, lo: int, hi: int) -> None:
    """Ids lo..hi-1 in batches of 500 (several batches per thread once two write)."""
    for start in range(lo, hi, 500):
        writer.write(_batch(start, min(500, hi - start)))


def _finishes(call: Any, seconds: float = 10) -> bool:
    """Whether ``call()`` returns within ``seconds`` (run on a thread, so a hang fails the test, not the run)."""
    done = threading.Thread(target=call, daemon=True)
    done.start()
    done.join(seconds)
    return not done.is_alive()


def _file_rows(writer: RawWriter) -> list[int]:
    return sorted(pq.ParquetFile(writer.table.io.new_input(p).open()).metadata.num_rows for p in writer.files)


def test_a_large_load_writes_with_two_threads_and_lands_every_row(lake_settings: Settings,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raw, "_SECOND_WRITER_FROM", 1_000)
    writer = _writer(lake_settings, writers=2)
    _write_rows(writer, 0, 20_000)
    assert writer._more_used
    got = _commit(writer)
    rows = _file_rows(writer)
    assert len(rows) == 2 and sum(rows) == 20_000 and min(rows) > 0  # one file per thread, both wrote
    assert sorted(got.column("id").to_pylist()) == list(range(20_000))
    assert got.num_rows == writer.rows == 20_000


def test_a_small_load_stays_one_thread_and_one_file(lake_settings: Settings) -> None:
    writer = _writer(lake_settings, writers=2)
    _write_rows(writer, 0, 5_000)
    got = _commit(writer)
    assert not writer._more_used
    assert _file_rows(writer) == [5_000]
    assert not any(t.is_alive() for t in writer._threads)  # the unused second thread left at the end
    assert got.num_rows == 5_000


def test_flush_closes_every_threads_file_and_rollback_forgets_only_what_followed(
        lake_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raw, "_SECOND_WRITER_FROM", 1_000)
    writer = _writer(lake_settings, writers=2)
    _write_rows(writer, 0, 6_000)
    mark = writer.flush()
    assert sum(_file_rows(writer)) == 6_000  # both threads' files closed and complete at the mark
    _write_rows(writer, 6_000, 9_000)
    writer.rollback(mark, 3_000)
    _write_rows(writer, 9_000, 10_000)
    got = _commit(writer)
    assert sorted(got.column("id").to_pylist()) == list(range(6_000)) + list(range(9_000, 10_000))
    assert writer.rows == got.num_rows == 7_000


def test_integer_like_columns_are_delta_encoded_and_repeated_ones_keep_a_dictionary(
        lake_settings: Settings) -> None:
    writer = _writer(lake_settings, writers=1)
    writer.write(_batch(0, 5_000))
    _commit(writer)
    meta = pq.ParquetFile(writer.table.io.new_input(writer.files[0]).open()).metadata
    names = [meta.schema.column(i).name for i in range(meta.num_columns)]
    encodings = {name: set(meta.row_group(0).column(i).encodings) for i, name in enumerate(names)}
    codecs = {name: meta.row_group(0).column(i).compression for i, name in enumerate(names)}
    assert codecs["id"] == codecs["at"] == "UNCOMPRESSED"  # delta pages: zstd found nothing more in them
    assert codecs["name"] == codecs["kind"] == codecs["_batch_id"] == "ZSTD"
    assert "DELTA_BINARY_PACKED" in encodings["id"] and "DELTA_BINARY_PACKED" in encodings["at"]
    assert "RLE_DICTIONARY" in encodings["_load_seq"]  # a lineage constant: dictionary, not delta
    assert "RLE_DICTIONARY" in encodings["kind"]  # two values in 5,000 rows: a dictionary
    assert "DELTA_BINARY_PACKED" not in encodings["name"]


def test_an_expected_large_load_starts_the_second_thread_before_its_first_row(
        lake_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read started ahead hands over a backlog: told the source's estimate, both threads take it from the
    first batch. No estimate, or a small one, leaves the threshold to decide; one writer never gets a second."""
    monkeypatch.setattr(raw, "_SECOND_WRITER_FROM", 1_000)
    small, unknown, single = _writer(lake_settings, 2), _writer(lake_settings, 2), _writer(lake_settings, 1)
    small.expect(999)
    unknown.expect(None)
    single.expect(10_000)
    assert not small._more_used and not unknown._more_used and not single._more_used
    for w in (small, unknown, single):
        w.abort()
    writer = _writer(lake_settings, 2)
    writer.expect(5_000)
    assert writer._more_used and writer._more.is_set()
    _write_rows(writer, 0, 5_000)
    got = _commit(writer)
    assert sorted(got.column("id").to_pylist()) == list(range(5_000))


def test_an_interrupted_flush_leaves_a_writer_that_aborts(lake_settings: Settings,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C or a task's SIGTERM while flush() waits: the writer threads must not stay at the flush's barrier,
    or abort() (the load's clean-up) would wait for them forever."""
    slow = RawWriter._write_now

    def write_now(self: RawWriter, *args: Any) -> Any:
        time.sleep(0.5)  # a slow file (an upload): the flush is still waiting when the interrupt comes
        return slow(self, *args)

    monkeypatch.setattr(RawWriter, "_write_now", write_now)
    writer = _writer(lake_settings, writers=1)
    writer.write(_batch(0, 10))
    real_wait = threading.Barrier.wait

    def interrupted(self: threading.Barrier, timeout: float | None = None) -> int:
        if threading.current_thread() is threading.main_thread():
            raise KeyboardInterrupt
        return real_wait(self, timeout)

    monkeypatch.setattr(threading.Barrier, "wait", interrupted)
    with pytest.raises(KeyboardInterrupt):
        writer.flush()
    assert _finishes(writer.abort), "abort() hung on a writer left at the flush's barrier"


def test_a_file_that_fails_to_close_fails_the_flush_not_hangs_it(lake_settings: Settings,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(raw, "_SECOND_WRITER_FROM", 1_000)
    writer = _writer(lake_settings, writers=2)
    _write_rows(writer, 0, 5_000)

    def fail(out: Any) -> None:
        if out is not None:
            raise OSError("upload failed on close")

    monkeypatch.setattr(RawWriter, "_close_file", staticmethod(fail))
    outcome: list[BaseException] = []

    def flush() -> None:
        try:
            writer.flush()
        except OSError as exc:
            outcome.append(exc)

    assert _finishes(flush), "flush() hung on a writer whose file failed to close"
    assert [str(e) for e in outcome] == ["upload failed on close"]
    monkeypatch.undo()
    writer.abort()


def test_nested_columns_keep_zstd(lake_settings: Settings) -> None:
    """Per-column codecs name leaf paths (``s.a``): a schema with a struct or list compresses every column."""
    batch = pa.record_batch({"id": [1, 2], "s": [{"a": "甲"}, {"a": "乙"}], "l": [["x"], []]})
    path = lake_settings.lake_dir / "nested.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, batch.schema, **raw.parquet_options(batch)) as out:
        out.write_batch(batch)
    meta = pq.ParquetFile(path).metadata.row_group(0)
    codecs = {meta.column(i).path_in_schema: meta.column(i).compression for i in range(meta.num_columns)}
    assert codecs == {"id": "ZSTD", "s.a": "ZSTD", "l.list.element": "ZSTD"}


def test_integer_stored_decimals_are_delta_encoded_and_read_back_exactly(lake_settings: Settings) -> None:
    """numeric(12,2) lands as INT64 (store_decimal_as_integer): delta-packed like an integer, not compressed. A
    decimal wider than 18 digits is fixed-length bytes, which delta cannot encode: it keeps zstd."""
    values = [Decimal("1234.56"), None, Decimal("-99999.99"), Decimal("0.01")] * 500
    batch = pa.record_batch({"income": pa.array(values, pa.decimal128(12, 2)),
                             "wide": pa.array(values, pa.decimal128(30, 2))})
    path = lake_settings.lake_dir / "decimal.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(path, batch.schema, **raw.parquet_options(batch)) as out:
        out.write_batch(batch)
    meta = pq.ParquetFile(path).metadata.row_group(0)
    income, wide = meta.column(0), meta.column(1)
    assert (income.physical_type, income.compression) == ("INT64", "UNCOMPRESSED")
    assert "DELTA_BINARY_PACKED" in income.encodings
    assert (wide.physical_type, wide.compression) == ("FIXED_LEN_BYTE_ARRAY", "ZSTD")
    assert "DELTA_BINARY_PACKED" not in wide.encodings
    assert pq.read_table(path).to_batches()[0].equals(batch)
