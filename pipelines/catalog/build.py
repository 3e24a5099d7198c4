"""The resource catalog (数据资源一本账): one entry per raw, std and curated table of the lake, plus every
contracted dataset whose std table does not exist yet.

Built from the registry (source system, table, connection id), the contracts (the catalog fields of
政务信息资源目录: classification, resource code, provider, sharing, open, update cycle, grade) and the lake's
table metadata only: rows come from the current snapshot's summary (``total-records``), the update time from
its timestamp, lineage from snapshot summaries (``citylake.batch-id`` on raw, ``citylake.batches`` on std).
No data file is read except the small meta tables behind the quality score, the registrations and the
requests, so a lake of hundreds of tables builds in well under a second per hundred.

Curated datasets (主题层, ``schemas/curated/``) are entries of their own: their contract's catalog fields, each
column's grade (its element's sensitivity) and what the open release does to it (``deid``), lineage from
their inputs (at the snapshots the current build read, ``citylake.inputs``) to the open release folder
``<exports>/open/latest.json`` names for them. Every std and curated entry lists the requests (开放需求,
``meta.requests``) naming its dataset, contacts masked.

A raw table no contract is built from (a new source system stops at raw) is ``未编目``, with the command that
drafts its contract and what a person must then fill in.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from pipelines.config import load_all, load_curated, load_departments
from pipelines.departments import department_name
from pipelines.lake.catalog import get_catalog
from pipelines.lake.raw import (
    BATCH_ID,
    DATA_BATCHES,
    PUBLISHED_BATCHES,
    data_snapshot_ms,
    last_publish,
    summary_value,
    total_records,
)
from pipelines.settings import Settings

LAYERS = ("raw", "std", "curated")
"""Namespaces the catalog lists; ``meta`` and ``quarantine`` are the lake's own bookkeeping."""
CATALOGUED, UNCATALOGUED = "已编目", "未编目"
REGISTERED, UNREGISTERED, NOT_REGISTRABLE = "已登记", "未登记", "—"
STEP_LABELS = {"source": "源系统表", "raw": "原始层", "std": "标准层", "curated": "主题层", "export": "共享/开放"}
FILL_IN = "信息资源分类（类/项/目/细目、顺序码）、分级、共享属性、开放属性、更新周期，以及每列的数据元"
DEID_LABELS = {"keep": "原样开放", "drop": "不开放（删除）", "mask": "遮蔽后开放", "year": "泛化到年",
               "district": "泛化到区县", "grid": "坐标网格化", "suppress": "小数抑制"}
"""What the open release does to a curated column (``CuratedColumn.deid``), as the catalog and report say it."""


class Loaded(NamedTuple):
    """The whole configuration the catalog reads: std contracts and curated contracts apart."""

    standards: Any
    systems: dict[str, Any]
    contracts: dict[str, Any]
    curated: dict[str, Any]
    departments: Any


def load_everything(settings: Settings) -> Loaded:
    """Standards, registry, std and curated contracts (``config.load_all``) and the department registry."""
    c = load_all(settings)
    return Loaded(c.standards, c.systems, c.contracts, c.curated, load_departments(settings))


def read_latest(settings: Settings) -> dict[str, Any]:
    """``<exports>/open/latest.json`` (dataset → {release_date, path, manifest}), or {} when there is no
    release yet or it cannot be read (the catalog and the report then show no release, never fail)."""
    import logging

    from pipelines.publish.pointer import POINTER, read_pointer
    from pipelines.publish.release import store_for

    try:  # CITYLAKE_EXPORTS_DIR (an s3:// prefix in production) or <lake>/exports
        datasets = read_pointer(store_for(settings))["datasets"]
    except Exception as exc:  # noqa: BLE001 - a broken pointer is shown as "no release", and logged
        logging.getLogger(__name__).warning("cannot read %s/%s: %s", settings.exports.rstrip("/"), POINTER, exc)
        return {}
    return {str(k): v for k, v in datasets.items() if isinstance(v, dict)}


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
    release: dict[str, Any] | None = None
    """A curated dataset's current open release (``open/latest.json``): release_date, path, manifest."""
    requests: list[dict[str, Any]] = field(default_factory=list)
    """Requests (``meta.requests``) naming this dataset, as ``requests.public`` shows them (contacts masked)."""

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
    # a std or curated table's version is its last publish, as on the dataset page: a maintenance commit
    # (compaction, expiry) changes no data and does not make it 最近更新
    shown = last_publish(table) if identifier.startswith(("std.", "curated.")) and snap is not None else snap
    return _Lake(identifier, shown.snapshot_id if shown else None, _iso(shown.timestamp_ms) if shown else None, rows,
                 columns, table)


def _raw_snapshot_of(raw: _Lake, std: _Lake) -> tuple[int | None, str | None]:
    """The raw snapshot the std table's latest publish came from: the last raw commit of a batch that the
    latest std snapshot carrying ``citylake.batches`` names (or a compaction's ``citylake.data-batches``: the
    publish it holds may have expired; lake maintenance keeps these raw snapshots); else the raw table's
    current snapshot."""
    batches: set[str] = set()
    for snap in sorted(std.table.metadata.snapshots, key=lambda s: s.timestamp_ms, reverse=True):
        text = summary_value(snap, PUBLISHED_BATCHES) or summary_value(snap, DATA_BATCHES)
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
                 scores: dict[str, float | None] | None = None, curated: dict[str, Any] | None = None) -> None:
        from pipelines.catalog.registration import latest_registrations
        from pipelines.catalog.requests import list_requests, public
        from pipelines.quality.scorecard import latest_scores

        departments = None
        if config is None:
            everything = load_everything(settings)
            config, curated = everything[:3], everything.curated if curated is None else curated
            departments = everything.departments
        self.standards: Any = config[0]
        self.systems: dict[str, Any] = config[1]
        self.contracts: dict[str, Any] = config[2]
        self.curated: dict[str, Any] = (curated if curated is not None
                                        else load_curated(settings, self.standards, self.contracts))
        self.departments = departments if departments is not None else load_departments(settings)
        # GB/T 36344 overall of each dataset's latest day (None: no rules); the report passes the ones it shows
        self.scores = scores if scores is not None else latest_scores(catalog, self.contracts)
        self.registrations = latest_registrations(catalog)
        self.releases = read_latest(settings)
        self.requests: dict[str, list[dict[str, Any]]] = {}
        for r in list_requests(catalog):
            if r.dataset:
                self.requests.setdefault(r.dataset, []).append(public(r, self.departments))
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


def export_step(release: dict[str, Any] | None) -> dict[str, Any] | None:
    """The open release folder a dataset's pointer names (``open/latest.json``), as a lineage step."""
    if not release or not release.get("path"):
        return None
    return {"step": "export", "label": STEP_LABELS["export"], "identifier": str(release["path"]),
            "snapshot_id": None, "at": None, "release_date": release.get("release_date")}


def downstream_steps(contracts: dict[str, Any], identifier: str, lake: dict[str, _Lake],
                     releases: dict[str, Any] | None = None, _seen: set[str] | None = None) -> list[dict[str, Any]]:
    """Lineage after a table: each curated dataset whose contract lists ``identifier`` among its ``inputs``,
    then its open release (``releases``: ``open/latest.json``'s datasets) or the exports a contract declares
    (``exports``), then what is curated from it in turn (a daily table → its district aggregate)."""
    seen = _seen if _seen is not None else {identifier}
    out = []
    for c in contracts.values():
        inputs = getattr(c, "inputs", None) or []
        curated = f"curated.{c.dataset}"
        if identifier in inputs and curated not in seen:
            seen.add(curated)
            out.append(_step("curated", lake.get(curated), curated))
            step = export_step((releases or {}).get(c.dataset))
            if step is not None:
                out.append(step)
            for export in getattr(c, "exports", None) or []:
                out.append(_step("export", None, str(export)))
            out += downstream_steps(contracts, curated, lake, releases, seen)
    return out


def _items(ctx: _Context, columns: list[Any], opened: bool | None = None) -> list[dict[str, Any]]:
    """信息项: column, element, element name and type, its grade (the element's sensitivity: 敏感个人信息 4 …
    公开 1); for a curated column also what the open release does to it (``deid``) and whether it is opened."""
    from pipelines.grading import SENSITIVITY_GRADE

    out = []
    for col in columns:
        e = ctx.standards.elements.get(col.element)
        item: dict[str, Any] = {"name": col.name, "element": col.element, "element_name": e.name_zh if e else None,
                                "type": e.type if e else None, "sensitivity": e.sensitivity if e else None,
                                "grade": SENSITIVITY_GRADE.get(e.sensitivity) if e else None}
        if opened is not None:
            deid = getattr(col, "deid", "keep")
            item.update(deid=deid, deid_label=DEID_LABELS.get(deid, deid), opened=opened and deid != "drop")
        out.append(item)
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
    lineage += downstream_steps(ctx.curated, contract.std_table, lake, ctx.releases)
    code = contract.catalog
    classification = {"class": code.class_, "item": code.item, "category": code.category,
                      "subcategory": code.subcategory, "code": code.code, "path": contract.catalog_path}
    sharing = contract.sharing
    registration = ctx.registrations.get(contract.dataset)
    return CatalogEntry(
        identifier=identifier, layer=layer, dataset=contract.dataset, name=contract.name, status=CATALOGUED,
        resource_code=contract.resource_code, classification=classification,
        provider=ctx.department(contract.owner), summary=contract.description, format=contract.format,
        items=_items(ctx, contract.columns),
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
        requests=ctx.requests.get(contract.dataset, []) if layer != "raw" else [],
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


def build_inputs(table: Any) -> dict[str, int]:
    """The input snapshots a curated table's latest build read: ``citylake.inputs`` ({identifier: snapshot})
    of its latest snapshot that carries it; {} for a table no build committed yet."""
    from pipelines.lake.raw import summary_value

    for snap in sorted(table.metadata.snapshots, key=lambda s: s.timestamp_ms, reverse=True):
        text = summary_value(snap, "citylake.inputs")
        if text:
            try:
                found = json.loads(text)
            except ValueError:
                return {}
            return {str(k): int(v) for k, v in found.items()} if isinstance(found, dict) else {}
    return {}


def _input_step(identifier: str, lake: dict[str, _Lake], snapshot_id: int | None) -> dict[str, Any]:
    """An input of a curated dataset at the snapshot its build read (else the input's current version)."""
    here = lake.get(identifier)
    step = "curated" if identifier.startswith("curated.") else "std"
    if snapshot_id is None or here is None:
        return _step(step, here, identifier)
    ms = data_snapshot_ms(here.table, snapshot_id)  # kept, or carried by the compaction holding its rows
    at = _iso(ms) if ms is not None else None
    return _step(step, here, identifier, (snapshot_id, at))


def _curated_contract_entry(ctx: _Context, contract: Any, lake: dict[str, _Lake]) -> CatalogEntry:
    """A curated dataset (主题层) from its contract: catalog fields, per-column grade and de-identification,
    lineage inputs → curated → open release, its requests."""
    identifier = f"curated.{contract.dataset}"
    here = lake.get(identifier)
    used = build_inputs(here.table) if here is not None and here.table is not None else {}
    lineage = [_input_step(i, lake, used.get(i)) for i in contract.inputs]
    lineage.append(_step("curated", here, identifier))
    release = ctx.releases.get(contract.dataset)
    step = export_step(release)
    if step is not None:
        lineage.append(step)
    lineage += downstream_steps(ctx.curated, identifier, lake, ctx.releases)
    code = contract.catalog
    sharing, opening = contract.sharing, contract.open
    opened = opening.type != "不予开放"
    registration = ctx.registrations.get(contract.dataset)
    return CatalogEntry(
        identifier=identifier, layer="curated", dataset=contract.dataset, name=contract.name, status=CATALOGUED,
        resource_code=contract.resource_code,
        classification={"class": code.class_, "item": code.item, "category": code.category,
                        "subcategory": code.subcategory, "code": code.code, "path": contract.catalog_path},
        provider=ctx.department(contract.owner), summary=contract.description, format=contract.format,
        items=_items(ctx, contract.columns, opened=opened),
        sharing={"type": sharing.type, "condition": sharing.condition or sharing.basis, "basis": sharing.basis,
                 "methods": list(sharing.methods)},
        open={"type": opening.type, "condition": opening.condition, "met_by": getattr(opening, "met_by", None),
              "k": getattr(opening, "k", None), "licence": getattr(contract, "licence", None)},
        update_cycle=contract.update_cycle,
        grade={"level": contract.classification.level, "grade": contract.classification.grade},
        rows=here.rows if here else None, last_updated=here.at if here else None,
        quality_score=ctx.scores.get(contract.dataset), lineage=lineage,
        registration=registration.to_dict() if registration else None,
        overrides=[dict(o) for o in contract.overrides], department=ctx.department(contract.owner),
        release=dict(release) if release else None, requests=ctx.requests.get(contract.dataset, []),
    )


def _curated_entry(ctx: _Context, here: _Lake) -> CatalogEntry:
    """A curated table no curated contract describes: 未编目."""
    name = here.identifier.split(".", 1)[1]
    return CatalogEntry(
        identifier=here.identifier, layer="curated", dataset=None, name=here.identifier, status=UNCATALOGUED,
        fix=f"为 {here.identifier} 编写主题层数据集契约 schemas/curated/{name}.yml（输入、模型，以及{FILL_IN}）",
        items=[{"name": n, "element": None, "element_name": None, "type": t} for n, t in here.columns],
        rows=here.rows, last_updated=here.at, lineage=[_step("curated", here, here.identifier)])


def build_catalog(settings: Settings, catalog: Any = None, *,
                  config: tuple[Any, dict[str, Any], dict[str, Any]] | None = None,
                  tables: dict[str, Any] | None = None,
                  scores: dict[str, float | None] | None = None,
                  curated: dict[str, Any] | None = None) -> list[CatalogEntry]:
    """Every raw, std and curated table of the lake (not meta, not quarantine) and every contracted dataset
    (std or curated) whose table does not exist yet, ordered by layer then identifier. ``config``: the
    ``load_config(settings)`` result when the caller has it already (the report site), saving a second load;
    ``curated``: the curated contracts likewise (else loaded with them).
    ``tables``: a per-build cache identifier → loaded table, used and filled here (the report site shares
    it, so each table's metadata is loaded once per build). ``scores``: dataset → quality score when the
    caller computed them (the report site: ``meta.quality_results`` read once, the page and the entry agree);
    else ``latest_scores``."""
    catalog = catalog if catalog is not None else get_catalog(settings)
    ctx = _Context(settings, catalog, config, scores, curated)
    lake: dict[str, _Lake] = {}
    for ns in LAYERS:
        for ident in catalog.list_tables(ns):
            name = ".".join(ident)
            lake[name] = _lake_table(catalog, name, tables)
    entries: list[CatalogEntry] = []
    for here in lake.values():
        if here.identifier.startswith("raw."):
            entries.append(_raw_entry(ctx, here, lake))
        elif here.identifier.startswith("curated.") and here.identifier.split(".", 1)[1] not in ctx.curated:
            entries.append(_curated_entry(ctx, here))
    for contract in ctx.contracts.values():  # std: present or not yet published
        entries.append(_std_entry(ctx, contract, lake))
    for contract in ctx.curated.values():  # curated: present or not yet built
        entries.append(_curated_contract_entry(ctx, contract, lake))
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
