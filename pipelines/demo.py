"""``make demo``: seed the synthetic city, run every ingest DAG through real Airflow, print a summary.

Airflow runs with a project-local AIRFLOW_HOME and SQLite metadata; DAGs execute with ``dag.test()``,
which does not trigger Asset-scheduled DAGs, so the demo runs downstream DAGs itself: the curate DAGs, then
``publish__open_data`` (the open release of the reference date), ``publish__sharing`` (the demo grants'
deliveries, with a demo-only master key), then ``report__quality``; the last lines are the open release's
folder and the share folder with the audit's deliveries and refusals.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pipelines.errors import CitylakeError
from pipelines.settings import TZ, Settings, load_settings


def airflow_env(root: Path, home: Path | None = None) -> dict[str, str]:
    """Environment of the embedded Airflow: project-local home, SQLite metadata, our dags/ folder."""
    home = home or root / "airflow_home"
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__DEFAULT_TIMEZONE": "Asia/Shanghai",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    }


def cli_env(root: Path) -> dict[str, str]:
    """The demo's Airflow environment for the ``airflow`` CLI in a shell: ``airflow_env``, plus the venv's
    ``bin`` first on PATH (``airflow`` and ``citylake`` live there) and SimpleAuthManager's admin user."""
    env = airflow_env(root)
    bin_dir = str(Path(sys.executable).parent)
    path = os.environ.get("PATH", "")
    return {**env, "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "PATH": path if path.split(os.pathsep)[:1] == [bin_dir] else os.pathsep.join([bin_dir, path])}


def airflow_env_command() -> None:
    """Print the demo's Airflow environment as shell exports: eval "$(.venv/bin/citylake airflow-env)"."""
    import shlex

    from pipelines.settings import PROJECT_ROOT

    root = load_settings().root if os.environ.get("CITYLAKE_ROOT") else PROJECT_ROOT
    for key, value in cli_env(root).items():
        print(f"export {key}={shlex.quote(value)}")


def _login(home: Path) -> tuple[str, str]:
    """SimpleAuthManager's admin login for the local UI: the passwords file it reads (and would generate),
    given a password here when it has none, so it can be printed before the server starts."""
    import json
    import secrets

    file = home / "simple_auth_manager_passwords.json.generated"
    try:
        known = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not known.get("admin"):
        known["admin"] = secrets.token_urlsafe(12)
        file.write_text(json.dumps(known), encoding="utf-8")
        file.chmod(0o600)
    return "admin", str(known["admin"])


def run_airflow_ui(port: int = 8080, console: Console | None = None, answer_within: float = 180) -> int:
    """``make airflow-ui``: ``airflow standalone`` (api-server, scheduler with the LocalExecutor, dag-processor,
    triggerer) on the demo's project-local home and DAGs; prints the URL and the login once it answers (a notice
    if it does not within ``answer_within`` seconds), and on Ctrl-C/SIGTERM stops everything it started
    (``_stop_airflow``). Returns its exit code."""
    import signal
    import urllib.request
    import uuid

    from pipelines.registry import load_registry

    console = console or Console()
    settings = load_settings()
    marker = uuid.uuid4().hex
    # CITYLAKE_AIRFLOW_UI marks every process started below (the environment is inherited): task processes
    # leave standalone's process group (the Task SDK supervisor calls setpgid), so the group alone misses them
    env = {**os.environ, **cli_env(settings.root), "AIRFLOW__API__PORT": str(port), _UI_MARKER: marker}
    prepare_airflow(settings.root)
    systems, _ = load_registry(settings.registry_dir)
    ensure_pools(systems)
    user, password = _login(Path(env["AIRFLOW_HOME"]))
    stopping = False

    def _interrupt(_signum: int, _frame: object) -> None:
        nonlocal stopping
        if stopping:  # a second Ctrl-C (or SIGTERM) while stopping must not cut the cleanup short
            return
        stopping = True
        raise KeyboardInterrupt

    # installed before standalone starts: a signal in between would otherwise leave it running
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    proc: subprocess.Popen[bytes] | None = None
    url = f"http://localhost:{port}"
    try:
        # Its own session: Ctrl-C reaches this process only, which then stops what standalone started.
        proc = subprocess.Popen([str(Path(sys.executable).with_name("airflow")), "standalone"], env=env,
                                start_new_session=True)
        deadline, answered = time.monotonic() + answer_within, False
        while not answered and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}/api/v2/version", timeout=2):
                    answered = True
            except OSError:
                time.sleep(1)
        if answered and proc.poll() is None:
            console.print(f"\nAirflow UI: {url}  ·  login: {user} / {password}  (SimpleAuthManager; password in "
                          f"{env['AIRFLOW_HOME']}/simple_auth_manager_passwords.json.generated)\n"
                          "DAGs start paused: unpause one in the UI or `airflow dags unpause ingest__population`; "
                          "for the airflow CLI in another shell: eval \"$(.venv/bin/citylake airflow-env)\". "
                          "Ctrl-C stops.", highlight=False, soft_wrap=True)
        elif proc.poll() is None:
            console.print(f"Airflow did not answer at {url}/api/v2/version within {answer_within:.0f} s (still "
                          f"starting, or the port is taken?); its output is above. Ctrl-C stops it.",
                          highlight=False, soft_wrap=True)
        return proc.wait()
    except KeyboardInterrupt:
        console.print("stopping Airflow…")
        return 0
    finally:
        stopping = True
        if proc is not None:
            _stop_airflow(proc, marker)
        for sig, handler in previous.items():
            if handler is not None:  # None: a handler not installed from Python, nothing to restore
                signal.signal(sig, handler)


_UI_MARKER = "CITYLAKE_AIRFLOW_UI"


def _marked(marker: str) -> list[int]:
    """Processes whose environment carries ``CITYLAKE_AIRFLOW_UI=<marker>`` (Linux ``/proc``; empty elsewhere)."""
    needle = f"{_UI_MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0") and int(entry.name) != os.getpid():
                found.append(int(entry.name))
        except (OSError, ValueError):  # gone meanwhile, or another user's
            continue
    return found


def _stop_airflow(proc: subprocess.Popen[bytes], marker: str, grace: float = 30) -> None:
    """SIGTERM standalone's process group and wait up to ``grace`` seconds, then SIGKILL it; then whatever it
    started that is still running (task processes in process groups of their own, found by the marker in
    their environment): SIGTERM, a few seconds, SIGKILL. Hand-written: no library stops a process tree whose
    members left its process group."""
    import signal

    def signal_group(sig: int) -> None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    if proc.poll() is None:
        signal_group(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            signal_group(signal.SIGKILL)
            proc.wait()
    signal_group(signal.SIGKILL)  # what its children left behind in the group
    left = _marked(marker)
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 2.0)):
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = _marked(marker)
        if not left:
            break


def prepare_airflow(root: Path, home: Path | None = None) -> None:
    """Set the environment (before Airflow is imported) and migrate the metadata DB."""
    env = airflow_env(root, home)
    Path(env["AIRFLOW_HOME"]).mkdir(parents=True, exist_ok=True)
    os.environ.update(env)
    airflow = Path(sys.executable).with_name("airflow")
    done = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        raise CitylakeError(f"airflow db migrate failed: {tail[0]}")


def ensure_pools(systems: dict[str, Any]) -> None:
    """One pool per source system caps its concurrent connections."""
    from airflow.models.pool import Pool

    for s in systems.values():
        Pool.create_or_update_pool(f"source__{s.system}", s.max_connections,
                                   f"{s.name}: concurrent connections", include_deferred=False)


def _dag_bag(settings: Settings, file: str, dag_id: str | None = None) -> Any:
    """``dags/<file>`` (all of ``dags/`` for "") loaded into a DagBag; CitylakeError on an import error, or when
    ``dag_id`` is given and did not load."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(settings.root / "dags" / file))
    if dag_id is None and bag.import_errors:
        raise CitylakeError(f"DAG import errors: {bag.import_errors}")
    if dag_id is not None and (bag.import_errors or dag_id not in bag.dags):
        raise CitylakeError(f"{dag_id} did not load: {bag.import_errors}")
    return bag


def run_ingest_dags(logical_date: datetime, only: list[str] | None = None) -> list[dict[str, Any]]:
    """Run every ``ingest__*`` DAG with dag.test(); one row per mapped table task."""
    from pipelines.registry import load_registry

    settings = load_settings()
    systems, errors = load_registry(settings.registry_dir)
    if errors:
        raise CitylakeError("; ".join(str(e) for e in errors.values()))
    ensure_pools(systems)
    bag = _dag_bag(settings, "")
    rows: list[dict[str, Any]] = []
    for code, system in systems.items():
        if only and code not in only:
            continue
        dag = bag.get_dag(f"ingest__{code}")
        started = time.perf_counter()
        run = dag.test(logical_date=logical_date)
        tables = [t.code for t in system.all_tables]
        for ti in sorted(run.get_task_instances(), key=lambda t: (t.task_id, t.map_index)):
            if ti.task_id == "load_table":
                table = tables[ti.map_index] if 0 <= ti.map_index < len(tables) else ti.task_id
            else:
                table = f"{ti.task_id}[{ti.map_index}]"  # e.g. publish_std: the write-audit-publish step
            rows.append({"system": code, "table": table, "task": ti.task_id, "state": str(ti.state),
                         "run_id": str(run.run_id), "tries": ti.try_number, "seconds": ti.duration or 0.0, "dag_seconds": time.perf_counter() - started})
    return rows


def run_curate_dags(logical_date: datetime) -> list[dict[str, Any]]:
    """Run every ``curate__<domain>`` DAG with dag.test(), a domain after the domains whose curated datasets it
    reads (dag.test does not trigger Asset-scheduled DAGs); one row per dataset task with its build result."""
    from pipelines.curate.plan import curated_specs, domains_in_order

    settings = load_settings()
    bag = _dag_bag(settings, "curate.py")
    rows: list[dict[str, Any]] = []
    for domain in domains_in_order(curated_specs(settings.root / "schemas" / "curated")):
        run = bag.dags[f"curate__{domain}"].test(logical_date=logical_date)
        for ti in sorted(run.get_task_instances(), key=lambda t: t.task_id):
            result = ti.xcom_pull(task_ids=ti.task_id) if str(ti.state).endswith("success") else None
            rows.append({"domain": domain, "dataset": ti.task_id, "state": str(ti.state), "run_id": str(run.run_id),
                         "seconds": ti.duration or 0.0, **(result or {})})
    return rows


def _print_curated(rows: list[dict[str, Any]], console: Console) -> None:
    t = Table("DAG", "dataset", "status", "rows", "quarantined", "build", "seconds", "state",
              title="curated layer (write-audit-publish)")
    for r in rows:
        t.add_row(f"curate__{r['domain']}", f"curated.{r['dataset']}", r.get("status", "—"), f"{r.get('rows', 0):,}",
                  f"{r.get('quarantined', 0):,}", r.get("build_id", ""), f"{r['seconds']:.1f}", r["state"])
    console.print(t)


def run_release_dag(release_date: Any) -> tuple[list[dict[str, Any]], str]:
    """Run ``publish__open_data`` with dag.test() for ``release_date`` (06:30 Asia/Shanghai that day): one row
    per task (its outcome when it ran) and the release folder (``<exports>/open/<date>/``)."""
    from pipelines.publish.release import store_for

    settings = load_settings()
    logical = datetime(release_date.year, release_date.month, release_date.day, 6, 30, tzinfo=TZ)
    rows = _task_rows(settings, "publish_open_data.py", "publish__open_data", logical)
    return rows, store_for(settings).url(f"open/{release_date.isoformat()}/")


def _task_rows(settings: Settings, file: str, dag_id: str, logical: datetime) -> list[dict[str, Any]]:
    """Run one publish DAG with dag.test(): one row per task, its returned result when it succeeded."""
    run = _dag_bag(settings, file, dag_id).dags[dag_id].test(logical_date=logical)
    rows = []
    for ti in sorted(run.get_task_instances(), key=lambda t: t.task_id):
        result = ti.xcom_pull(task_ids=ti.task_id) if str(ti.state).endswith("success") else None
        # the task's own fields last: a result's "seconds" is its per-step breakdown
        rows.append({**(result or {}), "task": ti.task_id, "state": str(ti.state), "seconds": ti.duration or 0.0})
    return rows


def _print_release(rows: list[dict[str, Any]], console: Console) -> list[str]:
    """The release table; returns the datasets that were neither released nor unchanged nor skipped."""
    t = Table("task", "status", "rows", "folder", "seconds", "state", title="open release (publish__open_data)")
    bad = []
    for r in rows:
        status = r.get("status") or ("skipped" if "skipped" in r["state"] else "")
        t.add_row(r["task"], status, f"{r['rows']:,}" if "rows" in r else "", r.get("folder") or r.get("catalog") or "",
                  f"{r['seconds']:.1f}", r["state"])
        if not r["state"].endswith(("success", "skipped")):
            bad.append(r["task"])
    console.print(t)
    return bad


DEMO_KEY_FILE = ".demo_share_master_key"


def demo_master_key(settings: Settings) -> None:
    """Set ``CITYLAKE_SHARE_MASTER_KEY`` for the demo's sharing run, only when it is not set already: a random
    demo-only key made once per lake and kept in ``<lake>/.demo_share_master_key`` (0600), so the demo's
    pseudonyms stay stable across reruns on one lake. Production sets its own key (environment variable or the
    Airflow connection ``citylake_share_master_key``) and never uses this file."""
    import secrets

    from pipelines.privacy.pseudonym import MASTER_ENV

    if os.environ.get(MASTER_ENV):
        return
    path = settings.lake_dir / DEMO_KEY_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(secrets.token_hex(32))
    os.environ[MASTER_ENV] = path.read_text(encoding="ascii").strip()


def run_sharing_dag(delivery_day: Any) -> tuple[list[dict[str, Any]], str, dict[str, int]]:
    """Run ``publish__sharing`` with dag.test() for ``delivery_day`` (07:00 Asia/Shanghai): one row per grant
    task (its result when it ran), the share folder (``<exports>/share``) and the audit's counts by outcome."""
    from pipelines.lake.catalog import get_catalog
    from pipelines.share.audit import counts

    settings = load_settings()
    demo_master_key(settings)
    logical = datetime(delivery_day.year, delivery_day.month, delivery_day.day, 7, 0, tzinfo=TZ)
    rows = _task_rows(settings, "publish_sharing.py", "publish__sharing", logical)
    return rows, f"{settings.exports.rstrip('/')}/share", counts(get_catalog(settings))


def _print_sharing(rows: list[dict[str, Any]], console: Console) -> list[str]:
    """The sharing table; returns the grants whose task did not succeed (a refusal succeeds)."""
    t = Table("grant", "consumer", "dataset", "outcome", "mode", "rows", "deleted", "target", "seconds", "state",
              title="departmental sharing (publish__sharing)")
    bad = []
    for r in rows:
        outcome = r.get("outcome", "")
        if outcome == "refused":
            outcome = f"refused: {r.get('reason')}"
        t.add_row(r["task"], r.get("consumer", ""), r.get("dataset", ""), outcome, r.get("mode") or "",
                  f"{r['rows']:,}" if "rows" in r else "", f"{r['deleted']:,}" if "deleted" in r else "",
                  r.get("target") or "", f"{r['seconds']:.1f}", r["state"])
        if not r["state"].endswith("success"):
            bad.append(r["task"])
    console.print(t)
    return bad


def run_report_dag() -> Path:
    """Run ``report__quality`` (GX Data Docs, then the governance site) with dag.test(); the site's index.
    The report day is today: meta rows carry the wall-clock time they were recorded."""
    settings = load_settings()
    bag = _dag_bag(settings, "report_quality.py", "report__quality")
    run = bag.dags["report__quality"].test(logical_date=datetime.now(TZ).replace(microsecond=0))
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    if not str(states.get("build_report", "")).endswith("success"):
        raise CitylakeError(f"report__quality: {states} (rerun by hand: citylake report)")
    return settings.lake_dir / "report" / "index.html"


def run_demo(scale: float = 1.0, console: Console | None = None,
             on_stage: Callable[[str], None] | None = None) -> None:
    """The demo's nightly chain. ``on_stage`` (benchmarks/nightly_chain.py) is called with each stage's name as
    it starts (seed, airflow, ingest, quality, curate, open release, sharing, held batch, data docs, report)
    and with "done" at the end, so a caller can time the stages; it changes nothing the demo prints."""
    console = console or Console()
    settings = load_settings()
    stage = on_stage or (lambda _name: None)
    from pipelines.seed import seed_city

    t0 = time.perf_counter()
    stage("seed")
    with console.status("seeding the synthetic city…"):
        seeded = seed_city(settings.data_dir, scale=scale)
    console.print(f"seeded {sum(len(t) for t in seeded['systems'].values())} tables, "
                  f"{sum(seeded.get('files', {}).values())} drop files in {time.perf_counter() - t0:.1f}s")
    stage("airflow")
    with console.status("preparing Airflow (SQLite metadata)…"):
        prepare_airflow(settings.root)
    import json

    manifest = json.loads(Path(seeded["manifest"]).read_text(encoding="utf-8"))
    logical = datetime.fromisoformat(manifest["reference_date"]).replace(hour=2, tzinfo=TZ)
    stage("ingest")
    with console.status("running ingest DAGs through Airflow…"):
        tasks = run_ingest_dags(logical)
    from pipelines.lake.inspect import list_tables

    lake = {r["table"]: r for r in list_tables(settings, ("raw",))}
    t = Table("system", "table", "lake table", "rows", "seconds", "state", title="citylake demo: ingest")
    failed = [f"{r['system']}.{r['table']}" for r in tasks if r["task"] != "load_table" and "success" not in r["state"]]
    for r in tasks:
        if r["task"] != "load_table":
            continue
        ident = f"raw.{r['system']}__{r['table']}"
        rows = lake.get(ident, {}).get("rows", 0)
        t.add_row(r["system"], r["table"], ident, f"{rows:,}", f"{r['seconds']:.1f}", r["state"])
        if "success" not in r["state"]:
            failed.append(ident)
    console.print(t)
    stage("quality")
    _print_rejected(settings, console)
    _print_quality(settings, console, logical.date())
    stage("curate")
    with console.status("curate__<domain> DAGs through Airflow: the curated layer…"):
        curated = run_curate_dags(logical)
    _print_curated(curated, console)
    failed += [f"curated.{r['dataset']}" for r in curated if "success" not in r["state"]]
    stage("open release")
    with console.status("publish__open_data through Airflow: de-identify, write, leak-scan, verify, move latest.json…"):
        released, release_folder = run_release_dag(logical.date())
    failed += [f"open release {task}" for task in _print_release(released, console)]
    stage("sharing")
    with console.status("publish__sharing through Airflow: grants decided, de-identified, delivered, audited…"):
        shared, share_folder, audit_counts = run_sharing_dag(logical.date())
    failed += [f"sharing {task}" for task in _print_sharing(shared, console)]
    stage("held batch")
    with console.status("a mostly bad delivery: enterprise re-sends records with corrupted credit codes…") as status:
        held = _bad_delivery(settings, logical, status)
    _print_held(held, console)
    stage("data docs")
    with console.status("building GX Data Docs…"):
        from pipelines.quality.docs import build_data_docs

        docs = build_data_docs(settings)
    console.print(f"GX Data Docs ({docs.suites} suites, {docs.total_results} validation results, keys masked): "
                  f"{docs.index}")
    stage("report")
    with console.status("report__quality through Airflow: the governance site (数据治理报告)…"):
        report = run_report_dag()
    stage("done")
    console.print(f"lake: {settings.lake_dir} (catalog {settings.catalog_uri}, warehouse {settings.warehouse})")
    console.print(f"total {time.perf_counter() - t0:.0f}s · see `citylake lake ls`, `citylake lake show <table>`")
    console.print(f"数据治理报告 (governance report, opens offline): {report}", highlight=False, soft_wrap=True)
    console.print(f"开放数据发布 (open-data release, latest.json beside it): {release_folder}", highlight=False,
                  soft_wrap=True)
    console.print(f"部门数据共享 (departmental sharing): {share_folder} · meta.sharing_audit: "
                  f"{audit_counts.get('delivered', 0)} 次交付 (deliveries), {audit_counts.get('refused', 0)} 次拒绝 "
                  f"(refusals) · `citylake share audit`", highlight=False, soft_wrap=True)
    if failed:
        raise CitylakeError(f"demo: {len(failed)} table loads failed: {', '.join(failed)}")


def _print_rejected(settings: Any, console: Console) -> None:
    """Drop files the lake refused, with the reason (they were copied aside, never moved)."""
    from pipelines.lake.catalog import get_catalog
    from pipelines.lake.raw import TableState
    from pipelines.privacy import mask_file_name  # people name files after the person

    catalog = get_catalog(settings)
    for ident in sorted(catalog.list_tables("raw")):
        ledger = TableState.of(catalog.load_table(ident)).ledger
        for name, entry in sorted(ledger.items()):
            if entry.get("status") == "rejected":
                console.print(f"[yellow]rejected[/] {'.'.join(ident)}: {mask_file_name(name)}: {entry['reason']} "
                              f"(copied to {settings.rejected_dir})", highlight=False)


def _print_quality(settings: Any, console: Console, reference: Any) -> None:
    """The ingest DAGs published std tables; add the 一数一源 comparison and score against the seed."""
    from pipelines.lake.catalog import get_catalog
    from pipelines.lake.raw import open_table
    from pipelines.quality.consistency import run_consistency
    from pipelines.quality.score import score

    catalog = get_catalog(settings)
    batches = open_table(catalog, "meta.batches")
    q = Table("dataset", "status", "extracted", "published", "quarantined", "held", title="write-audit-publish")
    if batches is not None:
        for r in sorted(batches.scan().to_arrow().to_pylist(), key=lambda r: r["dataset"]):
            q.add_row(r["dataset"], r["status"], f"{r['extracted']:,}", f"{r['published']:,}",
                      f"{r['quarantined']:,}", f"{r['held']:,}")
    console.print(q)
    run_consistency(settings=settings, run_id=f"demo_{reference}")
    s = Table("defect", "truth", "found", "recall", "precision", title="quality vs seed manifest")
    for r in score(settings)["defects"]:
        s.add_row(r["defect"], str(r["truth"]), str(r["found"]), f"{r['recall']:.1%}", f"{r['precision']:.1%}")
    console.print(s)


def _bad_delivery(settings: Any, logical: datetime, status: Any = None) -> dict[str, Any]:
    """Write-audit-publish in action: 60% of a new enterprise batch has broken USCC check characters, so
    the batch is held and std.enterprise stays at its previous snapshot. ``status``: the console's spinner,
    stopped while the run's output goes to the log file (its frames would go there too)."""
    from datetime import timedelta

    from pipelines.lake.catalog import get_catalog
    from pipelines.lake.raw import TableState
    from pipelines.seed import corrupt_enterprise_uscc

    catalog = get_catalog(settings)
    # Past the lake's watermark, so a rerun of the demo on the same lake still delivers new rows.
    mark = TableState.of(catalog.load_table("raw.enterprise__enterprise")).watermark
    stamp = max([logical, *([datetime.fromisoformat(mark)] if mark else [])]) + timedelta(hours=1)
    corrupt_enterprise_uscc(settings.data_dir, stamp.astimezone(TZ).strftime("%Y-%m-%d %H:%M:%S"))
    before = catalog.load_table("std.enterprise").current_snapshot().snapshot_id
    # The held batch is the planned verdict: Airflow logs the failed publish_std with its whole traceback, which
    # reads as a crash, so this run's output goes to a file (named in the paragraph) instead of the terminal.
    log_file = settings.lake_dir / "demo_held_run.log"
    if status is not None:
        status.stop()
    try:
        with _output_to(log_file):
            rows = run_ingest_dags(logical + timedelta(days=1), only=["enterprise"])
    finally:
        if status is not None:
            status.start()
    publish = [r for r in rows if r["task"] == "publish_std"]
    after = catalog.load_table("std.enterprise").current_snapshot().snapshot_id
    batches = catalog.load_table("meta.batches").scan(row_filter="status = 'held'").to_arrow().to_pylist()
    held = [b for b in batches if b["dataset"] == "enterprise" and b["run_id"].startswith(publish[0]["run_id"])] \
        if publish else []
    if not held or "failed" not in publish[0]["state"] or before != after:
        # only publish_std should have failed (on purpose); anything else is why nothing was held
        others = [(f"load_table[{r['table']}]" if r["task"] == "load_table" else r["table"]) + f" {r['state']}" for r in rows
                  if "success" not in r["state"] and r["task"] != "publish_std"]
        raise CitylakeError(
            "demo: the mostly bad enterprise batch was not held ("
            + (f"tasks not successful: {', '.join(others)}; " if others else "")
            + f"publish_std {publish[0]['state'] if publish else 'did not run'}, std.enterprise snapshot "
            + ("unchanged" if before == after else f"{before} → {after}") + f"); the run's output: {log_file}")
    return {**held[0], "std_snapshot_id": after, "task": publish[0], "log": str(log_file)}


def _output_to(path: Path) -> Any:
    """Both output file descriptors (Airflow's task logs go straight to them) into ``path`` while it is open."""
    from contextlib import contextmanager

    @contextmanager
    def redirect() -> Any:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = [os.dup(1), os.dup(2)]
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as out:
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                for fd in saved:
                    os.close(fd)

    return redirect()


def _print_held(held: dict[str, Any], console: Console) -> None:
    """The held batch as the verdict it is: which dataset and batch, why (the failing blocking rules and their
    counts), what stays published, and how to fix or release it."""
    import json

    try:
        rules = json.loads(held.get("detail") or "[]")
    except ValueError:
        rules = []
    why = "; ".join(f"{r['rule']}: {r['failed']:,} of {r['evaluated']:,} rows fail" for r in rules) or held.get("detail")
    console.print(
        f"[yellow]held[/] (planned showcase of write-audit-publish) std.enterprise did not publish batch "
        f"{held.get('raw_batch_id') or held.get('batch_id') or held.get('run_id')} ({held['extracted']:,} rows from raw.enterprise__enterprise): blocking rule "
        f"{why}. std.enterprise stays at snapshot {held['std_snapshot_id']}; the DAG run's publish_std task is "
        "failed on purpose, without retries (its log: " + held["log"] + "). Fix the source and re-check with "
        "`citylake quality run enterprise --retry-held`, or, with a reason, `citylake quality release enterprise "
        "--reason …`; `citylake quality held` lists held batches.", highlight=False, soft_wrap=True)
