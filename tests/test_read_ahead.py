"""The whole-table read a CLI load starts before its own start-up (pipelines.extract.read_ahead): the load
takes it over, a read the load does not take is closed, and the buffer it decodes into is bounded."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import TEST_DEPARTMENT
from typer.testing import CliRunner

from pipelines import cli
from pipelines.errors import CitylakeError
from pipelines.extract import postgres_fast, read_ahead
from pipelines.ingest import ingest_table
from pipelines.lake.catalog import get_catalog
from pipelines.lake.changes import LakeCompare
from pipelines.lake.raw import RawWriter
from pipelines.registry import SourceSystem
from pipelines.settings import TZ, Settings

ROWS = 20_000


@pytest.fixture
def pg(pg_url: str) -> str:
    with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute("CREATE TABLE ra (id int PRIMARY KEY, name text, amount numeric(12,2), at timestamptz)")
        conn.execute(f"INSERT INTO ra SELECT g, '居民' || g, g * 1.25, timestamptz '2026-11-01 08:00+08' + g * "
                     f"interval '1 minute' FROM generate_series(1, {ROWS}) g")
        conn.execute("ANALYZE ra")
    return pg_url.replace("postgresql+psycopg://", "postgresql://")


def _sessions(url: str) -> int:
    """Client sessions on the scratch database besides this one: a read left open shows here."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND "
                           "backend_type = 'client backend' AND pid <> pg_backend_pid()").fetchone()
    return int(row[0]) if row else 0


def _system(**table: Any) -> SourceSystem:
    return SourceSystem.model_validate({
        "system": "ra_src", "name": "预读", "department": TEST_DEPARTMENT, "connection": "src_ra",
        "tables": [{"code": "ra", "source": "ra", "primary_key": ["id"], **table}],
    })


def test_cli_load_takes_over_the_read_it_started_ahead(pg: str, lake_settings: Settings,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres_fast, "_MIN_PAGES_TO_SPLIT", 1)  # two ranges on a small table
    monkeypatch.setenv("CITYLAKE_CONN_SRC_RA", pg)
    Path(lake_settings.registry_dir, "ra_src.yml").write_text(
        f"system: ra_src\nname: 预读\ndepartment: \"{TEST_DEPARTMENT}\"\nconnection: src_ra\n"
        "tables:\n  - code: ra\n    source: ra\n    primary_key: [id]\n", encoding="utf-8")
    events: list[tuple[Any, ...]] = []
    real_init, real_seq = postgres_fast.PgRead.__init__, RawWriter.allocate_load_seq

    def init(self: Any, *args: Any, **kw: Any) -> None:
        real_init(self, *args, **kw)
        events.append(("read", kw.get("read_ahead", 0), len(self._threads)))

    monkeypatch.setattr(postgres_fast.PgRead, "__init__", init)
    monkeypatch.setattr(RawWriter, "allocate_load_seq", lambda self: events.append(("seq",)) or real_seq(self))
    result = CliRunner().invoke(cli.app, ["ingest", "ra_src"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    # One read, of two ranges, started before the load took its sequence number; none after.
    assert events == [("read", read_ahead.READ_AHEAD_BYTES, 2), ("seq",)]
    raw = get_catalog(lake_settings).load_table("raw.ra_src__ra").scan().to_arrow().sort_by("id")
    assert raw["id"].to_pylist() == list(range(1, ROWS + 1))
    assert raw["amount"][ROWS - 1].as_py() == Decimal("25000.00")
    assert pc.min(raw["at"]).as_py().isoformat() == "2026-11-01T00:01:00+00:00"
    assert _sessions(pg) == 0


def test_a_read_the_load_does_not_take_is_closed(pg: str, lake_settings: Settings,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYLAKE_CONN_SRC_RA", pg)
    system = _system()
    started = read_ahead.start(system, "ra", lake_settings, "full")
    assert started is not None and started.read.columns == ["id", "name", "amount", "at"]
    # a key-only deletion check is no whole read (and finds nothing in an empty lake): the read is released
    ingest_table(system, "ra", settings=lake_settings, mode="deletions", read_ahead=started)
    assert _sessions(pg) == 0
    started = read_ahead.start(system, "ra", lake_settings, "full")
    assert started is not None
    broken = _system(primary_key=["sfzh"])  # the load fails before it reads: nothing lands, nothing stays open
    with pytest.raises(CitylakeError, match="sfzh"):
        ingest_table(broken, "ra", settings=lake_settings, mode="full", read_ahead=started)
    assert _sessions(pg) == 0
    assert get_catalog(lake_settings).table_exists("raw.ra_src__ra") is False


def test_a_full_refresh_reads_the_source_before_the_lake_side(pg: str, lake_settings: Settings,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The buffer of a read started ahead is drained, and the source's sessions are closed, before the lake
    side of the compare is scanned: held through that scan it took a 5 M-row refresh past its memory budget."""
    monkeypatch.setenv("CITYLAKE_CONN_SRC_RA", pg)
    system = _system()
    # the refresh must be another batch than the first load (a rerun of the only batch compares with nothing)
    ingest_table(system, "ra", settings=lake_settings, mode="full", batch_id="b1")
    with psycopg.connect(pg, autocommit=True) as conn:
        conn.execute("UPDATE ra SET name = '改' || id WHERE id <= 10")
        conn.execute("DELETE FROM ra WHERE id = 20")
    seen: list[tuple[int, int]] = []
    real = LakeCompare.load_lake

    def load_lake(self: LakeCompare, *args: Any, **kw: Any) -> int:
        deadline = time.monotonic() + 2  # a backend leaves pg_stat_activity just after its client closes
        while (open_sessions := _sessions(pg)) and time.monotonic() < deadline:
            time.sleep(0.05)
        seen.append((self.rows, open_sessions))
        return real(self, *args, **kw)

    monkeypatch.setattr(LakeCompare, "load_lake", load_lake)
    started = read_ahead.start(system, "ra", lake_settings, "full")
    assert started is not None
    result = ingest_table(system, "ra", settings=lake_settings, mode="full", read_ahead=started, batch_id="b2")
    assert seen == [(ROWS - 1, 0)]  # every source row staged, no session open, when the lake was scanned
    assert (result.rows_written, result.rows_deleted) == (11, 1)  # 10 changed rows and one deletion row


def test_a_rerun_of_the_only_batch_writes_as_a_first_load(pg: str, lake_settings: Settings,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A full refresh whose batch is the table's only one (an Airflow retry of a first load that committed)
    compares with nothing: no compare is staged, and the rerun replaces the batch's rows."""
    monkeypatch.setenv("CITYLAKE_CONN_SRC_RA", pg)
    system = _system()
    ingest_table(system, "ra", settings=lake_settings, mode="full", batch_id="b1")
    made: list[int] = []
    real = LakeCompare.__init__

    def init(self: LakeCompare, *args: Any, **kw: Any) -> None:
        made.append(1)
        real(self, *args, **kw)

    monkeypatch.setattr(LakeCompare, "__init__", init)
    result = ingest_table(system, "ra", settings=lake_settings, mode="full", batch_id="b1")
    assert made == [] and result.rows_written == ROWS
    assert get_catalog(lake_settings).load_table("raw.ra_src__ra").scan().to_arrow().num_rows == ROWS
    ingest_table(system, "ra", settings=lake_settings, mode="full", batch_id="b2")  # another batch: compared
    assert made == [1]


def test_only_whole_postgresql_reads_start_ahead(pg: str, lake_settings: Settings,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYLAKE_CONN_SRC_RA", pg)
    assert read_ahead.start(_system(cursor="at"), "ra", lake_settings, "incremental") is None  # needs the watermark
    assert read_ahead.start(_system(), "ra", lake_settings, "deletions") is None
    started = read_ahead.start(_system(filter="id > 19990"), "ra", lake_settings, "full")  # the filter applies
    assert started is not None
    assert sorted(i for b in started.read for i in b.column(0).to_pylist()) == list(range(19991, ROWS + 1))
    started.close()
    monkeypatch.setenv("CITYLAKE_CONN_SRC_RA", "sqlite:///" + str(lake_settings.root / "x.db"))
    assert read_ahead.start(_system(), "ra", lake_settings, "full") is None
    monkeypatch.setenv("CITYLAKE_CONN_SRC_RA", pg.replace("5432", "1"))  # refused: the load reports it, not this
    assert read_ahead.start(_system(), "ra", lake_settings, "full") is None
    time.sleep(0.2)
    assert _sessions(pg) == 0


def test_buffer_holds_the_early_bytes_then_a_few_batches() -> None:
    buf = postgres_fast._Buffer(early=100, steady=10)
    for i in range(3):
        buf.put(i, 30)  # 90 bytes: within the early limit, nobody has read yet
    fourth = threading.Thread(target=buf.put, args=(3, 30), daemon=True)
    fourth.start()
    fourth.join(0.2)
    assert fourth.is_alive(), "a put past the early limit must wait"
    assert buf.get() == 0  # reading starts: the limit is now the steady one, 60 bytes still exceed it
    fourth.join(0.2)
    assert fourth.is_alive()
    assert [buf.get(), buf.get()] == [1, 2]  # empty: the waiting batch fits (one item always does)
    fourth.join(1)
    assert not fourth.is_alive() and buf.get() == 3
    buf.close()
    buf.put(4, 1 << 30)  # closed: dropped, never blocks


def test_lineage_constants_follow_each_batch(lake_settings: Settings) -> None:
    """shape() slices lineage columns from one cached array per column: values follow the batch (a drop load's
    next file, deletion rows), lengths grow, and the cache never holds more than one array per column."""
    writer = RawWriter(get_catalog(lake_settings), "raw.ra_src__shape", pa.schema([pa.field("id", pa.int64())]),
                       batch_id="b1", extracted_at=datetime(2026, 12, 1, tzinfo=TZ), system="ra_src", load_seq=7)
    try:
        for rows, file, deleted in [(3, "a.csv", False), (5, "a.csv", False), (2, "b.csv", True), (4, None, False)]:
            shaped = writer.shape(pa.table({"id": list(range(rows))}), source_file=file, deleted=deleted)
            assert shaped.num_rows == rows
            assert set(shaped.column("_source_file").to_pylist()) == {file}
            assert set(shaped.column("_deleted").to_pylist()) == {deleted}
            assert set(shaped.column("_batch_id").to_pylist()) == {"b1"}
            assert set(shaped.column("_load_seq").to_pylist()) == {7}
        assert len(writer._constants) == 6
        assert writer._constants["_source_file"][0] is None and len(writer._constants["_source_file"][1]) == 4
    finally:
        writer.abort()
