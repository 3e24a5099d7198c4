"""``publish__open_data``: every morning at 06:30 Asia/Shanghai the open-data release
(``pipelines.publish.release``) to ``<exports>/open/<YYYY-MM-DD>/``. It is scheduled by the clock, not by the
loads: it releases whatever curated builds had passed the gate by then (a build still running or held is
released by a later run; the pointer keeps the previous release meanwhile).

One task per curated dataset (the task id is the dataset), run one after another with
``trigger_rule=all_done``, so a blocked or failed dataset never stops the next and the grid shows which:
released / unchanged / withdrawn → success, not open (不予开放) or not passed the gate → skipped, blocked by the leak gate
→ failed without retry (a verdict on data, like a held batch), failed otherwise → failed after retries.
One at a time on purpose: each dataset moves ``open/latest.json`` when its folder is verified, and the
pointer is read, changed for that dataset and replaced whole. Then ``catalog`` (``trigger_rule=all_done``)
writes the date's DCAT-AP 3 ``catalog.jsonld`` over every dataset the pointer names and applies retention.

Parse time reads only the curated contracts as plain YAML (the dataset names) and the local department
registry (the owner's name); pyarrow, DuckDB and Iceberg are imported inside the tasks. The release date is
the run's logical date in Asia/Shanghai.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import CronTriggerTimetable, dag, task

from pipelines.curate.plan import curated_specs
from pipelines.dag_defaults import START, default_args, run_day
from pipelines.settings import load_settings

log = logging.getLogger("dags.publish_open_data")  # named: the DagBag imports this file as unusual_prefix_…

SCHEDULE = "30 6 * * *"

try:  # the bureau that runs the portal (CITYLAKE_OPEN_PUBLISHER or 合肥市数据资源局, schemas/departments.yml)
    from pipelines.publish.dcat import open_publisher

    OWNER = open_publisher()[1]
except Exception:  # noqa: BLE001 - a broken registry must not hide this DAG; the ingest DAGs report it
    OWNER = "合肥市数据资源局"

DATASETS = sorted(curated_specs(load_settings().root / "schemas" / "curated"))

DOC = f"""### 开放数据发布 (open-data release)

每天 06:30（北京时间）按时钟运行（不等待夜间入湖与数据加工）：发布此时已通过质量检查的构建；仍在加工或被拦截的
构建由之后的运行发布，其间指针保持上一版本。发布日期为本次运行的逻辑日期（北京时间）。

每个治理后数据集一个任务（依次运行，前一个失败不影响后一个）：读取 `curated.<数据集>` 当前通过质量检查的构建，
按契约脱敏（删除、遮蔽、泛化到年/区县/网格、1≤n<k 的计数留空），写出 CSV（UTF-8 BOM）、JSON Lines、Parquet 与
`datapackage.json`、`dictionary.csv`、`manifest.json`（SHA-256、行数、数据截止）、`changes.json`，
泄露检查通过并校验后才移动 `open/latest.json` 中该数据集的指针。泄露检查：身份证号、手机号、银行卡号、个体工商户统一社会信用代码、
门牌地址在每个文件每一列的每个值中全量检查（含自由文本内、分组书写或与日期粘连的号码）；姓名：姓名类数据元的列全量检查，
其他文本列抽样（首块及每 100 万行一块的 1000 个值，多数为姓名则此后全量），自由文本中夹带的姓名不检查。

| 任务状态 | 含义 |
|---|---|
| success | 已发布，或构建未变化（不生成新目录），或已撤回（改为不予开放：指针条目删除，目录待保留期清理） |
| skipped | 不予开放，或当前构建未通过质量检查 |
| failed（不重试） | 泄露检查拦截：文件已删除，指针保持上一版本，`meta.releases` 记录（已遮蔽） |
| failed（重试后） | 其他错误，指针保持上一版本 |

最后 `catalog` 任务撤回契约已删除的数据集，写出当日 DCAT-AP 3 目录 `open/<日期>/catalog.jsonld` 并按保留期清理
旧目录（指针引用的目录永不删除；同日被新构建取代的目录删除）。Datasets: {", ".join(f"`{d}`" for d in DATASETS)}.
Local equivalent: `citylake open release --date <YYYY-MM-DD>`. Owner: {OWNER}.
"""


@dag(
    dag_id="publish__open_data",
    schedule=CronTriggerTimetable(SCHEDULE, timezone="Asia/Shanghai"),
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(OWNER),
    tags=["publish", "open-data", OWNER],
    doc_md=DOC,
)
def publish_open_data() -> None:
    @task(trigger_rule="all_done")
    def release(dataset: str, **context: Any) -> dict:
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from pipelines.errors import CitylakeError
        from pipelines.publish.release import release_open_data

        # the run id is the dag run's and the dataset's: a retry's meta.releases rows are told apart by it
        result = release_open_data(release_date=run_day(context), datasets=[dataset],
                                   run_id=f"{context['dag_run'].run_id}__{dataset}", finish=False)
        outcome = result.outcomes[0]
        summary = outcome.to_dict()
        log.info("open release %s: %s, %d rows, %s", dataset, outcome.status, outcome.rows, outcome.folder or "-")
        if outcome.status in ("not_open", "not_passed"):
            raise AirflowSkipException(f"{dataset}: {outcome.status}: {outcome.reason}")
        if outcome.status == "blocked":  # masked hits only: the task log is read by people
            for hit in outcome.leak_hits[:10]:
                log.error("blocked: %s row %s column %s: %s %s", hit["file"], hit["row"], hit["column"],
                          hit["kind"], hit["value"])
            raise AirflowFailException(f"{dataset}: blocked by the leak gate: {outcome.reason}")
        if outcome.status == "failed":
            raise CitylakeError(f"{dataset}: release failed: {outcome.reason}")
        return summary

    @task(trigger_rule="all_done")
    def catalog(**context: Any) -> dict:
        from pipelines.publish.release import finish_release

        written, removed = finish_release(release_date=run_day(context))
        return {"catalog": written, "removed": removed}

    previous = None
    for dataset in DATASETS:
        current = release.override(task_id=dataset)(dataset=dataset)
        if previous is not None:
            previous >> current
        previous = current
    last = catalog()
    if previous is not None:
        previous >> last


publish_open_data()
