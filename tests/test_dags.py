"""DAG tier: the factory loads, follows policy, parses fast, survives a bad registry file, and runs."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from conftest import TEST_DEPARTMENT, scoped_env

ROOT = Path(__file__).resolve().parent.parent

SYSTEM_YML = """\
system: {code}
name: 测试系统{code}
department: """ + TEST_DEPARTMENT + """
connection: src_{code}
default_url: sqlite:///{db}
schedule: "0 3 * * *"
tables:
  - code: person
    source: person
    primary_key: [resident_id]
    cursor: updated_at
  - code: ghost
    source: 不存在的表
    primary_key: [id]
"""


def _make_source(db: Path, rows: int = 50) -> None:
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE person (resident_id TEXT, name TEXT, updated_at DATETIME)")
    con.executemany("INSERT INTO person VALUES (?, ?, ?)",
                    [(f"p{i}", f"居民{i}", f"2026-11-0{1 + i % 5} 08:00:00") for i in range(rows)])
    con.commit()
    con.close()


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A migrated SQLite Airflow metadata DB and a registry with one good and one broken system."""
    base = tmp_path_factory.mktemp("af")
    reg = base / "registry"
    reg.mkdir()
    _make_source(base / "alpha.db")
    (reg / "alpha.yml").write_text(SYSTEM_YML.format(code="alpha", db=base / "alpha.db"), encoding="utf-8")
    (reg / "broken.yml").write_text("system: broken\nname: 坏\ndepartment: " + TEST_DEPARTMENT + "\nconnection: c\ntables:\n  - code: Bad__Code\n"
                                    "    source: t\n    primary_key: [id]\n", encoding="utf-8")
    env = {
        "AIRFLOW_HOME": str(base / "home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{base / 'home' / 'airflow.db'}",
        "CITYLAKE_REGISTRY_DIR": str(reg),
        "CITYLAKE_LAKE_DIR": str(base / "lake"),
        "CITYLAKE_RETRY_DELAY_SECONDS": "0.2",
    }
    with scoped_env(env):
        (base / "home").mkdir()
        subprocess.run([str(Path(sys.executable).with_name("airflow")), "db", "migrate"], check=True,
                       capture_output=True, env=os.environ.copy())
        yield base


def _dagbag():  # noqa: ANN202
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(ROOT / "dags"))


def test_factory_loads_every_system_and_isolates_a_bad_registry_file(airflow_home: Path) -> None:
    bag = _dagbag()
    assert bag.import_errors == {}
    assert {"ingest__alpha", "ingest__broken"} <= set(bag.dag_ids)
    broken = bag.get_dag("ingest__broken")
    assert "config-error" in broken.tags
    assert "broken.yml:6" in broken.doc_md and "Bad__Code" in broken.doc_md


def test_policy_retries_backoff_owner_tags_doc(airflow_home: Path) -> None:
    dag = _dagbag().get_dag("ingest__alpha")
    assert dag.doc_md and "测试系统alpha" in dag.doc_md
    assert {"ingest", "alpha", "合肥市数据资源局"} <= set(dag.tags)  # the department's name, not its code
    assert "合肥市数据资源局 (`11340100003009991Q`)" in dag.doc_md
    assert dag.timetable.expression == "0 3 * * *" and str(dag.timetable.timezone) == "Asia/Shanghai"
    for t in dag.tasks:
        assert t.retries == 3 and t.retry_exponential_backoff and t.owner == "合肥市数据资源局"
        assert t.on_failure_callback and t.execution_timeout
        if t.task_id != "plan_run":
            assert t.pool == "source__alpha"
            assert t.pool_slots == 2  # max_connections (2) is the system's total: a load's two ranges take both
    assert dag.get_task("load_table").upstream_task_ids == {"plan_run"}
    assert set(dag.params) == {"since", "until", "full_refresh"}


def test_every_dag_shows_its_department_as_owner_with_timeout_and_failure_callback(airflow_home: Path) -> None:
    """Airflow 3.3's DAG list shows DagModel.owners, computed from the SERIALIZED DAG's unmapped tasks only
    (``LazyDeserializedDAG.owner``): a DAG of mapped tasks alone showed the default owner, ``airflow``."""
    from airflow.serialization.serialized_objects import DagSerialization, LazyDeserializedDAG

    from pipelines.dag_defaults import on_task_failure
    from pipelines.departments import load_departments

    names = {d.name for d in load_departments().values()}
    bag = _dagbag()
    assert bag.import_errors == {}
    for dag in bag.dags.values():
        owner = LazyDeserializedDAG(data=DagSerialization.to_dict(dag)).owner
        if dag.dag_id != "ingest__broken":
            assert owner in names | {"合肥市数据资源局"}, (dag.dag_id, owner)
        for t in dag.tasks:
            assert t.execution_timeout is not None, (dag.dag_id, t.task_id)
            callbacks = t.on_failure_callback if isinstance(t.on_failure_callback, list) else [t.on_failure_callback]
            assert on_task_failure in callbacks, (dag.dag_id, t.task_id)


def test_parse_time_for_fifty_systems(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = tmp_path / "reg"
    reg.mkdir()
    for i in range(50):
        code = f"sys{i:02d}"
        (reg / f"{code}.yml").write_text(SYSTEM_YML.format(code=code, db=tmp_path / "x.db"), encoding="utf-8")
    script = (
        "import time, runpy, airflow.sdk, pydantic, yaml\n"
        "t = time.perf_counter(); g = runpy.run_path('dags/ingest_factory.py')\n"
        "n = sum(1 for k in g if k.startswith('ingest__'))\n"
        "print(n, time.perf_counter() - t)\n"
    )
    env = {**os.environ, "CITYLAKE_REGISTRY_DIR": str(reg)}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    n, seconds = out.stdout.split()
    assert int(n) == 50
    assert float(seconds) < 1.0, f"parsing 50 systems took {seconds}s"


def test_dag_run_lands_good_table_fails_missing_one_and_emits_only_its_asset(
        airflow_home: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from airflow.models.asset import AssetEvent
    from airflow.models.pool import Pool
    from airflow.utils.session import create_session

    import pipelines.alerts
    from pipelines.lake.inspect import list_tables
    from pipelines.settings import TZ

    Pool.create_or_update_pool("source__alpha", 2, "test", include_deferred=False)
    # the failure callback of the task that failed for good (the alert itself: test_alerts)
    failed: list[tuple[str, int, str]] = []
    monkeypatch.setattr(pipelines.alerts, "alert_task_failed", lambda context, settings=None: failed.append(
        (context["ti"].task_id, context["ti"].map_index, type(context["exception"]).__name__)) or [])
    # No stand-in registers the raw Assets: plan_run's inlets do (before, each event logged "AssetModel … not found")
    dag = _dagbag().get_dag("ingest__alpha")
    started = time.perf_counter()
    with caplog.at_level("WARNING"):
        run = dag.test(logical_date=datetime(2026, 11, 20, 3, tzinfo=TZ))
    assert time.perf_counter() - started < 120
    states = {ti.map_index: str(ti.state) for ti in run.get_task_instances() if ti.task_id == "load_table"}
    assert states[0].endswith("success")   # person
    assert states[1].endswith("failed")    # ghost: missing at the source
    assert failed == [("load_table", 1, "SourceError")], failed  # once, after the retries
    assert "not found; cannot create asset event" not in caplog.text
    lake = {r["table"]: r for r in list_tables()}
    assert lake["raw.alpha__person"]["rows"] == 50
    assert "raw.alpha__ghost" not in lake
    with create_session() as session:
        uris = {e.asset.uri for e in session.query(AssetEvent).all()}
    assert uris == {"iceberg://citylake/raw/alpha__person"}


def _ctx(run_type: str = "manual", start: datetime | None = None, end: datetime | None = None,
         run_after: datetime | None = None, **params: object) -> dict:
    from types import SimpleNamespace

    from pipelines.settings import TZ

    run_after = run_after or datetime(2026, 11, 20, 9, tzinfo=TZ)
    dag_run = SimpleNamespace(run_type=run_type, run_after=run_after, data_interval_start=start, data_interval_end=end)
    ctx: dict = {"dag_run": dag_run, "params": {"since": None, "until": None, "full_refresh": False, **params}}
    if end is not None:
        ctx.update(data_interval_start=start, data_interval_end=end)
    return ctx


def test_ingest_run_from_run_type_interval_and_params() -> None:
    from pipelines.dag_defaults import RunParamsError, ingest_run
    from pipelines.settings import TZ

    a, b = datetime(2026, 11, 19, 3, tzinfo=TZ), datetime(2026, 11, 20, 3, tzinfo=TZ)
    # scheduled and backfill runs: as before
    run = ingest_run(_ctx("scheduled", a, b))
    assert (run.kind, run.mode, run.since, run.until, run.end, run.deletion_check) == \
        ("scheduled", "incremental", None, None, b, True)
    run = ingest_run(_ctx("backfill", a, b))
    assert (run.kind, run.mode, run.since, run.until, run.end, run.deletion_check) == ("backfill", "backfill", a, b, b, False)
    # a manual run without a logical date has no data interval: incremental, stamped when triggered
    run = ingest_run(_ctx("manual"))
    assert (run.kind, run.mode, run.end, run.deletion_check) == ("manual", "incremental", datetime(2026, 11, 20, 9, tzinfo=TZ), False)
    # a window (naive times are Asia/Shanghai; until defaults to the run's end)
    run = ingest_run(_ctx(since="2026-11-01", until="2026-11-02T12:00"))
    assert (run.kind, run.mode, run.since, run.until, run.end) == (
        "window", "backfill", datetime(2026, 11, 1, tzinfo=TZ), datetime(2026, 11, 2, 12, tzinfo=TZ),
        datetime(2026, 11, 2, 12, tzinfo=TZ))
    assert ingest_run(_ctx(since="2026-11-01T00:00:00+00:00")).until == datetime(2026, 11, 20, 9, tzinfo=TZ)
    run = ingest_run(_ctx("manual", full_refresh=True))
    assert (run.kind, run.mode, run.since, run.until) == ("full_refresh", "full", None, None)
    bad = {
        "full_refresh loads the whole table": dict(full_refresh=True, since="2026-11-01"),
        "needs since": dict(until="2026-11-01"),
        "must be before until": dict(since="2026-11-02", until="2026-11-01"),
        "in the future": dict(since="2026-11-01", until="2026-12-01"),
        "not an ISO date": dict(since="yesterday"),
        # Python 3.11 drops the offset of a date-only value: it would be read as Shanghai midnight, 8 h off
        "has a zone but no time": dict(since="2026-11-01Z"),
        "has a zone but no time;": dict(since="2026-11-01+00:00"),
    }
    for message, params in bad.items():
        with pytest.raises(RunParamsError, match=message) as err:
            ingest_run(_ctx(**params))
        assert "\n" not in str(err.value) and str(err.value).startswith("params: ")
    # the params' JSON schema refuses it at trigger time too; an offset after a time stays accepted
    import re

    from pipelines.dag_defaults import TIME_PATTERN

    assert not re.match(TIME_PATTERN, "2026-11-01Z") and not re.match(TIME_PATTERN, "2026-11-01+00:00")
    assert all(re.match(TIME_PATTERN, t) for t in ("2026-11-01", "2026-11-01T00:00Z", "2026-11-01 08:00+08:00"))
    assert ingest_run(_ctx(since="2026-11-01T00:00Z")).since == datetime(2026, 11, 1, 8, tzinfo=TZ)


def _report_dag():  # noqa: ANN202
    bag = _dagbag()
    assert bag.import_errors == {}
    return bag.dags["report__quality"]


def test_report_dag_policy_schedule_and_order(airflow_home: Path) -> None:
    dag = _report_dag()
    assert type(dag.timetable).__name__ == "CronTriggerTimetable"  # fires at 06:00, no data interval to wait out
    assert dag.timetable.expression == "0 6 * * *" and str(dag.timetable.timezone) == "Asia/Shanghai"
    assert {"report", "quality", "合肥市数据资源局"} <= set(dag.tags) and dag.doc_md and "06:00" in dag.doc_md
    assert {t.task_id for t in dag.tasks} == {"data_docs", "consistency", "build_report"}
    # the conflicts page is refreshed every morning, in parallel with GX Data Docs
    assert dag.get_task("build_report").upstream_task_ids == {"data_docs", "consistency"}
    assert dag.get_task("consistency").upstream_task_ids == set()
    # the governance pages do not need GX, and a failed comparison leaves the previous one (with its time)
    assert dag.get_task("build_report").trigger_rule == "all_done"
    for t in dag.tasks:
        assert t.retries == 3 and t.retry_exponential_backoff and t.owner == "合肥市数据资源局"


def test_report_dag_parses_without_heavy_imports() -> None:
    script = (
        "import sys, time, runpy, airflow.sdk\n"
        "before = set(sys.modules); t = time.perf_counter(); runpy.run_path('dags/report_quality.py')\n"
        "heavy = [m for m in ('duckdb', 'great_expectations', 'pyiceberg', 'pyarrow', 'pipelines.report.site',\n"
        "                     'pipelines.quality.docs') if m in sys.modules and m not in before]\n"
        "print(time.perf_counter() - t, ','.join(heavy) or '-')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    seconds, heavy = out.stdout.split()
    assert heavy == "-", f"report_quality.py imports {heavy} at parse time"
    assert float(seconds) < 1.0, f"parsing report_quality.py took {seconds}s"


def test_report_dag_run_builds_docs_and_site(airflow_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real run (dag.test) on an empty lake of the project's registry: every task succeeds, the site is
    written under the lake and its report day is the run's logical date in Asia/Shanghai; the consistency
    task's run id is the DAG run's, so a retry replaces its rows."""
    from pipelines.settings import TZ

    monkeypatch.setenv("CITYLAKE_REGISTRY_DIR", str(ROOT / "schemas" / "sources"))
    monkeypatch.setenv("CITYLAKE_LAKE_DIR", str(tmp_path / "lake"))
    run = _report_dag().test(logical_date=datetime(2026, 11, 20, 6, tzinfo=TZ))
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert all(s.endswith("success") for s in states.values()), states
    index = tmp_path / "lake" / "report" / "index.html"
    assert index.is_file() and "报告日 2026-11-20" in index.read_text(encoding="utf-8")
    consistency = next(ti for ti in run.get_task_instances() if ti.task_id == "consistency")
    assert consistency.xcom_pull(task_ids="consistency") == {"pairs": 0, "conflicts": 0}  # nothing in an empty lake


def _curate_dags() -> dict:
    bag = _dagbag()
    assert bag.import_errors == {}
    return {d: bag.dags[d] for d in bag.dag_ids if d.startswith("curate__")}


def test_curate_dags_one_per_domain_scheduled_on_their_outside_inputs_in_input_order(airflow_home: Path) -> None:
    import yaml

    from pipelines.dag_defaults import START

    specs = {p.stem: yaml.safe_load(p.read_text(encoding="utf-8")) for p in (ROOT / "schemas" / "curated").glob("*.yml")}
    dags = _curate_dags()
    assert set(dags) == {f"curate__{s['domain']}" for s in specs.values()}
    from pipelines.lake.assets import table_asset as ingest  # the one naming rule both DAG files import
    for dag_id, dag in dags.items():
        domain = dag_id.removeprefix("curate__")
        mine = {d for d, s in specs.items() if s["domain"] == domain}
        assert {t.task_id for t in dag.tasks} == mine
        outside = sorted({i for d in mine for i in specs[d]["inputs"]} - {f"curated.{d}" for d in mine})
        condition = dag.timetable.asset_condition
        assert type(condition).__name__ == "AssetAny"
        # the Assets publish_std emits
        assert sorted((a.name, a.uri) for a in condition.objects) == \
            sorted((ingest(i).name, ingest(i).uri) for i in outside)
        for d in mine:  # a task runs after the curated datasets of its domain it reads
            assert dag.get_task(d).upstream_task_ids == {i.partition(".")[2] for i in specs[d]["inputs"]
                                                         if i.partition(".")[2] in mine}
        assert dag.start_date == START and not dag.catchup and dag.max_active_runs == 1
        assert {"curate", domain} <= set(dag.tags) and dag.doc_md and f"curate__{domain}" in dag.doc_md
        for t in dag.tasks:
            assert t.retries == 3 and t.retry_exponential_backoff and t.owner in dag.tags
            assert [o.name for o in t.outlets] == [f"curated__{domain}"]  # an alias: emitted only on publish
    assert dags["curate__environment"].get_task("air_quality_district_daily").upstream_task_ids == {"air_quality_daily"}
    assert "合肥市生态环境局" in dags["curate__environment"].tags


def test_publish_std_emits_std_assets_through_an_alias(airflow_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYLAKE_REGISTRY_DIR", str(ROOT / "schemas" / "sources"))
    publish = _dagbag().get_dag("ingest__enterprise").get_task("publish_std")
    assert [(type(o).__name__, o.name) for o in publish.outlets] == [("AssetAlias", "std__enterprise")]


def test_publish_std_run_emits_the_std_asset_only_when_it_published(
        airflow_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real run of ingest__poi (its loads skipped, the gate's verdict stubbed): a publish emits std.poi's Asset
    through the std__poi alias, a nothing_new run emits nothing."""
    from airflow.models.asset import AssetActive, AssetEvent, AssetModel
    from airflow.sdk.exceptions import AirflowSkipException
    from airflow.utils.session import create_session

    import pipelines.ingest
    import pipelines.quality.gate as gate
    from pipelines.settings import TZ

    monkeypatch.setenv("CITYLAKE_REGISTRY_DIR", str(ROOT / "schemas" / "sources"))
    verdicts = iter(["published", "nothing_new"])

    def run_quality(dataset: str, **kwargs: object) -> gate.GateResult:
        status = next(verdicts)
        return gate.GateResult(dataset, str(kwargs["run_id"]), ["b1"] if status == "published" else [], status,
                               published=3 if status == "published" else 0, std_snapshot=42)

    def no_load(*args: object, **kwargs: object) -> None:
        raise AirflowSkipException("no source in this test")

    monkeypatch.setattr(gate, "run_quality", run_quality)
    monkeypatch.setattr(pipelines.ingest, "ingest_table", no_load)
    name, uri = "std.poi", "iceberg://citylake/std/poi"
    with create_session() as session:  # curate__geo, scheduled on it, registers it; stand in for it here
        if not session.query(AssetModel).filter(AssetModel.uri == uri).count():
            session.add(AssetModel(name=name, uri=uri))
            session.add(AssetActive(name=name, uri=uri))
    dag = _dagbag().get_dag("ingest__poi")
    for day in (10, 11):
        run = dag.test(logical_date=datetime(2026, 11, day, 3, tzinfo=TZ))
        assert [str(ti.state) for ti in run.get_task_instances() if ti.task_id == "publish_std"] == ["success"]
    with create_session() as session:
        events = [e for e in session.query(AssetEvent).all() if e.asset.uri == uri]
    assert len(events) == 1 and events[0].extra == {"snapshot_id": 42, "rows": 3, "batches": ["b1"]}


def test_curate_dag_parses_without_heavy_imports() -> None:
    script = (
        "import sys, time, runpy, airflow.sdk, yaml, pydantic\n"
        "before = set(sys.modules); t = time.perf_counter(); g = runpy.run_path('dags/curate.py')\n"
        "heavy = [m for m in ('duckdb', 'pyiceberg', 'pyarrow', 'pipelines.curate.runner', 'pipelines.quality.gate')\n"
        "         if m in sys.modules and m not in before]\n"
        "print(time.perf_counter() - t, sum(k.startswith('curate__') for k in g), ','.join(heavy) or '-')\n"
    )
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    seconds, n, heavy = out.stdout.split()
    assert heavy == "-", f"curate.py imports {heavy} at parse time"
    assert int(n) >= 5 and float(seconds) < 1.0, f"parsing curate.py took {seconds}s"


def test_curate_dag_run_builds_and_emits_its_asset_only_when_it_published(
        airflow_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real run (dag.test) of curate__geo over a hand-made std.poi: the build publishes and emits
    curated.poi_wgs84's Asset; a second run finds the same input snapshot (nothing_new) and emits nothing."""
    import pyarrow as pa
    from airflow.models.asset import AssetActive, AssetEvent, AssetModel
    from airflow.utils.session import create_session

    from pipelines.lake.catalog import get_catalog
    from pipelines.lake.tables import append
    from pipelines.settings import TZ

    monkeypatch.setenv("CITYLAKE_REGISTRY_DIR", str(ROOT / "schemas" / "sources"))
    monkeypatch.setenv("CITYLAKE_LAKE_DIR", str(tmp_path / "lake"))
    poi = pa.table({"poi_id": ["P1", "P2"], "poi_name": ["科学馆", "图书馆"], "poi_category": ["EDU", "EDU"],
                    "longitude": [117.2, 117.3], "latitude": [31.8, 31.85], "poi_district_code": ["340104", "340104"],
                    "_batch_id": ["b", "b"], "_extracted_at": pa.array([0, 0], pa.timestamp("us", tz="UTC")),
                    "_load_seq": pa.array([1, 1], pa.int64()), "_warnings": pa.array([[], []], pa.list_(pa.string()))})
    dag = _curate_dags()["curate__geo"]
    # std.poi not loaded yet: the build waits (skipped), not failed and retried
    (ti,) = dag.test(logical_date=datetime(2026, 11, 19, 7, tzinfo=TZ)).get_task_instances()
    assert str(ti.state).endswith("skipped")
    append(get_catalog(), "std.poi", poi)
    name, uri = "curated.poi_wgs84", "iceberg://citylake/curated/poi_wgs84"
    with create_session() as session:  # a downstream DAG scheduled on it registers it; stand in for it here
        session.add(AssetModel(name=name, uri=uri))
        session.add(AssetActive(name=name, uri=uri))
    statuses = []
    for day in (20, 21):
        run = dag.test(logical_date=datetime(2026, 11, day, 7, tzinfo=TZ))
        (ti,) = run.get_task_instances()
        assert str(ti.state).endswith("success")
        statuses.append(ti.xcom_pull(task_ids="poi_wgs84")["status"])
    assert statuses == ["published", "nothing_new"]
    with create_session() as session:
        events = [e for e in session.query(AssetEvent).all() if e.asset.uri == uri]
    assert len(events) == 1 and events[0].extra["rows"] == 2


SHARING_GRANTS = """\
grants:
  - id: dags-person-file
    consumer: "113401000030088844"
    dataset: person
    columns: [resident_id, sex_code]
    purpose: DAG 测试
    deid: {resident_id: pseudonym}
    delivery: {method: file}
  - id: dags-unknown-dataset
    consumer: "113401000030088844"
    dataset: no_such_dataset
    columns: [id]
    delivery: {method: file}
"""


def _sharing_dag(grants: Path):  # noqa: ANN202
    from airflow.dag_processing.dagbag import DagBag

    with scoped_env({"CITYLAKE_GRANTS_DIR": str(grants)}):
        bag = DagBag(dag_folder=str(ROOT / "dags" / "publish_sharing.py"))
    assert bag.import_errors == {}
    return bag.dags["publish__sharing"]


def test_sharing_dag_policy_schedule_and_one_task_per_grant(airflow_home: Path, tmp_path: Path) -> None:
    from pipelines.dag_defaults import START

    (tmp_path / "grants").mkdir()
    (tmp_path / "grants" / "113401000030088844.yml").write_text(SHARING_GRANTS, encoding="utf-8")
    dag = _sharing_dag(tmp_path / "grants")
    assert type(dag.timetable).__name__ == "CronTriggerTimetable"
    assert dag.timetable.expression == "0 7 * * *" and str(dag.timetable.timezone) == "Asia/Shanghai"
    assert dag.start_date == START and not dag.catchup and dag.max_active_runs == 1
    assert {"publish", "sharing", "合肥市数据资源局"} <= set(dag.tags) and "07:00" in (dag.doc_md or "")
    assert {t.task_id for t in dag.tasks} == {"dags-person-file", "dags-unknown-dataset"}
    for t in dag.tasks:  # independent: one grant's failure or refusal never holds up another's delivery
        assert t.upstream_task_ids == set() and t.downstream_task_ids == set()
        assert t.retries == 3 and t.retry_exponential_backoff and t.owner == "合肥市数据资源局"


def test_sharing_dag_parses_without_heavy_imports(tmp_path: Path) -> None:
    script = (
        "import sys, time, runpy, airflow.sdk, yaml, pydantic\n"
        "before = set(sys.modules); t = time.perf_counter(); g = runpy.run_path('dags/publish_sharing.py')\n"
        "heavy = [m for m in ('duckdb', 'pyiceberg', 'pyarrow', 'psycopg', 'pipelines.share.deliver',\n"
        "                     'pipelines.share.targets', 'pipelines.share.policy') if m in sys.modules and m not in before]\n"
        "print(time.perf_counter() - t, len(g['GRANTS']), ','.join(heavy) or '-')\n"
    )
    (tmp_path / "grants").mkdir()
    (tmp_path / "grants" / "113401000030088844.yml").write_text(SHARING_GRANTS, encoding="utf-8")
    env = {**os.environ, "CITYLAKE_GRANTS_DIR": str(tmp_path / "grants"), "AIRFLOW_HOME": str(tmp_path / "af")}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True, env=env)
    seconds, n, heavy = out.stdout.split()
    assert heavy == "-", f"publish_sharing.py imports {heavy} at parse time"
    assert int(n) == 2 and float(seconds) < 1.0, f"parsing publish_sharing.py took {seconds}s"


def test_sharing_dag_run_records_a_refusal_and_succeeds(airflow_home: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A real run (dag.test) on an empty lake: the refused grant's task succeeds (the refusal is audited, the
    log warns), the other finds nothing published (nothing_new); run ids are ``<dag run id>__<grant id>`` and
    the delivery date is the run's Asia/Shanghai day."""
    from datetime import UTC

    from pipelines.lake.catalog import get_catalog
    from pipelines.share.audit import read_audit

    (tmp_path / "grants").mkdir()
    (tmp_path / "grants" / "113401000030088844.yml").write_text(SHARING_GRANTS, encoding="utf-8")
    monkeypatch.setenv("CITYLAKE_GRANTS_DIR", str(tmp_path / "grants"))
    monkeypatch.setenv("CITYLAKE_REGISTRY_DIR", str(ROOT / "schemas" / "sources"))
    monkeypatch.setenv("CITYLAKE_LAKE_DIR", str(tmp_path / "lake"))
    monkeypatch.setenv("CITYLAKE_SHARE_MASTER_KEY", "dags-test-only-master-key-0123456789abcdef")
    run = _sharing_dag(tmp_path / "grants").test(logical_date=datetime(2026, 11, 19, 23, 0, tzinfo=UTC))
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert all(s.endswith("success") for s in states.values()), states
    outcomes = {ti.task_id: ti.xcom_pull(task_ids=ti.task_id)["outcome"] for ti in run.get_task_instances()}
    assert outcomes == {"dags-person-file": "nothing_new", "dags-unknown-dataset": "refused"}
    rows = {r["grant_id"]: r for r in read_audit(get_catalog())}
    assert rows["dags-unknown-dataset"]["reason"] == "unknown_dataset"
    assert rows["dags-unknown-dataset"]["run_id"] == f"{run.run_id}__dags-unknown-dataset"
    assert {r["delivery_date"] for r in rows.values()} == {"2026-11-20"}  # 23:00 UTC is the 20th in Shanghai


BAD_ID_GRANTS = """\
grants:
  - id: Bad Id
    consumer: "113401000030088844"
    dataset: enterprise
    columns: [uscc]
    delivery: {method: file}
"""


def test_sharing_dag_reports_grant_files_that_do_not_load(airflow_home: Path, tmp_path: Path) -> None:
    """A broken grant file adds one ``grant_config`` task (no retry) beside the tasks of the grants that load;
    a file that is not YAML is reported the same way, and the other files' grants keep their tasks."""
    grants = tmp_path / "grants"
    grants.mkdir()
    (grants / "113401000030088844.yml").write_text(SHARING_GRANTS, encoding="utf-8")
    dag = _sharing_dag(grants)
    assert "grant_config" not in {t.task_id for t in dag.tasks}
    (grants / "bad.yml").write_text(BAD_ID_GRANTS, encoding="utf-8")
    dag = _sharing_dag(grants)
    assert {t.task_id for t in dag.tasks} == {"dags-person-file", "dags-unknown-dataset", "grant_config"}
    assert dag.get_task("grant_config").retries == 0 and "'Bad Id'" in (dag.doc_md or "")
    (grants / "bad.yml").write_text("grants: [\n", encoding="utf-8")
    dag = _sharing_dag(grants)
    assert {t.task_id for t in dag.tasks} == {"dags-person-file", "dags-unknown-dataset", "grant_config"}
    assert "bad.yml:2: invalid YAML" in (dag.doc_md or "")  # one file that is not YAML hides no other grant


def test_sharing_dag_run_without_master_key_fails_the_pseudonym_grant_without_retry(
        airflow_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No master key: the grant that needs pseudonyms fails at once (AirflowFailException, no retry) with the
    key's one-line message and a ``missing_key`` audit row; the refused grant still succeeds; the broken
    grant file's ``grant_config`` task fails with its file:line."""
    from datetime import UTC

    from pipelines.lake.catalog import get_catalog
    from pipelines.privacy.pseudonym import MASTER_CONN, MASTER_ENV
    from pipelines.share.audit import read_audit

    grants = tmp_path / "grants"
    grants.mkdir()
    (grants / "113401000030088844.yml").write_text(SHARING_GRANTS, encoding="utf-8")
    (grants / "bad.yml").write_text(BAD_ID_GRANTS, encoding="utf-8")
    monkeypatch.setenv("CITYLAKE_GRANTS_DIR", str(grants))
    monkeypatch.setenv("CITYLAKE_REGISTRY_DIR", str(ROOT / "schemas" / "sources"))
    monkeypatch.setenv("CITYLAKE_LAKE_DIR", str(tmp_path / "lake"))
    monkeypatch.delenv(MASTER_ENV, raising=False)
    monkeypatch.delenv(f"AIRFLOW_CONN_{MASTER_CONN.upper()}", raising=False)
    run = _sharing_dag(grants).test(logical_date=datetime(2026, 11, 19, 23, 0, tzinfo=UTC))
    tis = {ti.task_id: ti for ti in run.get_task_instances()}
    states = {task_id: str(ti.state).rsplit(".", 1)[-1] for task_id, ti in tis.items()}
    assert states == {"dags-person-file": "failed", "dags-unknown-dataset": "success", "grant_config": "failed"}
    assert tis["dags-person-file"].try_number == 1 and tis["grant_config"].try_number == 1  # not retried
    rows = [r for r in read_audit(get_catalog()) if r["grant_id"] == "dags-person-file"]
    assert [(r["outcome"], r["reason"]) for r in rows] == [("failed", "missing_key")]
    assert MASTER_ENV in rows[0]["detail"]


def test_demo_held_run_that_was_not_held_names_the_log_and_the_failed_tasks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The held run's output goes to a file; when the batch was not held (load_table really failed), the error
    says which tasks did not succeed and where the output is, and the spinner was stopped around the run."""
    from types import SimpleNamespace

    import pipelines.demo as demo
    import pipelines.lake.catalog
    import pipelines.seed
    from pipelines.errors import CitylakeError
    from pipelines.settings import TZ

    snapshot = SimpleNamespace(snapshot_id=7)
    table = SimpleNamespace(properties={}, current_snapshot=lambda: snapshot,
                            scan=lambda **kw: SimpleNamespace(to_arrow=lambda: SimpleNamespace(to_pylist=lambda: [])))
    monkeypatch.setattr(pipelines.lake.catalog, "get_catalog", lambda settings: SimpleNamespace(load_table=lambda i: table))
    monkeypatch.setattr(pipelines.seed, "corrupt_enterprise_uscc", lambda *a: None)
    events: list[str] = []
    status = SimpleNamespace(stop=lambda: events.append("stop"), start=lambda: events.append("start"))

    def run(logical: datetime, only: list[str]) -> list[dict]:
        events.append("run")
        return [{"task": "plan_run", "table": "plan_run[-1]", "state": "success", "run_id": "r"},
                {"task": "load_table", "table": "enterprise", "state": "failed", "run_id": "r"},
                {"task": "publish_std", "table": "publish_std[0]", "state": "upstream_failed", "run_id": "r"}]

    monkeypatch.setattr(demo, "run_ingest_dags", run)
    settings = SimpleNamespace(lake_dir=tmp_path, data_dir=tmp_path)
    with pytest.raises(CitylakeError) as err:
        demo._bad_delivery(settings, datetime(2026, 11, 20, 2, tzinfo=TZ), status)
    message = str(err.value)
    assert "\n" not in message and "load_table[enterprise] failed" in message
    assert "plan_run" not in message and str(tmp_path / "demo_held_run.log") in message
    assert events == ["stop", "run", "start"]


def test_airflow_ui_stop_reaches_processes_that_left_its_process_group(tmp_path: Path) -> None:
    """make airflow-ui's cleanup: standalone's process group, and what left it (task processes call setpgid),
    found by the marker in their environment."""
    import signal

    from pipelines.demo import _UI_MARKER, _marked, _stop_airflow

    if not Path("/proc/self/environ").exists():
        pytest.skip("no /proc: only the process group is stopped here")
    pid_file = tmp_path / "grandchild.pid"
    script = ("import signal, subprocess, sys, time\n"
              "p = subprocess.Popen(['sleep', '300'], start_new_session=True)\n"
              "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"  # a parent that ignores SIGTERM: SIGKILL after the grace
              f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
              "time.sleep(300)\n")
    marker = "test" + os.urandom(4).hex()
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, _UI_MARKER: marker},
                            start_new_session=True)
    deadline = time.monotonic() + 20
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    grandchild = int(pid_file.read_text())
    assert os.getpgid(grandchild) != os.getpgid(proc.pid) and set(_marked(marker)) == {proc.pid, grandchild}
    started = time.monotonic()
    _stop_airflow(proc, marker, grace=1)
    assert time.monotonic() - started < 15 and proc.returncode == -signal.SIGKILL

    def gone(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] in ("Z", "X")  # a zombie is gone
        except OSError:
            return True

    assert gone(grandchild) and _marked(marker) == []


def test_dag_files_log_under_dags() -> None:
    """The DagBag imports a DAG file as ``unusual_prefix_<sha1>_<file>``: a module logger (``__name__``) would
    sit outside ``dags``, where the JSON lines (pipelines.logs.LOGGERS) never catch it."""
    import re

    from pipelines.logs import LOGGERS

    assert "dags" in LOGGERS
    for path in sorted((ROOT / "dags").glob("*.py")):
        text = path.read_text(encoding="utf-8")
        assert "getLogger(__name__)" not in text, path.name
        for name in re.findall(r"getLogger\(\"([^\"]+)\"\)", text):
            assert name.startswith("dags."), (path.name, name)
