"""``publish__sharing``: every morning at 07:00 Asia/Shanghai, each departmental grant's delivery
(``pipelines.share.deliver``) to ``<exports>/share/<department>/<dataset>/<date>/`` or the department's
PostgreSQL schema.

One task per grant (the task id is the grant id), independent of each other: a refused grant (expired, unknown
dataset or column, 不予共享, …) is recorded in ``meta.sharing_audit`` and its task succeeds with a warning in
its log (a verdict on the grant, not an error to retry); nothing new → success; a missing master key fails the
task without retry (it stops the delivery until configured, never sends clear values); a target failure is
recorded and retried (the consumer keeps its previous delivery meanwhile).

A grant file that does not load (YAML syntax, or a grant id that cannot name a task) adds one task,
``grant_config``, which fails without retry with the loader's ``file:line`` message, so the operator sees it in
the UI; the grants of the files that load still deliver (``load_grants(isolate=True)``). A task whose grant is
in a broken file fails without retry naming the file's problems.

Parse time reads only the grant files as plain YAML (the grant ids) and the local department registry (the
owner's name); pyarrow and Iceberg are imported inside the tasks. The delivery date is the run's day in
Asia/Shanghai; the run id is ``<dag run id>__<grant id>``, so a retry finds what its earlier attempt
delivered (``nothing_new``, not a second delivery).
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import CronTriggerTimetable, dag, task

from pipelines.dag_defaults import START, default_args, run_day
from pipelines.departments import department_name, load_departments
from pipelines.settings import load_settings

log = logging.getLogger("dags.publish_sharing")  # named: the DagBag imports this file as unusual_prefix_…

OWNER_CODE = "11340100003009991Q"
"""合肥市数据资源局 (schemas/departments.yml): the bureau runs sharing and answers for its audit trail."""
SCHEDULE = "0 7 * * *"

try:
    OWNER = department_name(load_departments(), OWNER_CODE)
except Exception:  # noqa: BLE001 - a broken registry must not hide this DAG; the ingest DAGs report it
    OWNER = "合肥市数据资源局"

CONFIG_TASK = "grant_config"
"""The task reporting grant files that do not load (``pipelines.share.grants.CONFIG_TASK``: no grant takes it)."""

try:  # the grant files as plain YAML: ids only, no validation (a task reports a broken file when it runs)
    from pipelines.share.grants import read_grant_ids

    _valid, INVALID, _problems = read_grant_ids(load_settings().grants)
    GRANTS = sorted(_valid)
    PROBLEM = "; ".join(_problems)  # a file that is not YAML: the other files' grants still deliver
except Exception as exc:  # noqa: BLE001 - the DAG still loads and says why (the grant_config task fails)
    GRANTS, INVALID, PROBLEM = [], [], f"{type(exc).__name__}: {exc}".replace("\n", "; ")

DOC = f"""### 部门数据共享 (departmental sharing)

每天 07:00（北京时间）运行（在 06:30 的开放数据发布之后）：按 `schemas/grants/*.yml` 的授权向用数部门交付数据。
每个授权一个任务，互不影响：

1. 按共享类型与授权判定（无条件共享 / 有条件共享须有效审批 / 不予共享永不交付；个人信息列须说明用途并脱敏，
   核验用途须经审批才交付明文）；拒绝的授权记录原因，任务成功并在日志中告警。
2. 增量：只交付该部门上次交付之后 std 发布的批次中的行（`_batch_id` 与 `meta.batches`），源端删除的主键随
   `deletions` 文件或数据库 DELETE 传递；首次交付、授权列或脱敏方式变更时全量。
3. 化名：HMAC-SHA256，每个部门一把由主密钥派生的密钥（部门之间不能按化名关联，同一部门历次交付稳定）；
   主密钥未配置时停止交付（不重试），绝不交付明文。
4. 交付到 `<exports>/share/<部门>/<数据集>/<日期>/`（Parquet + CSV + `manifest.json`，SHA-256）或部门的
   PostgreSQL schema（一个事务）；失败时部门保留上一次完整的交付。
5. 每次交付与拒绝都追加到 `meta.sharing_audit`（只追加，不修改）：`citylake share audit`。

| 任务状态 | 含义 |
|---|---|
| success | 已交付、无新数据，或授权被拒绝（原因见审计表与任务日志） |
| failed（不重试） | 共享主密钥未配置 |
| failed（不重试） | 授权文件有错误（该文件的授权不交付；`grant_config` 任务或该授权的任务给出 文件:行号） |
| failed（重试后） | 交付目标写入失败或其他错误，部门保留上一次交付 |

Grants: {", ".join(f"`{g}`" for g in GRANTS) or "none"}{f" (load error: {PROBLEM})" if PROBLEM else ""}{
    f" (ids that cannot name a task: {', '.join(repr(g) for g in INVALID)})" if INVALID else ""}.
Local equivalent: `citylake share deliver --all --date <YYYY-MM-DD>`. Owner: {OWNER}.
"""


@dag(
    dag_id="publish__sharing",
    schedule=CronTriggerTimetable(SCHEDULE, timezone="Asia/Shanghai"),
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(OWNER),
    tags=["publish", "sharing", OWNER],
    doc_md=DOC,
)
def publish_sharing() -> None:
    @task
    def deliver(grant_id: str, **context: Any) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        from pipelines.errors import ConfigError
        from pipelines.privacy.pseudonym import MissingKeyError
        from pipelines.share.deliver import deliver_grant

        # the run id is the dag run's and the grant's: a retry finds its own earlier delivery in the audit
        try:
            result = deliver_grant(None, grant_id, delivery_date=run_day(context),
                                   run_id=f"{context['dag_run'].run_id}__{grant_id}")
        except MissingKeyError as exc:  # retrying cannot make a key appear; audited as failed already
            raise AirflowFailException(str(exc)) from None
        except ConfigError as exc:  # a broken grant file does not heal by retrying: one line for the UI
            raise AirflowFailException("; ".join(exc.problems)) from None
        if result.outcome == "refused":
            log.warning("grant %s refused (%s): %s", grant_id, result.reason, result.detail)
        else:
            log.info("grant %s: %s %s, %d rows, %d deleted, %s", grant_id, result.outcome, result.mode or "-",
                     result.rows, result.deleted, result.target or "-")
        return result.to_dict()

    @task(task_id=CONFIG_TASK, retries=0)
    def grant_config() -> None:
        """Fail with the grant files' load error (file:line), once per run, where the operator looks."""
        from airflow.sdk.exceptions import AirflowFailException

        from pipelines.errors import ConfigError
        from pipelines.share.grants import load_grants

        try:
            load_grants(load_settings())
        except ConfigError as exc:
            raise AirflowFailException("; ".join(exc.problems)) from None
        # fixed since this DAG file was parsed: the next parse has the grants' tasks
        log.info("grant files load now (at parse time: %s)", PROBLEM or f"invalid grant ids {INVALID}")

    for grant_id in GRANTS:
        deliver.override(task_id=grant_id)(grant_id=grant_id)
    if PROBLEM or INVALID:
        grant_config()


publish_sharing()
