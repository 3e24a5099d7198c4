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


def test_a_mostly_bad_delivery_fails_publish_once_and_keeps_std(city_lake: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from pipelines.demo import _bad_delivery
    from pipelines.settings import load_settings

    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):  # the department's webhook (schemas/departments.yml alerts_http)
        def do_POST(self) -> None:  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AIRFLOW_CONN_ALERTS_HTTP", json.dumps(
        {"conn_type": "http", "host": f"http://127.0.0.1:{server.server_address[1]}/alerts"}))
    try:
        held = _bad_delivery(load_settings(), datetime(2026, 11, 20, 2, tzinfo=TZ))  # raises unless held, std unchanged
    finally:
        server.shutdown()
        server.server_close()
    assert held["status"] == "held" and held["published"] == 0 and held["held"] == held["extracted"] > 0
    assert held["task"]["state"].endswith("failed") and held["task"]["tries"] == 1  # a data verdict: no retries
    assert "enterprise.uscc.check_digit" in held["detail"]
    # publish_std told the owning department before failing (no SMTP connection here: logged, not raised)
    [alert] = [a for a in received if a["kind"] == "held"]
    assert alert["dataset_or_table"] == "enterprise" and alert["rule"] == "enterprise.uscc.check_digit"
    assert alert["department_name"] == "合肥市市场监督管理局" and alert["count"] > 100
    assert alert["page"].endswith("/report/datasets/enterprise.html") and "批次暂停发布" in alert["subject"]
