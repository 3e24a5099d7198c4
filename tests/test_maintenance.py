"""Lake maintenance: snapshot expiry keeps what readers need, orphan files go only when old and unreferenced
(local and S3), compaction keeps rows and ``_batch_id`` bounds, sharing's ``std_changes`` reads through a
compaction, time travel, and maintenance running during loads loses nothing."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pyarrow as pa
import pytest
from conftest import TEST_DEPARTMENT
from typer.testing import CliRunner

from pipelines.lake.catalog import get_catalog
from pipelines.lake.changes import std_changes
from pipelines.lake.maintenance import (
    MAINTENANCE,
    _Context,
    compact,
    delete_orphans,
    expire_snapshots,
    live_files,
    maintain,
    orphan_window,
)
from pipelines.lake.meta import append_events
from pipelines.lake.raw import BATCH_ID, PUBLISHED_BATCHES, data_snapshot, summary_value
from pipelines.lake.tables import append
from pipelines.quality.gate import STD_PROPS
from pipelines.settings import TZ, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
LATER = datetime.now(UTC) + timedelta(days=30)
"""A maintenance run a month from now: every snapshot the test writes is past a 7-day retention."""
WEEK = timedelta(days=7)
# real batch ids share long prefixes: beyond 16 characters Iceberg's default (truncated) bounds overlap
BATCH = "population__person__20261120T0{}0000"


def _ctx(status: dict[tuple[str, str], str] | None = None, readers: dict[str, list[str]] | None = None,
         pins: dict[str, set[int]] | None = None) -> _Context:
    return _Context(status or {}, readers or {}, pins or {})


def _snapshot_ids(settings: Settings, name: str) -> list[int]:
    table = get_catalog(settings).load_table(name)
    return [s.snapshot_id for s in sorted(table.metadata.snapshots, key=lambda s: s.timestamp_ms)]


def _std(settings: Settings, n: int = 5, name: str = "std.ds") -> list[int]:
    """std.ds published n times (batch i by run ri, two rows each); returns the snapshot ids oldest first."""
    catalog = get_catalog(settings)
    for i in range(n):
        append(catalog, name, pa.table({"k": [f"k{i}a", f"k{i}b"], "v": [i, i], "_batch_id": [BATCH.format(i)] * 2}),
               props={PUBLISHED_BATCHES: json.dumps([BATCH.format(i)]), "citylake.run-id": f"r{i}"},
               properties=STD_PROPS)
    return _snapshot_ids(settings, name)


def test_expiry_keeps_held_and_unpublished_raw_batches_and_drops_the_rest(lake_settings: Settings) -> None:
    catalog = get_catalog(lake_settings)
    for i in range(4):
        append(catalog, "raw.sys__t", pa.table({"id": [i], "_batch_id": [f"b{i}"]}), props={BATCH_ID: f"b{i}"})
    snaps = _snapshot_ids(lake_settings, "raw.sys__t")
    ctx = _ctx({("ds", "b0"): "published", ("ds", "b1"): "held", ("ds", "b3"): "published"},
               {"raw.sys__t": ["ds"]})  # b2: loaded, not yet validated
    expired, kept = expire_snapshots(catalog, "raw.sys__t", ctx, retention=WEEK, now=LATER, recent=timedelta(0))
    assert expired == 1 and kept == {"batch not yet published": 2, "current": 1}
    assert _snapshot_ids(lake_settings, "raw.sys__t") == snaps[1:]
    # the watermark/state lives in table properties: expiry leaves rows and properties as they were
    table = catalog.load_table("raw.sys__t")
    assert sorted(table.scan().to_arrow()["id"].to_pylist()) == [0, 1, 2, 3]
    # without the contracts (config unreadable) raw is not expired at all; other layers still are
    assert expire_snapshots(catalog, "raw.sys__t", _ctx(), retention=WEEK, now=LATER,
                            recent=timedelta(0), dry_run=True)[0] == 2  # no reader: both expirable
    # within the retention nothing goes
    assert expire_snapshots(catalog, "raw.sys__t", _ctx(), retention=timedelta(days=60), now=LATER,
                            recent=timedelta(0))[0] == 0


def test_expiry_keeps_std_snapshots_sharing_and_the_gate_read(lake_settings: Settings) -> None:
    catalog = get_catalog(lake_settings)
    s = _std(lake_settings, 6)
    recorded = {("ds", BATCH.format(i)): "published" for i in range(6) if i != 1}  # batch 1: publish unrecorded
    ctx = _ctx(recorded, pins={"std.ds": {s[3]}})  # a grant last delivered at s3
    assert compact(catalog, "std.ds", min_files=2) == (6, 1)
    expired, kept = expire_snapshots(catalog, "std.ds", ctx, retention=WEEK, now=LATER, recent=timedelta(0))
    left = _snapshot_ids(lake_settings, "std.ds")
    assert s[1] in left and all(x in left for x in s[3:])  # unrecorded publish; the delivery's chain to now
    assert s[0] not in left and s[2] not in left and expired == 2
    assert kept == {"current": 1, "latest data": 1, "sharing delivery": 2, "unrecorded publish": 1}
    table = catalog.load_table("std.ds")
    assert data_snapshot(table).snapshot_id == s[5]  # the latest data snapshot stays for 最近更新 and curated
    # sharing from the pinned delivery: nothing new (the compaction is no batch), incremental, not full
    append_events(catalog, [{"dataset": "ds", "raw_batch_id": BATCH.format(i), "run_id": f"r{i}", "status": "published"}
                            for i in range(6)])
    changes = std_changes(catalog, "ds", since=s[3])
    assert not changes.full and changes.batches == [BATCH.format(4), BATCH.format(5)]
    assert changes.snapshot_id == table.metadata.current_snapshot_id


def test_std_changes_across_a_compaction(lake_settings: Settings) -> None:
    catalog = get_catalog(lake_settings)
    s = _std(lake_settings, 4)
    append_events(catalog, [{"dataset": "ds", "raw_batch_id": BATCH.format(i), "run_id": f"r{i}", "status": "published"}
                            for i in range(6)])
    compact(catalog, "std.ds", min_files=2)
    table = catalog.load_table("std.ds")
    comp = table.current_snapshot()
    assert summary_value(comp, MAINTENANCE) == "compact" and summary_value(comp, PUBLISHED_BATCHES) is None
    before = std_changes(catalog, "ds", since=s[1])
    assert not before.full and before.batches == [BATCH.format(2), BATCH.format(3)]
    assert std_changes(catalog, "ds", since=s[3]).batches == []  # the compaction carries no batch
    # a publish after the compaction: a delivery at the compaction snapshot gets only the new batch
    _std_more = append(catalog, "std.ds", pa.table({"k": ["k4a"], "v": [4], "_batch_id": [BATCH.format(4)]}),
                       props={PUBLISHED_BATCHES: json.dumps([BATCH.format(4)]), "citylake.run-id": "r4"})
    assert _std_more is None
    assert std_changes(catalog, "ds", since=comp.snapshot_id).batches == [BATCH.format(4)]
    assert std_changes(catalog, "ds", since=s[0]).batches == [BATCH.format(i) for i in (1, 2, 3, 4)]
    from pipelines.lake.raw import last_publish

    table = catalog.load_table("std.ds")
    assert summary_value(last_publish(table), "citylake.run-id") == "r4"


def test_compaction_keeps_rows_order_properties_and_full_batch_bounds(lake_settings: Settings) -> None:
    catalog = get_catalog(lake_settings)
    _std(lake_settings, 5)
    table = catalog.load_table("std.ds")
    before = table.scan().to_arrow().sort_by([("k", "ascending")])
    props = dict(table.properties)
    assert len(list(table.scan().plan_files())) == 5
    assert compact(catalog, "std.ds", min_files=2, dry_run=True) == (5, 1)
    assert len(list(catalog.load_table("std.ds").scan().plan_files())) == 5  # dry run: nothing written
    assert compact(catalog, "std.ds", min_files=2) == (5, 1)
    table = catalog.load_table("std.ds")
    tasks = list(table.scan().plan_files())
    assert len(tasks) == 1 and table.scan().to_arrow().sort_by([("k", "ascending")]).equals(before)
    assert table.properties == props
    field_id = table.schema().find_field("_batch_id").field_id
    f = tasks[0].file
    assert f.lower_bounds[field_id].decode() == BATCH.format(0) and f.upper_bounds[field_id].decode() == BATCH.format(4)
    snap = table.current_snapshot()
    assert snap.summary["added-records"] == snap.summary["deleted-records"] == "10"
    assert compact(catalog, "std.ds", min_files=2) == (0, 0)  # one file: nothing to do


def test_orphans_old_go_young_stay_live_untouched(lake_settings: Settings) -> None:
    catalog = get_catalog(lake_settings)
    _std(lake_settings, 3, name="meta.log")
    table = catalog.load_table("meta.log")
    data = Path(table.location().removeprefix("file://")) / "data"
    old, young = data / "crashed-load-old.parquet", data / "in-flight-load.parquet"
    for f in (old, young):
        f.write_bytes(b"PAR1")
    hours_ago = time.time() - 3 * 3600
    os.utime(old, (hours_ago, hours_ago))
    live = live_files(table)
    deleted, _, left = delete_orphans(table, older_than=timedelta(hours=1), now=datetime.now(UTC))
    assert (deleted, left) == (1, 1) and not old.exists() and young.exists()
    assert all(Path(p).exists() for p in live)
    assert catalog.load_table("meta.log").scan().to_arrow().num_rows == 6
    # expired snapshots' files go once they are old enough; every file the table still reads stays
    compact(catalog, "meta.log", min_files=2)
    expire_snapshots(catalog, "meta.log", _ctx(), retention=timedelta(0), now=LATER, recent=timedelta(0))
    table = catalog.load_table("meta.log")
    deleted, _, _ = delete_orphans(table, older_than=timedelta(0), now=LATER)
    assert deleted >= 3 and young.exists() is False  # the in-flight file is old by then too
    assert table.scan().to_arrow().num_rows == 6 and all(Path(p).exists() for p in live_files(table))


def test_orphans_on_s3(tmp_path: Path, moto_endpoint: str, aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    bucket = f"maint-{tmp_path.name.lower().replace('_', '-')[-20:]}"
    s3.create_bucket(Bucket=bucket)
    monkeypatch.setenv("CITYLAKE_LAKE_DIR", str(tmp_path / "lake"))
    monkeypatch.setenv("CITYLAKE_WAREHOUSE", f"s3://{bucket}/warehouse")
    monkeypatch.setenv("CITYLAKE_S3_ENDPOINT", moto_endpoint)
    settings = load_settings()
    catalog = get_catalog(settings)
    _std(settings, 3, name="meta.log")
    table = catalog.load_table("meta.log")
    prefix = table.location().removeprefix(f"s3://{bucket}/")
    s3.put_object(Bucket=bucket, Key=f"{prefix}/data/crashed-load.parquet", Body=b"PAR1")
    # just written: younger than the window, kept
    assert delete_orphans(table, older_than=timedelta(hours=1), now=datetime.now(UTC)) == (0, 0, 1)
    deleted, size, _ = delete_orphans(table, older_than=timedelta(hours=1), now=datetime.now(UTC) + timedelta(hours=2))
    assert (deleted, size) == (1, 4)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]}
    assert f"{prefix}/data/crashed-load.parquet" not in keys
    assert {p.removeprefix(f"{bucket}/") for p in live_files(table)} <= keys
    assert catalog.load_table("meta.log").scan().to_arrow().num_rows == 6


def test_history_and_time_travel(lake_settings: Settings) -> None:
    from pipelines.cli import app

    catalog = get_catalog(lake_settings)
    s = _std(lake_settings, 3)
    compact(catalog, "std.ds", min_files=2)
    runner = CliRunner()
    res = runner.invoke(app, ["lake", "history", "std.ds", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)
    assert [r["snapshot_id"] for r in rows][:3] == s and rows[-1]["maintenance"] == "compact" and rows[-1]["current"]
    assert rows[0]["batches"] == [BATCH.format(0)] and rows[0]["added_rows"] == 2
    assert rows[0]["committed_at"].endswith("+08:00")
    res = runner.invoke(app, ["lake", "show", "std.ds", "--as-of", str(s[0]), "--unmasked"])
    assert res.exit_code == 0 and "k0a" in res.stdout and "k1a" not in res.stdout
    later = datetime.now(TZ) + timedelta(minutes=1)
    res = runner.invoke(app, ["lake", "show", "std.ds", "--as-of", later.isoformat(), "--unmasked"])
    assert res.exit_code == 0 and "k2b" in res.stdout
    res = runner.invoke(app, ["lake", "show", "std.ds", "--as-of", "2020-01-01"])
    assert res.exit_code == 1 and "std.ds: no snapshot kept at or before 2020-01-01" in res.output
    expire_snapshots(catalog, "std.ds", _ctx({("ds", BATCH.format(i)): "published" for i in range(3)}),
                     retention=timedelta(0), now=LATER, recent=timedelta(0))
    res = runner.invoke(app, ["lake", "show", "std.ds", "--as-of", str(s[0])])
    assert res.exit_code == 1 and f"std.ds: snapshot {s[0]} is not in its history" in res.output
    res = runner.invoke(app, ["lake", "show", "std.ds", "--as-of", rows[0]["committed_at"]])
    assert res.exit_code == 1 and "std.ds: " in res.output and "expired by lake maintenance" in res.output
    res = runner.invoke(app, ["lake", "maintain", "--dry-run", "std.ds"])
    assert res.exit_code == 0 and "dry run" in res.stdout


def test_maintenance_during_loads_loses_nothing(lake_settings: Settings, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.ingest import ingest_table
    from pipelines.registry import SourceSystem
    from pipelines.settings import PROJECT_ROOT

    # the real registry: the contracts load, so raw snapshots are expired too (no contract reads raw.biz__t)
    monkeypatch.setenv("CITYLAKE_REGISTRY_DIR", str(PROJECT_ROOT / "schemas" / "sources"))
    lake_settings = load_settings()

    db = tmp_path / "src.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (id INTEGER, name TEXT, updated_at DATETIME)")
    con.commit()
    system = SourceSystem.model_validate({
        "system": "biz", "name": "企业", "department": TEST_DEPARTMENT, "connection": "src_biz",
        "default_url": f"sqlite:///{db}",
        "tables": [{"code": "t", "source": "t", "primary_key": ["id"], "cursor": "updated_at"}]})
    catalog = get_catalog(lake_settings)
    loads, appends = 8, 12
    errors: list[BaseException] = []
    done = threading.Event()

    def load() -> None:
        try:
            src = sqlite3.connect(db)
            for b in range(loads):
                src.executemany("INSERT INTO t VALUES (?, ?, ?)",
                                [(b * 100 + i, f"企业{b}-{i}", f"2026-11-{1 + b:02d} 08:00:00") for i in range(50)])
                src.commit()
                ingest_table(system, "t", settings=lake_settings, batch_id=f"b{b}",
                             extracted_at=datetime(2026, 11, 1 + b, 9, tzinfo=TZ))
            src.close()
        except BaseException as exc:  # noqa: BLE001 - surfaced by the main thread
            errors.append(exc)

    def meta_appends() -> None:
        try:
            for i in range(appends):
                append(catalog, "meta.log", pa.table({"k": [f"m{i}a", f"m{i}b"], "_batch_id": [f"m{i}"] * 2}),
                       properties=STD_PROPS)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    runs = 0
    did = {"compacted": 0, "expired": 0}

    def maintenance() -> None:
        nonlocal runs
        try:
            while not done.is_set():
                # compaction, expiry with no retention, orphan deletion with the real window (in-flight
                # files are young: a zero window here would delete a load's files before its commit)
                for r in maintain(lake_settings, ["meta.log", "raw.biz__t"], retention=timedelta(0),
                                  recent=timedelta(0), min_files=2):
                    assert r.skipped in (None, "no such table"), r.skipped
                    did["compacted"] += r.compacted_files
                    did["expired"] += r.expired
                runs += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    writers = [threading.Thread(target=load), threading.Thread(target=meta_appends)]
    keeper = threading.Thread(target=maintenance)
    for t in [*writers, keeper]:
        t.start()
    for t in writers:
        t.join(timeout=120)
    done.set()
    keeper.join(timeout=60)
    assert not errors, errors
    assert runs >= 2 and did["compacted"] and did["expired"], (runs, did)
    raw = catalog.load_table("raw.biz__t")
    assert sorted(raw.scan().to_arrow()["id"].to_pylist()) == sorted(b * 100 + i for b in range(loads) for i in range(50))
    meta = catalog.load_table("meta.log")
    assert sorted(meta.scan().to_arrow()["k"].to_pylist()) == sorted(f"m{i}{x}" for i in range(appends) for x in "ab")
    # with no writer left, a zero window is safe: every unreferenced file goes and both tables still scan whole
    maintain(lake_settings, ["meta.log", "raw.biz__t"], retention=timedelta(0), recent=timedelta(0),
             orphans_older_than=timedelta(0), now=LATER, min_files=2)
    for name, n in (("raw.biz__t", loads * 50), ("meta.log", appends * 2)):
        table = catalog.load_table(name)
        assert table.scan().to_arrow().num_rows == n
        assert all(Path(p).exists() for p in live_files(table))


def test_orphan_window_exceeds_every_task_timeout(tmp_path: Path) -> None:
    """Every task of every DAG (the DagBag, as Airflow loads it) has an execution timeout, shorter than the
    orphan window. In a fresh interpreter: importing Airflow here would fix its metadata DB for later tests."""
    script = (
        "import json, sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(ROOT / 'dags')!r})\n"
        "assert not bag.import_errors, bag.import_errors\n"
        "out = {f'{d}.{t.task_id}': (t.execution_timeout.total_seconds() if t.execution_timeout else None)\n"
        "       for d, dag in bag.dags.items() for t in dag.tasks}\n"
        "print(json.dumps(out))\n")
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "af"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{tmp_path / 'af.db'}",
           "CITYLAKE_LAKE_DIR": str(tmp_path / "lake")}
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    timeouts = json.loads(res.stdout.strip().splitlines()[-1])
    assert "maintain__lake.maintain_namespace" in timeouts
    assert all(v is not None for v in timeouts.values()), [k for k, v in timeouts.items() if v is None]
    assert max(timeouts.values()) < orphan_window().total_seconds()


def test_dag_namespaces_are_the_catalogs() -> None:
    from pipelines.lake.catalog import NAMESPACES

    text = (ROOT / "dags" / "maintain_lake.py").read_text(encoding="utf-8")
    assert f'NAMESPACES = {NAMESPACES!r}'.replace("'", '"') in text


def test_dag_parses_without_heavy_imports_and_follows_policy() -> None:
    script = (
        "import sys, time, runpy, json, airflow.sdk\n"
        "before = set(sys.modules); t = time.perf_counter(); ns = runpy.run_path('dags/maintain_lake.py')\n"
        "heavy = [m for m in ('duckdb', 'pyiceberg', 'pyarrow', 'sqlalchemy') if m in sys.modules and m not in before]\n"
        "dag = ns['maintain_lake']()\n"
        "task = dag.get_task('maintain_namespace')\n"
        "print(json.dumps({'s': time.perf_counter() - t, 'heavy': heavy, 'tags': sorted(dag.tags),\n"
        "    'owner': task.owner, 'retries': task.retries, 'cron': dag.timetable.expression,\n"
        "    'tz': str(dag.timetable.timezone), 'doc': bool(dag.doc_md)}))\n")
    res = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["heavy"] == [] and got["s"] < 1.0, got
    assert got["owner"] == "合肥市数据资源局" and got["retries"] == 3 and got["doc"]
    assert got["cron"] == "0 3 * * 0" and got["tz"] == "Asia/Shanghai"
    assert {"maintenance", "lake", "合肥市数据资源局"} <= set(got["tags"])
