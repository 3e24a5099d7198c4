"""Write-audit-publish: a raw batch becomes visible in ``std.<dataset>`` only after it passed its rules.

For each new raw batch of a dataset: standardize, keep the latest copy of each key (extra copies are
quarantined as ``duplicate_key``), evaluate every rule, then either
- hold the batch (a critical rule fails on more than its threshold): std stays at its previous snapshot,
  the task fails with a readable summary (rule, count, three example keys); or
- publish: passing rows upsert into std by primary key in one commit, rows failing a critical rule go to
  ``quarantine.<dataset>`` with every rule they broke, warning-only rows are published and flagged.
Every batch records extracted = published + quarantined + held in ``meta.batches``; every rule result
lands in ``meta.quality_results`` and every standardization change in ``meta.standardization_log``.

A held batch stays parked (later batches publish without it) until someone acts on it:
- rerunning the run that held it (clearing the Airflow task) validates it again, e.g. after a code-list fix;
- ``citylake quality run <dataset> --retry-held`` does the same for every held batch of the dataset;
- ``citylake quality release <dataset> --reason ...`` publishes what passes and quarantines what fails, with
  the reason recorded: nothing that failed a critical rule reaches std either way.
``meta.batches`` is append-only; the latest row of a batch (``recorded_at``) is its status.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import EqualTo, In

from pipelines.contracts import DatasetContract, load_contracts
from pipelines.errors import CitylakeError
from pipelines.lake.catalog import get_catalog
from pipelines.lake.raw import open_table
from pipelines.quality.rules import RuleResult, evaluate
from pipelines.quality.standardize import standardize
from pipelines.quality.suites import load_suite
from pipelines.registry import load_registry
from pipelines.settings import TZ, Settings, load_settings
from pipelines.standards import load_standards

PROPS = {"format-version": "2", "write.parquet.compression-codec": "zstd"}
# std files are rewritten whole when one of their keys changes: keep them moderate (128 MB in memory).
STD_PROPS = {**PROPS, "write.target-file-size-bytes": str(128 << 20)}
RESULTS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("dataset", pa.string()), ("rule", pa.string()), ("tag", pa.string()),
    ("dimension", pa.string()), ("element", pa.string()), ("column", pa.string()), ("evaluated", pa.int64()),
    ("failed", pa.int64()), ("severity", pa.string()), ("passed", pa.bool_()), ("error", pa.string())])


# One row per (batch, validation); counts are per validation run, the same for each of its batches.
BATCHES_SCHEMA = pa.schema([
    ("dataset", pa.string()), ("raw_batch_id", pa.string()), ("run_id", pa.string()), ("status", pa.string()),
    ("extracted", pa.int64()), ("published", pa.int64()), ("quarantined", pa.int64()), ("held", pa.int64()),
    ("std_snapshot_id", pa.int64()), ("detail", pa.string()), ("reason", pa.string()),
    ("recorded_at", pa.timestamp("us", tz="UTC"))])


class QualityGateError(CitylakeError):
    """A batch was held: the message is the readable summary governance staff act on."""


@dataclass
class GateResult:
    dataset: str
    run_id: str
    batches: list[str]
    status: str
    extracted: int = 0
    published: int = 0
    quarantined: int = 0
    held: int = 0
    deleted: int = 0
    warned: int = 0
    std_snapshot: int | None = None
    failures: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_config(settings: Settings) -> tuple[Any, dict[str, Any], dict[str, DatasetContract]]:
    standards = load_standards(settings.root / "schemas" / "standards")
    systems, errors = load_registry(settings.registry_dir)
    if errors:
        raise CitylakeError("; ".join(str(e) for e in errors.values()))
    return standards, systems, load_contracts(settings.root / "schemas" / "datasets", standards, systems)


def _append(catalog: Any, name: str, data: pa.Table, props: dict[str, str] | None = None) -> None:
    """Append to a meta/quarantine table, creating it from the data's schema the first time."""
    if data.num_rows == 0:
        return
    table = open_table(catalog, name)
    if table is None:
        table = catalog.create_table(name, schema=data.schema, properties=PROPS)
    elif set(data.schema.names) - set(table.schema().column_names):
        with table.update_schema() as update:  # a column added in a later release (older lakes lack it)
            update.union_by_name(data.schema)
    table.append(data, snapshot_properties=props or {})


def batch_status(catalog: Any, dataset: str) -> dict[str, dict[str, Any]]:
    """raw batch id → its latest ``meta.batches`` row (rows written before ``recorded_at`` existed sort first)."""
    done = open_table(catalog, "meta.batches")
    if done is None or done.current_snapshot() is None:
        return {}
    rows = done.scan(row_filter=EqualTo("dataset", dataset)).to_arrow().to_pylist()
    floor = datetime.min.replace(tzinfo=TZ)
    latest: dict[str, dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: r.get("recorded_at") or floor):
        latest[row["raw_batch_id"]] = row
    return latest


def _new_batches(catalog: Any, contract: DatasetContract, run_id: str, retry_held: bool) -> list[str]:
    """Batches never validated, plus the held ones this run may validate again: those it held itself
    (a rerun of the same run is idempotent) or, with ``retry_held``, every held one."""
    raw = open_table(catalog, contract.raw_table)
    if raw is None or raw.current_snapshot() is None:
        return []
    seen = pa.table({"b": raw.scan(selected_fields=("_batch_id",)).to_arrow()["_batch_id"]})
    batches = set(pc.unique(seen["b"]).to_pylist())
    for batch, row in batch_status(catalog, contract.dataset).items():
        if not (row["status"] == "held" and (retry_held or row["run_id"] == run_id)):
            batches.discard(batch)
    return sorted(b for b in batches if b)


def _latest(table: pa.Table, keys: list[str], order: str) -> tuple[pa.Table, pa.Table]:
    """(the latest row of each key, the extra copies). Ties keep one row (by position)."""
    import duckdb

    indexed = table.append_column("_pos", pa.array(range(table.num_rows), pa.int64()))
    con = duckdb.connect()
    con.register("t", indexed)
    key_list = ", ".join(f'"{k}"' for k in keys)
    ranked = con.sql(f'SELECT _pos, row_number() OVER (PARTITION BY {key_list} ORDER BY "{order}" DESC NULLS LAST, '
                     f"_pos DESC) AS rn FROM t").to_arrow_table()
    keep = pc.equal(ranked["rn"], 1)
    pos_keep = pc.filter(ranked["_pos"], keep)
    pos_extra = pc.filter(ranked["_pos"], pc.invert(keep))
    return table.take(pos_keep), table.take(pos_extra)


def _masked_keys(table: pa.Table, contract: DatasetContract, standards: Any) -> list[Any]:
    """The rows' keys as a person may read them (personal elements masked)."""
    from pipelines.quality.consistency import mask

    element_of = {c.name: standards.element(c.element) for c in contract.columns}
    keys = contract.primary_key
    cols = [[mask(v, element_of[k]) for v in table.column(k).to_pylist()] for k in keys]
    return [c[0] if len(keys) == 1 else list(c) for c in zip(*cols, strict=True)]


def _summary(contract: DatasetContract, standards: Any, blocking: list[RuleResult], table: pa.Table) -> str:
    parts = []
    for r in blocking:
        examples = _masked_keys(table.filter(r.failed_mask).slice(0, 3), contract, standards)
        parts.append(f"{r.rule.id} ({r.rule.description}): {r.failed}/{r.evaluated} rows fail "
                     f"(threshold {r.rule.threshold:.0%}), e.g. {examples}")
    return f"{contract.std_table} held at its previous snapshot: " + "; ".join(parts)


def run_quality(dataset: str, *, settings: Settings | None = None, reference_date: date | None = None,
                run_id: str | None = None, retry_held: bool = False, release: str | None = None) -> GateResult:
    """Standardize → validate → publish the new raw batches of one dataset (what the DAG task runs).

    ``release`` (a reason) publishes the held batches past their thresholds: passing rows go to std, every
    failing row to quarantine, and the batches are recorded as ``released`` with the reason."""
    settings = settings or load_settings()
    standards, systems, contracts = load_config(settings)
    if dataset not in contracts:
        raise CitylakeError(f"no dataset contract {dataset!r} (known: {', '.join(sorted(contracts))})")
    contract = contracts[dataset]
    reference_date = reference_date or datetime.now(TZ).date()
    run_id = run_id or f"quality_{dataset}_{reference_date.isoformat()}"
    catalog = get_catalog(settings)
    if release is not None and not release.strip():
        raise CitylakeError(f"release of {dataset}: give a reason (it is recorded in meta.batches)")
    batches = _new_batches(catalog, contract, run_id, retry_held or release is not None)
    if release is not None:
        held = {b for b, row in batch_status(catalog, dataset).items() if row["status"] == "held"}
        batches = [b for b in batches if b in held]
        if not batches:
            raise CitylakeError(f"release of {dataset}: no held batch")
    result = GateResult(dataset, run_id, batches, "nothing_new", reason=release)
    if not batches:
        return result
    raw = catalog.load_table(contract.raw_table).scan(row_filter=In("_batch_id", batches)).to_arrow()
    source = systems[contract.source["system"]].table(contract.source["table"])
    result.extracted = raw.num_rows
    live = raw.filter(pc.invert(pc.fill_null(raw["_deleted"], False)))
    deleted = raw.filter(pc.fill_null(raw["_deleted"], False))
    std, changes = standardize(live, contract, standards, crs=source.crs)
    std = std.append_column("_batch_id", live["_batch_id"]).append_column("_extracted_at", live["_extracted_at"])
    keys = contract.primary_key
    kept, extra = _latest(std, keys, contract.cursor or "_extracted_at")
    rules = load_suite(settings.root / "expectations", contract, standards, reference_date)
    results = evaluate(kept, rules)
    critical = [r for r in results if r.rule.severity == "critical"]
    over = [r for r in critical if r.evaluated and r.failed / r.evaluated > r.rule.threshold]
    blocking = [] if release is not None else over
    dup = _duplicate_result(contract, extra, kept.num_rows)
    _record_results(catalog, run_id, contract, [*results, dup], standards)
    write_gx_result(settings, contract, standards, kept, [*results, dup], run_id, reference_date)
    _append(catalog, "meta.standardization_log", pa.Table.from_pylist(
        [{**c.to_dict(), "run_id": run_id} for c in changes],
        schema=pa.schema([("dataset", pa.string()), ("column", pa.string()), ("transformation", pa.string()),
                          ("rows_changed", pa.int64()), ("run_id", pa.string())])))
    if blocking:
        result.status, result.held = "held", result.extracted
        result.failures = [{"rule": r.rule.id, "failed": r.failed, "evaluated": r.evaluated} for r in blocking]
        _record_batches(catalog, contract, result, None)
        raise QualityGateError(_summary(contract, standards, blocking, kept))

    failed_any = pa.repeat(pa.scalar(False), kept.num_rows)
    for r in critical:
        failed_any = pc.or_(failed_any, r.failed_mask)
    warned_any = pa.repeat(pa.scalar(False), kept.num_rows)
    warnings = [r for r in results if r.rule.severity == "warning"]
    for r in warnings:
        warned_any = pc.or_(warned_any, r.failed_mask)
    bad = kept.filter(failed_any)
    good = kept.filter(pc.invert(failed_any))
    good = good.append_column("_warnings", _rules_per_row(warnings, pc.invert(failed_any), good.num_rows))
    quarantine = _quarantine_rows(contract, bad, extra, critical, failed_any, run_id)
    result.quarantined = quarantine.num_rows
    result.published = good.num_rows
    result.deleted = deleted.num_rows
    result.warned = int(pc.sum(pc.and_(warned_any, pc.invert(failed_any))).as_py() or 0)
    # extracted = published + quarantined (+ held when blocked): deletion rows count as published
    result.published += deleted.num_rows
    assert result.extracted == result.published + result.quarantined + result.held, result
    result.std_snapshot = _publish(catalog, contract, good, deleted, keys, run_id)
    _append(catalog, f"quarantine.{dataset}", quarantine)
    result.status = "published" if release is None else "released"
    result.failures = [{"rule": r.rule.id, "failed": r.failed, "evaluated": r.evaluated} for r in over]
    _record_batches(catalog, contract, result, result.std_snapshot)
    return result


def _duplicate_result(contract: DatasetContract, extra: pa.Table, kept_rows: int) -> RuleResult:
    from pipelines.quality.rules import Rule

    keys = contract.primary_key
    rule_id = f"{contract.dataset}.{'+'.join(keys)}.unique"
    meta = {"rule_id": rule_id, "dimension": "一致性", "element": keys[0], "tag": "duplicate_key",
            "description": "主键唯一: 同一主键保留最新一条, 其余副本隔离"}
    expectation = {"type": "expect_column_values_to_be_unique", "kwargs": {"column": keys[0]}} if len(keys) == 1 \
        else {"type": "expect_compound_columns_to_be_unique", "kwargs": {"column_list": keys}}
    rule = Rule(rule_id, contract.dataset, keys[0], keys[0], "一致性", "critical", "duplicate_key",
                meta["description"], lambda t: pa.repeat(pa.scalar(True), t.num_rows),
                expectation={**expectation, "severity": "critical", "meta": meta})
    # Counted as SQL counts them: the extra copies fail, the kept (latest) copy passes.
    return RuleResult(rule, kept_rows + extra.num_rows, pa.repeat(pa.scalar(True), extra.num_rows))


def _rules_per_row(results: list[RuleResult], keep: pa.Array, n: int) -> pa.Array:
    """For each kept row (``keep`` true), the ids of the rules it broke, in rule order (vectorised: the
    per-row Python loop cost seconds per million rows)."""
    import numpy as np

    rows, names = [], []
    for i, r in enumerate(results):
        hit = np.flatnonzero(pc.filter(r.failed_mask, keep).to_numpy(zero_copy_only=False))
        rows.append(hit)
        names.append(np.full(len(hit), i, dtype=np.int32))
    row = np.concatenate(rows) if rows else np.empty(0, np.int64)
    rule = np.concatenate(names) if names else np.empty(0, np.int32)
    order = np.lexsort((rule, row))
    offsets = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=n))]).astype(np.int32)
    ids = pa.array([r.rule.id for r in results], pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets), ids.take(pa.array(rule[order])))


def _quarantine_rows(contract: DatasetContract, bad: pa.Table, extra: pa.Table, critical: list[RuleResult],
                     failed_any: pa.Array, run_id: str) -> pa.Table:
    broken = _rules_per_row(critical, failed_any, bad.num_rows)
    dup_rule = f"{contract.dataset}.{'+'.join(contract.primary_key)}.unique"
    rows = bad.append_column("_rules", broken)
    dups = extra.append_column("_rules", pa.array([[dup_rule]] * extra.num_rows, pa.list_(pa.string())))
    both = pa.concat_tables([rows, dups.cast(rows.schema)]) if dups.num_rows else rows
    return both.append_column("_run_id", pa.repeat(pa.scalar(run_id), both.num_rows))


def _key_strings(table: pa.Table, keys: list[str]) -> pa.Array:
    """One comparable string per row: the key, or its columns joined with U+001F (composite keys)."""
    parts = [pc.fill_null(pc.cast(table.column(k), pa.string()), "\x00") for k in keys]
    joined = parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, "\x1f")
    return joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined


def _drop_keys(tx: Any, table: Any, keys: list[str], replace: pa.Array, props: dict[str, str]) -> None:
    """Copy-on-write removal of every std row whose key is in ``replace``, one data file at a time.

    This is what pyiceberg's ``Transaction.delete`` does, with a hashed key-set test instead of an
    expression: its ``upsert`` builds ``In(key, [...])`` (or an ``Or`` of ``And`` per composite key) with a
    literal per key, which took 13 s for 0.5 M keys. Only files holding a replaced key are read whole."""
    import itertools
    import uuid

    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files  # pyiceberg is pinned (0.12.0)

    meta = tx.table_metadata
    schema = meta.schema()
    commit, counter = uuid.uuid4(), itertools.count(0)
    replaced: list[tuple[Any, list[Any]]] = []
    for task in table.scan().plan_files():
        if task.delete_files:  # citylake writes copy-on-write only; another writer added delete files
            raise CitylakeError(f"{table.name()}: data file {task.file.file_path} has delete files; "
                                "citylake cannot upsert into merge-on-read tables")
        scan = ArrowScan(table_metadata=meta, io=table.io, projected_schema=schema.select(*keys), row_filter=AlwaysTrue())
        hit = pc.is_in(_key_strings(scan.to_table(tasks=[task]), keys), value_set=replace)
        if not pc.any(hit).as_py():
            continue
        if pc.all(hit).as_py():
            replaced.append((task.file, []))
            continue
        whole = ArrowScan(table_metadata=meta, io=table.io, projected_schema=schema,
                          row_filter=AlwaysTrue()).to_table(tasks=[task])
        rest = whole.filter(pc.invert(pc.is_in(_key_strings(whole, keys), value_set=replace)))
        replaced.append((task.file, list(_dataframe_to_data_files(table_metadata=meta, df=rest, io=table.io,
                                                                  write_uuid=commit, counter=counter))))
    if replaced:
        with tx.update_snapshot(snapshot_properties=props).overwrite(commit_uuid=commit) as overwrite:
            for original, new in replaced:
                overwrite.delete_data_file(original)
                for f in new:
                    overwrite.append_data_file(f)


def _publish(catalog: Any, contract: DatasetContract, good: pa.Table, deleted: pa.Table, keys: list[str],
             run_id: str) -> int | None:
    """One commit: replace the std rows of every key the batch carries (upsert) and drop the keys deleted
    at the source. A first publish only appends."""
    name = contract.std_table
    table = open_table(catalog, name) or catalog.create_table(name, schema=good.schema, properties=STD_PROPS)
    if set(good.schema.names) - set(table.schema().column_names):
        with table.update_schema() as update:  # a column added in a later release
            update.union_by_name(good.schema)
    props = {"citylake.run-id": run_id}
    source_of = {c.name: c.source for c in contract.columns}
    gone = pa.table({k: pc.cast(deleted.column(source_of[k]), good.schema.field(k).type) for k in keys})
    replace = pc.unique(pa.concat_arrays([_key_strings(good, keys), _key_strings(gone, keys)]))
    with table.transaction() as tx:
        if table.current_snapshot() is not None and len(replace):
            _drop_keys(tx, table, keys, replace, props)
        if good.num_rows:
            tx.append(good, snapshot_properties=props)
    snap = catalog.load_table(name).current_snapshot()
    return snap.snapshot_id if snap else None


def _record_results(catalog: Any, run_id: str, contract: DatasetContract, results: list[RuleResult],
                    standards: Any) -> None:
    rows = [{"run_id": run_id, "dataset": contract.dataset, "rule": r.rule.id, "tag": r.rule.tag,
             "dimension": r.rule.dimension, "element": r.rule.element, "column": r.rule.column,
             "evaluated": r.evaluated, "failed": r.failed, "severity": r.rule.severity,
             "passed": r.failed == 0, "error": r.error} for r in results]
    _append(catalog, "meta.quality_results", pa.Table.from_pylist(rows, schema=RESULTS_SCHEMA))


def _record_batches(catalog: Any, contract: DatasetContract, result: GateResult, snapshot: int | None) -> None:
    rows = [{"dataset": contract.dataset, "raw_batch_id": b, "run_id": result.run_id, "status": result.status,
             "extracted": result.extracted, "published": result.published, "quarantined": result.quarantined,
             "held": result.held, "std_snapshot_id": snapshot, "detail": json.dumps(result.failures, ensure_ascii=False),
             "reason": result.reason, "recorded_at": datetime.now(TZ)}
            for b in result.batches]
    _append(catalog, "meta.batches", pa.Table.from_pylist(rows, schema=BATCHES_SCHEMA))


def _gx_version() -> str:
    from importlib.metadata import version

    return version("great_expectations")


def write_gx_result(settings: Settings, contract: DatasetContract, standards: Any, table: pa.Table,
                    results: list[RuleResult], run_id: str, reference_date: date) -> Path:
    """Keep the run's result in GX's ExpectationSuiteValidationResult JSON shape, every failing key listed
    (personal values masked), under ``<lake>/gx/validations/<dataset>/<run_id>.json``."""
    from pipelines.quality.consistency import mask

    keys = contract.primary_key
    element_of = {c.name: standards.element(c.element) for c in contract.columns}
    entries = []
    for r in results:
        failing = table.filter(r.failed_mask) if len(r.failed_mask) == table.num_rows else table.slice(0, 0)
        masked = {k: [mask(v, element_of[k]) for v in failing.column(k).to_pylist()] for k in keys}
        index = [dict(zip(keys, row, strict=True)) for row in zip(*masked.values(), strict=True)]
        result: dict[str, Any] = {
            "element_count": r.evaluated, "unexpected_count": r.failed,
            "unexpected_percent": round(100 * r.failed / r.evaluated, 6) if r.evaluated else 0.0,
            "unexpected_index_list": index, "unexpected_index_column_names": keys}
        if r.rule.column in element_of and failing.num_rows:
            values = masked.get(r.rule.column) or [mask(v, element_of[r.rule.column])
                                                  for v in failing.column(r.rule.column).to_pylist()]
            result["partial_unexpected_list"] = values[:20]
            if r.rule.column not in keys:  # GX's count-and-index table groups by the failing value
                for row, value in zip(index, values, strict=True):
                    row[r.rule.column] = value
                counts = Counter(values).most_common(20)
                result["partial_unexpected_counts"] = [{"value": v, "count": n} for v, n in counts]
        entries.append({
            "success": r.failed == 0,
            "expectation_config": {"type": r.rule.expectation["type"], "kwargs": r.rule.expectation["kwargs"],
                                   "severity": r.rule.severity,
                                   "meta": {**r.rule.expectation.get("meta", {}), "rule_id": r.rule.id}},
            "result": result,
            "exception_info": {"raised_exception": r.error is not None, "exception_message": r.error,
                               "exception_traceback": None},
        })
    passed = [r.failed == 0 for r in results]
    now = datetime.now(TZ)
    doc = {"success": all(r.failed == 0 for r in results if r.rule.severity == "critical"),
           "suite_name": contract.dataset, "results": entries,
           "statistics": {"evaluated_expectations": len(results), "successful_expectations": sum(passed),
                          "unsuccessful_expectations": len(results) - sum(passed)},
           # GX prints run_time with a literal "Z" whatever its zone: give it UTC
           "meta": {"run_id": {"run_name": run_id, "run_time": now.astimezone(UTC).isoformat(timespec="seconds")},
                    "validation_time": now.isoformat(timespec="seconds"),
                    "great_expectations_version": _gx_version(),
                    "batch_spec": {"data_asset_name": contract.std_table, "engine": "citylake vectorised (Arrow/numpy)"},
                    "reference_date": reference_date.isoformat(), "std_table": contract.std_table,
                    "unexpected_index_column_names": keys, "masked": True}}
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id)
    path = settings.lake_dir / "gx" / "validations" / contract.dataset / f"{safe}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=1, default=str), encoding="utf-8")
    return path
