"""File drops end to end: each file lands exactly once, a bad file is copied aside, drops stay read-only."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from conftest import TEST_DEPARTMENT

from pipelines.ingest import ingest_table
from pipelines.lake.catalog import get_catalog
from pipelines.lake.raw import TableState
from pipelines.registry import SourceSystem
from pipelines.settings import TZ, Settings

HEADER = "站点编码,监测时间,PM2.5\n"


def _system(drop: Path) -> SourceSystem:
    return SourceSystem.model_validate({
        "system": "air", "name": "空气质量", "department": TEST_DEPARTMENT, "connection": "drop_air",
        "drop": {"location": str(drop), "tables": [{
            "code": "hourly", "glob": "aq_*.csv", "format": "csv", "encoding": "gb18030",
            "primary_key": ["station_id", "observed_at"],
            "columns": {"站点编码": "station_id", "监测时间": "observed_at", "PM2.5": "pm25"},
            "types": {"pm25": "float64", "observed_at": "timestamp"},
        }]},
    })


def _write(path: Path, rows: list[str], encoding: str = "utf-8") -> None:
    path.write_bytes((HEADER + "".join(r + "\n" for r in rows)).encode(encoding))


def _rows(settings: Settings) -> list[dict]:
    return get_catalog(settings).load_table("raw.air__hourly").scan().to_arrow().to_pylist()


def test_files_land_once_bad_file_is_copied_aside(lake_settings: Settings, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    _write(drop / "aq_2026112001.csv", ["S01,2026-11-20 01:00:00,35.5", "S02,2026-11-20 01:00:00,40"], "gb18030")
    _write(drop / "aq_2026112002.csv", ["S01,2026-11-20 02:00:00,36", "S02,2026-11-20 02:00:00,合肥"], "gbk")
    _write(drop / "aq_2026112003.csv", ["S01,2026-11-20 03:00:00,30"], "gbk")
    before = {p.name: p.read_bytes() for p in drop.iterdir()}
    system = _system(drop)
    at = datetime(2026, 11, 20, 4, tzinfo=TZ)

    res = ingest_table(system, "hourly", settings=lake_settings, batch_id="b1", extracted_at=at)
    assert res.files_loaded == ["aq_2026112001.csv", "aq_2026112003.csv"]
    assert [r["file"] for r in res.files_rejected] == ["aq_2026112002.csv"]
    assert res.files_rejected[0]["line"] == 3
    copied = Path(res.files_rejected[0]["copied_to"])
    assert copied.read_bytes() == before["aq_2026112002.csv"]
    assert json.loads(copied.with_name(copied.name + ".reason.json").read_text(encoding="utf-8"))["line"] == 3
    assert {p.name: p.read_bytes() for p in drop.iterdir()} == before  # read-only to the lake
    rows = _rows(lake_settings)
    assert len(rows) == 3 and {r["_source_file"] for r in rows} == {"aq_2026112001.csv", "aq_2026112003.csv"}

    # Nothing new: the ledger (committed with the rows) keeps every file from landing twice.
    again = ingest_table(system, "hourly", settings=lake_settings, batch_id="b2", extracted_at=at)
    assert again.files_loaded == [] and again.files_rejected == []
    assert len(_rows(lake_settings)) == 3

    # The department fixes the bad file: the new version lands, once.
    _write(drop / "aq_2026112002.csv", ["S01,2026-11-20 02:00:00,36", "S02,2026-11-20 02:00:00,41"], "gbk")
    fixed = ingest_table(system, "hourly", settings=lake_settings, batch_id="b3", extracted_at=at)
    assert fixed.files_loaded == ["aq_2026112002.csv"]
    assert len(_rows(lake_settings)) == 5

    # Re-running batch b3 replaces it instead of duplicating.
    rerun = ingest_table(system, "hourly", settings=lake_settings, batch_id="b3", extracted_at=at)
    assert rerun.files_loaded == ["aq_2026112002.csv"]
    assert len(_rows(lake_settings)) == 5
    table = get_catalog(lake_settings).load_table("raw.air__hourly")
    ledger = TableState.of(table).ledger
    assert ledger["aq_2026112002.csv"]["status"] == "loaded" and ledger["aq_2026112002.csv"]["batch"] == "b3"


def test_typed_columns_and_zone(lake_settings: Settings, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    _write(drop / "aq_2026112001.csv", ["S01,2026-11-20 01:00:00,35.5"], "gbk")
    ingest_table(_system(drop), "hourly", settings=lake_settings, batch_id="b1",
                 extracted_at=datetime(2026, 11, 20, 4, tzinfo=TZ))
    (row,) = _rows(lake_settings)
    assert row["station_id"] == "S01" and row["pm25"] == 35.5
    assert row["observed_at"].astimezone(TZ) == datetime(2026, 11, 20, 1, tzinfo=TZ)
