"""One ``curate__<domain>`` DAG per domain of the curated contracts (schemas/curated/*.yml).

Scheduled on the Assets of the domain's inputs (any of them: ``AssetAny``), which ``publish_std`` (and other
domains' curate tasks) emit when they publish; one task per curated dataset, in input-dependency order, each
emitting its ``curated.<dataset>`` Asset when it published a build (through the alias ``curated__<domain>``).
Parse-time work is reading those YAML files and schemas/departments.yml only: no database, no heavy imports.
The build itself is ``pipelines.curate.runner.build_curated`` (importable and runnable without Airflow).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from airflow.sdk import AssetAlias, AssetAny, dag, task

from pipelines.curate.plan import build_order, curated_specs
from pipelines.dag_defaults import START, default_args, run_day
from pipelines.departments import department_name, load_departments
from pipelines.lake.assets import table_asset
from pipelines.settings import load_settings

log = logging.getLogger("dags.curate")  # named: the DagBag imports this file as unusual_prefix_…


def _doc(domain: str, datasets: list[str], specs: dict[str, dict[str, Any]], department: str,
         external: list[str]) -> str:
    rows = "\n".join(f"| `{d}` | {specs[d]['name']} | {', '.join(f'`{i}`' for i in specs[d]['inputs'])} | "
                     f"`curated.{d}` |" for d in datasets)
    return (
        f"### 数据加工 {domain} (curate__{domain})\n\n"
        f"所属部门: {department} · 调度: 任一输入数据集发布新快照时运行 ({', '.join(f'`{i}`' for i in external)})\n\n"
        f"| task | 名称 | inputs | lake table |\n|---|---|---|---|\n{rows}\n\n"
        "Each task builds one curated dataset from its inputs' current snapshots through the write-audit-publish "
        "gate: a build whose inputs did not change is `nothing_new`; a held build writes nothing, fails the task "
        "(no retry: a verdict on data) and alerts the owning department. Local equivalent: "
        f"`citylake curate {' && citylake curate '.join(datasets)}`."
    )


def build_curate_dag(domain: str, specs: dict[str, dict[str, Any]], departments: dict[str, Any]) -> Any:
    datasets = [d for d in build_order({d: s["inputs"] for d, s in specs.items()}) if specs[d]["domain"] == domain]
    produced = {f"curated.{d}" for d in datasets}
    # inputs built inside this DAG are ordered by task dependencies, not scheduled on (it would trigger itself)
    external = sorted({i for d in datasets for i in specs[d]["inputs"] if i not in produced})
    owners = Counter(specs[d]["owner"] for d in datasets)
    owner_code = sorted(owners, key=lambda o: (-owners[o], o))[0]
    department = department_name(departments, owner_code)
    alias = AssetAlias(f"curated__{domain}")

    @dag(
        dag_id=f"curate__{domain}",
        schedule=AssetAny(*[table_asset(i) for i in external]),
        start_date=START,
        catchup=False,
        max_active_runs=1,
        default_args=default_args(department),
        tags=["curate", domain, department],
        doc_md=_doc(domain, datasets, specs, department, external),
    )
    def curate_dag() -> None:
        @task(outlets=[alias])
        def build(dataset: str, **context: Any) -> dict:
            from airflow.sdk.exceptions import AirflowFailException

            from pipelines.curate.runner import build_curated
            from pipelines.quality.gate import QualityGateError

            try:
                # the run id is the dag run's and the dataset's: a retry or a cleared task replaces what it recorded
                result = build_curated(dataset, run_id=f"{context['dag_run'].run_id}__{dataset}",
                                       reference_date=run_day(context))
            except QualityGateError as exc:
                from pipelines.alerts import alert_held

                alert_held(exc, context=context)  # never raises: the hold stands whether mail got through
                raise AirflowFailException(str(exc)) from exc
            if result.status == "waiting":  # an input not loaded yet: not a failure, nothing to retry
                from airflow.sdk.exceptions import AirflowSkipException

                raise AirflowSkipException(f"curated.{dataset} waits for {', '.join(result.waiting_for)} "
                                           "(not in the lake yet)")
            if result.status in ("published", "released"):  # a nothing_new build changed nothing to read
                context["outlet_events"][alias].add(
                    table_asset(f"curated.{dataset}"),
                    extra={"snapshot_id": result.snapshot_id, "rows": result.rows, "build_id": result.build_id})
            log.info("curated.%s: %s, build %s, %d rows, %d quarantined", dataset, result.status, result.build_id,
                     result.rows, result.quarantined)
            return result.to_dict()

        tasks = {d: build.override(task_id=d)(dataset=d) for d in datasets}
        for d in datasets:
            for i in specs[d]["inputs"]:
                if i in produced:
                    tasks[i.partition(".")[2]] >> tasks[d]

    return curate_dag()


SPECS = curated_specs(load_settings().root / "schemas" / "curated")
_departments: Any
try:
    _departments = load_departments()
except Exception as _exc:  # noqa: BLE001 - a broken department registry must not hide these DAGs
    log.error("%s", _exc)
    _departments = {}
for _domain in sorted({s["domain"] for s in SPECS.values()}):
    globals()[f"curate__{_domain}"] = build_curate_dag(_domain, SPECS, _departments)
