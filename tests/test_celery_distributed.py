"""A distributed run, for real (issue 12 item 3): Airflow 3.3 with the CeleryExecutor started natively, as
docker-compose starts it — api-server, scheduler, dag-processor and two Celery workers (concurrency 1, each
with its own ``hostname_callable`` name) — against PostgreSQL (metadata DB, Celery results, Iceberg catalog)
and Redis (broker), the warehouse on S3 (moto's server mode). Two ingest DAGs are triggered through the REST
API at once: ``ingest__bus_ridership`` (two mapped file-drop tables, two publish_std) and
``ingest__population`` (an SQL table whose publish quarantines rows). The test proves that tasks ran on both
workers, that parallel tasks appending to the shared meta tables lost nothing, and that the lake matches a
local ``dag.test()`` run of the same DAGs on the same seeded files, row for row (every table of raw, std,
quarantine and meta), and that the cluster's tables live on S3.

"Parallel" is arranged, not hoped for: the workers import a test-only ``sitecustomize`` (PUBLISH_BARRIER)
that holds the first ``publish_std`` until a second one has started. The first holds its worker's only slot,
so the second runs on the other worker, and both then write the meta tables at the same time; the test
asserts from the task instances' start and end times (REST API) that two publishes on different workers
overlapped.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from airflow_cluster import AIRFLOW, CITYLAKE, AirflowCluster, airflow_env, free_port
from conftest import require_service

from pipelines.settings import PROJECT_ROOT, TZ, Settings, load_settings

SYSTEMS = ("bus_ridership", "population")
DAG_IDS = tuple(f"ingest__{s}" for s in SYSTEMS)
LOGICAL = datetime(2026, 11, 20, 2, tzinfo=TZ)  # the seeded city's night load, as make demo runs it
SCALE = 0.02
REDIS_DB = 11  # a db number of its own, flushed before and after
PG = "host=127.0.0.1 user=postgres dbname=postgres"
WORKERS = ("worker-a", "worker-b")
NAMESPACES = ("raw", "std", "quarantine", "meta")

# The run id is the only run-specific part of what the tasks write: it is manual__<trigger time> in dag.test()
# and manual__<logical date> through the REST API. It prefixes raw `_batch_id` (sanitised: "<run>__<table>"),
# quarantine `_run_id` and meta's `run_id`/`raw_batch_id` ("<run>__<dataset>"), so those columns are compared
# with the run id replaced by a placeholder rather than left out: what follows it must still agree.
_RUN_ID = re.compile(r"^manual__[0-9T:._+\-]+?(?=__)")
RUN_ID_COLUMNS = {"_batch_id", "_run_id", "run_id", "raw_batch_id", "batch_id"}
# Left out of the comparison, each for a reason:
# - recorded_at: the wall-clock time a meta row was written (meta tables only; the lake's rows carry
#   `_extracted_at`, the data interval's end, which IS compared).
# - std_snapshot_id, and meta.runs' snapshot_before/after: Iceberg snapshot ids are random 63-bit numbers
#   drawn at each commit.
# - meta.runs' started_at, finished_at, seconds: the wall clock and duration of each stage run (its counts,
#   status, batch and detail ARE compared).
RUN_SPECIFIC = {"recorded_at", "std_snapshot_id", "snapshot_before", "snapshot_after", "started_at", "finished_at",
                "seconds"}

# Loaded by every Python process of the two workers (PYTHONPATH), including the task processes: wraps
# pipelines.quality.gate.run_quality when that module is imported so that a publish_std first waits (at most
# 90 s) until at least two publishes have started. Hand-written: Airflow has no hook to pause a task on a
# condition, and a sleep would only make an overlap likely, not certain.
PUBLISH_BARRIER = textwrap.dedent("""
    import importlib.abc, importlib.util, os, sys, time

    _DIR = os.environ.get("CITYLAKE_TEST_PUBLISH_BARRIER")

    def _barrier(dataset):
        os.makedirs(_DIR, exist_ok=True)
        open(os.path.join(_DIR, dataset), "w").close()
        deadline = time.monotonic() + 90
        while len(os.listdir(_DIR)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)

    class _Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "pipelines.quality.gate":
                return None
            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(name)
            finally:
                sys.meta_path.insert(0, self)
            run = spec.loader.exec_module

            def exec_module(module):
                run(module)
                real = module.run_quality

                def run_quality(dataset, *args, **kwargs):
                    _barrier(dataset)
                    return real(dataset, *args, **kwargs)

                module.run_quality = run_quality

            spec.loader.exec_module = exec_module
            return spec

    if _DIR:
        sys.meta_path.insert(0, _Finder())
""")

LOCAL_RUN = """
import json, sys
from datetime import datetime
from pathlib import Path
from pipelines.demo import prepare_airflow, run_ingest_dags
from pipelines.settings import PROJECT_ROOT
prepare_airflow(PROJECT_ROOT, Path(sys.argv[1]))
rows = run_ingest_dags(datetime.fromisoformat(sys.argv[2]), only=sys.argv[3].split(","))
print("ROWS " + json.dumps([{k: r[k] for k in ("system", "table", "task", "state", "run_id")} for r in rows]))
"""


def _normalise(column: str, value: Any) -> Any:
    if column in RUN_ID_COLUMNS and isinstance(value, str):
        return _RUN_ID.sub("<run>", value)
    return value


def _rows(catalog: Any, ident: str) -> list[tuple]:
    table = catalog.load_table(ident).scan().to_arrow()
    names = [n for n in table.column_names if n not in RUN_SPECIFIC]
    rows = [tuple((n, _normalise(n, r[n])) for n in names) for r in table.select(names).to_pylist()]
    return sorted(rows, key=repr)


def _tables(catalog: Any, namespaces: tuple[str, ...]) -> list[str]:
    return sorted(".".join(t) for ns in namespaces for t in catalog.list_tables(ns))


@pytest.fixture
def databases() -> Iterator[tuple[str, str]]:
    """Two fresh PostgreSQL databases (Airflow metadata + Celery results; the Iceberg catalog), dropped after."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    import psycopg

    names = (f"citylake_af_{uuid.uuid4().hex[:8]}", f"citylake_ice_{uuid.uuid4().hex[:8]}")
    with psycopg.connect(PG, autocommit=True) as conn:
        for name in names:
            conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield names
    finally:
        with psycopg.connect(PG, autocommit=True) as conn:
            for name in names:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def redis_db() -> Iterator[str]:
    require_service("Redis", "127.0.0.1", 6379)
    import redis

    client = redis.Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    client.flushdb()
    try:
        yield f"redis://127.0.0.1:6379/{REDIS_DB}"
    finally:
        client.flushdb()
        client.close()


def _cluster_env(tmp: Path, af_db: str, ice_db: str, broker: str, s3: str, data_dir: Path,
                 api_port: int, password_file: Path) -> dict[str, str]:
    metadata = f"postgresql+psycopg://postgres@127.0.0.1:5432/{af_db}"
    return {
        # --- shared by every Airflow component (what docker-compose sets once for all) ---
        **airflow_env(tmp, metadata, api_port, password_file, "CeleryExecutor"),
        "AIRFLOW__CELERY__BROKER_URL": broker,
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{metadata}",  # Celery's database backend: "db+" + SQLAlchemy URL
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "pipelines.platform.hostname.worker_hostname",
        # --- test speed: scheduled runs off (only the REST-triggered ones run) ---
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        # --- the lake: catalog in PostgreSQL, warehouse on S3 (the same variables compose sets) ---
        "CITYLAKE_DATA_DIR": str(data_dir),
        "CITYLAKE_LAKE_DIR": str(tmp / "cluster_lake"),  # only local scratch; the lake itself is on S3
        "CITYLAKE_CATALOG_URI": f"postgresql+psycopg://postgres@127.0.0.1:5432/{ice_db}",
        "CITYLAKE_WAREHOUSE": "s3://citylake-lake/warehouse",
        "CITYLAKE_S3_ENDPOINT": s3,
        "CITYLAKE_REJECTED_DIR": "s3://citylake-lake/rejected",
        "CITYLAKE_EXPORTS_DIR": "s3://citylake-lake/exports",
        "CITYLAKE_ARTIFACTS_DIR": "s3://citylake-lake/artifacts",  # GX results every worker must see
        "CITYLAKE_SHARE_MASTER_KEY": secrets.token_hex(32),  # as compose: every worker the same key
        "AWS_ACCESS_KEY_ID": os.environ["AWS_ACCESS_KEY_ID"],
        "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"],
        "AWS_DEFAULT_REGION": os.environ["AWS_DEFAULT_REGION"],
        "AWS_EC2_METADATA_DISABLED": "true",
    }


# What compose's x-airflow-common sets and the native cluster does not, each for a reason.
NOT_IN_NATIVE_RUN = {
    # the scheduler's health server listens on a fixed port (8974): the CI machine is shared
    "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK",
    # empty by default in compose as well: only alert links use it, and the native run sends no alert
    "CITYLAKE_REPORT_URL",
}


def test_the_native_cluster_sets_what_compose_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The distributed run proves the compose platform only if it runs with the same Airflow settings."""
    import yaml

    compose = yaml.safe_load((PROJECT_ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    shared = {k for k in compose["x-airflow-common"]["environment"] if k.startswith(("AIRFLOW__", "CITYLAKE_"))}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, "x")
    env = _cluster_env(Path("/tmp/x"), "af", "ice", "redis://x", "http://s3", Path("/tmp/d"), 8080, Path("/tmp/p"))
    # source connections: the native run reads the seeded SQLite files (the compose sources are servers)
    missing = sorted(k for k in shared - set(env) - NOT_IN_NATIVE_RUN if not k.startswith("CITYLAKE_CONN_"))
    assert missing == [], f"compose sets {missing}, the native Celery test does not"
    assert compose["x-airflow-common"]["environment"]["AIRFLOW__API__BASE_URL"].startswith("${AIRFLOW_BASE_URL")
    assert env["AIRFLOW__API__BASE_URL"].endswith("/")


def _local_run(tmp: Path, data_dir: Path) -> subprocess.Popen:
    """The same DAGs through dag.test() on a local lake (SQLite catalog, local warehouse), in a process of its
    own: its Airflow settings (SQLite, LocalExecutor) must not leak into this process's imported Airflow.
    Its output goes to a file (a pipe nobody reads until the end would block it at 64 KB)."""
    from pipelines.demo import airflow_env

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "CITYLAKE_"))}
    env.update(airflow_env(PROJECT_ROOT, tmp / "local_airflow"))
    env.update({"CITYLAKE_ROOT": str(PROJECT_ROOT), "CITYLAKE_DATA_DIR": str(data_dir),
                "CITYLAKE_LAKE_DIR": str(tmp / "local_lake"), "CITYLAKE_RETRY_DELAY_SECONDS": "0.2"})
    with (tmp / "local_run.log").open("wb") as out:
        return subprocess.Popen([sys.executable, "-c", LOCAL_RUN, str(tmp / "local_airflow"), LOGICAL.isoformat(),
                                 ",".join(SYSTEMS)], env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)


def test_two_celery_workers_on_s3_and_postgres_land_what_a_local_run_lands(
        tmp_path: Path, databases: tuple[str, str], redis_db: str, moto_endpoint: str, aws_env: None) -> None:
    import boto3

    from pipelines.seed import seed_city

    started = time.monotonic()
    af_db, ice_db = databases
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket="citylake-lake")
    data_dir = tmp_path / "data"
    seed_city(data_dir, scale=SCALE)  # one seeded city read by both runs (the drops are only read)
    local = _local_run(tmp_path, data_dir)

    api_port = free_port()
    password = secrets.token_urlsafe(12)
    password_file = tmp_path / "passwords.json"
    # SimpleAuthManager reads {"user": "password"} from this file (opened "r+") and generates a password
    # only for a user missing from it
    password_file.write_text(json.dumps({"admin": password}), encoding="utf-8")
    (tmp_path / "logs").mkdir()
    hooks = tmp_path / "worker_hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(PUBLISH_BARRIER, encoding="utf-8")
    cluster = AirflowCluster(env=_cluster_env(tmp_path, af_db, ice_db, redis_db, moto_endpoint, data_dir, api_port,
                                              password_file),
                             logs=tmp_path / "logs", api_port=api_port, user="admin", password=password)
    try:
        # exactly what the compose init service runs
        cluster.run("init", f"{AIRFLOW} db migrate && {CITYLAKE} platform init")
        init_log = (tmp_path / "logs" / "init.log").read_text(encoding="utf-8")
        assert "pools: 8 created or updated" in init_log and "warehouse: s3://citylake-lake/warehouse writable" in init_log
        cluster.start("api-server", [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(api_port),
                                     "--workers", "1"])
        cluster.start("scheduler", [AIRFLOW, "scheduler"])
        cluster.start("dag-processor", [AIRFLOW, "dag-processor"])
        for name in WORKERS:
            cluster.start(name, [AIRFLOW, "celery", "worker", "--concurrency", "1", "--celery-hostname", f"{name}@%h",
                                 "--pid", str(tmp_path / "logs" / f"{name}.pid")],
                          extra_env={"CITYLAKE_HOSTNAME": name,
                                     "PYTHONPATH": str(hooks),
                                     "CITYLAKE_TEST_PUBLISH_BARRIER": str(tmp_path / "publish_barrier"),
                                     # two workers on one machine: each its own log server port
                                     "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())})
        _distributed_run(cluster, started)
        # the barrier ran in the workers' task processes (else the overlap above would be luck)
        assert len(list((tmp_path / "publish_barrier").iterdir())) == 3, "the publish barrier hook did not run"
        local_rows = _local_result(local, tmp_path / "local_run.log")
        _compare_lakes(tmp_path, ice_db, moto_endpoint, local_rows)
    except BaseException:
        print(cluster.tails())
        raise
    finally:
        cluster.stop()
        if local.poll() is None:
            os.killpg(local.pid, 9)
            local.wait()
    print(f"distributed run test: {time.monotonic() - started:.0f} s")


def _distributed_run(cluster: AirflowCluster, started: float) -> None:
    cluster.wait_for("the api-server", lambda: cluster.api("GET", "/monitor/health").status_code == 200, 90)
    for dag_id in DAG_IDS:
        cluster.wait_for(f"{dag_id} to be parsed", lambda d=dag_id: cluster.api("GET", f"/dags/{d}").status_code == 200,
                         120)
    # workers registered with the broker before the runs start, so the first tasks can go to either
    cluster.wait_for("both workers", lambda: all(" ready." in p.log.read_text(errors="replace")
                                                 for p in cluster.processes if p.name in WORKERS), 90)
    run_ids = {}
    for dag_id in DAG_IDS:
        answer = cluster.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False})
        assert answer.status_code == 200, answer.text
    for dag_id in DAG_IDS:
        answer = cluster.api("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": LOGICAL.isoformat()})
        assert answer.status_code == 200, answer.text
        run_ids[dag_id] = answer.json()["dag_run_id"]
    print(f"triggered after {time.monotonic() - started:.0f} s: {run_ids}")

    def finished() -> dict[str, str] | None:
        states = {d: cluster.api("GET", f"/dags/{d}/dagRuns/{r}").json()["state"] for d, r in run_ids.items()}
        return states if all(s in ("success", "failed") for s in states.values()) else None

    states = cluster.wait_for("the runs to finish", finished, 240, every=2)
    print(f"finished after {time.monotonic() - started:.0f} s: {states}")
    instances = []
    for dag_id, run_id in run_ids.items():
        answer = cluster.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        instances += [{"dag": dag_id, **ti} for ti in answer.json()["task_instances"]]
    shown = [(t["dag"], t["task_id"], t["map_index"], t["state"], t["hostname"], t["try_number"]) for t in instances]
    print("\n".join(map(str, shown)))
    # the seeded city plants no defect that holds these batches: every task succeeds, first try
    assert states == dict.fromkeys(DAG_IDS, "success"), shown
    assert sorted((t["dag"], t["task_id"], t["map_index"]) for t in instances) == sorted(
        [("ingest__bus_ridership", "plan_run", -1), ("ingest__population", "plan_run", -1),
         ("ingest__bus_ridership", "load_table", 0), ("ingest__bus_ridership", "load_table", 1),
         ("ingest__bus_ridership", "publish_std", 0), ("ingest__bus_ridership", "publish_std", 1),
         ("ingest__population", "load_table", 0), ("ingest__population", "publish_std", 0)])
    assert all(t["state"] == "success" and t["try_number"] == 1 for t in instances), shown
    # every task instance names the worker that ran it, through hostname_callable; both workers took tasks
    assert {t["hostname"] for t in instances} == set(WORKERS), shown
    # the publishes (each appends to meta.batches, meta.quality_results, meta.standardization_log) ran in
    # parallel: two of them, on different workers, were running at the same time
    publishes = [(datetime.fromisoformat(t["start_date"]), datetime.fromisoformat(t["end_date"]), t["hostname"],
                  t["dag"], t["map_index"]) for t in instances if t["task_id"] == "publish_std"]
    overlapping = [(a, b) for i, a in enumerate(publishes) for b in publishes[i + 1:]
                   if a[2] != b[2] and a[0] < b[1] and b[0] < a[1]]
    print(f"overlapping publishes on different workers: {overlapping}")
    assert overlapping, f"no two publish_std overlapped on different workers: {publishes}"


def _local_result(local: subprocess.Popen, log: Path) -> list[dict[str, Any]]:
    local.wait(timeout=240)
    out = log.read_text(encoding="utf-8", errors="replace")
    line = next((x for x in reversed(out.splitlines()) if x.startswith("ROWS ")), None)
    assert local.returncode == 0 and line, f"local dag.test() run failed:\n{out[-4000:]}"
    rows = json.loads(line.removeprefix("ROWS "))
    assert rows and all(r["state"].endswith("success") for r in rows), rows
    return rows


def _compare_lakes(tmp: Path, ice_db: str, s3: str, local_rows: list[dict[str, Any]]) -> None:
    from pipelines.lake.catalog import get_catalog

    base = load_settings()
    local_settings = replace(base, lake_dir=tmp / "local_lake", catalog_uri=f"sqlite:///{tmp / 'local_lake' / 'catalog.db'}",
                             warehouse=f"file://{tmp / 'local_lake' / 'warehouse'}", s3_endpoint=None)
    cluster_settings: Settings = replace(base, lake_dir=tmp / "cluster_lake",
                                         catalog_uri=f"postgresql+psycopg://postgres@127.0.0.1:5432/{ice_db}",
                                         warehouse="s3://citylake-lake/warehouse", s3_endpoint=s3)
    local, remote = get_catalog(local_settings), get_catalog(cluster_settings)

    # the lake, row for row: every raw, std, quarantine and meta table
    tables = _tables(local, NAMESPACES)
    assert tables == _tables(remote, NAMESPACES)
    assert {"raw.bus_ridership__ridership", "raw.bus_ridership__route", "raw.population__person", "std.bus_ridership",
            "std.bus_route", "std.person", "quarantine.person", "meta.batches", "meta.quality_results",
            "meta.standardization_log"} <= set(tables), tables
    for ident in tables:
        # on the S3 warehouse, through the PostgreSQL catalog: metadata and table location both
        table = remote.load_table(ident)
        assert table.location().startswith("s3://citylake-lake/warehouse/"), (ident, table.location())
        assert table.metadata_location.startswith("s3://citylake-lake/warehouse/"), (ident, table.metadata_location)
        mine, theirs = _rows(local, ident), _rows(remote, ident)
        assert mine or ident.startswith("meta."), ident
        print(f"{ident}: {len(mine)} rows local, {len(theirs)} distributed")
        assert mine == theirs, f"{ident}: {len(mine)} local rows, {len(theirs)} distributed; first differing: " \
                               f"{next((a, b) for a, b in zip(mine, theirs, strict=False) if a != b) if len(mine) == len(theirs) else ''}"

    # parallel publish tasks on two workers appended to the shared meta tables: nothing lost, nothing doubled
    batches = remote.load_table("meta.batches").scan().to_arrow().to_pylist()
    datasets = {"bus_ridership", "bus_route", "person"}
    assert sorted(b["dataset"] for b in batches) == sorted(datasets), batches  # one event per batch
    raw_rows = {"bus_ridership": "raw.bus_ridership__ridership", "bus_route": "raw.bus_ridership__route",
                "person": "raw.population__person"}
    for b in batches:
        assert b["status"] == "published" and b["extracted"] == len(_rows(remote, raw_rows[b["dataset"]])), b
        assert b["published"] + b["quarantined"] == b["extracted"], b
    assert sum(b["quarantined"] for b in batches) == len(_rows(remote, "quarantine.person")) > 0
    counts = {d: sum(r["dataset"] == d for r in remote.load_table("meta.quality_results").scan().to_arrow().to_pylist())
              for d in datasets}
    assert all(counts.values()), counts  # every parallel publish kept its rule results
    assert len(local_rows) == 8  # 6 loads and publishes, and each DAG's plan_run

    # each publish, whichever worker ran it, put its GX validation result on the one shared artifacts root
    import boto3

    listed = boto3.client("s3", endpoint_url=s3).list_objects_v2(Bucket="citylake-lake",
                                                                  Prefix="artifacts/gx/validations/")
    keys = [o["Key"] for o in listed.get("Contents", [])]
    assert sorted(k.split("/")[3] for k in keys) == sorted(datasets), keys


def test_platform_init_names_the_failing_step_without_the_password(lake_settings: Settings,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.platform import init

    assert init.mask_urls("db+postgresql+psycopg://airflow:s3cr3t@pg:5432/a and redis://:pw@redis:6379/0") == \
        "db+postgresql+psycopg://airflow:***@pg:5432/a and redis://:***@redis:6379/0"
    lines: list[str] = []
    # the catalog and warehouse steps on the local lake (the pools step needs a migrated Airflow DB: the test above)
    monkeypatch.setattr(init, "STEPS", tuple(s for s in init.STEPS if s[0] != "pools"))
    assert init.run_init(lake_settings, echo=lines.append) == lines
    assert lines[0] == "secrets: no .env.example placeholder left"
    assert lines[1].startswith("catalog: namespaces curated, meta, quarantine, raw, std at sqlite:///")
    assert lines[2].startswith("warehouse: file://") and lines[2].endswith("writable (probe written, read back, deleted)")
    assert init.run_init(lake_settings, echo=lines.append)  # idempotent
    unreachable = replace(lake_settings, catalog_uri="postgresql+psycopg://citylake:s3cr3t@127.0.0.1:1/iceberg")
    with pytest.raises(init.InitError) as caught:
        init.run_init(unreachable, echo=lines.append)
    message = str(caught.value)
    assert message.startswith("catalog: OperationalError") and "s3cr3t" not in message and "\n" not in message


def test_platform_init_refuses_the_env_example_placeholders(lake_settings: Settings,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`.env` copied from `.env.example` and not filled in: compose's ${VAR:?} passes (the variable is set), so
    init stops the platform, naming every placeholder left (and never printing a value)."""
    from pipelines.platform import init

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "change-me")
    monkeypatch.setenv("CITYLAKE_CATALOG_URI", "postgresql+psycopg://citylake:change-me@postgres:5432/iceberg")
    monkeypatch.setenv("AIRFLOW_ADMIN_PASSWORD", "change-me")
    with pytest.raises(init.InitError) as caught:
        init.run_init(lake_settings, echo=lambda _: None)
    assert str(caught.value).startswith(
        "secrets: AIRFLOW_ADMIN_PASSWORD, AWS_SECRET_ACCESS_KEY, CITYLAKE_CATALOG_URI still hold the .env.example")
    assert "postgres:5432" not in str(caught.value)
