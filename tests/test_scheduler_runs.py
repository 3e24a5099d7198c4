"""Every ingest DAG under a real scheduler (issue 13 item 1), not only through ``dag.test()`` (which always
passes a logical date, so it never saw that a run triggered by hand has no data interval in Airflow 3).

One Airflow 3.3 session for all DAGs — api-server, scheduler (LocalExecutor) and dag-processor as separate
processes on a PostgreSQL metadata DB (SQLite refuses a backfill while the scheduler runs) — over a small seeded city (scale 0.02):
1. unpausing every ingest DAG makes the scheduler create its scheduled run (catchup off: the latest interval);
2. a manual run of every DAG through ``POST /api/v2/dags/{id}/dagRuns`` with ``logical_date: null`` (the UI's
   Trigger), and runs with params: a window (since/until), a full refresh, and two
   invalid ones (a malformed time refused by the API's JSON-schema check; since after until failing plan_run
   before anything loads);
3. a backfill of one interval of every DAG through ``POST /api/v2/backfills``.
Asserted: the runs' states, what each load returned (mode, run kind, rows), the rows per raw table against the
seeded sources, and the batches' windows recorded in the raw tables' state.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow_cluster import AIRFLOW, CITYLAKE, AirflowCluster, airflow_env, free_port
from croniter import croniter

from pipelines.settings import PROJECT_ROOT, TZ

SCALE = 0.02
BACKFILL_DAY = datetime(2026, 11, 18, tzinfo=TZ)
PARAM_DAGS = {"window": "ingest__population", "full_refresh": "ingest__enterprise", "invalid": "ingest__credit"}
WINDOW = ("2026-11-01T00:00:00", "2026-11-15T00:00:00")  # Asia/Shanghai (naive)


def _env(tmp: Path, metadata: str, data_dir: Path, api_port: int, password_file: Path) -> dict[str, str]:
    return {
        # PostgreSQL metadata: Airflow 3.3 refuses a backfill on SQLite under concurrent access ("Database is
        # locked. Backfill creation is not supported on SQLite"), which a running scheduler always is
        **airflow_env(tmp, metadata, api_port, password_file, "LocalExecutor"),
        "AIRFLOW__CORE__PARALLELISM": "4",
        "CITYLAKE_DATA_DIR": str(data_dir),
        "CITYLAKE_LAKE_DIR": str(tmp / "lake"),
    }


def _source_rows(data_dir: Path, system: Any) -> dict[str, int]:
    """Rows of each SQL table at the (seeded SQLite) source."""
    out = {}
    for t in system.tables:
        with sqlite3.connect(data_dir / "sources" / f"{system.system}.db") as con:
            out[t.code] = con.execute(f'SELECT count(*) FROM "{t.source}"').fetchone()[0]
    return out


def _runs(cluster: AirflowCluster, dag_id: str) -> list[dict[str, Any]]:
    return cluster.api("GET", f"/dags/{dag_id}/dagRuns", params={"limit": 100}).json()["dag_runs"]


def _done(runs: list[dict[str, Any]]) -> bool:
    return all(r["state"] in ("success", "failed") for r in runs)


def _wait_created(cluster: AirflowCluster, dag_ids: list[str], run_type: str, timeout: float) -> dict[str, dict]:
    def probe() -> dict[str, dict] | None:
        runs = {d: [r for r in _runs(cluster, d) if r["run_type"] == run_type] for d in dag_ids}
        return {d: r[0] for d, r in runs.items()} if all(runs.values()) else None

    return cluster.wait_for(f"the {run_type} runs", probe, timeout, every=1)


def _loads(cluster: AirflowCluster, dag_id: str, run_id: str) -> dict[int, dict[str, Any]]:
    """load_table's returned dict per map index (XCom through the REST API)."""
    tis = cluster.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
    out = {}
    for ti in tis:
        if ti["task_id"] == "load_table" and ti["state"] == "success":
            answer = cluster.api("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/load_table/xcomEntries/"
                                        f"return_value", params={"map_index": ti["map_index"], "deserialize": True})
            assert answer.status_code == 200, answer.text
            value = answer.json()["value"]
            out[ti["map_index"]] = json.loads(value) if isinstance(value, str) else value
    return out


def test_every_ingest_dag_scheduled_manual_params_and_backfill_under_a_scheduler(tmp_path: Path, pg_url: str) -> None:
    from pipelines.ingest import make_batch_id
    from pipelines.lake.catalog import get_catalog
    from pipelines.lake.raw import TableState
    from pipelines.registry import SqlTable, load_registry
    from pipelines.seed import seed_city
    from pipelines.settings import load_settings

    started = time.monotonic()
    data_dir = tmp_path / "data"
    seed_city(data_dir, scale=SCALE)
    systems, errors = load_registry(PROJECT_ROOT / "schemas" / "sources")
    assert not errors
    dag_ids = sorted(f"ingest__{s}" for s in systems)
    api_port = free_port()
    password = secrets.token_urlsafe(12)
    password_file = tmp_path / "passwords.json"
    password_file.write_text(json.dumps({"admin": password}), encoding="utf-8")
    (tmp_path / "logs").mkdir()
    (tmp_path / "airflow_home").mkdir()
    cluster = AirflowCluster(env=_env(tmp_path, pg_url, data_dir, api_port, password_file), logs=tmp_path / "logs",
                             api_port=api_port, user="admin", password=password)
    timings: dict[str, float] = {}
    try:
        cluster.run("init", f"{AIRFLOW} db migrate && {CITYLAKE} platform init")
        timings["init"] = time.monotonic() - started
        cluster.start("api-server", [AIRFLOW, "api-server", "--host", "127.0.0.1", "--port", str(api_port),
                                     "--workers", "1"])
        cluster.start("scheduler", [AIRFLOW, "scheduler"])
        cluster.start("dag-processor", [AIRFLOW, "dag-processor"])
        cluster.wait_for("the api-server", lambda: cluster.api("GET", "/monitor/health").status_code == 200, 90)
        for dag_id in dag_ids:
            cluster.wait_for(f"{dag_id} parsed", lambda d=dag_id: cluster.api("GET", f"/dags/{d}").status_code == 200, 90)
        # the DAG list shows the department, not "airflow" (owners from the serialized DAG's unmapped tasks)
        owners = {d: cluster.api("GET", f"/dags/{d}").json()["owners"] for d in dag_ids}
        assert owners["ingest__population"] == ["合肥市公安局"], owners
        assert not any("airflow" in o for o in owners.values()), owners

        # 1. scheduled: unpausing creates the latest interval's run
        for dag_id in dag_ids:
            assert cluster.api("PATCH", f"/dags/{dag_id}", json={"is_paused": False}).status_code == 200
        scheduled = _wait_created(cluster, dag_ids, "scheduled", 60)

        # 2. manual, no logical date (the UI's Trigger), and the params runs: queued behind the scheduled
        # run (max_active_runs=1; queued runs start in run_after order, the scheduled one's is its interval end)
        manual: dict[str, str] = {}
        for dag_id in dag_ids:
            answer = cluster.api("POST", f"/dags/{dag_id}/dagRuns", json={"logical_date": None})
            assert answer.status_code == 200, answer.text
            assert answer.json()["logical_date"] is None and answer.json()["data_interval_start"] is None
            manual[dag_id] = answer.json()["dag_run_id"]
        pop = "ingest__population"
        # a malformed time is refused when triggered, by the params' JSON schema
        answer = cluster.api("POST", f"/dags/{pop}/dagRuns", json={"logical_date": None, "conf": {"since": "yesterday"}})
        assert answer.status_code == 400 and "since" in answer.text, answer.text
        param_runs = {}
        # each on its own DAG, so no DAG runs four runs in a row (max_active_runs=1)
        for name, conf in {"window": {"since": WINDOW[0], "until": WINDOW[1]}, "full_refresh": {"full_refresh": True},
                           "invalid": {"since": "2026-11-10", "until": "2026-11-01"}}.items():
            answer = cluster.api("POST", f"/dags/{PARAM_DAGS[name]}/dagRuns", json={"logical_date": None, "conf": conf})
            assert answer.status_code == 200, answer.text
            param_runs[name] = answer.json()["dag_run_id"]

        # 3. a backfill of the interval before the scheduled one, for each DAG once its other runs finished, so
        # each run finds the lake the assertions below expect (a backfill first would find an empty lake: it would
        # load its interval and leave the watermark unset, and the scheduled run would then load the rest; before
        # the watermark fix it set the watermark past the older rows, which no later run loaded)
        backfills: dict[str, int] = {}

        def backfilled() -> dict[str, list] | None:
            runs = {d: _runs(cluster, d) for d in dag_ids}
            for dag_id, mine in runs.items():
                if dag_id not in backfills and _done(mine):
                    if dag_id not in timings:
                        timings[dag_id] = time.monotonic() - started
                    logical = datetime.fromisoformat(scheduled[dag_id]["logical_date"])
                    day = croniter(systems[dag_id.removeprefix("ingest__")].schedule,
                                   logical.astimezone(TZ)).get_prev(datetime)
                    answer = cluster.api("POST", "/backfills", json={
                        "dag_id": dag_id, "from_date": day.isoformat(), "to_date": day.isoformat(),
                        "max_active_runs": 1})
                    assert answer.status_code == 200, answer.text
                    backfills[dag_id] = answer.json()["id"]
            done = all(d in backfills and any(r["run_type"] == "backfill" for r in runs[d]) and _done(runs[d])
                       for d in dag_ids)
            return runs if done else None

        finished = cluster.wait_for("the backfill runs", backfilled, 240, every=2)
        timings["backfill"] = time.monotonic() - started
        # The clock may cross a schedule boundary during the test (air_quality runs hourly at :10, bus_ridership
        # daily at 04:00): such a later scheduled run must succeed too, and is then left out; the checks below
        # follow the run unpausing created.
        later = [r for d, runs in finished.items() for r in runs
                 if r["run_type"] == "scheduled" and r["dag_run_id"] != scheduled[d]["dag_run_id"]]
        assert all(r["state"] == "success" for r in later), later
        finished = {d: [r for r in runs if r not in later] for d, runs in finished.items()}
    except BaseException:
        print(cluster.tails())
        print(f"scheduler runs: {timings}")
        raise
    finally:
        if "finished" in locals():
            tis_failed = {}
            for dag_id, runs in finished.items():
                for r in runs:
                    if r["state"] == "failed" and r["dag_run_id"] != param_runs.get("invalid"):
                        tis_failed[(dag_id, r["dag_run_id"])] = [
                            (t["task_id"], t["map_index"], t["state"]) for t in cluster.api(
                                "GET", f"/dags/{dag_id}/dagRuns/{r['dag_run_id']}/taskInstances").json()["task_instances"]]
        else:
            tis_failed = {}
        results = _collect(cluster, finished, manual, param_runs) if "finished" in locals() else {}
        cluster.stop()
    print(f"scheduler runs: {timings}, total {time.monotonic() - started:.0f} s")
    assert not tis_failed, tis_failed

    # every DAG: scheduled, manual and backfill runs succeeded
    for dag_id, runs in finished.items():
        kinds = sorted((r["run_type"], r["state"]) for r in runs if r["dag_run_id"] not in param_runs.values())
        assert kinds == [("backfill", "success"), ("manual", "success"), ("scheduled", "success")], (dag_id, runs)

    # what landed: every SQL table holds exactly its source's rows (reruns replace, never duplicate)
    import os

    os.environ["CITYLAKE_LAKE_DIR"] = str(tmp_path / "lake")
    try:
        settings = load_settings()
        catalog = get_catalog(settings)
        for code, system in systems.items():
            dag_id = f"ingest__{code}"
            sched = next(r for r in finished[dag_id] if r["run_type"] == "scheduled")
            back = next(r for r in finished[dag_id] if r["run_type"] == "backfill")
            loads = results[(dag_id, "scheduled")]
            for i, table in enumerate(system.all_tables):
                assert loads[i]["run"]["kind"] == "scheduled" and loads[i]["rows_written"] > 0, (dag_id, loads[i])
                assert results[(dag_id, "manual")][i]["run"]["kind"] == "manual", results[(dag_id, "manual")][i]
                assert results[(dag_id, "backfill")][i]["run"]["kind"] == "backfill"
                ident = system.raw_table(table.code)
                raw = catalog.load_table(ident)
                if not isinstance(table, SqlTable):
                    continue
                live = raw.scan(selected_fields=tuple(table.primary_key)).to_arrow().num_rows
                assert live == _source_rows(data_dir, system)[table.code], ident
                windows = TableState.of(raw).windows
                if table.cursor:
                    # the scheduled batch started from nothing (first load) up to its watermark; the backfill asked for
                    # its data interval (it re-read rows the lake holds: nothing new, so no commit, no window entry)
                    s = windows[make_batch_id(f"{sched['dag_run_id']}__{table.code}")]
                    assert s[0] is None and s[1], s
                    asked = results[(dag_id, "backfill")][i]["run"]
                    assert (asked["since"], asked["until"]) == tuple(
                        datetime.fromisoformat(back[k]).astimezone(TZ).isoformat()
                        for k in ("data_interval_start", "data_interval_end")), asked
        # population's params runs
        person = systems["population"].tables[0]
        window = results[(PARAM_DAGS["window"], "window")][0]
        assert (window["run"]["kind"], window["mode"]) == ("window", "backfill"), window
        assert (window["run"]["since"], window["run"]["until"]) == tuple(
            datetime.fromisoformat(w).replace(tzinfo=TZ).isoformat() for w in WINDOW), window
        # the window read exactly the source rows whose cursor is inside it (and all were in the lake already)
        lo, hi = (datetime.fromisoformat(w) for w in WINDOW)
        with sqlite3.connect(data_dir / "sources" / "population.db") as con:
            cursors = [v for (v,) in con.execute(f'SELECT "{person.cursor}" FROM "{person.source}"')]
        inside = sum(1 for v in cursors if v is not None and lo <= datetime.fromisoformat(str(v)) < hi)
        assert 0 < inside < len(cursors), (inside, len(cursors))  # a real slice, not the whole table
        assert (window["rows_extracted"], window["rows_written"]) == (inside, 0), window  # re-read, unchanged
        full = results[(PARAM_DAGS["full_refresh"], "full_refresh")][0]
        assert (full["run"]["kind"], full["mode"], full["rows_written"]) == ("full_refresh", "full", 0), full
        enterprise = systems["enterprise"].tables[0].code
        assert full["rows_extracted"] == _source_rows(data_dir, systems["enterprise"])[enterprise]
        assert results[(PARAM_DAGS["invalid"], "invalid")] == {}  # plan_run failed: nothing loaded
    finally:
        del os.environ["CITYLAKE_LAKE_DIR"]
    assert time.monotonic() - started < 300


def _collect(cluster: AirflowCluster, finished: dict[str, list], manual: dict[str, str],
             param_runs: dict[str, str]) -> dict[tuple[str, str], dict[int, dict[str, Any]]]:
    """load_table's results per (dag, run kind) while the api-server still runs."""
    out = {}
    for dag_id, runs in finished.items():
        for r in runs:
            kind = r["run_type"] if r["run_type"] != "manual" else \
                next((n for n, i in param_runs.items() if i == r["dag_run_id"]), "manual")
            if r["dag_run_id"] == manual.get(dag_id) or kind != "manual":
                out[(dag_id, kind)] = _loads(cluster, dag_id, r["dag_run_id"])
    if "invalid" in param_runs:
        dag_id = PARAM_DAGS["invalid"]
        out[(dag_id, "invalid")] = _loads(cluster, dag_id, param_runs["invalid"])
        tis = cluster.api("GET", f"/dags/{dag_id}/dagRuns/{param_runs['invalid']}/taskInstances").json()
        states = {(t["task_id"], t["map_index"]): t["state"] for t in tis["task_instances"]}
        assert states[("plan_run", -1)] == "failed", states
        loads = [state for (task, _), state in states.items() if task == "load_table"]
        assert loads and set(loads) == {"upstream_failed"}, states  # nothing started loading
    return out
