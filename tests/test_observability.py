"""Observability (issue 13 item 3): JSON logs with the run context, the run ledger meta.runs, OpenLineage events
from an ingest task."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from pipelines.errors import CitylakeError
from pipelines.ingest import ingest_table
from pipelines.lake.catalog import get_catalog
from pipelines.registry import load_registry
from pipelines.settings import PROJECT_ROOT, TZ, Settings

REF_TIME = datetime(2026, 11, 20, 2, tzinfo=TZ)


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[Any]:
    """citylake's loggers switched to JSON lines for one test, restored afterwards; yields a reader of the lines."""
    from pipelines.logs import LOGGERS, configure_logging

    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level, logging.getLogger(n).propagate)
             for n in LOGGERS}
    assert configure_logging(True)

    def lines() -> list[dict[str, Any]]:
        return [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]

    yield lines
    for name, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(name)
        logger.handlers, logger.level, logger.propagate = handlers, level, propagate


def _person(settings: Settings) -> Any:
    systems, _ = load_registry(settings.registry_dir)
    return systems["population"]


@pytest.fixture
def population(lake_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The seeded city's sources (scale 0.01) with the project's registry; nothing loaded yet."""
    from pipelines.seed.city import seed_city
    from pipelines.settings import load_settings

    monkeypatch.setenv("CITYLAKE_REGISTRY_DIR", str(PROJECT_ROOT / "schemas" / "sources"))
    settings = load_settings()
    seed_city(settings.data_dir, scale=0.01)
    return settings


def _runs(settings: Settings) -> list[dict[str, Any]]:
    return get_catalog(settings).load_table("meta.runs").scan().to_arrow().to_pylist()


# --- logs -----------------------------------------------------------------------------------------------


def test_json_lines_carry_the_context_inside_a_run_and_not_outside(json_logs: Any) -> None:
    from pipelines.logs import log_context

    log = logging.getLogger("pipelines.test_observability")
    log.info("outside")
    with log_context(run_id="r1", dataset="person", batch="b1", table="std.person"):
        log.warning("inside %s", "https://user:tok@example.org/hook?key=secret123456")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    log.info("after")
    outside, inside, failed, after = json_logs()
    assert set(outside) == {"ts", "level", "logger", "message"} and outside["message"] == "outside"
    assert outside["ts"].endswith("Z") and outside["level"] == "INFO" and outside["logger"] == log.name
    assert {k: inside[k] for k in ("run_id", "dataset", "batch", "table")} == {
        "run_id": "r1", "dataset": "person", "batch": "b1", "table": "std.person"}
    assert "tok" not in inside["message"] and "secret123456" not in inside["message"]  # URL secrets scrubbed
    assert failed["run_id"] == "r1" and "ValueError: boom" in failed["exc"]
    assert "run_id" not in after


def test_default_format_is_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.logs import LOGGERS, configure_logging

    monkeypatch.delenv("CITYLAKE_LOG_FORMAT", raising=False)
    before = [(logging.getLogger(n).handlers[:], logging.getLogger(n).propagate) for n in LOGGERS]
    assert configure_logging() is False
    assert [(logging.getLogger(n).handlers[:], logging.getLogger(n).propagate) for n in LOGGERS] == before


def test_an_ingest_logs_json_with_its_run_and_records_its_row(population: Settings, json_logs: Any) -> None:
    """Fields present during an ingest (its ledger line), and the ledger row: counts, snapshot ids, a rerun
    replaces; the gate's publish after it has its own row with the std snapshot."""
    from pipelines.quality.gate import run_quality

    system = _person(population)
    first = ingest_table(system, "person", settings=population, batch_id="b1", extracted_at=REF_TIME)
    lines = [x for x in json_logs() if x.get("batch") == "b1"]
    assert lines and all(x["run_id"] == "b1" and x["table"] == "raw.population__person" for x in lines)
    [row] = _runs(population)
    assert (row["kind"], row["target"], row["system"], row["batch_id"], row["status"]) == (
        "ingest", "raw.population__person", "population", "b1", "succeeded")
    assert row["rows_in"] == first.rows_extracted > 0 and row["rows_out"] == first.rows_written
    assert row["snapshot_before"] is None and row["snapshot_after"] == first.snapshot_id
    assert row["finished_at"] >= row["started_at"] and row["seconds"] >= 0 and row["error"] is None

    again = ingest_table(system, "person", settings=population, batch_id="b1", extracted_at=REF_TIME)
    [row] = _runs(population)  # the same run id (a retry replaces the batch): its row replaced, not repeated
    assert row["snapshot_before"] == first.snapshot_id and row["snapshot_after"] == again.snapshot_id
    assert row["rows_out"] == again.rows_written

    result = run_quality("person", settings=population, run_id="pub1")
    published = [r for r in _runs(population) if r["kind"] == "publish"]
    assert len(published) == 1 and published[0]["target"] == "std.person" and published[0]["run_id"] == "pub1"
    assert (published[0]["status"], published[0]["rows_in"], published[0]["rows_out"]) == (
        "published", result.extracted, result.published)
    assert published[0]["snapshot_after"] == result.std_snapshot and published[0]["snapshot_before"] is None
    assert published[0]["batch_id"] == "b1"


def test_a_failing_stage_records_failed_with_one_masked_line(population: Settings,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYLAKE_CONN_SRC_POPULATION", "postgresql://lake:s3cretpw@127.0.0.1:1/nowhere")
    with pytest.raises(Exception) as info:
        ingest_table(_person(population), "person", settings=population, batch_id="f1", extracted_at=REF_TIME)
    [row] = _runs(population)
    assert row["status"] == "failed" and row["rows_out"] is None and row["snapshot_after"] is None
    assert row["error"].startswith(type(info.value).__name__ + ":") and "\n" not in row["error"]
    assert "s3cretpw" not in row["error"] and len(row["error"]) <= 500


def test_a_ledger_that_cannot_be_written_never_fails_the_stage(lake_settings: Settings,
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    from pipelines.lake import meta
    from pipelines.lake.runs import record_run

    def refuse(*_a: Any, **_k: Any) -> None:
        raise CitylakeError("meta.runs: write: refused 8 times by concurrent writers")

    monkeypatch.setattr(meta, "replace_run", refuse)
    with caplog.at_level(logging.WARNING), record_run("maintenance", run_id="m1", target="lake:meta",
                                                      settings=lake_settings) as run:
        run.done(rows_in=3)
    assert "not recorded" in caplog.text and "m1" in caplog.text


def _write_runs(prefix: str) -> None:
    from pipelines.lake.runs import record_run

    for i in range(4):
        with record_run("share", run_id=f"{prefix}{i}", target=f"grant:{prefix}") as run:
            run.done(rows_out=i)


def test_concurrent_writers_lose_no_row(lake_settings: Settings) -> None:
    import multiprocessing

    from pipelines.lake.catalog import _catalog

    _write_runs("seed")  # the table exists before the race
    _catalog.cache_clear()
    fork = multiprocessing.get_context("fork")
    tasks = [fork.Process(target=_write_runs, args=(p,)) for p in ("a", "b")]
    for t in tasks:
        t.start()
    for t in tasks:
        t.join(120)
    assert [t.exitcode for t in tasks] == [0, 0]
    assert Counter(r["run_id"] for r in _runs(lake_settings)) == {f"{p}{i}": 1 for p in ("seed", "a", "b")
                                                                  for i in range(4)}


def test_runs_cli_lists_the_ledger(population: Settings) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    ingest_table(_person(population), "person", settings=population, batch_id="c1", extracted_at=REF_TIME)
    done = CliRunner().invoke(app, ["runs", "--kind", "ingest", "--since", "2020-01-01", "--json"])
    assert done.exit_code == 0, done.output
    [row] = json.loads(done.stdout)
    assert row["run_id"] == "c1" and row["status"] == "succeeded"
    assert CliRunner().invoke(app, ["runs", "--kind", "publish", "--json"]).stdout.strip() == "[]"
    assert CliRunner().invoke(app, ["runs", "--kind", "nope"]).exit_code != 0


# --- OpenLineage --------------------------------------------------------------------------------------


def test_lineage_names_follow_the_openlineage_spec(tmp_path: Path) -> None:
    from pipelines.lineage import drop_dataset, sql_dataset

    assert sql_dataset("postgresql+psycopg://u:pw@db.example:6432/city", "person", "src") == (
        "postgres://db.example:6432", "city.src.person")
    assert sql_dataset("postgresql+psycopg://u:pw@db.example/city", "person") == (
        "postgres://db.example:5432", "city.public.person")
    assert sql_dataset("mysql+pymysql://root@127.0.0.1/credit", "rating") == ("mysql://127.0.0.1:3306", "credit.rating")
    assert sql_dataset(f"sqlite:///{tmp_path}/a.db", "t") == (f"sqlite://{tmp_path}/a.db", "main.t")
    # not enough to name it by the spec: no input rather than postgres://None:5432 or mysql://h:3306 + None.t
    assert sql_dataset("postgresql+psycopg://u@/city?host=/var/run/postgresql", "person") is None
    assert sql_dataset("mysql+pymysql://root@127.0.0.1", "rating") is None
    assert sql_dataset("mysql+pymysql://root@127.0.0.1", "rating", "credit") == ("mysql://127.0.0.1:3306", "credit.rating")
    assert drop_dataset("s3://drops/air/", "*.csv", tmp_path) == ("s3://drops", "air/*.csv")
    assert drop_dataset("data/drops", "*.csv", tmp_path) == ("file", f"{tmp_path}/data/drops/*.csv")


def test_lineage_off_does_no_work(lake_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """With OpenLineage disabled, attach_ingest resolves no source URL (an Airflow connection lookup)."""
    import pipelines.connections
    import pipelines.lineage as lineage

    looked_up: list[str] = []
    monkeypatch.setattr(pipelines.connections, "resolve_url", lambda system, settings: looked_up.append(system.system))
    monkeypatch.setattr(lineage, "enabled", lambda: False)
    context: dict[str, Any] = {"task": object()}
    systems, _ = load_registry(PROJECT_ROOT / "schemas" / "sources")
    lineage.attach_ingest(context, systems["population"], systems["population"].tables[0].code, lake_settings)
    assert looked_up == []
    # and without a transport the provider says disabled (in a child: the first Airflow import is for good)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "OPENLINEAGE"))}
    env["AIRFLOW_HOME"] = str(lake_settings.lake_dir / "airflow")
    done = subprocess.run([sys.executable, "-c", "from pipelines.lineage import enabled; print(enabled())"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout.strip().splitlines()[-1:] == ["False"], done.stderr[-2000:]


CHILD = '''
import sqlite3, sys
from datetime import datetime
from pathlib import Path

base = Path(sys.argv[1])
from pipelines.demo import prepare_airflow
from pipelines.settings import PROJECT_ROOT, TZ

src = base / "data" / "sources"
src.mkdir(parents=True)
con = sqlite3.connect(src / "ol.db")
con.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, updated_at TEXT)")
con.executemany("INSERT INTO items VALUES (?, ?, ?)", [(i, f"n{i}", "2026-11-19T10:00:00") for i in range(5)])
con.commit()
con.close()
(base / "registry" / "olsrc.yml").write_text(f"""\\
system: olsrc
name: 血缘测试系统
department: "11340100003001113F"
connection: src_olsrc
default_url: sqlite:///{src / 'ol.db'}
schedule: "0 1 * * *"
max_connections: 1
tables:
  - code: items
    source: items
    primary_key: [id]
    cursor: updated_at
""", encoding="utf-8")
prepare_airflow(PROJECT_ROOT, base / "airflow")
from airflow.dag_processing.dagbag import DagBag
from airflow.models.pool import Pool

Pool.create_or_update_pool("source__olsrc", 2, "test", include_deferred=False)
dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags")).get_dag("ingest__olsrc")
run = dag.test(logical_date=datetime(2026, 11, 20, 1, tzinfo=TZ))
print("STATES", sorted((ti.task_id, str(ti.state)) for ti in run.get_task_instances()))
'''


def _ingest_dag_in_child(base: Path, transport: Path | None) -> subprocess.CompletedProcess[str]:
    """dag.test() of an ingest DAG in a process of its own: Airflow's first import fixes its metadata DB and
    the OpenLineage configuration (cached) for the process."""
    (base / "registry").mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "OPENLINEAGE"))}
    env.update({"CITYLAKE_REGISTRY_DIR": str(base / "registry"), "CITYLAKE_LAKE_DIR": str(base / "lake"),
                "CITYLAKE_DATA_DIR": str(base / "data"), "CITYLAKE_ROOT": str(PROJECT_ROOT)})
    if transport is not None:
        env["AIRFLOW__OPENLINEAGE__TRANSPORT"] = json.dumps(
            {"type": "file", "log_file_path": str(transport), "append": True})
    done = subprocess.run([sys.executable, "-c", CHILD, str(base)], capture_output=True, text=True, env=env,
                          timeout=240)
    assert done.returncode == 0 and "('load_table', 'success')" in done.stdout, done.stderr[-3000:]
    return done


def test_an_ingest_task_emits_its_source_and_lake_tables_as_openlineage(tmp_path: Path) -> None:
    events_file = tmp_path / "openlineage.jsonl"
    _ingest_dag_in_child(tmp_path / "on", events_file)
    events = [json.loads(line) for line in events_file.read_text(encoding="utf-8").splitlines()]
    [complete] = [e for e in events if e["eventType"] == "COMPLETE" and e["job"]["name"] == "ingest__olsrc.load_table"]
    assert [(d["namespace"], d["name"]) for d in complete["inputs"]] == [
        (f"sqlite://{tmp_path / 'on' / 'data' / 'sources' / 'ol.db'}", "main.items")]
    assert [(d["namespace"], d["name"]) for d in complete["outputs"]] == [("iceberg://citylake", "raw.olsrc__items")]
