"""The resource catalog (数据资源一本账): one entry per raw, std and curated table of the lake, plus every
contracted dataset whose std table does not exist yet.

Built from the registry (source system, table, connection id), the contracts (the catalog fields of
政务信息资源目录: classification, resource code, provider, sharing, open, update cycle, grade) and the lake's
table metadata only: rows come from the current snapshot's summary (``total-records``), the update time from
its timestamp, lineage from snapshot summaries (``citylake.batch-id`` on raw, ``citylake.batches`` on std).
No data file is read except the two small meta tables behind the quality score and the registrations, so
a lake of hundreds of tables builds in well under a second per hundred.

A raw table no contract is built from (a new source system stops at raw) is ``未编目``, with the command that
drafts its contract and what a person must then fill in.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipelines.config import load_config, load_departments
from pipelines.departments import department_name
from pipelines.lake.catalog import get_catalog
from pipelines.lake.raw import BATCH_ID, PUBLISHED_BATCHES, last_publish, summary_value, total_records
from pipelines.settings import Settings

LAYERS = ("raw", "std", "curated")
"""Namespaces the catalog lists; ``meta`` and ``quarantine`` are the lake's own bookkeeping."""
CATALOGUED, UNCATALOGUED = "已编目", "未编目"
REGISTERED, UNREGISTERED, NOT_REGISTRABLE = "已登记", "未登记", "—"
STEP_LABELS = {"source": "源系统表", "raw": "原始层", "std": "标准层", "curated": "主题层", "export": "共享/开放"}
FILL_IN = "信息资源分类（类/项/目/细目、顺序码）、分级、共享属性、开放属性、更新周期，以及每列的数据元"


@dataclass
class CatalogEntry:
    """One catalog entry; ``to_dict`` is JSON-safe (str, int, float, None, lists and dicts of them)."""

    identifier: str
    layer: str
    dataset: str | None
    name: str
    status: str
    fix: str | None = None
    resource_code: str | None = None
    classification: dict[str, Any] | None = None
    provider: dict[str, Any] | None = None
    summary: str | None = None
    format: str | None = None
    items: list[dict[str, Any]] = field(default_factory=list)
    sharing: dict[str, Any] | None = None
    open: dict[str, Any] | None = None
    update_cycle: str | None = None
    grade: dict[str, Any] | None = None
    rows: int | None = None
    last_updated: str | None = None
    quality_score: float | None = None
    lineage: list[dict[str, Any]] = field(default_factory=list)
    registration: dict[str, Any] | None = None
    overrides: list[dict[str, Any]] = field(default_factory=list)
    system: str | None = None
    source_table: str | None = None
    department: dict[str, Any] | None = None

    @property
    def registration_status(self) -> str:
        """已登记 / 未登记; "—" for a raw table: registration belongs to the dataset (its std entry)."""
        if self.layer == "raw":
            return NOT_REGISTRABLE
        return REGISTERED if self.registration else UNREGISTERED

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "registration_status": self.registration_status}


@dataclass
class _Lake:
    """What the lake's metadata says about one table: no data file read."""

    identifier: str
    snapshot_id: int | None
    at: str | None
    rows: int | None
    columns: list[tuple[str, str]]
    table: Any


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def _lake_table(catalog: Any, identifier: str, tables: dict[str, Any] | None = None) -> _Lake:
    table = tables.get(identifier) if tables is not None else None
    if table is None:
        table = catalog.load_table(identifier)
        if tables is not None:
            tables[identifier] = table
    snap = table.current_snapshot()
    rows = total_records(snap)
    columns = [(f.name, str(f.field_type)) for f in table.schema().fields]
    # a std table's version is its last publish, as on the dataset page: a maintenance commit (compaction,
    # expiry) changes no data and does not make it 最近更新
    shown = last_publish(table) if identifier.startswith("std.") and snap is not None else snap
    return _Lake(identifier, shown.snapshot_id if shown else None, _iso(shown.timestamp_ms) if shown else None, rows,
                 columns, table)


def _raw_snapshot_of(raw: _Lake, std: _Lake) -> tuple[int | None, str | None]:
    """The raw snapshot the std table's latest publish came from: the last raw commit of a batch that the
    latest std snapshot carrying ``citylake.batches`` names; else the raw table's current snapshot."""
    batches: set[str] = set()
    for snap in sorted(std.table.metadata.snapshots, key=lambda s: s.timestamp_ms, reverse=True):
        text = summary_value(snap, PUBLISHED_BATCHES)
        if text:
            batches = set(json.loads(text))
            break
    if batches:
        for snap in sorted(raw.table.metadata.snapshots, key=lambda s: s.timestamp_ms, reverse=True):
            if summary_value(snap, BATCH_ID) in batches:
                return snap.snapshot_id, _iso(snap.timestamp_ms)
    return raw.snapshot_id, raw.at


class _Context:
    """Everything the entries are built from, loaded once."""

    def __init__(self, settings: Settings, catalog: Any, config: tuple[Any, dict[str, Any], dict[str, Any]] | None,
                 scores: dict[str, float | None] | None = None) -> None:
        from pipelines.catalog.registration import latest_registrations
        from pipelines.quality.scorecard import latest_scores

        loaded = config if config is not None else load_config(settings)
        self.standards: Any = loaded[0]
        self.systems: dict[str, Any] = loaded[1]
        self.contracts: dict[str, Any] = loaded[2]
        self.departments = load_departments(settings)
        # GB/T 36344 overall of each dataset's latest day (None: no rules); the report passes the ones it shows
        self.scores = scores if scores is not None else latest_scores(catalog, self.contracts)
        self.registrations = latest_registrations(catalog)
        self.by_raw: dict[str, list[Any]] = {}
        for c in self.contracts.values():
            self.by_raw.setdefault(c.raw_table, []).append(c)
        self.raw_names = {s.raw_table(t.code): (s, t) for s in self.systems.values() for t in s.all_tables}

    def department(self, code: str) -> dict[str, str]:
        return {"code": code, "name": department_name(self.departments, code)}


def _source_step(system: Any, table: Any) -> dict[str, Any]:
    """The source system table: system code and name, the table as the source names it, the connection id
    (never a URL: it may carry credentials)."""
    if hasattr(table, "source"):  # a relational table
        source = f"{table.source_schema}.{table.source}" if table.source_schema else table.source
    else:  # a file drop: the file pattern within the drop location
        source = table.glob
    return {"step": "source", "label": STEP_LABELS["source"], "identifier": f"{system.system}:{source}",
            "snapshot_id": None, "at": None, "system": system.system, "system_name": system.name,
            "source_table": source, "connection": system.connection}


def _step(step: str, lake: _Lake | None, identifier: str, snapshot: tuple[int | None, str | None] | None = None
          ) -> dict[str, Any]:
    snapshot_id, at = snapshot if snapshot is not None else ((lake.snapshot_id, lake.at) if lake else (None, None))
    return {"step": step, "label": STEP_LABELS[step], "identifier": identifier, "snapshot_id": snapshot_id, "at": at}


def downstream_steps(contracts: dict[str, Any], identifier: str, lake: dict[str, _Lake]) -> list[dict[str, Any]]:
    """Lineage after std: curated tables whose contract lists ``identifier`` among its ``inputs``, then the
    exports a contract declares (``exports``). Neither exists in contracts yet; this is where they join."""
    out = []
    for c in contracts.values():
        inputs = getattr(c, "inputs", None) or []
        if identifier in inputs:
            curated = f"curated.{c.dataset}"
            out.append(_step("curated", lake.get(curated), curated))
            for export in getattr(c, "exports", None) or []:
                out.append(_step("export", None, str(export)))
    return out


def _std_entry(ctx: _Context, contract: Any, lake: dict[str, _Lake], layer: str = "std") -> CatalogEntry:
    identifier = f"{layer}.{contract.dataset}"
    here = lake.get(identifier)
    raw = lake.get(contract.raw_table)
    system = ctx.systems.get(contract.source["system"])
    lineage: list[dict[str, Any]] = []
    source_table = None
    if system is not None:
        src = _source_step(system, system.table(contract.source["table"]))
        source_table = src["source_table"]
        lineage.append(src)
    lineage.append(_step("raw", raw, contract.raw_table,
                         _raw_snapshot_of(raw, here) if raw is not None and here is not None else None))
    lineage.append(_step("std", here, contract.std_table))
    lineage += downstream_steps(ctx.contracts, contract.std_table, lake)
    code = contract.catalog
    classification = {"class": code.class_, "item": code.item, "category": code.category,
                      "subcategory": code.subcategory, "code": code.code, "path": contract.catalog_path}
    sharing = contract.sharing
    registration = ctx.registrations.get(contract.dataset)
    return CatalogEntry(
        identifier=identifier, layer=layer, dataset=contract.dataset, name=contract.name, status=CATALOGUED,
        resource_code=contract.resource_code, classification=classification,
        provider=ctx.department(contract.owner), summary=contract.description, format=contract.format,
        items=[{"name": col.name, "element": col.element,
                "element_name": e.name_zh if (e := ctx.standards.elements.get(col.element)) else None,
                "type": e.type if e else None} for col in contract.columns],
        sharing={"type": sharing.type, "condition": sharing.condition or sharing.basis, "basis": sharing.basis,
                 "methods": list(sharing.methods)},
        open={"type": contract.open.type, "condition": contract.open.condition},
        update_cycle=contract.update_cycle,
        grade={"level": contract.classification.level, "grade": contract.classification.grade},
        rows=here.rows if here else None, last_updated=here.at if here else None,
        quality_score=ctx.scores.get(contract.dataset), lineage=lineage,
        registration=registration.to_dict() if registration else None,
        overrides=[dict(o) for o in contract.overrides],
        system=contract.source["system"], source_table=source_table,
        department=ctx.department(system.department) if system is not None else None,
    )


def _raw_entry(ctx: _Context, here: _Lake, lake: dict[str, _Lake]) -> CatalogEntry:
    found = ctx.raw_names.get(here.identifier)
    system, table = found if found else (None, None)
    built = ctx.by_raw.get(here.identifier, [])
    lineage = [_source_step(system, table)] if system is not None else []
    lineage.append(_step("raw", here, here.identifier))
    for c in built:  # what the raw table feeds
        lineage.append(_step("std", lake.get(c.std_table), c.std_table))
    name = f"{system.name}·{lineage[0]['source_table']}（原始数据）" if system is not None else here.identifier
    entry = CatalogEntry(
        identifier=here.identifier, layer="raw", dataset=built[0].dataset if built else None, name=name,
        status=CATALOGUED if built else UNCATALOGUED,
        items=[{"name": n, "element": None, "element_name": None, "type": t} for n, t in here.columns],
        rows=here.rows, last_updated=here.at, lineage=lineage,
        system=system.system if system else None, source_table=lineage[0]["source_table"] if system else None,
        department=ctx.department(system.department) if system is not None else None,
    )
    if built:
        c = built[0]
        entry.summary = f"{c.name}的原始数据（未标准化），编目见 {c.std_table}"
        entry.provider = ctx.department(c.owner)
        entry.grade = {"level": c.classification.level, "grade": c.classification.grade}  # same data, same grade
    elif system is not None and table is not None:
        entry.fix = (f"citylake contract new {system.system} {table.code}，然后在生成的 schemas/datasets/<dataset>.yml "
                     f"中填写标注 TODO 的{FILL_IN}；校验通过后运行 citylake quality run <dataset> 发布到标准层")
    else:  # a raw table whose system left the registry
        entry.fix = (f"{here.identifier} 的源系统不在登记簿 (schemas/sources/) 中：先登记源系统，再运行 "
                     f"citylake contract new <system> <table>")
    return entry


def _curated_entry(ctx: _Context, here: _Lake) -> CatalogEntry:
    name = here.identifier.split(".", 1)[1]
    contract = ctx.contracts.get(name)
    if contract is not None and getattr(contract, "inputs", None):  # a curated dataset's own contract
        entry = _std_entry(ctx, contract, {here.identifier: here}, layer="curated")
        entry.rows, entry.last_updated = here.rows, here.at
        return entry
    return CatalogEntry(
        identifier=here.identifier, layer="curated", dataset=None, name=here.identifier, status=UNCATALOGUED,
        fix=f"为 {here.identifier} 编写数据集契约 schemas/datasets/{name}.yml（{FILL_IN}）",
        items=[{"name": n, "element": None, "element_name": None, "type": t} for n, t in here.columns],
        rows=here.rows, last_updated=here.at, lineage=[_step("curated", here, here.identifier)])


def build_catalog(settings: Settings, catalog: Any = None, *,
                  config: tuple[Any, dict[str, Any], dict[str, Any]] | None = None,
                  tables: dict[str, Any] | None = None,
                  scores: dict[str, float | None] | None = None) -> list[CatalogEntry]:
    """Every raw, std and curated table of the lake (not meta, not quarantine) and every contracted dataset
    whose std table does not exist yet, ordered by layer then identifier. ``config``: the
    ``load_config(settings)`` result when the caller has it already (the report site), saving a second load.
    ``tables``: a per-build cache identifier → loaded table, used and filled here (the report site shares
    it, so each table's metadata is loaded once per build). ``scores``: dataset → quality score when the
    caller computed them (the report site: ``meta.quality_results`` read once, the page and the entry agree);
    else ``latest_scores``."""
    catalog = catalog if catalog is not None else get_catalog(settings)
    ctx = _Context(settings, catalog, config, scores)
    lake: dict[str, _Lake] = {}
    for ns in LAYERS:
        for ident in catalog.list_tables(ns):
            name = ".".join(ident)
            lake[name] = _lake_table(catalog, name, tables)
    entries: list[CatalogEntry] = []
    for here in lake.values():
        if here.identifier.startswith("raw."):
            entries.append(_raw_entry(ctx, here, lake))
        elif here.identifier.startswith("curated."):
            entries.append(_curated_entry(ctx, here))
    for contract in ctx.contracts.values():  # std: present or not yet published
        entries.append(_std_entry(ctx, contract, lake))
    known = {c.std_table for c in ctx.contracts.values()}
    for name, here in lake.items():  # a std table whose contract was removed
        if name.startswith("std.") and name not in known:
            entries.append(CatalogEntry(
                identifier=name, layer="std", dataset=None, name=name, status=UNCATALOGUED,
                fix=f"{name} 没有数据集契约（契约已删除？）：恢复 schemas/datasets/{name[4:]}.yml 或删除该表",
                items=[{"name": n, "element": None, "element_name": None, "type": t} for n, t in here.columns],
                rows=here.rows, last_updated=here.at, lineage=[_step("std", here, name)]))
    order = {layer: i for i, layer in enumerate(LAYERS)}
    return sorted(entries, key=lambda e: (order[e.layer], e.identifier))


def find_entry(entries: list[CatalogEntry], key: str) -> CatalogEntry | None:
    """The entry named by an identifier (``raw.population__person``) or a dataset code (its std entry)."""
    for e in entries:
        if e.identifier == key:
            return e
    for layer in ("std", "curated", "raw"):
        for e in entries:
            if e.dataset == key and e.layer == layer:
                return e
    return None
