"""What the governance site shows, read once from the lake into plain dicts (no rendering here).

Each ``meta.*`` table is read once into Arrow and aggregated with DuckDB; data tables are never scanned,
except a bounded sample of each quarantine table for failing-row examples (masked through
``pipelines.privacy``). Table sizes, update times and rejected drop files come from Iceberg metadata
(snapshot summaries, the raw tables' ``citylake.state`` ledger).

Curated datasets (主题层) get dataset pages as std ones do (their gate's results, builds, lineage, and each
column's grade and de-identification); the open-data page reads ``meta.releases`` (each curated dataset's
latest release event, with the leak gate's masked hits), ``open/latest.json`` (the portal's pointers) and
``meta.requests`` (开放需求, contacts masked). The sharing page reads ``meta.sharing_audit`` (each grant's
latest delivery, every refusal and failure with its reason in Chinese, counts per consumer department) and
the requests of kind ``share``; a lake from before sharing has no audit table and the page says so.
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.departments import department_name
from pipelines.formats import beijing_time, percent_floor
from pipelines.lake.meta import BATCHES, CONFLICTS, SHARING_AUDIT, STANDARDIZATION_LOG, latest_events
from pipelines.privacy.mask import mask_file_name, mask_message, mask_text
from pipelines.quality import scorecard
from pipelines.quality.scorecard import DIMENSIONS, Card
from pipelines.settings import TZ, Settings

log = logging.getLogger(__name__)

TREND_DAYS = 30
RECENT_DAYS = 7
"""The overview's batch counts, rows landed: the last seven Asia/Shanghai days up to the report day."""
EXAMPLES_PER_RULE = 3
QUARANTINE_SAMPLE = 5000
"""Quarantine rows read per dataset for examples (a bounded read, never the whole table)."""
CONFLICT_EXAMPLES = 5
_TAG_DESCRIPTIONS = {"duplicate_key": "主键不重复（只有重复行计为不通过）",
                     "source_conflict": "与权威来源的取值一致（一数一源）"}
STATUS_LABELS = {"published": "已发布", "published_partial": "发布（部分隔离）", "held": "暂扣", "released": "已放行",
                 "nothing_new": "无新数据"}
RELEASE_LABELS = {"released": "已发布", "unchanged": "未变化", "blocked": "已拦截", "failed": "失败", "not_open": "不开放",
                  "not_passed": "未通过质量检查", "none": "尚未发布"}
"""``meta.releases`` status → what the open-data page says."""
HIT_KINDS = {"resident_id": "公民身份号码", "mobile": "手机号码", "bank_card": "银行卡号", "person_name": "姓名",
             "address": "住址（门牌号）", "individual_uscc": "个体工商户统一社会信用代码"}
"""Leak-gate hit kinds (``pipelines.privacy.detect`` and the release's extra detectors) in Chinese."""
SHARE_REASONS = {
    "expired": "授权已过期", "unknown_dataset": "未知数据集", "unknown_department": "未知部门", "unknown_column": "未知字段",
    "column_outside_grant": "超出授权范围的字段", "not_shared": "不予共享", "missing_approver": "缺少审批人",
    "missing_expiry": "缺少有效期", "missing_purpose": "缺少用途", "clear_not_allowed": "个人信息明文未获核验授权",
    "key_not_granted": "未授权主键", "key_masked": "主键不可掩码", "method_not_offered": "共享方式未开放",
    "unknown_scenario": "未知免审即享场景", "missing_key": "共享密钥未配置", "target_failed": "交付目标写入失败",
    "error": "交付出错"}
"""``meta.sharing_audit`` reason codes (``pipelines.share.policy.REFUSAL_CODES``, the delivery's failures) in Chinese."""
SHARE_OUTCOMES = {"delivered": "已交付", "nothing_new": "无新数据", "refused": "已拒绝", "failed": "失败"}
SHARE_MODES = {"full": "全量", "incremental": "增量"}
SHARE_METHODS = {"file": "文件", "database": "数据库"}
DEID_LABELS = {"keep": "原值", "pseudonym": "假名", "mask": "掩码"}
SHARE_ROWS_SHOWN = 500
"""Refusals and failures listed on the sharing page, newest first (a refusing grant repeats every day)."""
_USERINFO = re.compile(r"(//)[^/@\s]+@")


@dataclass
class SiteData:
    """Everything the pages render, as plain values."""

    today: date
    generated_at: datetime
    overview: dict[str, Any]
    departments: dict[str, dict[str, Any]]
    datasets: dict[str, dict[str, Any]]
    conflicts: list[dict[str, Any]]
    catalog: list[dict[str, Any]]
    catalog_entries: list[Any] = field(default_factory=list)
    """The ``CatalogEntry`` objects behind ``catalog`` (for ``write_catalog``)."""
    open: dict[str, Any] = field(default_factory=dict)
    """The open-data page: the latest release per curated dataset, the pointers, the requests."""
    share: dict[str, Any] = field(default_factory=dict)
    """The sharing page: each grant's latest delivery, refusals, failures, department counts, requests."""


def _arrow(catalog: Any, identifier: str, schema: pa.Schema, row_filter: Any = None) -> pa.Table:
    from pipelines.lake.raw import open_table

    table = open_table(catalog, identifier)
    if table is None:
        return schema.empty_table()
    data = table.scan(row_filter=row_filter).to_arrow() if row_filter is not None else table.scan().to_arrow()
    return scorecard.conform(data, schema)


def _local(ts: datetime | None) -> datetime | None:
    return ts.astimezone(TZ) if ts is not None else None


def _ms_local(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC).astimezone(TZ)


def scores_dict(card: Card | None) -> dict[str, Any]:
    """A scorecard as the templates read it: per dimension score / evaluated / failed / rules, and overall."""
    if card is None:
        card = Card()
    s = card.scores
    return {"overall": card.overall,
            "dimensions": [{"name": d, "score": s[d], "evaluated": card.evaluated.get(d, 0),
                            "failed": card.failed.get(d, 0), "rules": card.rules.get(d, 0)} for d in DIMENSIONS]}


def _trend(days: dict[date, Card] | None, today: date) -> dict[str, Any]:
    """30 daily points (None where no results that day) of the overall score and of each dimension."""
    labels = [today - timedelta(days=i) for i in range(TREND_DAYS - 1, -1, -1)]
    days = days or {}
    series: dict[str, list[float | None]] = {"总体": []}
    for d in DIMENSIONS:
        series[d] = []
    for day in labels:
        c = days.get(day)
        series["总体"].append(None if c is None else _pct(c.overall))
        for d in DIMENSIONS:
            series[d].append(None if c is None else _pct(c.scores[d]))
    # dimensions with no point in the whole window are left out of the chart (they have no rules)
    kept = {k: v for k, v in series.items() if any(x is not None for x in v)}
    return {"labels": [f"{x:%m-%d}" for x in labels], "series": kept, "points": sum(1 for x in series["总体"] if x is not None)}


def _pct(x: float | None) -> float | None:
    """A chart point in percent, rounded down as the headline's text is (``formats.percent_floor``)."""
    return None if x is None else float(percent_floor(x))


class _Reader:
    """One pass over the lake for one site build."""

    def __init__(self, settings: Settings, today: date) -> None:
        from pipelines.config import load_all, load_departments
        from pipelines.lake.catalog import get_catalog
        from pipelines.privacy.policy import Declarations

        self.settings = settings
        self.today = today
        config = load_all(settings)
        self.standards, self.systems, self.contracts = config.standards, config.systems, config.contracts
        self.curated: dict[str, Any] = dict(config.curated)
        # one policy for every table: quarantine.<curated ds> examples are masked by the curated contract's columns
        self.decl = Declarations(self.standards, self.contracts, config.curated)
        self.catalog = get_catalog(settings)
        self.departments = load_departments(settings)
        self.con = duckdb.connect()
        self._events: pa.Table | None = None
        self.window_start = today - timedelta(days=RECENT_DAYS - 1)
        self.since = datetime.combine(self.window_start, datetime.min.time(), TZ)
        self.until = report_end(today)
        """Every time-based figure counts events up to here: the end of the report day, or now if sooner."""
        self.tables: dict[str, Any] = {}
        """Loaded tables of this build (shared with ``build_catalog``): metadata loaded once per table."""

    def table(self, identifier: str) -> Any:
        """The lake table (None when absent), loaded once per build."""
        from pipelines.lake.raw import open_table

        if identifier not in self.tables:
            table = open_table(self.catalog, identifier)
            if table is None:
                return None
            self.tables[identifier] = table
        return self.tables[identifier]

    # --- quality results -------------------------------------------------------------------------------
    def events(self) -> pa.Table:
        """``meta.batches`` as Arrow, read once per build (batch status and which runs a later one replaced)."""
        if self._events is None:
            self._events = _arrow(self.catalog, "meta.batches", BATCHES)
        return self._events

    def results(self) -> tuple[pa.Table, pa.Table]:
        """(results keyed by contract dataset with the day column, results as recorded for consistency).
        One read of ``meta.quality_results``, trimmed to the trend window plus each dataset's latest earlier
        day, without the runs a later check of the same day replaced (``scorecard.current``)."""
        since = self.today - timedelta(days=TREND_DAYS - 1)
        recorded = scorecard.current(scorecard.read_results(self.catalog, since=since), self.events())
        keyed = _owned_by(scorecard.by_contract(recorded, self.contracts, self.departments),
                          {c.dataset: c.owner for c in self.curated.values()})
        return scorecard.with_day(keyed), recorded

    def latest_rows(self, dayed: pa.Table) -> pa.Table:
        """Each dataset's results of its latest Asia/Shanghai day on or before the report day."""
        return scorecard.latest_day(dayed, "dataset", until=self.today)

    def rule_rows(self, latest: pa.Table) -> dict[str, list[dict[str, Any]]]:
        """Per dataset its rules on its latest day: evaluated, failed, rate, dimension, severity, error."""
        self.con.register("l", latest)
        rows = self.con.sql(
            "SELECT dataset, rule, any_value(tag) AS tag, any_value(dimension) AS dimension, any_value(\"column\") AS col, "
            "any_value(severity) AS severity, sum(coalesce(evaluated,0))::BIGINT AS evaluated, "
            "sum(coalesce(failed,0))::BIGINT AS failed, max(error) AS error "
            "FROM l GROUP BY dataset, rule ORDER BY dataset, failed DESC, rule").to_arrow_table().to_pylist()
        self.con.unregister("l")
        out: dict[str, list[dict[str, Any]]] = defaultdict(list)
        described = _rule_descriptions(self.settings)
        for r in rows:
            r["rate"] = r["failed"] / r["evaluated"] if r["evaluated"] else None
            r["description"] = described.get(r["rule"]) or _TAG_DESCRIPTIONS.get(r["tag"] or "", "")
            r["error"] = mask_message(r["error"]) if r["error"] else None  # quoted names too
            out[r["dataset"]].append(r)
        return out

    # --- batches ---------------------------------------------------------------------------------------
    def batches(self) -> list[dict[str, Any]]:
        """The latest event of every raw batch up to ``until`` (its status, ``meta.latest_events``), newest first."""
        data = self.events()
        data = data.filter(pc.less_equal(data.column("recorded_at"), pa.scalar(self.until, data.schema.field("recorded_at").type)))
        rows = latest_events(data).to_pylist()
        for r in rows:
            r["at"] = _local(r["recorded_at"])
            status = r["status"]
            if status == "published" and (r["quarantined"] or 0) > 0:
                status = "published_partial"
            r["kind"] = status
            r["label"] = STATUS_LABELS.get(status, status)
            try:
                r["failures"] = json.loads(r["detail"]) if r["detail"] else []
            except ValueError:
                r["failures"] = []
            r["reason"] = mask_message(r["reason"]) if r["reason"] else None
        return rows

    def standardization(self) -> dict[str, dict[str, Any]]:
        """Per dataset its latest run's standardization changes and the 30-day total rows changed, up to the
        report day's end."""
        data = _arrow(self.catalog, "meta.standardization_log", STANDARDIZATION_LOG)
        self.con.register("s", data)
        latest = self.con.sql(
            "SELECT * FROM s WHERE recorded_at <= $until QUALIFY max(recorded_at) OVER (PARTITION BY dataset) = recorded_at "
            "ORDER BY dataset, rows_changed DESC, \"column\"", params={"until": self.until}).to_arrow_table().to_pylist()
        since = datetime.combine(self.today - timedelta(days=TREND_DAYS - 1), datetime.min.time(), TZ)
        totals = dict(self.con.execute(
            "SELECT dataset, sum(rows_changed)::BIGINT FROM s WHERE recorded_at >= ? AND recorded_at <= ? GROUP BY dataset",
            [since, self.until]).fetchall())
        self.con.unregister("s")
        out: dict[str, dict[str, Any]] = {}
        for r in latest:
            entry = out.setdefault(r["dataset"], {"run_id": r["run_id"], "at": _local(r["recorded_at"]), "changes": [],
                                                  "total_30d": totals.get(r["dataset"], 0)})
            entry["changes"].append({"column": r["column"], "transformation": r["transformation"],
                                     "rows_changed": r["rows_changed"]})
        return out

    # --- conflicts (一数一源) --------------------------------------------------------------------------
    def conflicts(self, consistency: pa.Table) -> list[dict[str, Any]]:
        """Per data element: authority and every copy's latest comparison with masked example keys."""
        from pyiceberg.expressions import In

        from pipelines.privacy.policy import masked_rows

        self.con.register("c", consistency)
        copies = self.con.sql(
            "SELECT * FROM c WHERE tag = 'source_conflict' AND recorded_at <= $until QUALIFY row_number() OVER "
            "(PARTITION BY element, dataset ORDER BY recorded_at DESC) = 1 ORDER BY element, dataset",
            params={"until": self.until}).to_arrow_table().to_pylist()
        self.con.unregister("c")
        runs = sorted({c["run_id"] for c in copies})
        examples: dict[tuple[str, str, str, str], list[dict[str, Any]]] = defaultdict(list)
        if runs:
            data = _arrow(self.catalog, "meta.conflicts", CONFLICTS, row_filter=In("run_id", runs))
            self.con.register("k", data)
            sample = self.con.sql(
                "SELECT * FROM k QUALIFY row_number() OVER (PARTITION BY run_id, element, other_system, other_table "
                f"ORDER BY key) <= {CONFLICT_EXAMPLES}").to_arrow_table()
            self.con.unregister("k")
            for row in masked_rows("meta.conflicts", sample, self.decl):
                examples[(row["run_id"], row["element"], row["other_system"], row["other_table"])].append(row)
        by_element: dict[str, dict[str, Any]] = {}
        contract_of = {(c.source["system"], c.source["table"]): c for c in self.contracts.values()}
        for c in copies:
            code = c["element"]
            element = self.standards.elements.get(code)
            auth = element.authoritative[0] if element is not None and element.authoritative else None
            entry = by_element.setdefault(code, {
                "element": code, "name": getattr(element, "name_zh", None) or code,
                "authority": f"{auth.system}.{auth.table}.{auth.column}" if auth else "未知",
                "authority_system": self._system_name(auth.system) if auth else "未知", "copies": []})
            system, _, table = (c["dataset"] or "").partition(".")
            rows = examples.get((c["run_id"], code, system, table), [])
            owner = contract_of.get((system, table))
            entry["copies"].append({
                "system": system, "system_name": self._system_name(system), "table": table,
                "dataset": owner.dataset if owner else None,
                "department": department_name(self.departments, owner.owner if owner else c["department"]),
                "compared": c["evaluated"] or 0, "conflicts": c["failed"] or 0,
                "rate": (c["failed"] or 0) / c["evaluated"] if c["evaluated"] else None,
                "at": _local(c["recorded_at"]),
                "examples": [{"key": r["key"], "authoritative": r["authoritative_value"], "other": r["other_value"]}
                             for r in rows]})
        return list(by_element.values())

    def _system_name(self, code: str) -> str:
        s = self.systems.get(code)
        return f"{s.name} ({code})" if s is not None else code

    # --- lake metadata ---------------------------------------------------------------------------------
    def raw_tables(self) -> list[dict[str, Any]]:
        """Every registered raw table: rows landed in the window and its rejected drop files (metadata only).

        Rows landed: per ``citylake.batch-id``, records added minus records deleted by that batch's
        snapshots in the window, so a rerun batch (it replaces its own rows) counts once and maintenance
        rewrites (no batch id) not at all. A rejected file is timed by its ledger entry's ``at``, else (older
        entries) by its batch's raw snapshot: counted in the window when that, or any of the entry's
        ``rejections`` (kept when a fixed copy loads under the name), lies in it; every entry whose status is
        still ``rejected`` is pending (as of the build)."""
        from pipelines.lake.raw import BATCH_ID, TableState, summary_int, summary_value, total_records

        out = []
        for s in self.systems.values():
            for t in s.all_tables:
                ident = s.raw_table(t.code)
                table = self.table(ident)
                info: dict[str, Any] = {"identifier": ident, "system": s.system, "system_name": s.name, "table": t.code,
                                        "department": s.department, "rows": None, "landed_recent": 0,
                                        "rejected": [], "rejected_recent": 0, "updated": None}
                if table is not None:
                    snap = table.current_snapshot()
                    if snap is not None:
                        info["updated"] = _ms_local(snap.timestamp_ms)
                        info["rows"] = total_records(snap)
                    net: dict[str, int] = defaultdict(int)
                    batch_at: dict[str, datetime] = {}
                    for sn in table.metadata.snapshots:
                        batch, at = summary_value(sn, BATCH_ID), _ms_local(sn.timestamp_ms)
                        if batch is None:
                            continue
                        batch_at[batch] = max(at, batch_at.get(batch, at))
                        if self.since <= at <= self.until:
                            net[batch] += (summary_int(sn, "added-records") or 0) - (summary_int(sn, "deleted-records") or 0)
                    info["landed_recent"] = sum(max(0, n) for n in net.values())
                    for name, entry in sorted(TableState.of(table).ledger.items()):
                        # a file counts in the window if rejected in it, even when a fixed copy loaded since
                        times = [t for t in map(_local_time, entry.get("rejections") or []) if t is not None]
                        pending = entry.get("status") == "rejected"
                        timed = (_rejected_at(entry) or batch_at.get(entry.get("batch") or "")) if pending else None
                        recent = timed is not None and self.since <= timed <= self.until
                        info["rejected_recent"] += recent or any(self.since <= t <= self.until for t in times)
                        if pending:
                            info["rejected"].append({"file": mask_file_name(name), "reason": mask_message(entry.get("reason") or ""),
                                                     "line": entry.get("line"), "batch": entry.get("batch"), "at": timed,
                                                     "recent": recent})
                out.append(info)
        return out

    def dataset_lake(self, dataset: str, layer: str = "std") -> dict[str, Any]:
        """std (or curated) table size and last publish (the latest snapshot a quality run or a build
        committed, up to the report day's end: maintenance commits do not make data fresh), quarantine size
        (metadata only; sizes are as of the build). The keys say std for both layers."""
        from pipelines.lake.raw import last_publish, total_records

        info: dict[str, Any] = {"std_rows": None, "std_updated": None, "quarantine_rows": 0, "quarantine_table": None}
        std = self.table(f"{layer}.{dataset}")
        if std is not None and std.current_snapshot() is not None:
            info["std_rows"] = total_records(std.current_snapshot())
            last = last_publish(std, int(self.until.timestamp() * 1000))
            if last is not None:
                info["std_updated"] = _ms_local(last.timestamp_ms)
        q = self.table(f"quarantine.{dataset}")
        if q is not None:
            info["quarantine_table"] = q
            info["quarantine_rows"] = total_records(q.current_snapshot()) or 0
        return info

    def quarantine_examples(self, contract: Any, table: Any, rules: list[dict[str, Any]],
                            runs: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
        """Up to ``EXAMPLES_PER_RULE`` masked failing rows per failing rule, from a bounded quarantine read:
        rows the runs of the counts shown (``runs``) quarantined (any rows only in a quarantine table
        older than its ``_run_id`` column)."""
        from pyiceberg.expressions import In

        from pipelines.privacy.policy import masked_rows

        failing = {r["rule"]: r for r in rules if r["failed"]}
        if table is None or not failing:
            return {}
        names = {f.name for f in table.schema().fields}
        cols = [c for c in dict.fromkeys([*contract.primary_key, *(r["col"] for r in failing.values() if r["col"])]) if c in names]
        if "_rules" not in names:
            return {}
        if "_run_id" in names:  # only the runs whose counts are shown; none found is said on the page
            if not runs:
                return {}
            data = table.scan(row_filter=In("_run_id", runs), selected_fields=(*cols, "_rules"),
                              limit=QUARANTINE_SAMPLE).to_arrow()
        else:  # a quarantine older than the run id column: any of its rows
            data = table.scan(selected_fields=(*cols, "_rules"), limit=QUARANTINE_SAMPLE).to_arrow()
        picked: dict[str, list[int]] = defaultdict(list)
        for i, broken in enumerate(data.column("_rules").to_pylist()):
            for rule in broken or []:
                if rule in failing and len(picked[rule]) < EXAMPLES_PER_RULE:
                    picked[rule].append(i)
            if failing.keys() <= picked.keys() and all(len(v) >= EXAMPLES_PER_RULE for v in picked.values()):
                break
        if not picked:
            return {}
        wanted = sorted({i for v in picked.values() for i in v})
        masked = masked_rows(f"quarantine.{contract.dataset}", data.select(cols).take(pa.array(wanted, pa.int64())),
                             self.decl)
        row_of = dict(zip(wanted, masked, strict=True))
        out: dict[str, list[dict[str, Any]]] = {}
        for rule, idx in picked.items():
            col = failing[rule]["col"]
            out[rule] = [{"key": " | ".join(str(row_of[i].get(k)) for k in contract.primary_key if k in row_of[i]),
                          "column": col, "value": row_of[i].get(col) if col in cols else None} for i in idx]
        return out


    # --- open data ---------------------------------------------------------------------------------------
    def releases(self) -> dict[str, dict[str, Any]]:
        """Per dataset its latest ``meta.releases`` event up to the report day's end, as the pages show it:
        status and label, release date, folder, rows, reason and leak hits masked."""
        table = self.table("meta.releases")
        if table is None or table.current_snapshot() is None:
            return {}
        latest: dict[str, dict[str, Any]] = {}
        for row in table.scan().to_arrow().to_pylist():
            at = row.get("recorded_at")
            if at is not None and at > self.until:
                continue
            seen = latest.get(row.get("dataset") or "")
            if seen is None or (at is not None and (seen["recorded_at"] is None or at >= seen["recorded_at"])):
                latest[row.get("dataset") or ""] = row
        return {ds: release_event(row) for ds, row in latest.items() if ds}

    def requests(self) -> list[dict[str, Any]]:
        """Every request's current state (``meta.requests``), newest first, as ``requests.public`` shows it."""
        from pipelines.catalog.requests import list_requests, public

        return [public(r, self.departments) for r in list_requests(self.catalog, until=self.until)]

    # --- departmental sharing ----------------------------------------------------------------------------
    def sharing(self) -> dict[str, Any] | None:
        """``meta.sharing_audit`` read once, up to the report day's end, aggregated in DuckDB: each grant's
        latest delivery, the newest refusals and failures (with their totals), counts per consumer, and the
        report day's deliveries and refusals. None: a lake from before sharing (no audit table)."""
        table = self.table("meta.sharing_audit")
        if table is None:
            return None
        data = (scorecard.conform(table.scan().to_arrow(), SHARING_AUDIT) if table.current_snapshot() is not None
                else SHARING_AUDIT.empty_table())
        day_start = datetime.combine(self.today, datetime.min.time(), TZ)
        params = {"until": self.until}
        self.con.register("a", data)
        try:
            def rows(sql: str, **extra: Any) -> list[dict[str, Any]]:
                return self.con.sql(f"WITH s AS (SELECT * FROM a WHERE recorded_at <= $until) {sql}",
                                    params={**params, **extra}).to_arrow_table().to_pylist()

            latest = rows("SELECT * FROM s WHERE outcome = 'delivered' QUALIFY row_number() OVER "
                          "(PARTITION BY grant_id ORDER BY recorded_at DESC, audit_id DESC) = 1 "
                          "ORDER BY consumer, dataset, grant_id")
            listed = rows("SELECT * FROM s WHERE outcome IN ('refused', 'failed') QUALIFY row_number() OVER "
                          "(PARTITION BY outcome ORDER BY recorded_at DESC, grant_id, audit_id) <= $n "
                          "ORDER BY recorded_at DESC, grant_id, audit_id", n=SHARE_ROWS_SHOWN)
            per_consumer = rows(
                "SELECT consumer, count(*) FILTER (WHERE outcome = 'delivered')::BIGINT AS deliveries, "
                "coalesce(sum(rows) FILTER (WHERE outcome = 'delivered'), 0)::BIGINT AS rows, "
                "coalesce(sum(deleted) FILTER (WHERE outcome = 'delivered'), 0)::BIGINT AS deleted, "
                "count(*) FILTER (WHERE outcome = 'refused')::BIGINT AS refusals, "
                "count(*) FILTER (WHERE outcome = 'failed')::BIGINT AS failures, max(recorded_at) AS last_at "
                "FROM s GROUP BY consumer ORDER BY consumer")
            totals = rows("SELECT outcome, count(*)::BIGINT AS n, "
                          "count(*) FILTER (WHERE recorded_at >= $day_start)::BIGINT AS today FROM s GROUP BY outcome",
                          day_start=day_start)
        finally:
            self.con.unregister("a")
        return {"latest": latest, "refused": [r for r in listed if r["outcome"] == "refused"],
                "failed": [r for r in listed if r["outcome"] == "failed"], "per_consumer": per_consumer,
                "total": {t["outcome"]: t["n"] for t in totals}, "today": {t["outcome"]: t["today"] for t in totals}}


def _owned_by(results: pa.Table, owners: dict[str, str]) -> pa.Table:
    """Results of curated datasets counted for their contract's owner (``by_contract`` knows std contracts)."""
    if not owners or not results.num_rows:
        return results
    names = pa.array(list(owners), pa.string())
    index = pc.index_in(results.column("dataset"), value_set=names)
    owner = pc.take(pa.array(list(owners.values()), pa.string()), index)
    column = pc.coalesce(owner, results.column("department"))
    return results.set_column(results.schema.get_field_index("department"), "department", column)


def _hit(hit: Any) -> dict[str, Any]:
    """One leak-gate hit as the page shows it: the file name and value masked again whatever the writer did
    (the value by its kind; an unknown kind hidden but its first character)."""
    from pipelines.privacy.detect import KINDS
    from pipelines.privacy.mask import mask_file_name, mask_free_text, mask_kind

    h = hit if isinstance(hit, dict) else {}
    kind = str(h.get("kind") or "")
    value = h.get("value")
    shown = (mask_kind(value, kind) if kind in KINDS else mask_free_text(value)) if value not in (None, "") else None
    return {"file": mask_file_name(h.get("file")), "column": h.get("column"), "row": h.get("row"), "kind": kind,
            "kind_label": HIT_KINDS.get(kind, kind), "value": shown}


def release_event(row: dict[str, Any]) -> dict[str, Any]:
    """A ``meta.releases`` row for the pages: labels, local time, reason masked, leak hits parsed and masked."""
    status = row.get("status") or "none"
    try:
        hits = json.loads(row.get("leak_hits") or "[]")
    except ValueError:
        hits = []
    return {"status": status, "label": RELEASE_LABELS.get(status, status), "release_date": row.get("release_date"),
            "folder": row.get("folder"), "rows": row.get("rows"), "build_id": row.get("build_id"),
            "reason": mask_message(row.get("reason")) if row.get("reason") else None,
            "hits": [_hit(h) for h in hits] if isinstance(hits, list) else [],
            "at": _local(row.get("recorded_at")), "run_id": row.get("run_id")}


def _rejected_at(entry: dict[str, Any]) -> datetime | None:
    """When a ledger entry was rejected (its ``at``), in Asia/Shanghai; None for entries without it."""
    return _local_time(entry.get("at"))


def _local_time(text: Any) -> datetime | None:
    """A ledger UTC ISO time in Asia/Shanghai; None when missing or unreadable."""
    try:
        return datetime.fromisoformat(text).astimezone(TZ) if text else None
    except (TypeError, ValueError):
        return None


def _rule_descriptions(settings: Settings) -> dict[str, str]:
    """rule id → its Chinese description, from the stored suites (``expectations/*.json``)."""
    out: dict[str, str] = {}
    for path in sorted((settings.root / "expectations").glob("*.json")):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            continue
        for e in doc.get("expectations", []):
            meta = e.get("meta", {})
            if meta.get("rule_id"):
                out[meta["rule_id"]] = meta.get("description", "")
    return out


def report_end(today: date, now: datetime | None = None) -> datetime:
    """The end of the report day (Asia/Shanghai), or ``now`` when that is sooner (today's report)."""
    end = datetime.combine(today + timedelta(days=1), datetime.min.time(), TZ)
    now = now or datetime.now(TZ)
    return min(end, now)


def _age_text(age: timedelta) -> str:
    hours = int(age.total_seconds() // 3600)
    return f"{hours} 小时" if hours < 48 else f"{age.days} 天"


def freshness(updated: datetime | None, cycle: str | None, until: datetime) -> dict[str, Any]:
    """The dataset's last publish against its contract's update cycle (``UPDATE_CYCLE_LAG``), at ``until``
    (the end of the report day); compared in hours, so 实时 and 每小时 are judged by the hour."""
    from pipelines.contracts import UPDATE_CYCLE_LAG

    allowed = UPDATE_CYCLE_LAG.get(cycle or "")
    if updated is None:
        return {"state": "none", "label": "尚未发布", "age": None}
    age = max(timedelta(0), until - updated)  # a publish after the report day is never read as negative
    info = {"age": _age_text(age)}
    if allowed is None:
        return {"state": "unknown", "label": "未声明更新周期", **info}
    if age > allowed:
        return {"state": "stale", "label": f"已逾期 {_age_text(age - allowed)}", **info}
    return {"state": "fresh", "label": "按期更新", **info}


def _catalog(r: _Reader, scores: dict[str, float | None]) -> tuple[list[Any], list[dict[str, Any]]]:
    """The catalog entries, given this build's scores (``meta.quality_results`` is read once per build)."""
    from pipelines.catalog.build import build_catalog

    entries = build_catalog(r.settings, r.catalog, config=(r.standards, r.systems, r.contracts), tables=r.tables,
                            scores=scores, curated=r.curated)
    return entries, [e.to_dict() for e in entries]


def _hits_text(hits: list[dict[str, Any]]) -> str:
    kinds = sorted({h["kind_label"] for h in hits if h.get("kind_label")})
    return f"{len(hits)} 处个人信息" + (f"：{'、'.join(kinds)}" if kinds else "")


def _held_rule(ds: dict[str, Any]) -> str:
    """The rule the newest held batch (or build) failed, by its description when it has one."""
    b = ds["held"][0]
    rule_id = b["failures"][0]["rule"] if b["failures"] else None
    described = {r["rule"]: r["description"] for r in ds["rules"] if r["description"]}
    return described.get(rule_id, f"规则 {rule_id}") if rule_id else "阻断规则"


def _curated_action(ds: dict[str, Any]) -> str | None:
    """The one thing to do about a curated dataset when it differs from a std one's (None: as std)."""
    name = ds["dataset"]
    event = ds.get("release_event") or {}
    if event.get("status") == "blocked":
        return (f"{event.get('release_date') or ''} 的开放数据发布被泄露检查拦截（{_hits_text(event.get('hits') or [])}），"
                f"开放平台仍指向上一版本：请{ds['department_name']}核对模型 pipelines/curate/{name}.sql 与契约 "
                f"schemas/curated/{name}.yml 的脱敏设置（deid），修正后重新构建（citylake curate {name}），下次发布时再检查")
    if ds["held"]:
        b, rule = ds["held"][0], _held_rule(ds)
        return (f"{beijing_time(b['at'])} 的构建未通过「{rule}」，主题层未更新：核对输入数据集"
                f"（{'、'.join(ds['inputs'])}）与模型 pipelines/curate/{name}.sql，修正后运行 citylake curate {name}")
    if ds["freshness"]["state"] == "none":
        return (f"尚未构建：输入数据集（{'、'.join(ds['inputs'])}）发布后由 curate 任务自动构建，"
                f"或运行 citylake curate {name}")
    if event.get("status") == "failed":
        return (f"{event.get('release_date') or ''} 的开放数据发布失败（{event.get('reason') or '见发布任务日志'}），"
                "开放平台仍指向上一版本：排除原因后重新运行 publish__open_data")
    if not ds["rules"]:
        return f"尚无质量检查结果：运行 citylake curate {name}"
    if ds["freshness"]["state"] == "stale":
        return (f"已 {ds['freshness']['age']}未更新（更新周期{ds['update_cycle']}）：核对输入数据集是否按期发布，"
                f"然后运行 citylake curate {name}")
    return None


def _action(ds: dict[str, Any]) -> str:
    """The one thing to do about a dataset, most urgent first."""
    name = ds["dataset"]
    if ds["layer"] == "curated" and (curated := _curated_action(ds)) is not None:
        return curated
    if ds["held"]:
        # as the alert the department got says it: the department fixes its data, governance staff
        # re-check or release (their commands are in the page's 暂扣批次 section)
        b, rule = ds["held"][0], _held_rule(ds)
        more = f"（另有 {len(ds['held']) - 1} 个批次暂扣）" if len(ds["held"]) > 1 else ""
        return (f"{beijing_time(b['at'])} 的批次未通过「{rule}」，已暂停发布{more}：请{ds['department_name']}核对并修正源数据；"
                "修正后由治理人员重新校验，或说明理由后放行（见数据集页面「暂扣批次」）")
    if ds["freshness"]["state"] == "stale":
        return f"已 {ds['freshness']['age']}未更新（更新周期{ds['update_cycle']}）：请{ds['department_name']}按期推送数据"
    if ds["freshness"]["state"] == "none" and not ds["rules"]:
        return (f"尚未发布，也无质量检查结果：先接入源数据（citylake ingest {ds['system']} --table {ds['source_table']}），"
                f"再运行 citylake quality run {name}")
    if not ds["rules"]:
        return f"尚无质量检查结果：运行 citylake quality run {name}"
    if ds["freshness"]["state"] == "none":
        return f"已检查但尚未发布到标准层：查看下方规则结果后运行 citylake quality run {name}"
    blind = next((r for r in ds["rules"] if r["tag"] == "source_conflict" and not r["evaluated"]), None)
    if blind is not None:
        return (f"一数一源比对 0 条可比（规则 {blind['rule']}）：请{ds['department_name']}核对本表主键与权威来源能否对应，"
                "然后运行 citylake quality run all")
    worst = next((r for r in ds["rules"] if r["failed"]), None)
    if worst is not None:
        if worst["description"]:
            return (f"请{ds['department_name']}修正「{worst['description']}」不通过的 {worst['failed']:,} 行"
                    f"（规则 {worst['rule']}）")
        return f"请{ds['department_name']}修正规则 {worst['rule']} 不通过的 {worst['failed']:,} 行"
    return "无需处理"


def _urgency(ds: dict[str, Any]) -> int | None:
    """Rank in the five-worst list (lower first); None: nothing to do. A held batch waits for a person;
    never published or never checked means the city has no usable copy; a copy compared on 0 rows and a
    stale dataset are blind spots; then low scores. A curated dataset whose open release the leak gate
    blocked ranks with the held batches (the portal stays on an older release until a person acts), a
    failed release with the unpublished; one never built comes after every std dataset's problem: it is
    built by itself once its inputs publish."""
    release = (ds.get("release_event") or {}).get("status")
    if ds["held"] or release == "blocked":
        return 0
    if ds["layer"] == "curated" and ds["freshness"]["state"] == "none":
        return 4
    if release == "failed":
        return 1
    if ds["freshness"]["state"] == "none" or not ds["has_results"]:
        return 1
    if ds["freshness"]["state"] == "stale" or any(r["tag"] == "source_conflict" and not r["evaluated"] for r in ds["rules"]):
        return 2
    if ds["scores"]["overall"] is not None and ds["scores"]["overall"] < 1:
        return 3
    return None


def collect(settings: Settings, today: date) -> SiteData:
    """Read everything the site shows."""
    r = _Reader(settings, today)
    try:
        dayed, consistency = r.results()
        # results of a dataset without a contract (retired, or a copy no contract is built from) have no
        # page and no owner: they are named on the overview and left out of department and city scores
        contracted = pc.is_in(dayed.column("dataset"), value_set=pa.array(sorted({*r.contracts, *r.curated}), pa.string()))
        uncontracted = sorted({d for d in r.latest_rows(dayed.filter(pc.invert(contracted))).column("dataset").to_pylist() if d})
        dayed = dayed.filter(contracted)
        latest = r.latest_rows(dayed)
        rules = r.rule_rows(latest)
        ds_cards = scorecard.cards(latest, "dataset")
        dept_cards = scorecard.cards(latest, "department")
        # all read days (the window plus each dataset's latest earlier day per run kind): a day's point
        # carries the other run kind's latest results, as the headline does
        ds_days = scorecard.daily(dayed.drop_columns(["day"]), "dataset")
        # department and city trends are "as of" each day (each dataset's latest results up to it), like
        # their headline, so the report day's point is the headline and a weekly dataset does not make jumps
        labels = [today - timedelta(days=i) for i in range(TREND_DAYS)]
        dept_days = scorecard.as_of(dayed, labels, "department")
        all_days = scorecard.as_of(dayed, labels).get(None, {})
        lake_card = scorecard.card(latest)
        latest_day: dict[str, date] = {}  # the later of a dataset's latest gate day and consistency day
        for d, day in zip(*[latest.column(c).to_pylist() for c in ("dataset", "day")], strict=True):
            latest_day[d] = max(day, latest_day.get(d, day))
        runs: dict[str, list[str]] = defaultdict(list)
        for d, run in zip(*[latest.column(c).to_pylist() for c in ("dataset", "run_id")], strict=True):
            if run and run not in runs[d]:
                runs[d].append(run)
        batches = r.batches()
        stdlog = r.standardization()
        conflicts = r.conflicts(consistency)
        raws = r.raw_tables()
        entries, catalog = _catalog(r, {d: c.overall for d, c in ds_cards.items()})
        release_events = r.releases()
        requests = r.requests()
        audit = r.sharing()
    finally:
        r.con.close()
    entry_by_id = {e["identifier"]: e for e in catalog}

    held_by_ds: dict[str, list[dict[str, Any]]] = defaultdict(list)
    recent_by_ds: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for b in batches:
        if b["kind"] == "held":
            held_by_ds[b["dataset"]].append(b)
        if len(recent_by_ds[b["dataset"]]) < 10:
            recent_by_ds[b["dataset"]].append(b)

    datasets: dict[str, dict[str, Any]] = {}
    for c in sorted([*r.contracts.values(), *r.curated.values()], key=lambda c: c.dataset):
        layer = "curated" if c.kind == "curated" else "std"
        lake = r.dataset_lake(c.dataset, layer)
        ds_rules = rules.get(c.dataset, [])
        examples = r.quarantine_examples(c, lake.pop("quarantine_table"), ds_rules, runs.get(c.dataset))
        # the counts shown come from a run whose batches are still held: held rows never reach quarantine
        from_held = bool(set(runs.get(c.dataset, [])) & {b["run_id"] for b in held_by_ds.get(c.dataset, [])})
        for rule in ds_rules:
            rule["examples"] = examples.get(rule["rule"], [])
            rule["from_held"] = from_held
        source = getattr(c, "source", None) or {}
        system = r.systems.get(source.get("system") or "")
        entry = entry_by_id.get(f"{layer}.{c.dataset}")
        datasets[c.dataset] = {
            "dataset": c.dataset, "name": c.name, "description": c.description, "layer": layer,
            "department": c.owner, "department_name": department_name(r.departments, c.owner),
            "system": source.get("system"), "system_name": system.name if system else source.get("system"),
            "source_table": source.get("table"), "inputs": list(getattr(c, "inputs", None) or []),
            "update_cycle": c.update_cycle,
            "scores": scores_dict(ds_cards.get(c.dataset)), "has_results": c.dataset in ds_cards,
            "latest_day": latest_day.get(c.dataset), "rules": ds_rules,
            "trend": _trend(ds_days.get(c.dataset), today),
            "freshness": freshness(lake["std_updated"], c.update_cycle, r.until), **lake,
            "held": held_by_ds.get(c.dataset, []), "recent_batches": recent_by_ds.get(c.dataset, []),
            "standardization": stdlog.get(c.dataset),
            "lineage": entry["lineage"] if entry else [],
            "catalog_entry": entry["identifier"] if entry else None,
            "columns": entry["items"] if entry else [], "open": entry["open"] if entry else None,
            "grade": entry["grade"] if entry else None, "requests": entry["requests"] if entry else [],
            "release": entry["release"] if entry else None,
            "release_event": release_events.get(c.dataset) if layer == "curated" else None,
        }
        datasets[c.dataset]["action"] = _action(datasets[c.dataset])

    departments = _department_pages(r, datasets, dept_cards, dept_days, raws, today)
    overview = _overview(r, datasets, lake_card, all_days, batches, raws, departments, today)
    overview["uncontracted"] = uncontracted
    opened = _open_page(datasets, requests)
    overview["open"] = {k: opened[k] for k in ("latest_date", "counts", "blocked", "pending_requests")}
    shared = _share_page(r, datasets, audit, requests)
    overview["share"] = {k: shared[k] for k in ("audited", "today", "total", "pending_requests")}
    return SiteData(today=today, generated_at=datetime.now(TZ), overview=overview, departments=departments,
                    datasets=datasets, conflicts=conflicts, catalog=catalog, catalog_entries=entries, open=opened,
                    share=shared)


def _share_text(value: Any, codes: re.Pattern[str] | None = None) -> str | None:
    """Free text of an audit row as the page shows it: the writer masked personal values already; masked
    again (identifiers, quoted names: ``mask_message``) and a URL's user:password part hidden, whatever it did.
    Registered department codes (``codes``) stay readable: a credit code is shaped like a resident ID, and a
    delivery's folder or schema is named after the consumer's code."""
    if value is None or value == "":
        return None
    text = _USERINFO.sub(r"\1***@", str(value))
    if codes is None:
        return mask_message(text)
    kept = codes.findall(text)
    # mask the text between the codes (a placeholder would be read as part of a longer digit run)
    parts = [mask_message(part) or "" for part in codes.split(text)]
    return "".join(p + (kept[i] if i < len(kept) else "") for i, p in enumerate(parts))


def _code_pattern(departments: dict[str, Any]) -> re.Pattern[str] | None:
    """Registered department codes as whole tokens, any case (a PostgreSQL schema lower-cases them)."""
    codes = sorted((c for c in departments if c), key=len, reverse=True)
    if not codes:
        return None
    return re.compile(r"(?<![0-9A-Za-z])(?:" + "|".join(map(re.escape, codes)) + r")(?![0-9A-Za-z])", re.IGNORECASE)


def _json(value: Any, default: Any) -> Any:
    try:
        return json.loads(value) if value else default
    except ValueError:
        return default


def _share_row(r: _Reader, datasets: dict[str, dict[str, Any]], sharing: dict[str, str], row: dict[str, Any],
               codes: re.Pattern[str] | None) -> dict[str, Any]:
    """One ``meta.sharing_audit`` row for the page: names from the registries, labels in Chinese, text masked."""
    consumer, dataset = row.get("consumer") or "", row.get("dataset") or ""
    known = consumer in r.departments
    ds = datasets.get(dataset)
    columns = _json(row.get("columns"), {})
    checksum = row.get("checksum") or None
    reason = row.get("reason")
    return {
        "grant_id": mask_text(row.get("grant_id")), "grant_file": mask_file_name(row.get("grant_file")),
        "consumer": consumer if known else None,
        # an unknown consumer is shown as written, identifiers masked (the code may be anything)
        "consumer_name": department_name(r.departments, consumer) if known else (mask_text(consumer) or "未指定部门"),
        "dataset": dataset if ds else None, "dataset_code": mask_text(dataset) or "—",
        "dataset_name": ds["name"] if ds else None, "layer": ds["layer"] if ds else None,
        "sharing_type": sharing.get(dataset), "outcome": row.get("outcome"),
        "outcome_label": SHARE_OUTCOMES.get(row.get("outcome") or "", row.get("outcome") or "—"),
        "reason": reason, "reason_label": SHARE_REASONS.get(reason or "", reason) if reason else None,
        "detail": _share_text(row.get("detail"), codes), "mode": row.get("mode"),
        "mode_label": SHARE_MODES.get(row.get("mode") or "", row.get("mode") or "—"),
        "method_label": SHARE_METHODS.get(row.get("method") or "", row.get("method") or "—"),
        "columns": [{"column": c, "method": m, "label": DEID_LABELS.get(m, m)} for c, m in columns.items()]
        if isinstance(columns, dict) else [],
        "rows": row.get("rows"), "deleted": row.get("deleted"), "std_snapshot_id": row.get("std_snapshot_id"),
        "batches": len(b) if isinstance(b := _json(row.get("batches"), []), list) else 0,
        "delivery_date": row.get("delivery_date"), "target": _share_text(row.get("target"), codes),
        "checksum": checksum, "checksum_short": checksum[:12] if checksum else None,
        "at": _local(row.get("recorded_at")), "run_id": row.get("run_id"),
    }


def _share_page(r: _Reader, datasets: dict[str, dict[str, Any]], audit: dict[str, Any] | None,
                requests: list[dict[str, Any]]) -> dict[str, Any]:
    """The sharing page: each grant's latest delivery, the newest refusals and failures with their reasons in
    Chinese, per consumer department its deliveries, rows and refusals over the whole audit, and the
    departments' sharing requests (``meta.requests`` kind ``share``, masked as ``requests.public`` does).
    ``audited`` is False on a lake from before sharing (no ``meta.sharing_audit``)."""
    from pipelines.catalog.requests import NEEDS_ANSWER

    sharing = {c.dataset: c.sharing.type for c in [*r.contracts.values(), *r.curated.values()]}
    shared = [q for q in requests if q["kind"] == "share"]
    page: dict[str, Any] = {"audited": audit is not None, "requests": shared,
                            "pending_requests": sum(1 for q in shared if q["status"] not in NEEDS_ANSWER),
                            "deliveries": [], "refusals": [], "failures": [], "departments": [],
                            "total": {}, "today": {}, "shown": SHARE_ROWS_SHOWN, "reasons": SHARE_REASONS}
    if audit is None:
        return page
    codes = _code_pattern(r.departments)
    page["deliveries"] = [_share_row(r, datasets, sharing, x, codes) for x in audit["latest"]]
    page["refusals"] = [_share_row(r, datasets, sharing, x, codes) for x in audit["refused"]]
    page["failures"] = [_share_row(r, datasets, sharing, x, codes) for x in audit["failed"]]
    page["total"] = {k: audit["total"].get(k, 0) for k in SHARE_OUTCOMES}
    page["today"] = {k: audit["today"].get(k, 0) for k in SHARE_OUTCOMES}
    departments = []
    for c in audit["per_consumer"]:
        code = c["consumer"] or ""
        known = code in r.departments
        departments.append({**c, "consumer": code if known else None, "at": _local(c["last_at"]),
                            "consumer_name": department_name(r.departments, code) if known
                            else (mask_text(code) or "未指定部门")})
    page["departments"] = sorted(departments, key=lambda d: (-d["deliveries"], d["consumer_name"]))
    return page


def _open_page(datasets: dict[str, dict[str, Any]], requests: list[dict[str, Any]]) -> dict[str, Any]:
    """The open-data page: per curated dataset its latest release event (the release it was part of, or
    "尚未发布"), its pointer in ``open/latest.json``; the latest release date, counts per status, the
    datasets the leak gate blocked; every request."""
    from pipelines.catalog.requests import NEEDS_ANSWER

    rows = []
    for ds in datasets.values():
        if ds["layer"] != "curated":
            continue
        event = ds["release_event"] or {"status": "none", "label": RELEASE_LABELS["none"], "hits": []}
        if event["status"] == "none" and (ds["open"] or {}).get("type") == "不予开放":
            event = {**event, "status": "not_open", "label": RELEASE_LABELS["not_open"]}
        rows.append({"dataset": ds["dataset"], "name": ds["name"], "department_name": ds["department_name"],
                     "open": ds["open"] or {}, "event": event, "pointer": ds["release"]})
    dates = [r["event"].get("release_date") for r in rows if r["event"].get("release_date")]
    latest_date = max(dates) if dates else None
    counts: dict[str, int] = {}
    for r in rows:
        if r["event"].get("release_date") == latest_date or r["event"]["status"] in ("none", "not_open"):
            counts[r["event"]["status"]] = counts.get(r["event"]["status"], 0) + 1
    blocked = [{"dataset": r["dataset"], "name": r["name"], "release_date": r["event"].get("release_date"),
                "hits": len(r["event"].get("hits") or []), "summary": _hits_text(r["event"].get("hits") or [])}
               for r in rows if r["event"]["status"] == "blocked"]
    return {"latest_date": latest_date, "datasets": rows, "counts": counts, "blocked": blocked,
            "labels": RELEASE_LABELS, "requests": requests,
            "pending_requests": sum(1 for q in requests if q["status"] not in NEEDS_ANSWER)}


def _department_pages(r: _Reader, datasets: dict[str, dict[str, Any]], cards: dict[Any, Card],
                      days: dict[Any, dict[date, Card]], raws: list[dict[str, Any]], today: date) -> dict[str, dict[str, Any]]:
    codes = set(r.departments) | {d["department"] for d in datasets.values()} | {s.department for s in r.systems.values()}
    codes |= {c for c in cards if c}
    out = {}
    for code in sorted(codes):
        mine = [d for d in datasets.values() if d["department"] == code]
        systems = [{"system": s.system, "name": s.name, "tables": [t.code for t in s.all_tables]}
                   for s in r.systems.values() if s.department == code]
        d = r.departments.get(code)
        contact = getattr(d, "contact", None)
        out[code] = {
            "code": code, "name": department_name(r.departments, code),
            "contact": {"name": contact.name, "email": contact.email, "phone": contact.phone} if contact else None,
            "scores": scores_dict(cards.get(code)), "has_results": code in cards,
            "trend": _trend(days.get(code), today), "datasets": mine, "systems": systems,
            "held": sum(len(x["held"]) for x in mine),
            "rejected": sum(t["rejected_recent"] for t in raws if t["department"] == code),
            "rejected_pending": sum(len(t["rejected"]) for t in raws if t["department"] == code),
        }
    return out


def _overview(r: _Reader, datasets: dict[str, dict[str, Any]], lake_card: Card, all_days: dict[date, Card],
              batches: list[dict[str, Any]], raws: list[dict[str, Any]], departments: dict[str, dict[str, Any]],
              today: date) -> dict[str, Any]:
    start = r.window_start
    counts = {k: 0 for k in ("published", "published_partial", "held", "released")}
    for b in batches:
        if b["kind"] == "held":
            counts["held"] += 1  # held counts whatever its age: it waits for a person
        elif b["kind"] in counts and b["at"] is not None and start <= b["at"].date() <= today:
            counts[b["kind"]] += 1
    ranked = sorted((d for d in datasets.values() if _urgency(d) is not None),
                    key=lambda d: (_urgency(d), d["scores"]["overall"] if d["scores"]["overall"] is not None else 1.0,
                                   d["dataset"]))
    return {
        "scores": scores_dict(lake_card), "has_results": lake_card.overall is not None or bool(lake_card.rules),
        "trend": _trend(all_days, today), "window_start": start,
        "rows_landed": sum(t["landed_recent"] for t in raws),
        "batches": counts, "rejected": [dict(f, table=t["identifier"]) for t in raws for f in t["rejected"]],
        "rejected_recent": sum(t["rejected_recent"] for t in raws),
        "worst": ranked[:5],
        "departments": sorted(departments.values(), key=lambda d: (d["scores"]["overall"] is None,
                                                                    d["scores"]["overall"] or 0, d["name"])),
        "datasets": sorted(datasets.values(), key=lambda d: d["dataset"]),
    }
