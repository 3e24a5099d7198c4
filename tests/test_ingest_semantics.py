"""Incremental, full-refresh, rerun and schema-drift semantics of one SQL table (SQLite source)."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import TEST_DEPARTMENT

from pipelines.errors import SchemaDriftError, SourceError
from pipelines.ingest import ingest_system, ingest_table
from pipelines.lake.catalog import get_catalog
from pipelines.lake.raw import STATE_PROPERTY
from pipelines.registry import SourceSystem
from pipelines.settings import TZ, Settings

AT = datetime(2026, 11, 20, 2, tzinfo=TZ)


def _system(db: Path, lookback: float = 0, cursor: str | None = "updated_at", extra: list | None = None) -> SourceSystem:
    return SourceSystem.model_validate({
        "system": "hr", "name": "人事", "department": TEST_DEPARTMENT, "connection": "src_hr", "lookback_hours": lookback,
        "default_url": f"sqlite:///{db}",
        "tables": [{"code": "staff", "source": "staff", "primary_key": ["id"], "cursor": cursor}, *(extra or [])],
    })


def _exec(db: Path, *sql: str) -> None:
    con = sqlite3.connect(db)
    for s in sql:
        con.execute(s)
    con.commit()
    con.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "hr.db"
    _exec(path, "CREATE TABLE staff (id INTEGER, name TEXT, salary NUMERIC(10,2), updated_at DATETIME)",
          *[f"INSERT INTO staff VALUES ({i}, '员工{i}', {1000 + i}.50, '2026-11-0{1 + i % 3} 08:00:00')"
            for i in range(30)])
    return path


def _table(settings: Settings):  # noqa: ANN202
    return get_catalog(settings).load_table("raw.hr__staff")


def _load(system: SourceSystem, settings: Settings, batch: str, **kw):  # noqa: ANN003, ANN202
    # Each batch has its own data-interval end, as Airflow runs do; a rerun keeps its batch's.
    at = AT + timedelta(hours=int(batch.removeprefix("b")))
    return ingest_table(system, "staff", settings=settings, batch_id=batch, extracted_at=at, **kw)


def test_equal_to_watermark_is_read_again_and_not_duplicated(db: Path, lake_settings: Settings) -> None:
    system = _system(db, lookback=0)
    assert _load(system, lake_settings, "b1").rows_written == 30
    _exec(db, "INSERT INTO staff VALUES (100, '新人', 1.00, '2026-11-03 08:00:00')")  # == watermark
    second = _load(system, lake_settings, "b2")
    assert second.rows_extracted == 11 and second.rows_written == 1 and second.rows_unchanged == 10
    assert _table(lake_settings).scan().to_arrow().num_rows == 31
    nothing = _load(system, lake_settings, "b3")
    assert nothing.rows_written == 0 and nothing.snapshot_id == second.snapshot_id


def test_unnamed_loads_in_the_same_second_are_batches_of_their_own(db: Path, lake_settings: Settings) -> None:
    # Without a batch id of its own, the second load would be a rerun of the first: re-read from the first's
    # window start (all 30 rows) and replace its batch.
    system = _system(db, lookback=0)
    first = ingest_table(system, "staff", settings=lake_settings, extracted_at=AT)
    _exec(db, "INSERT INTO staff VALUES (100, '新人', 1.00, '2026-11-04 08:00:00')")
    second = ingest_table(system, "staff", settings=lake_settings, extracted_at=AT)
    assert first.batch_id != second.batch_id and first.batch_id.startswith("incremental_20261120T020000")
    assert second.rows_extracted == 11 and second.rows_written == 1
    data = _table(lake_settings).scan().to_arrow()
    assert data.num_rows == 31 and set(data["_batch_id"].to_pylist()) == {first.batch_id, second.batch_id}


def test_late_row_inside_lookback_lands_once(db: Path, lake_settings: Settings) -> None:
    system = _system(db, lookback=48)
    _load(system, lake_settings, "b1")
    _exec(db, "INSERT INTO staff VALUES (200, '迟到', 1.00, '2026-11-02 09:00:00')")  # older than watermark
    assert _load(system, lake_settings, "b2").rows_written == 1
    assert _load(system, lake_settings, "b3").rows_written == 0
    assert _table(lake_settings).scan().to_arrow().num_rows == 31


def test_rerun_of_a_batch_replaces_it_even_after_a_later_batch(db: Path, lake_settings: Settings) -> None:
    system = _system(db)
    _load(system, lake_settings, "b1")
    _exec(db, "UPDATE staff SET salary = 9999, updated_at = '2026-11-05 08:00:00' WHERE id = 1")
    _load(system, lake_settings, "b2")
    _exec(db, "UPDATE staff SET salary = 8888, updated_at = '2026-11-06 08:00:00' WHERE id = 2")
    _load(system, lake_settings, "b3")
    rows = _table(lake_settings).scan().to_arrow().num_rows
    again = _load(system, lake_settings, "b2")  # replaces b2's rows, re-extracting from b2's window
    data = _table(lake_settings).scan().to_arrow()
    assert data.num_rows == rows
    assert sorted(data.filter(pc.equal(data["_batch_id"], "b2"))["id"].to_pylist()) == [1]
    assert again.watermark == "2026-11-06T08:00:00+08:00"  # never moves back


def test_full_refresh_records_deletes_and_skips_unchanged(db: Path, lake_settings: Settings) -> None:
    system = _system(db, cursor=None)
    _load(system, lake_settings, "b1")
    _exec(db, "DELETE FROM staff WHERE id IN (3, 4)", "UPDATE staff SET name = '改名' WHERE id = 5")
    res = _load(system, lake_settings, "b2")
    assert (res.rows_deleted, res.rows_unchanged, res.rows_written) == (2, 27, 3)
    data = _table(lake_settings).scan().to_arrow()
    gone = data.filter(data["_deleted"])
    assert sorted(gone["id"].to_pylist()) == [3, 4] and gone["name"].null_count == 2
    assert _load(system, lake_settings, "b3").rows_written == 0  # deletes are not re-recorded


def test_watermark_committed_with_the_rows(db: Path, lake_settings: Settings) -> None:
    system = _system(db)
    res = _load(system, lake_settings, "b1")
    table = _table(lake_settings)
    snap = table.current_snapshot()
    assert snap.snapshot_id == res.snapshot_id and snap.summary["citylake.watermark"] == res.watermark
    assert f'"watermark":"{res.watermark}"' in table.properties[STATE_PROPERTY]
    # the metadata file that holds this snapshot also holds the state: one commit
    assert table.metadata.current_snapshot_id == snap.snapshot_id


def test_schema_drift(db: Path, lake_settings: Settings) -> None:
    system = _system(db)
    _load(system, lake_settings, "b1")
    _exec(db, "ALTER TABLE staff ADD COLUMN dept TEXT",
          "INSERT INTO staff VALUES (300, '新', 1.00, '2026-11-09 08:00:00', '财务处')")
    added = _load(system, lake_settings, "b2")
    assert any("added dept" in c for c in added.schema_changes)
    data = _table(lake_settings).scan().to_arrow()
    assert data.filter(pc.equal(data["id"], 300))["dept"].to_pylist() == ["财务处"] and data["dept"].null_count == 30

    before = _table(lake_settings).current_snapshot().snapshot_id
    _exec(db, "CREATE TABLE s2 AS SELECT id, salary, updated_at, dept FROM staff", "DROP TABLE staff",
          "ALTER TABLE s2 RENAME TO staff")
    with pytest.raises(SchemaDriftError, match=r"raw\.hr__staff.*name.*dropped"):
        _load(system, lake_settings, "b3")
    _exec(db, "DROP TABLE staff", "CREATE TABLE staff (id INTEGER, name INTEGER, salary NUMERIC(10,2), "
          "updated_at DATETIME, dept TEXT)")
    with pytest.raises(SchemaDriftError, match=r"name changed type string → int64"):
        _load(system, lake_settings, "b4")
    assert _table(lake_settings).current_snapshot().snapshot_id == before


def test_widening_evolves(tmp_path: Path, lake_settings: Settings) -> None:
    db = tmp_path / "w.db"
    _exec(db, "CREATE TABLE staff (id INTEGER, amount NUMERIC(10,2), updated_at DATETIME)",
          "INSERT INTO staff VALUES (1, 1.50, '2026-11-01 00:00:00')")
    system = _system(db)
    _load(system, lake_settings, "b1")
    _exec(db, "CREATE TABLE s2 (id INTEGER, amount NUMERIC(18,2), updated_at DATETIME)",
          "INSERT INTO s2 SELECT * FROM staff", "INSERT INTO s2 VALUES (2, 1234567890123.45, '2026-11-02 00:00:00')",
          "DROP TABLE staff", "ALTER TABLE s2 RENAME TO staff")
    res = _load(system, lake_settings, "b2")
    assert any("widened amount" in c for c in res.schema_changes)
    assert str(_table(lake_settings).schema().find_field("amount").field_type) == "decimal(18, 2)"


def test_missing_source_table_fails_alone(db: Path, lake_settings: Settings) -> None:
    system = _system(db, extra=[{"code": "ghost", "source": "没有这张表", "primary_key": ["id"]}])
    results = dict(ingest_system(system, settings=lake_settings, batch_id="b1", extracted_at=AT))
    assert not isinstance(results["staff"], BaseException)
    assert isinstance(results["ghost"], SourceError)
    assert "hr" in str(results["ghost"]) and "没有这张表" in str(results["ghost"])


def test_stream_scan_reads_what_pyiceberg_reads_after_added_and_renamed_columns(lake_settings: Settings) -> None:
    """The bounded-memory reader resolves columns by field id and filters on columns older files lack."""
    from pyiceberg.expressions import EqualTo
    from pyiceberg.types import StringType

    from pipelines.lake.raw import stream_scan

    catalog = get_catalog(lake_settings)
    catalog.create_namespace_if_not_exists("t")
    table = catalog.create_table("t.evolving", schema=pa.schema([("k", pa.string()), ("b", pa.string())]))
    table.append(pa.table({"k": ["1", "2"], "b": ["x", "y"]}))
    with table.update_schema() as update:
        update.add_column("extra", StringType())
    table = catalog.load_table("t.evolving")
    table.append(pa.table({"k": ["3"], "b": ["z"], "extra": ["e"]}))
    with table.update_schema() as update:
        update.rename_column("b", "bb")
    table = catalog.load_table("t.evolving")
    ours = stream_scan(table.scan()).read_all()
    assert sorted(ours.to_pylist(), key=str) == sorted(table.scan().to_arrow().to_pylist(), key=str)
    assert sorted(ours["bb"].to_pylist()) == ["x", "y", "z"]
    filtered = stream_scan(table.scan(row_filter=EqualTo("extra", "e"), selected_fields=("k",))).read_all()
    assert filtered.to_pylist() == [{"k": "3"}]


def _latest_rows(settings: Settings) -> list[tuple]:
    """(id, name, salary, updated_at) of each key's latest live version in raw (std's reading)."""
    data = _table(settings).scan().to_arrow().to_pylist()
    latest: dict[int, dict] = {}
    for r in data:
        if r["id"] not in latest or r["_load_seq"] > latest[r["id"]]["_load_seq"]:
            latest[r["id"]] = r
    return sorted((r["id"], r["name"], str(r["salary"]), r["updated_at"].astimezone(TZ).replace(tzinfo=None))
                  for r in latest.values() if not r["_deleted"])


def _source_rows(db: Path) -> list[tuple]:
    con = sqlite3.connect(db)
    rows = con.execute("SELECT id, name, salary, updated_at FROM staff").fetchall()
    con.close()
    return sorted((i, n, f"{s:.2f}", datetime.fromisoformat(u)) for i, n, s, u in rows)


def _no_repeated_versions(settings: Settings) -> None:
    data = _table(settings).scan().to_arrow()
    versions = data.group_by(["id", "name", "salary", "updated_at"]).aggregate([("id", "count")])
    assert max(versions["id_count"].to_pylist()) == 1, "a version landed twice"


def test_window_after_a_gap_leaves_the_gap_to_the_next_incremental_run(db: Path, lake_settings: Settings) -> None:
    """Scheduled loads failed for days, then an operator loads only yesterday (params since/until): the window
    must not move the watermark over the days before it, or the next incremental run starts after them and
    those rows are never loaded."""
    system = _system(db)
    assert _load(system, lake_settings, "b1").watermark == "2026-11-03T08:00:00+08:00"
    _exec(db, *[f"INSERT INTO staff VALUES ({100 + d}, '缺{d}', 1.00, '2026-11-0{d} 08:00:00')" for d in (5, 6, 7)])
    window = _load(system, lake_settings, "b2", mode="backfill", since=datetime(2026, 11, 7, tzinfo=TZ),
                   until=datetime(2026, 11, 8, tzinfo=TZ))
    assert window.rows_written == 1 and window.watermark == "2026-11-03T08:00:00+08:00"
    assert window.watermark_gap and "2026-11-03T08:00:00+08:00" in window.watermark_gap
    nxt = _load(system, lake_settings, "b3")  # incremental: from the kept watermark
    assert (nxt.rows_written, nxt.watermark) == (2, "2026-11-07T08:00:00+08:00")  # 11-05 and 11-06; 11-07 unchanged
    assert _latest_rows(lake_settings) == _source_rows(db)
    _no_repeated_versions(lake_settings)
    # a window that starts at or before the watermark is contiguous with it: the watermark moves
    _exec(db, "INSERT INTO staff VALUES (200, '新', 1.00, '2026-11-09 08:00:00')")
    moved = _load(system, lake_settings, "b4", mode="backfill", since=datetime(2026, 11, 7, tzinfo=TZ),
                  until=datetime(2026, 11, 10, tzinfo=TZ))
    assert (moved.rows_written, moved.watermark, moved.watermark_gap) == (1, "2026-11-09T08:00:00+08:00", None)
    # with a lookback, the window must also cover the late rows the next incremental run would re-read
    from pipelines.ingest import _contiguous

    wm = datetime(2026, 11, 9, 8, tzinfo=TZ)
    assert not _contiguous(datetime(2026, 11, 9, tzinfo=TZ), wm, 24)
    assert _contiguous(datetime(2026, 11, 8, 8, tzinfo=TZ), wm, 24) and _contiguous(None, None, 24)
    assert not _contiguous(datetime(2026, 11, 1, tzinfo=TZ), None, 24)  # no watermark: a slice, not a start
    # an old window (a backfill of a past interval) never moves it back
    old = _load(system, lake_settings, "b5", mode="backfill", since=datetime(2026, 11, 1, tzinfo=TZ),
                until=datetime(2026, 11, 2, tzinfo=TZ))
    assert (old.rows_written, old.watermark) == (0, "2026-11-09T08:00:00+08:00")


def test_window_on_an_empty_table_then_incremental_loads_everything_once(db: Path, lake_settings: Settings) -> None:
    """A window on an empty table is a slice, not a start: it leaves no watermark, so the next incremental run
    loads the whole table; what the window landed is skipped as unchanged (raw keeps each version once)."""
    system = _system(db)
    window = _load(system, lake_settings, "b1", mode="backfill", since=datetime(2026, 11, 2, tzinfo=TZ),
                   until=datetime(2026, 11, 3, tzinfo=TZ))
    assert window.rows_written == 10 and window.watermark is None and window.watermark_gap
    _exec(db, "UPDATE staff SET salary = 7777, updated_at = '2026-11-04 08:00:00' WHERE id = 1")  # in the window
    nxt = _load(system, lake_settings, "b2")
    assert (nxt.rows_extracted, nxt.rows_written, nxt.rows_unchanged) == (30, 21, 9)
    assert nxt.watermark == "2026-11-04T08:00:00+08:00"
    assert _latest_rows(lake_settings) == _source_rows(db)
    _no_repeated_versions(lake_settings)
    assert _table(lake_settings).scan().to_arrow().num_rows == 31  # 30 keys, id 1 twice (two versions)


@pytest.mark.parametrize("setting", [{"integer_columns": ["salary"]}, {"column_encodings": {"name": "gbk"}},
                                     {"source_encoding": "gbk"}])
def test_mysql_only_settings_on_another_source_fail_in_one_line(db: Path, lake_settings: Settings,
                                                                 setting: dict) -> None:
    """A MySQL-family setting on another source would be ignored and land the column differently than the
    registry says: the load fails before anything is written, naming system, table and setting."""
    system = SourceSystem.model_validate({
        "system": "hr", "name": "人事", "department": TEST_DEPARTMENT, "connection": "src_hr", "lookback_hours": 0,
        "default_url": f"sqlite:///{db}",
        "tables": [{"code": "staff", "source": "staff", "primary_key": ["id"], **setting}]})
    with pytest.raises(SourceError) as info:
        _load(system, lake_settings, "b1")
    message = str(info.value)
    assert "system hr" in message and "'staff'" in message and next(iter(setting)) in message
    assert "MySQL-family sources only" in message and "\n" not in message
    assert get_catalog(lake_settings).table_exists("raw.hr__staff") is False
