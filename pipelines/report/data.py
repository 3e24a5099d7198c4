"""What the governance site shows, read once from the lake into plain dicts (no rendering here).

Each ``meta.*`` table is read once into Arrow and aggregated with DuckDB; data tables are never scanned,
except a bounded sample of each quarantine table for failing-row examples (masked through
``pipelines.privacy``). Table sizes, update times and rejected drop files come from Iceberg metadata
(snapshot summaries, the raw tables' ``citylake.state`` ledger).
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.lake.meta import BATCHES, CONFLICTS, STANDARDIZATION_LOG
from pipelines.privacy.mask import mask_message, mask_text
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
CYCLE_DAYS = {"实时": 1, "每小时": 1, "每日": 1, "每周": 7, "每月": 31, "每季度": 92, "每半年": 183, "每年": 366}
"""Days an update cycle allows before the dataset counts as stale (one day of grace is added)."""
_TAG_DESCRIPTIONS = {"duplicate_key": "主键不重复（只有多余的副本计为不通过）",
                     "source_conflict": "与权威来源的取值一致（一数一源）"}
STATUS_LABELS = {"published": "已发布", "published_partial": "发布(部分隔离)", "held": "暂扣", "released": "已放行",
                 "nothing_new": "无新数据"}


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
    """H2's ``CatalogEntry`` objects (for ``write_catalog``); empty when the catalog module is absent."""
    gx_docs: str | None = None
    """Absolute path of the GX Data Docs site, when built."""


def _arrow(catalog: Any, identifier: str, schema: pa.Schema, row_filter: Any = None) -> pa.Table:
    from pipelines.lake.raw import open_table

    table = open_table(catalog, identifier)
    if table is None:
        return schema.empty_table()
    data = table.scan(row_filter=row_filter).to_arrow() if row_filter is not None else table.scan().to_arrow()
    cols = [data.column(f.name).cast(f.type) if f.name in data.column_names else pa.nulls(data.num_rows, f.type)
            for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


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
    return None if x is None else round(100 * x, 2)


class _Reader:
    """One pass over the lake for one site build."""

    def __init__(self, settings: Settings, today: date) -> None:
        from pipelines.config import load_config
        from pipelines.lake.catalog import get_catalog
        from pipelines.privacy.policy import Declarations

        self.settings = settings
        self.today = today
        self.standards, self.systems, self.contracts = load_config(settings)
        self.decl = Declarations(self.standards, self.contracts)
        self.catalog = get_catalog(settings)
        self.departments = _departments(settings)
        self.con = duckdb.connect()
        self.window_start = today - timedelta(days=RECENT_DAYS - 1)

    def department_name(self, code: str | None) -> str:
        if not code:
            return "未指定部门"
        d = self.departments.get(code)
        return getattr(d, "name", None) or code

    # --- quality results -------------------------------------------------------------------------------
    def results(self) -> tuple[pa.Table, pa.Table]:
        """(results keyed by contract dataset with the day column, results as recorded for consistency)."""
        recorded = scorecard.read_results(self.catalog)
        return scorecard.with_day(scorecard.by_contract(recorded, self.contracts)), recorded

    def latest_rows(self, dayed: pa.Table) -> pa.Table:
        """Each dataset's results of its latest Asia/Shanghai day on or before the report day."""
        self.con.register("r", dayed)
        out = self.con.sql(
            "SELECT * FROM r WHERE day <= $today QUALIFY day = max(day) OVER (PARTITION BY dataset)",
            params={"today": self.today}).to_arrow_table()
        self.con.unregister("r")
        return out

    def rule_rows(self, latest: pa.Table) -> dict[str, list[dict[str, Any]]]:
        """Per dataset its rules on its latest day: evaluated, failed, rate, dimension, severity, error."""
        self.con.register("l", latest)
        rows = self.con.sql(
            "SELECT dataset, rule, any_value(tag) AS tag, any_value(dimension) AS dimension, any_value(\"column\") AS col, "
            "any_value(severity) AS severity, sum(coalesce(evaluated,0))::BIGINT AS evaluated, "
            "sum(coalesce(failed,0))::BIGINT AS failed, max(error) AS error, max(recorded_at) AS at "
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
        """The latest event of every raw batch (its status), newest first."""
        data = _arrow(self.catalog, "meta.batches", BATCHES)
        self.con.register("b", data)
        rows = self.con.sql(
            "SELECT * FROM b QUALIFY row_number() OVER (PARTITION BY dataset, raw_batch_id ORDER BY recorded_at DESC) = 1 "
            "ORDER BY recorded_at DESC").to_arrow_table().to_pylist()
        self.con.unregister("b")
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
        """Per dataset its latest run's standardization changes and the 30-day total rows changed."""
        data = _arrow(self.catalog, "meta.standardization_log", STANDARDIZATION_LOG)
        self.con.register("s", data)
        latest = self.con.sql(
            "SELECT * FROM s QUALIFY max(recorded_at) OVER (PARTITION BY dataset) = recorded_at "
            "ORDER BY dataset, rows_changed DESC, \"column\"").to_arrow_table().to_pylist()
        since = datetime.combine(self.today - timedelta(days=TREND_DAYS - 1), datetime.min.time(), TZ)
        totals = dict(self.con.execute(
            "SELECT dataset, sum(rows_changed)::BIGINT FROM s WHERE recorded_at >= ? GROUP BY dataset",
            [since]).fetchall())
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
            "SELECT * FROM c WHERE tag = 'source_conflict' QUALIFY row_number() OVER "
            "(PARTITION BY element, dataset ORDER BY recorded_at DESC) = 1 ORDER BY element, dataset").to_arrow_table().to_pylist()
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
                "department": self.department_name(owner.owner if owner else c["department"]),
                "compared": c["evaluated"] or 0, "conflicts": c["failed"] or 0,
                "rate": (c["failed"] or 0) / c["evaluated"] if c["evaluated"] else None,
                "at": _local(c["recorded_at"]), "run_id": c["run_id"],
                "examples": [{"key": r["key"], "authoritative": r["authoritative_value"], "other": r["other_value"],
                              "column": r["other_column"]} for r in rows]})
        return list(by_element.values())

    def _system_name(self, code: str) -> str:
        s = self.systems.get(code)
        return f"{s.name} ({code})" if s is not None else code

    # --- lake metadata ---------------------------------------------------------------------------------
    def raw_tables(self) -> list[dict[str, Any]]:
        """Every registered raw table: rows landed in the window (snapshot summaries) and rejected files."""
        from pipelines.lake.raw import TableState, open_table

        since = datetime.combine(self.window_start, datetime.min.time(), TZ)
        out = []
        for s in self.systems.values():
            for t in s.all_tables:
                ident = s.raw_table(t.code)
                table = open_table(self.catalog, ident)
                info: dict[str, Any] = {"identifier": ident, "system": s.system, "system_name": s.name, "table": t.code,
                                        "department": s.department, "rows": None, "landed_recent": 0,
                                        "rejected": [], "updated": None}
                if table is not None:
                    snap = table.current_snapshot()
                    if snap is not None:
                        info["updated"] = _ms_local(snap.timestamp_ms)
                        total = snap.summary.additional_properties.get("total-records") if snap.summary else None
                        info["rows"] = int(total) if total is not None else None
                    for sn in table.metadata.snapshots:
                        if sn.summary is not None and _ms_local(sn.timestamp_ms) >= since:
                            info["landed_recent"] += int(sn.summary.additional_properties.get("added-records", 0) or 0)
                    for name, entry in sorted(TableState.of(table).ledger.items()):
                        if entry.get("status") == "rejected":
                            info["rejected"].append({"file": mask_text(name), "reason": mask_message(entry.get("reason") or ""),
                                                     "line": entry.get("line"), "batch": entry.get("batch")})
                out.append(info)
        return out

    def dataset_lake(self, dataset: str) -> dict[str, Any]:
        """std table size and last update, quarantine size (metadata only)."""
        from pipelines.lake.raw import open_table

        info: dict[str, Any] = {"std_rows": None, "std_updated": None, "std_snapshot": None, "quarantine_rows": 0,
                                "quarantine_table": None}
        std = open_table(self.catalog, f"std.{dataset}")
        if std is not None and std.current_snapshot() is not None:
            snap = std.current_snapshot()
            info["std_updated"] = _ms_local(snap.timestamp_ms)
            info["std_snapshot"] = snap.snapshot_id
            total = snap.summary.additional_properties.get("total-records") if snap.summary else None
            info["std_rows"] = int(total) if total is not None else None
        q = open_table(self.catalog, f"quarantine.{dataset}")
        if q is not None:
            info["quarantine_table"] = q
            snap = q.current_snapshot()
            total = snap.summary.additional_properties.get("total-records") if snap is not None and snap.summary else None
            info["quarantine_rows"] = int(total) if total is not None else 0
        return info

    def quarantine_examples(self, contract: Any, table: Any, rules: list[dict[str, Any]],
                            runs: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
        """Up to ``EXAMPLES_PER_RULE`` masked failing rows per failing rule, from a bounded quarantine read:
        rows the runs of the counts shown (``runs``) quarantined, else any (a release quarantines under its
        own run id)."""
        from pyiceberg.expressions import In

        from pipelines.privacy.policy import masked_rows

        failing = {r["rule"]: r for r in rules if r["failed"]}
        if table is None or not failing:
            return {}
        names = {f.name for f in table.schema().fields}
        cols = [c for c in dict.fromkeys([*contract.primary_key, *(r["col"] for r in failing.values() if r["col"])]) if c in names]
        if "_rules" not in names:
            return {}
        data = None
        if runs and "_run_id" in names:
            data = table.scan(row_filter=In("_run_id", runs), selected_fields=(*cols, "_rules"),
                              limit=QUARANTINE_SAMPLE).to_arrow()
        if data is None or data.num_rows == 0:
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
        masked = masked_rows(f"quarantine.{contract.dataset}", data.select(cols).take(pa.array(wanted, pa.int64())), self.decl)
        row_of = dict(zip(wanted, masked, strict=True))
        out: dict[str, list[dict[str, Any]]] = {}
        for rule, idx in picked.items():
            col = failing[rule]["col"]
            out[rule] = [{"key": " | ".join(str(row_of[i].get(k)) for k in contract.primary_key if k in row_of[i]),
                          "column": col, "value": row_of[i].get(col) if col in cols else None} for i in idx]
        return out


def _departments(settings: Settings) -> dict[str, Any]:
    """The department registry (code → Department) when this checkout has it; {} otherwise (codes shown)."""
    try:
        from pipelines.config import load_departments  # type: ignore[attr-defined]
    except ImportError:
        return {}
    return dict(load_departments(settings))


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


def freshness(updated: datetime | None, cycle: str | None, today: date) -> dict[str, Any]:
    """The dataset's last std update against its contract's update cycle."""
    allowed = CYCLE_DAYS.get(cycle or "", None)
    if updated is None:
        return {"state": "none", "label": "尚未发布", "days": None, "allowed": allowed}
    age = (today - updated.astimezone(TZ).date()).days
    if allowed is None:
        return {"state": "unknown", "label": "未声明更新周期", "days": age, "allowed": None}
    if age > allowed:
        return {"state": "stale", "label": f"已逾期 {age - allowed} 天", "days": age, "allowed": allowed}
    return {"state": "fresh", "label": "按期更新", "days": age, "allowed": allowed}


def _catalog(r: _Reader) -> tuple[list[Any], list[dict[str, Any]]]:
    from pipelines.catalog.build import build_catalog

    entries = build_catalog(r.settings, r.catalog, config=(r.standards, r.systems, r.contracts))
    return entries, [e.to_dict() for e in entries]


def _action(ds: dict[str, Any]) -> str:
    """The one thing to do about a dataset, most urgent first."""
    name = ds["dataset"]
    if ds["held"]:
        b = ds["held"][0]
        rule = b["failures"][0]["rule"] if b["failures"] else "阻断规则"
        return (f"批次 {b['raw_batch_id']} 因「{rule}」被暂扣：请{ds['department_name']}修正源数据后运行 "
                f"citylake quality run {name} --retry-held")
    if ds["freshness"]["state"] == "stale":
        return f"已 {ds['freshness']['days']} 天未更新（更新周期{ds['update_cycle']}）：请{ds['department_name']}按期推送数据"
    if ds["freshness"]["state"] == "none" and not ds["rules"]:
        return f"尚无质量检查结果：运行 citylake quality run {name}"
    worst = next((r for r in ds["rules"] if r["failed"]), None)
    if worst is not None:
        if worst["description"]:
            return (f"请{ds['department_name']}修正「{worst['description']}」不通过的 {worst['failed']:,} 行"
                    f"（规则 {worst['rule']}）")
        return f"请{ds['department_name']}修正规则 {worst['rule']} 不通过的 {worst['failed']:,} 行"
    return "无需处理"


def collect(settings: Settings, today: date) -> SiteData:
    """Read everything the site shows."""
    r = _Reader(settings, today)
    try:
        dayed, consistency = r.results()
        latest = r.latest_rows(dayed)
        window = dayed.filter(pc.greater_equal(dayed.column("day"),
                                               pa.scalar(today - timedelta(days=TREND_DAYS - 1), pa.date32())))
        rules = r.rule_rows(latest)
        ds_cards = scorecard.cards(latest, "dataset")
        dept_cards = scorecard.cards(latest, "department")
        ds_days = scorecard.daily(window.drop_columns(["day"]), "dataset")
        dept_days = scorecard.daily(window.drop_columns(["day"]), "department")
        all_days = scorecard.daily(window.drop_columns(["day"])).get(None, {})
        lake_card = scorecard.card(latest)
        latest_day = {d: day for d, day in zip(*[latest.column(c).to_pylist() for c in ("dataset", "day")], strict=True)}
        runs: dict[str, list[str]] = defaultdict(list)
        for d, run in zip(*[latest.column(c).to_pylist() for c in ("dataset", "run_id")], strict=True):
            if run and run not in runs[d]:
                runs[d].append(run)
        batches = r.batches()
        stdlog = r.standardization()
        conflicts = r.conflicts(consistency)
        raws = r.raw_tables()
        entries, catalog = _catalog(r)
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
    for c in sorted(r.contracts.values(), key=lambda c: c.dataset):
        lake = r.dataset_lake(c.dataset)
        ds_rules = rules.get(c.dataset, [])
        examples = r.quarantine_examples(c, lake.pop("quarantine_table"), ds_rules, runs.get(c.dataset))
        for rule in ds_rules:
            rule["examples"] = examples.get(rule["rule"], [])
        system = r.systems.get(c.source["system"])
        entry = entry_by_id.get(f"std.{c.dataset}")
        datasets[c.dataset] = {
            "dataset": c.dataset, "name": c.name, "description": c.description,
            "department": c.owner, "department_name": r.department_name(c.owner),
            "system": c.source["system"], "system_name": system.name if system else c.source["system"],
            "source_table": c.source["table"], "update_cycle": c.update_cycle,
            "scores": scores_dict(ds_cards.get(c.dataset)), "has_results": c.dataset in ds_cards,
            "latest_day": latest_day.get(c.dataset), "rules": ds_rules,
            "trend": _trend(ds_days.get(c.dataset), today),
            "freshness": freshness(lake["std_updated"], c.update_cycle, today), **lake,
            "held": held_by_ds.get(c.dataset, []), "recent_batches": recent_by_ds.get(c.dataset, []),
            "standardization": stdlog.get(c.dataset),
            "lineage": entry["lineage"] if entry else _lineage(c, r),
            "catalog_entry": f"std.{c.dataset}" if entry else None,
        }
        datasets[c.dataset]["action"] = _action(datasets[c.dataset])

    departments = _department_pages(r, datasets, dept_cards, dept_days, raws, today)
    overview = _overview(r, datasets, lake_card, all_days, batches, raws, departments, today)
    return SiteData(today=today, generated_at=datetime.now(TZ), overview=overview, departments=departments,
                    datasets=datasets, conflicts=conflicts, catalog=catalog, catalog_entries=entries)


def _lineage(contract: Any, r: _Reader) -> list[dict[str, Any]]:
    """Source table → raw → std from the registry and the contract (when the catalog module is absent)."""
    system = r.systems.get(contract.source["system"])
    raw = system.raw_table(contract.source["table"]) if system else f"raw.{contract.source['system']}__{contract.source['table']}"
    return [{"step": "source", "identifier": f"{contract.source['system']}.{contract.source['table']}", "snapshot_id": None, "at": None},
            {"step": "raw", "identifier": raw, "snapshot_id": None, "at": None},
            {"step": "std", "identifier": f"std.{contract.dataset}", "snapshot_id": None, "at": None}]


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
            "code": code, "name": r.department_name(code),
            "contact": {"name": contact.name, "email": contact.email, "phone": contact.phone} if contact else None,
            "scores": scores_dict(cards.get(code)), "has_results": code in cards,
            "trend": _trend(days.get(code), today), "datasets": mine, "systems": systems,
            "held": sum(len(x["held"]) for x in mine),
            "rejected": sum(len(t["rejected"]) for t in raws if t["department"] == code),
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
    ranked = sorted(
        (d for d in datasets.values()
         if d["held"] or d["freshness"]["state"] == "stale" or (d["scores"]["overall"] is not None and d["scores"]["overall"] < 1)),
        key=lambda d: (not d["held"], d["scores"]["overall"] if d["scores"]["overall"] is not None else 1.0, d["dataset"]))
    return {
        "scores": scores_dict(lake_card), "has_results": lake_card.overall is not None or bool(lake_card.rules),
        "trend": _trend(all_days, today), "window_start": start,
        "rows_landed": sum(t["landed_recent"] for t in raws), "raw_tables": len(raws),
        "batches": counts, "rejected": [dict(f, table=t["identifier"]) for t in raws for f in t["rejected"]],
        "worst": ranked[:5],
        "departments": sorted(departments.values(), key=lambda d: (d["scores"]["overall"] is None,
                                                                    d["scores"]["overall"] or 0, d["name"])),
        "datasets": sorted(datasets.values(), key=lambda d: d["dataset"]),
    }
