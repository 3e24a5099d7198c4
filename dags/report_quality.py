"""``report__quality``: every morning at 06:00 Asia/Shanghai, GX Data Docs for engineers and the 一数一源
comparison of every copy with its authority, then the Chinese governance site (``pipelines.report``) for
governance staff.

Parse time reads only the local department registry (the owner's name); GX, DuckDB and Jinja2 are imported
inside the tasks. The work lives in ``pipelines.quality.docs``, ``pipelines.quality.consistency`` and
``pipelines.report``.
"""

from __future__ import annotations

from airflow.sdk import CronTriggerTimetable, dag, task

from pipelines.dag_defaults import START, default_args, run_day
from pipelines.departments import department_name, load_departments

OWNER_CODE = "11340100003009991Q"
"""合肥市数据资源局 (schemas/departments.yml): the governance bureau owns the report."""
SCHEDULE = "0 6 * * *"


try:
    OWNER = department_name(load_departments(), OWNER_CODE)
except Exception:  # noqa: BLE001 - a broken registry must not hide this DAG; the ingest DAGs report it
    OWNER = "合肥市数据资源局"

DOC = f"""### 数据质量报告 (governance report)

每天 06:00（北京时间）在夜间入湖之后运行，包括有批次被暂扣的夜晚：

1. `data_docs`: GX Data Docs（工程师视图，`<lake>/gx/uncommitted/data_docs/local_site/`；共享目录
   `CITYLAKE_ARTIFACTS_DIR` 另有位置时，先取回各 worker 的校验结果，再放到 `<artifacts>/gx/data_docs/`）。
2. `consistency`（与 `data_docs` 并行）: 一数一源比对，每个副本与权威来源逐键比对，结果写入
   `meta.conflicts` 与 `meta.quality_results`（一致性维度）。
3. `build_report`: 中文数据治理报告（`<lake>/report/index.html`；共享目录另有位置时同时放到 `<artifacts>/report/`，
   S3 湖默认即 `<warehouse>/report/`）：
   总览、各部门、各数据集、一数一源冲突、数据资源目录（一本账）。

`build_report` runs even when `data_docs` or `consistency` failed (`trigger_rule=all_done`): the governance
pages do not depend on GX, they only link to its pages, and the conflicts page then shows the previous
comparison with its time. `consistency`'s run id is derived from the DAG run, so a retry replaces what the
failed attempt recorded. The report day is the run's logical date in Asia/Shanghai.
Local equivalent: `citylake quality docs && citylake quality run all && citylake report`. Owner: {OWNER}.
"""


@dag(
    dag_id="report__quality",
    schedule=CronTriggerTimetable(SCHEDULE, timezone="Asia/Shanghai"),
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(OWNER),
    tags=["report", "quality", OWNER],
    doc_md=DOC,
)
def report_quality() -> None:
    @task
    def data_docs() -> dict:
        from pipelines.quality.docs import build_data_docs

        built = build_data_docs()
        return {"index": str(built.index), "suites": built.suites, "new_results": built.new_results,
                "vendored": built.vendored, "published": built.published}

    @task
    def consistency(**context: object) -> dict:
        from pipelines.quality.consistency import run_consistency

        # one id per DAG run: a retry replaces the failed attempt's rows instead of adding a second run
        summaries = run_consistency(run_id=f"{context['dag_run'].run_id}__consistency")  # type: ignore[attr-defined]
        return {"pairs": len(summaries), "conflicts": sum(s["conflicts"] for s in summaries)}

    @task(trigger_rule="all_done")
    def build_report(**context: object) -> dict:
        from pipelines.report import build_site

        # publish explicitly: a cleared or re-run earlier logical date is still the production site
        index = build_site(today=run_day(context), publish=True)
        return {"index": str(index)}

    [data_docs(), consistency()] >> build_report()


report_quality()
