"""``maintain__lake``: every Sunday at 03:00 Asia/Shanghai, lake maintenance per namespace (one mapped task
each): compact small files (std, meta, quarantine), expire snapshots past the retention except those still
needed, delete unreferenced files older than the orphan window.

Parse time reads only the local department registry (the owner's name); pyiceberg is imported inside the
task. The work lives in ``pipelines.lake.maintenance``; XCom carries counts only.
"""

from __future__ import annotations

from airflow.sdk import CronTriggerTimetable, dag, task

from pipelines.dag_defaults import START, default_args
from pipelines.departments import department_name, load_departments

OWNER_CODE = "11340100003009991Q"
"""合肥市数据资源局 (schemas/departments.yml): the bureau runs the lake."""
SCHEDULE = "0 3 * * 0"
NAMESPACES = ("raw", "std", "curated", "quarantine", "meta")
"""``pipelines.lake.catalog.NAMESPACES`` (not imported: it loads pyiceberg's SQL catalog at parse time)."""

try:
    OWNER = department_name(load_departments(), OWNER_CODE)
except Exception:  # noqa: BLE001 - a broken registry must not hide this DAG; the ingest DAGs report it
    OWNER = "合肥市数据资源局"

DOC = f"""### 数据湖维护 (lake maintenance)

每周日 03:00（北京时间）按命名空间（raw / std / curated / quarantine / meta）各运行一个任务：

1. 合并小文件（std、meta、quarantine）：按磁盘大小判断，一次提交、行不变，快照摘要标记
   `citylake.maintenance=compact` 并记下其数据快照（`citylake.data-snapshot`）。
2. 过期快照：早于 `CITYLAKE_SNAPSHOT_RETENTION_DAYS`（默认 7 天）的快照删除，仍需要的保留：当前快照、
   暂扣或未发布批次的 raw 快照、未记录发布的 std 快照、各授权上次共享交付以来的 std 快照、最新数据快照。
3. 删除孤儿文件：没有任何快照引用、且早于安全窗口（最长任务超时 + 余量）的文件。

Maintenance reads the wall clock (now), not the run's logical date: the orphan window and the retention are
ages measured against the files' real modification times, and a rerun days later must not delete a file
younger than the window (conservative for orphans).

Each task returns counts per table (compacted, expired, kept by reason, orphans deleted); a table that failed
fails its namespace's task after the others ran (retried with backoff). Local equivalent:
`citylake lake maintain [--dry-run] [table...]`. Owner: {OWNER}.
"""


@dag(
    dag_id="maintain__lake",
    schedule=CronTriggerTimetable(SCHEDULE, timezone="Asia/Shanghai"),
    start_date=START,
    catchup=False,
    max_active_runs=1,
    default_args=default_args(OWNER),
    tags=["maintenance", "lake", OWNER],
    doc_md=DOC,
)
def maintain_lake() -> None:
    @task(map_index_template="{{ namespace_label }}")
    def maintain_namespace(namespace: str) -> dict:
        from airflow.sdk import get_current_context

        from pipelines.errors import CitylakeError
        from pipelines.lake.maintenance import maintain

        get_current_context()["namespace_label"] = namespace  # type: ignore[literal-required]
        reports = maintain(namespaces=(namespace,))
        failed = [r for r in reports if r.skipped and r.skipped.startswith("failed")]
        counts = {"tables": len(reports), "compacted_files": sum(r.compacted_files for r in reports),
                  "expired": sum(r.expired for r in reports), "orphans": sum(r.orphans for r in reports),
                  "orphan_bytes": sum(r.orphan_bytes for r in reports), "failed": len(failed)}
        if failed:
            raise CitylakeError(f"{namespace}: maintenance failed for {', '.join(r.table for r in failed)}: "
                                f"{failed[0].skipped}")
        return counts

    # Unmapped: Airflow 3.3 lists a DAG's owners from its unmapped tasks only (mapped-only showed `airflow`).
    @task
    def summarize(counts: list[dict]) -> dict:
        """The week's totals over every namespace, one log line and one XCom."""
        import logging

        keys = ("tables", "compacted_files", "expired", "orphans", "orphan_bytes")
        total = {k: sum(c[k] for c in counts) for k in keys}
        logging.getLogger("dags.maintain_lake").info("lake maintenance: %s", ", ".join(f"{k} {v}" for k, v in total.items()))
        return total

    summarize(maintain_namespace.expand(namespace=list(NAMESPACES)))


maintain_lake()
