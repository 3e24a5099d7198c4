"""End to end on the synthetic city: every ingest DAG through dag.test(), then an incremental rerun."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from conftest import scoped_env

from pipelines.settings import PROJECT_ROOT, TZ


@pytest.fixture(scope="module")
def city_lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    base = tmp_path_factory.mktemp("e2e")
    env = {"CITYLAKE_LAKE_DIR": str(base / "lake"), "CITYLAKE_DATA_DIR": str(base / "data"),
           "CITYLAKE_ROOT": str(PROJECT_ROOT), "CITYLAKE_RETRY_DELAY_SECONDS": "0.2"}
    from pipelines.demo import airflow_env, prepare_airflow
    from pipelines.seed import seed_city

    with scoped_env({**env, **airflow_env(PROJECT_ROOT, base / "airflow")}):
        seed_city(base / "data", scale=0.05)  # the registry's default URLs point into {data_dir}
        prepare_airflow(PROJECT_ROOT, base / "airflow")
        yield base


def _source_counts(data: Path) -> dict[str, int]:
    counts = {}
    for db in (data / "sources").glob("*.db"):
        con = sqlite3.connect(db)
        for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'"):
            counts[db.stem] = con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0]
        con.close()
    return counts


def test_every_dag_lands_exact_source_counts_then_incremental_moves_only_changes(
        city_lake: Path) -> None:
    from pipelines.demo import run_ingest_dags
    from pipelines.ingest import ingest_table
    from pipelines.lake.inspect import list_tables
    from pipelines.registry import get_system
    from pipelines.settings import load_settings

    settings = load_settings()
    tasks = run_ingest_dags(datetime(2026, 11, 20, 2, tzinfo=TZ))
    assert tasks and all(t["state"].endswith("success") for t in tasks), tasks
    lake = {r["table"]: r["rows"] for r in list_tables(settings, ("raw",))}
    for system, rows in _source_counts(city_lake / "data").items():
        ident = next(k for k in lake if k.startswith(f"raw.{system}__"))
        assert lake[ident] == rows, (ident, lake[ident], rows)
    assert lake["raw.air_quality__hourly"] > 0 and lake["raw.bus_ridership__route"] == 10

    con = sqlite3.connect(city_lake / "data" / "sources" / "population.db")
    con.execute("UPDATE person SET address = '合肥市新地址', updated_at = '2026-11-20 09:00:00' "
                "WHERE rowid IN (1, 2, 3)")
    con.execute("INSERT INTO person SELECT '340104199001011234', '新居民', '男', '1990-01-01', '340104', '地址', "
                "'13800000000', '2026-11-20 09:30:00'")
    con.commit()
    con.close()
    spec = get_system(settings.registry_dir, "population")
    res = ingest_table(spec, "person", settings=settings, batch_id="after-change",
                       extracted_at=datetime(2026, 11, 20, 10, tzinfo=TZ))
    assert res.rows_written == 4
    assert {r["table"]: r["rows"] for r in list_tables(settings, ("raw",))}["raw.population__person"] == \
        lake["raw.population__person"] + 4


def test_a_mostly_bad_delivery_fails_publish_once_and_keeps_std(city_lake: Path) -> None:
    from pipelines.demo import _bad_delivery
    from pipelines.settings import load_settings

    held = _bad_delivery(load_settings(), datetime(2026, 11, 20, 2, tzinfo=TZ))  # raises unless held, std unchanged
    assert held["status"] == "held" and held["published"] == 0 and held["held"] == held["extracted"] > 0
    assert held["task"]["state"].endswith("failed") and held["task"]["tries"] == 1  # a data verdict: no retries
    assert "enterprise.uscc.check_digit" in held["detail"]
