"""One ``ingest__<system>`` DAG per source system, produced from the registry (schemas/sources/*.yml).

Parse-time work is reading the local registry YAML and schemas/departments.yml only: no database, no
network, no heavy imports. The load itself lives in ``pipelines.ingest`` (importable and runnable without Airflow).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from airflow.sdk import AssetAlias, CronDataIntervalTimetable, Param, dag, task

from pipelines.dag_defaults import START, TIME_PATTERN, default_args
from pipelines.departments import department_name, load_departments
from pipelines.lake.assets import table_asset
from pipelines.registry import SourceSystem, load_registry
from pipelines.settings import TZ, load_settings

# Named, not __name__: the DagBag imports a DAG file as ``unusual_prefix_<sha1>_ingest_factory``, a logger outside
# ``dags`` that the JSON lines (pipelines.logs, loggers pipelines and dags) would never catch.
log = logging.getLogger("dags.ingest_factory")


def _doc(system: SourceSystem, department: str) -> str:
    rows = "\n".join(
        f"| `{t.code}` | `{system.raw_table(t.code)}` | {', '.join(t.primary_key)} | "
        f"{getattr(t, 'cursor', None) or ('files: ' + t.glob if hasattr(t, 'glob') else 'full refresh')} |"
        for t in system.all_tables
    )
    return (
        f"### {system.name} ({system.system})\n\n"
        f"所属部门: {department} (`{system.department}`) · 连接: `{system.connection}` · 调度: `{system.schedule}` (Asia/Shanghai)\n\n"
        f"| table | lake table | primary key | cursor |\n|---|---|---|---|\n{rows}\n\n"
        "Each table is one mapped task instance; a failing table does not stop the others. "
        "Local equivalent: `citylake ingest " + system.system + "`.\n\n"
        "**Trigger by hand** (params, all optional): nothing → incremental from each table's watermark, as a "
        "scheduled run; `since` [+ `until`] (ISO, Asia/Shanghai unless zoned) → that window of the cursor (a window "
        "that starts after the watermark leaves it there: the next run loads the rows before the window); "
        "`full_refresh` → the whole table, compared with the lake. Tables without a cursor are always a full "
        "refresh and file drops load the files not loaded yet. `plan_run` checks the params before anything "
        "loads and says what the run loads; each `load_table` logs and returns its rows, mode and window."
    )


def _params() -> dict[str, Param]:
    """A manual run's choices, checked by JSON schema when the run is triggered (UI form, REST, CLI ``--conf``);
    how they combine is checked by ``plan_run`` (``pipelines.dag_defaults.ingest_run``)."""
    when = {"type": ["null", "string"], "pattern": TIME_PATTERN}
    return {
        "since": Param(None, description="窗口起点 (ISO 日期或时间, 默认 Asia/Shanghai): 只装载游标在此之后的行; "
                       "空 = 从水位线增量装载", **when),
        "until": Param(None, description="窗口终点 (不含; 需同时给出 since; 空 = 本次运行的时间)", **when),
        "full_refresh": Param(False, type="boolean", description="全量刷新: 读取整表并与数据湖比对 (不可与 since/until 同用)"),
    }


def build_ingest_dag(system: SourceSystem):  # noqa: ANN201 - returns an Airflow DAG
    alias = AssetAlias(f"raw__{system.system}")
    # the owning department's Chinese name: owner and tag are what people filter the DAG list by
    department = department_name(load_departments(), system.department)

    @dag(
        dag_id=f"ingest__{system.system}",
        schedule=CronDataIntervalTimetable(system.schedule, timezone="Asia/Shanghai"),
        start_date=START,
        catchup=False,
        max_active_runs=1,
        default_args=default_args(department),
        tags=["ingest", system.system, department],
        doc_md=_doc(system, department),
        params=_params(),
    )
    def ingest_dag() -> None:
        # Checks the params and says what the run loads, before any load starts (a contradiction fails here,
        # once, without retries). Its inlets are the tables whose watermarks decide an incremental run; they
        # also register those Assets with Airflow (the alias alone does not: every event emitted through it
        # for a table no DAG declared logged "AssetModel … not found"). An unmapped task also gives the DAG
        # its owner in Airflow 3.3's DAG list, which reads owners only from unmapped tasks (all mapped → "airflow").
        @task(inlets=[table_asset(system.raw_table(t.code)) for t in system.all_tables])
        def plan_run(**context: object) -> dict:
            from airflow.sdk.exceptions import AirflowFailException

            from pipelines.dag_defaults import RunParamsError, ingest_run

            try:
                run = ingest_run(context)
            except RunParamsError as exc:
                raise AirflowFailException(str(exc)) from None
            log.info("ingest__%s: %s", system.system, run.describe())
            return run.to_dict()

        # max_connections is a hard cap: a load opens up to connections_per_load connections at once
        # (parallel ranges sharing one snapshot), so it takes that many slots of the system's pool.
        @task(pool=f"source__{system.system}", pool_slots=system.connections_per_load, outlets=[alias],
              map_index_template="{{ task.op_kwargs['table'] }}")
        def load_table(table: str, **context: object) -> dict:
            from pipelines.dag_defaults import ingest_run
            from pipelines.ingest import ingest_table
            from pipelines.registry import get_system

            spec = get_system(load_settings().registry_dir, system.system)
            dag_run = context["dag_run"]
            run = ingest_run(context)  # plan_run checked the params
            cursor = getattr(spec.table(table), "cursor", None)
            from pipelines.lineage import attach_ingest

            attach_ingest(context, spec, table, load_settings())  # OpenLineage: source table → raw table (if enabled)
            result = ingest_table(
                spec, table,
                mode=run.mode if cursor or run.mode == "full" else "incremental",  # type: ignore[arg-type]
                since=run.since, until=run.until,
                batch_id=str(dag_run.run_id) + f"__{table}",  # type: ignore[attr-defined]
                extracted_at=run.end,
            )
            # Only a table that landed emits its Asset event.
            context["outlet_events"][alias].add(
                table_asset(result.identifier),
                extra={"snapshot_id": result.snapshot_id, "rows": result.rows_written},
            )
            from pipelines.logs import log_context

            # the lines below belong to the load's run, as the lines logged inside ingest_table do
            with log_context(run_id=result.batch_id, batch=result.batch_id, table=result.identifier):
                return _report_load(spec, table, result, run, context)

        def _report_load(spec: SourceSystem, table: str, result: Any, run: Any, context: Any) -> dict:
            from pipelines.registry import SqlTable

            # Rejected drop files were copied aside and the good ones landed: the task succeeds, and says so.
            rejected = len(result.files_rejected)
            # What landed, in one line (a task cannot write its run's note in Airflow 3.3: the Task SDK's
            # execution API has no endpoint for it and tasks have no metadata-DB access; this line and the
            # returned dict are the record, per table, in the task's log and XCom)
            if isinstance(spec.table(table), SqlTable):
                window = "whole table" if result.mode == "full" else \
                    f"cursor from {run.since.isoformat() if run.since else 'the watermark'} to " \
                    f"{run.until.isoformat() if run.until else 'the latest row'}"
                log.info("%s: %s rows written of %s extracted, mode %s, %s, watermark now %s%s (%s run)",
                         result.identifier, f"{result.rows_written:,}", f"{result.rows_extracted:,}", result.mode,
                         window, result.watermark, " (kept: the window starts after it; the next incremental run "
                         "loads the rows before the window)" if result.watermark_gap else "", run.kind)
            else:
                log.info("%s: %s rows written, %d file(s) loaded, %d repeated, %d rejected (%s run)",
                         result.identifier, f"{result.rows_written:,}", len(result.files_loaded),
                         len(result.files_repeated), rejected, run.kind)
            if rejected:
                # file names (and the copies' paths) masked: the task log is shown in the Airflow UI
                shown = result.to_dict()["files_rejected"]
                log.warning("%s: rejected %s", result.identifier,
                            "; ".join(f"{r['file']} ({r['copied_to']})" for r in shown))
                # the task succeeds, so no failure callback fires: tell the owning department explicitly
                from pipelines.alerts import alert_rejected

                alert_rejected(spec, table, result.files_rejected, context=context)
            return {**result.to_dict(), "files_rejected_count": rejected, "run": run.to_dict()}

        loads = load_table.expand(table=[t.code for t in system.all_tables])
        plan_run() >> loads
        after_loads = [loads]

        checked = [t.code for t in system.tables if t.deletions is not None]
        if checked:
            # The key-only deletion check of a cursor table, after its load, in the run whose data interval
            # holds a fire time of the table's ``deletions.schedule`` (skipped in the other runs).
            @task(pool=f"source__{system.system}", pool_slots=system.connections_per_load, outlets=[alias],
                  map_index_template="{{ task.op_kwargs['table'] }}")
            def check_deletions(table: str, **context: object) -> dict:
                from airflow.sdk.exceptions import AirflowSkipException

                from pipelines.dag_defaults import ingest_run
                from pipelines.ingest import ingest_table
                from pipelines.registry import SqlTable, get_system

                spec = get_system(load_settings().registry_dir, system.system)
                sql = spec.table(table)
                check = sql.deletions if isinstance(sql, SqlTable) else None
                dag_run = context["dag_run"]
                run = ingest_run(context)
                end = run.end
                if check is None or not run.deletion_check:
                    raise AirflowSkipException(f"{table}: no deletion check in a {run.kind} run")
                if not check.due(run.interval_start, end):  # type: ignore[arg-type]
                    raise AirflowSkipException(f"{table}: deletion check not due in this data interval")
                result = ingest_table(spec, table, mode="deletions", batch_id=f"{dag_run.run_id}__{table}__deletions",  # type: ignore[attr-defined]
                                      extracted_at=end)  # type: ignore[arg-type]
                if result.rows_written:
                    context["outlet_events"][alias].add(  # type: ignore[index]
                        table_asset(result.identifier),
                        extra={"snapshot_id": result.snapshot_id, "rows": result.rows_written})
                from pipelines.logs import log_context

                with log_context(run_id=result.batch_id, batch=result.batch_id, table=result.identifier):
                    log.info("%s: %d key(s) read, %d deleted at the source", result.identifier,
                             result.rows_extracted, result.rows_deleted)
                return result.to_dict()

            deletions = check_deletions.expand(table=checked)
            loads >> deletions
            after_loads.append(deletions)

        datasets = DATASETS_BY_SYSTEM.get(system.system, [])
        if datasets:
            std_alias = AssetAlias(f"std__{system.system}")

            # Write-audit-publish after raw landed; a table whose load failed simply has no new batch.
            @task(trigger_rule="all_done", outlets=[std_alias], map_index_template="{{ task.op_kwargs['dataset'] }}")
            def publish_std(dataset: str, **context: object) -> dict:
                from airflow.sdk.exceptions import AirflowFailException

                from pipelines.dag_defaults import RunParamsError, ingest_run
                from pipelines.quality.gate import QualityGateError, run_quality

                try:
                    end = ingest_run(context).end
                except RunParamsError as exc:  # plan_run failed on them: nothing loaded, nothing to publish
                    raise AirflowFailException(str(exc)) from None
                # The run id is the dag run's and this mapped task's (its dataset): a retry or a cleared task
                # reuses it, so the gate replaces that run's meta rows instead of adding them again.
                try:
                    result = run_quality(dataset, reference_date=end.astimezone(TZ).date(),  # type: ignore[attr-defined]
                                         run_id=f"{context['dag_run'].run_id}__{dataset}")  # type: ignore[attr-defined]
                except QualityGateError as exc:
                    from pipelines.alerts import alert_held

                    alert_held(exc, context=context)  # never raises: the hold stands whether mail got through
                    # A held batch is a data verdict: retrying re-reads the same rows, so fail at once.
                    raise AirflowFailException(str(exc)) from exc
                # Only a publish emits std's Asset (the curate__<domain> DAGs are scheduled on it): nothing_new
                # changed nothing they could read.
                if result.status in ("published", "released"):
                    context["outlet_events"][std_alias].add(  # type: ignore[index]
                        table_asset(f"std.{dataset}"),
                        extra={"snapshot_id": result.std_snapshot, "rows": result.published,
                               "batches": result.batches})
                return result.to_dict()

            after_loads >> publish_std.expand(dataset=datasets)

    return ingest_dag()


def build_broken_dag(system_code: str, message: str):  # noqa: ANN201
    """A registry file that does not validate becomes a DAG that fails with the message (others load)."""

    @dag(dag_id=f"ingest__{system_code}", schedule=None, start_date=START, catchup=False,
         default_args=default_args("citylake"), tags=["ingest", "config-error"],
         doc_md=f"**Registry error**\n\n```\n{message}\n```")
    def broken() -> None:
        @task
        def registry_error() -> None:
            from pipelines.errors import ConfigError

            raise ConfigError(message)

        registry_error()

    return broken()


def datasets_by_system(directory: Path) -> dict[str, list[str]]:
    """system → dataset codes built from it, read from the contracts' ``source`` (plain YAML, no validation:
    a broken contract fails its publish task with the full message instead of hiding the DAG)."""
    out: dict[str, list[str]] = {}
    for path in sorted(directory.glob("*.yml")):
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            out.setdefault(doc["source"]["system"], []).append(doc["dataset"])
        except Exception as exc:  # noqa: BLE001
            log.error("%s: %s", path, exc)
    return out


DATASETS_BY_SYSTEM = datasets_by_system(load_settings().root / "schemas" / "datasets")
_systems, _errors = load_registry(load_settings().registry_dir)
for _system in _systems.values():
    globals()[f"ingest__{_system.system}"] = build_ingest_dag(_system)
for _path, _error in _errors.items():
    log.error("%s", _error)
    if _path.stem.replace("_", "").isalnum() and _path.stem not in _systems:
        globals()[f"ingest__{_path.stem}"] = build_broken_dag(_path.stem, str(_error))
