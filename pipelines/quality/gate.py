"""Write-audit-publish: a raw batch becomes visible in ``std.<dataset>`` only after it passed its rules.

For each new raw batch of a dataset: standardize, keep the latest copy of each key (extra copies are
quarantined as ``duplicate_key``), evaluate every rule, then either
- hold the batch (a critical rule fails on more than its threshold): std stays at its previous snapshot,
  the task fails with a readable summary (rule, count, three example keys); or
- publish: passing rows upsert into std by primary key in one commit, rows failing a critical rule go to
  ``quarantine.<dataset>`` with every rule they broke, warning-only rows are published and flagged.
Every raw batch records its own extracted = published + quarantined + held in ``meta.batches``; every rule
result lands in ``meta.quality_results`` and every standardization change in ``meta.standardization_log``,
replaced (not repeated) when the same run id runs again (``pipelines.lake.meta``). The keys a publish
deleted at the source go to ``meta.deleted_keys`` after the std commit and before the batches are recorded,
so a batch recorded as published has its deletions on record (sharing passes them on).

A held batch stays parked (later batches publish without it) until someone acts on it:
- rerunning the run that held it (clearing the Airflow task) validates it again, e.g. after a code-list fix;
- ``citylake quality run <dataset> --retry-held`` does the same for every held batch of the dataset;
- ``citylake quality release <dataset> --reason ...`` publishes what passes and quarantines what fails, with
  the reason recorded: nothing that failed a critical rule reaches std either way.
``meta.batches`` is append-only; the latest row of a batch (``recorded_at``) is its status.
"""

from __future__ import annotations

import itertools
import json
import re
import tempfile
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.expressions import GreaterThan, In

from pipelines.config import load_config
from pipelines.contracts import AnyContract, DatasetContract
from pipelines.errors import CitylakeError
from pipelines.lake import artifacts
from pipelines.lake.catalog import get_catalog
from pipelines.lake.changes import key_json, latest_order, raw_batch_ids
from pipelines.lake.changes import release_memory as _release_memory  # between passes: each started at the last peak
from pipelines.lake.meta import append_events, batch_status, new_run_id, replace_run
from pipelines.lake.raw import PUBLISHED_BATCHES, arrow_schema, open_table, retry_conflicts, single_attempt, stream_scan
from pipelines.lake.tables import PROPS, append, append_staged, table_for
from pipelines.privacy import mask, value_mask
from pipelines.quality.rules import Rule, evaluate
from pipelines.quality.standardize import standardize
from pipelines.quality.suites import load_suite
from pipelines.settings import TZ, Settings, load_settings

# std files are rewritten whole when one of their keys changes: keep them moderate (64 MB in memory). Exact
# batch id bounds: a sharing delivery scans std filtered on the batches published since its last one, and
# the statistics let it skip the other files (``table_for`` adds the property to older std tables).
STD_PROPS = {**PROPS, "write.target-file-size-bytes": str(64 << 20), "write.metadata.metrics.column._batch_id": "full"}
# exact bounds on the batch id: a retry's replace finds the earlier attempt's files by their statistics
QUARANTINE_PROPS = {**PROPS, "write.metadata.metrics.column._batch_id": "full"}
CHUNK_ROWS = 128 * 1024
"""Rows standardized, validated and split at a time: the gate's memory follows this, not the batch size."""


class QualityGateError(CitylakeError):
    """A batch was held: the message is the readable summary governance staff act on; the fields say the
    same for code (alerts are built from them, not parsed from the text)."""

    def __init__(self, message: str, *, dataset: str | None = None, failures: list[dict[str, Any]] | None = None,
                 held: int = 0) -> None:
        super().__init__(message)
        self.dataset = dataset
        self.failures = failures or []
        """Blocking rules, most failing first: {rule, description, failed, evaluated, threshold}."""
        self.held = held
        """Rows held (every row of the held batches)."""

    @property
    def rule(self) -> str | None:
        return self.failures[0]["rule"] if self.failures else None

    @property
    def count(self) -> int:
        """Rows failing the most failing blocking rule."""
        return int(self.failures[0]["failed"]) if self.failures else 0


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
    batch_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    """raw batch id → its own extracted / published / quarantined / held."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _new_batches(catalog: Any, contract: DatasetContract, run_id: str, retry_held: bool) -> list[str]:
    """Batches never validated, plus the held ones this run may validate again: those it held itself
    (a rerun of the same run is idempotent) or, with ``retry_held``, every held one."""
    raw = open_table(catalog, contract.raw_table)
    if raw is None or raw.current_snapshot() is None:
        return []
    batches = raw_batch_ids(raw)  # from snapshot metadata: raw keeps all history, a scan would follow it
    for batch, row in batch_status(catalog, contract.dataset).items():
        if not (row["status"] == "held" and (retry_held or row["run_id"] == run_id)):
            batches.discard(batch)
    return sorted(b for b in batches if b)


@dataclass
class RuleTally:
    """One rule over a whole validation (the kept rows of its batches): counts and every failing key."""

    rule: Rule
    evaluated: int = 0
    failed: int = 0
    error: str | None = None
    index: list[dict[str, Any]] = field(default_factory=list)
    """GX ``unexpected_index_list``: each failing row's masked key (and the rule column's masked value)."""
    partial: list[Any] = field(default_factory=list)
    counts: Counter[Any] = field(default_factory=Counter)

    def add(self, failing: pa.Table, masker: _Masker) -> None:
        self.failed += failing.num_rows
        index, values = masker.rows(failing, self.rule.column)
        self.index.extend(index)
        self.partial.extend(values[: max(0, 20 - len(self.partial))])
        if self.rule.column not in masker.keys:
            self.counts.update(values)

    def example_keys(self, keys: list[str], n: int = 3) -> list[Any]:
        return [row[keys[0]] if len(keys) == 1 else [row[k] for k in keys] for row in self.index[:n]]


class _Masker:
    """Masks personal values as a person may read them (keys and rule values in results and summaries)."""

    def __init__(self, contract: AnyContract, standards: Any) -> None:
        self.element_of = {c.name: standards.element(c.element) for c in contract.columns}
        self.keys = contract.primary_key

    def column(self, table: pa.Table, name: str) -> list[Any]:
        """Masked as ``lake show`` masks it (``privacy.value_mask``: the declared element, the values'
        detected kind, identifiers inside text); values left clear are shown as text (``mask``)."""
        element, values = self.element_of[name], table.column(name)
        if (fn := value_mask(values, element)) is not None:
            return [fn(v) for v in values.to_pylist()]
        return [mask(v, element) for v in values.to_pylist()]

    def rows(self, table: pa.Table, column: str) -> tuple[list[dict[str, Any]], list[Any]]:
        masked = {k: self.column(table, k) for k in self.keys}
        index = [dict(zip(self.keys, row, strict=True)) for row in zip(*masked.values(), strict=True)]
        if column not in self.element_of:
            return index, []
        values = masked.get(column) or self.column(table, column)
        if column not in self.keys:  # GX's count-and-index table groups by the failing value
            for row, value in zip(index, values, strict=True):
                row[column] = value
        return index, values


def _duplicate_rule(contract: AnyContract) -> Rule:
    keys = contract.primary_key
    rule_id = f"{contract.dataset}.{'+'.join(keys)}.unique"
    meta = {"rule_id": rule_id, "dimension": "一致性", "element": keys[0], "tag": "duplicate_key",
            "description": "主键唯一: 同一主键保留最新一条, 其余副本隔离"}
    expectation = {"type": "expect_column_values_to_be_unique", "kwargs": {"column": keys[0]}} if len(keys) == 1 \
        else {"type": "expect_compound_columns_to_be_unique", "kwargs": {"column_list": keys}}
    # Counted as SQL counts them: the extra copies fail, the kept (latest) copy passes.
    return Rule(rule_id, contract.dataset, keys[0], keys[0], "一致性", "critical", "duplicate_key",
                meta["description"], lambda t: pa.repeat(pa.scalar(True), t.num_rows),
                expectation={**expectation, "severity": "critical", "meta": meta})


def _summary(contract: AnyContract, blocking: list[RuleTally]) -> str:
    parts = [f"{t.rule.id} ({t.rule.description}): {t.failed}/{t.evaluated} rows fail "
             f"(threshold {t.rule.threshold:.0%}), e.g. {t.example_keys(contract.primary_key)}" for t in blocking]
    return f"{contract.std_table} held at its previous snapshot: " + "; ".join(parts)


def over_threshold(tallies: list[RuleTally]) -> list[RuleTally]:
    """The critical rules failing more of their evaluated rows than their threshold allows."""
    return [t for t in tallies
            if t.rule.severity == "critical" and t.evaluated and t.failed / t.evaluated > t.rule.threshold]


def hold_error(contract: AnyContract, over: list[RuleTally], held: int) -> QualityGateError:
    """The error a held run raises: the summary, and the failing rules, most failures first."""
    return QualityGateError(_summary(contract, over), dataset=contract.dataset, held=held, failures=[
        {"rule": t.rule.id, "description": t.rule.description, "failed": t.failed,
         "evaluated": t.evaluated, "threshold": t.rule.threshold}
        for t in sorted(over, key=lambda t: -t.failed)])


def flag_rules(table: pa.Table, rules: list[Rule]) -> tuple[pa.Table, dict[int, str]]:
    """Evaluate every rule on ``table``: one failure flag column ``_f<i>`` per rule appended, and the errors
    of rules that could not be evaluated, by rule index."""
    errors = {}
    for i, r in enumerate(evaluate(table, rules)):
        if r.error:
            errors[i] = r.error
        table = table.append_column(f"_f{i}", r.failed_mask)
    return table, errors


def _rule_lists(table: pa.Table, flags: list[int], rules: list[Rule]) -> pa.Array:
    """For each row, the ids of the rules (among ``flags``) it broke, in rule order; vectorised (a per-row
    Python loop cost seconds per million rows)."""
    rows = [np.flatnonzero(table.column(f"_f{i}").to_numpy(zero_copy_only=False)) for i in flags]
    row = np.concatenate([np.empty(0, np.int64), *rows])
    rule = np.concatenate([np.empty(0, np.int32), *[np.full(len(r), i, np.int32) for i, r in zip(flags, rows, strict=True)]])
    order = np.lexsort((rule, row))
    offsets = np.concatenate([[0], np.cumsum(np.bincount(row, minlength=table.num_rows))]).astype(np.int32)
    ids = pa.array([r.id for r in rules], pa.string())
    return pa.ListArray.from_arrays(pa.array(offsets), ids.take(pa.array(rule[order], pa.int32())))


def _any(table: pa.Table, flags: list[int]) -> pa.Array:
    out = pa.repeat(pa.scalar(False), table.num_rows)
    for i in flags:
        out = pc.or_(out, table.column(f"_f{i}"))
    return out


def _chunks(reader: pa.RecordBatchReader, rows: int = 0) -> Iterator[pa.Table]:
    rows = rows or CHUNK_ROWS
    pending: list[pa.RecordBatch] = []
    n = 0
    for batch in reader:
        pending.append(batch)
        n += batch.num_rows
        if n >= rows:
            yield pa.Table.from_batches(pending, reader.schema)
            pending, n = [], 0
    if pending:
        yield pa.Table.from_batches(pending, reader.schema)


@dataclass
class _Staged:
    """Pass 1's output: standardized rows with one failure flag column per rule, on local disk."""

    path: Path
    rows: int
    extracted: int
    gone: pa.Table
    """Keys deleted at the source (tombstones), standardized, std column names, with ``_extracted_at``."""
    changes: dict[tuple[str, str], int]
    errors: dict[int, str]
    extracted_by_batch: Counter[str] = field(default_factory=Counter)
    """Rows read per raw batch (tombstones included): ``meta.batches`` records each batch's own counts."""
    gone_by_batch: Counter[str] = field(default_factory=Counter)


def _count_batches(counter: Counter[str], batch_ids: pa.ChunkedArray | pa.Array) -> None:
    """Add the rows of each raw batch id (a handful of distinct values per chunk: memory stays small)."""
    for item in pc.value_counts(batch_ids).to_pylist():
        counter[item["values"]] += item["counts"]


def _ordered_map(fn: Any, items: Iterator[Any], workers: int = 2) -> Iterator[Any]:
    """``fn`` over ``items`` on ``workers`` threads, results in order, at most ``workers`` in flight
    (pyarrow compute and numpy release the GIL, so two chunks standardize and validate at once)."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        pending: deque[Any] = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _stage(reader: pa.RecordBatchReader, contract: DatasetContract, standards: Any, crs: str | None,
           rules: list[Rule], path: Path) -> _Staged:
    """Pass 1, a chunk at a time (two in parallel): standardize, evaluate every rule (all are row-wise),
    and stage the rows with their position and failure flags. Tombstones (rows deleted at the source) keep
    only their standardized key."""
    keys = contract.primary_key
    source_keys = [next(c.source for c in contract.columns if c.name == k) for k in keys]

    def numbered() -> Iterator[tuple[int, pa.Table]]:
        pos = 0
        for chunk in _chunks(reader):
            yield pos, chunk
            pos += chunk.num_rows

    def work(item: tuple[int, pa.Table]) -> tuple[int, pa.Table | None, pa.Table | None, list[Any], dict[int, str]]:
        pos, chunk = item
        n, tomb = chunk.num_rows, pc.fill_null(chunk["_deleted"], False)
        gone = None
        if pc.any(tomb).as_py():
            # a tombstone carries the key as the source wrote it: standardize it like std's keys (3401…x → X)
            dead = chunk.filter(tomb)
            gone = standardize(dead.select(source_keys), contract, standards)[0].select(keys) \
                .append_column("_extracted_at", dead["_extracted_at"]).append_column("_batch_id", dead["_batch_id"]) \
                .append_column("_load_seq", load_seqs(dead))
            chunk = chunk.filter(pc.invert(tomb))
        if not chunk.num_rows:
            return n, None, gone, [], {}
        std, log = standardize(chunk, contract, standards, crs=crs)
        # positions number the rows as read (tombstones included): unique, and ordered for ties
        live = np.flatnonzero(~tomb.to_numpy(zero_copy_only=False)) + pos
        std = (std.append_column("_batch_id", chunk["_batch_id"]).append_column("_extracted_at", chunk["_extracted_at"])
               .append_column("_load_seq", load_seqs(chunk)).append_column("_pos", pa.array(live.astype(np.int64))))
        std, errors = flag_rules(std, rules)
        return n, std, gone, log, errors

    writer: pq.ParquetWriter | None = None
    rows = extracted = 0
    gone: list[pa.Table] = []
    changes: dict[tuple[str, str], int] = {}
    errors: dict[int, str] = {}
    by_batch: Counter[str] = Counter()
    gone_by_batch: Counter[str] = Counter()
    try:
        for n, std, dead, log, errs in _ordered_map(work, numbered()):
            extracted += n
            if dead is not None:
                gone.append(dead)
                _count_batches(gone_by_batch, dead["_batch_id"])
            if std is not None:
                _count_batches(by_batch, std["_batch_id"])
            for c in log:
                changes[(c.column, c.transformation)] = changes.get((c.column, c.transformation), 0) + c.rows_changed
            for i, e in errs.items():
                errors.setdefault(i, e)
            if std is None:
                continue
            if writer is None:
                writer = pq.ParquetWriter(path, std.schema, compression="lz4")
            writer.write_table(std.cast(writer.schema))
            rows += std.num_rows
    finally:
        if writer is not None:
            writer.close()
    if not gone:
        empty = reader.schema.empty_table()
        gone = [standardize(empty.select(source_keys), contract, standards)[0].select(keys)
                .append_column("_extracted_at", empty["_extracted_at"]).append_column("_batch_id", empty["_batch_id"])
                .append_column("_load_seq", load_seqs(empty))]
    return _Staged(path, rows, extracted, pa.concat_tables(gone), changes, errors, by_batch + gone_by_batch,
                   gone_by_batch)


def _extra_copies(staged: _Staged, keys: list[str], order: str | None, tmp: Path) -> pa.Array:
    """Positions of every copy of a key but its latest (``latest_order``: the later load by ``_load_seq``,
    then the contract's cursor ``order``, then the later extraction; ties: the later row), found by DuckDB
    over the staged file so that the batch need not fit in memory (it spills to ``tmp``). The rule is the
    raw compare's and the cross-run guard's: a copy from a later load wins within one run as across runs."""
    import duckdb

    if not staged.rows:
        return pa.array([], pa.int64())
    con = duckdb.connect(config={"memory_limit": "256MB", "temp_directory": str(tmp), "threads": 2})
    key_list = ", ".join(f'"{k}"' for k in keys)
    source = str(staged.path).replace("'", "''")
    ordering = latest_order(order)
    extras = con.sql(f"SELECT _pos FROM (SELECT _pos, row_number() OVER (PARTITION BY {key_list} ORDER BY "
                     f"{ordering}, _pos DESC) AS rn FROM read_parquet('{source}')) WHERE rn > 1").to_arrow_table()
    con.close()
    return extras.column(0).combine_chunks()


@dataclass
class _Split:
    published: int = 0
    quarantined: int = 0
    warned: int = 0
    published_by_batch: Counter[str] = field(default_factory=Counter)
    quarantined_by_batch: Counter[str] = field(default_factory=Counter)


def _split(staged: _Staged, extras: pa.Array, rules: list[Rule], tallies: list[RuleTally], dup: RuleTally,
           masker: _Masker, run_id: str, good_path: Path, quarantine_path: Path, batch_rows: int = CHUNK_ROWS) -> _Split:
    """Pass 2, a chunk at a time (``batch_rows``, default ``CHUNK_ROWS``): count every rule over the kept rows
    (extra copies excluded) and stage the passing rows (with the warning rules they broke) and the quarantined
    ones (with the critical rules they broke, or the duplicate rule); a held batch leaves them unused."""
    critical = [i for i, r in enumerate(rules) if r.severity == "critical"]
    warning = [i for i, r in enumerate(rules) if r.severity == "warning"]
    out = _Split()
    if not staged.rows:
        return out
    source = pq.ParquetFile(staged.path)
    data = [n for n in source.schema_arrow.names if n != "_pos" and not re.fullmatch(r"_f\d+", n)]
    writers: dict[Path, pq.ParquetWriter] = {}

    def write(path: Path, table: pa.Table) -> None:
        if not table.num_rows:
            return
        if path not in writers:
            writers[path] = pq.ParquetWriter(path, table.schema, compression="lz4")
        writers[path].write_table(table.cast(writers[path].schema))

    def work(batch: pa.RecordBatch) -> tuple[int, int, list[pa.Table | None], pa.Table, pa.Table, pa.Table, int]:
        chunk = pa.Table.from_batches([batch])
        is_extra = pc.is_in(chunk["_pos"], value_set=extras) if len(extras) else \
            pa.repeat(pa.scalar(False), chunk.num_rows)
        kept, extra = chunk.filter(pc.invert(is_extra)), chunk.filter(is_extra)
        # each rule's failing rows, only the columns its result lists (keys and the rule's column)
        failing = [kept.select(list(dict.fromkeys([*masker.keys, *([r.column] if r.column in masker.element_of
                                                                     else [])]))).filter(kept.column(f"_f{i}"))
                   if pc.any(kept.column(f"_f{i}")).as_py() else None for i, r in enumerate(rules)]
        failed_any = _any(kept, critical)
        bad, good = kept.filter(failed_any), kept.filter(pc.invert(failed_any))
        warned = int(pc.sum(_any(good, warning)).as_py() or 0)
        good_out = good.select(data).append_column("_warnings", _rule_lists(good, warning, rules))
        dup_rules = pa.array([[dup.rule.id]] * extra.num_rows, pa.list_(pa.string()))
        parts = [part.select(data).append_column("_rules", broken)
                 for part, broken in ((bad, _rule_lists(bad, critical, rules)), (extra, dup_rules))]
        quarantined = pa.concat_tables(parts)
        quarantined = quarantined.append_column("_run_id", pa.repeat(pa.scalar(run_id), quarantined.num_rows))
        return chunk.num_rows, kept.num_rows, failing, extra.select(masker.keys), good_out, quarantined, warned

    try:
        batches = source.iter_batches(batch_size=batch_rows)
        for n, n_kept, failing, extra_keys, good, quarantined, warned in _ordered_map(work, batches):
            for t, rows in zip(tallies, failing, strict=True):
                t.evaluated += n_kept
                if rows is not None:
                    t.add(rows, masker)
            dup.evaluated += n
            if extra_keys.num_rows:
                dup.add(extra_keys, masker)
            out.warned += warned
            out.published += good.num_rows
            out.quarantined += quarantined.num_rows
            _count_batches(out.published_by_batch, good["_batch_id"])
            _count_batches(out.quarantined_by_batch, quarantined["_batch_id"])
            write(good_path, good)
            write(quarantine_path, quarantined)
    finally:
        for w in writers.values():
            w.close()
    return out


def run_quality(dataset: str, *, settings: Settings | None = None, reference_date: date | None = None,
                run_id: str | None = None, retry_held: bool = False, release: str | None = None) -> GateResult:
    """Standardize → validate → publish the new raw batches of one dataset (what the DAG task runs).

    ``release`` (a reason) publishes the held batches past their thresholds: passing rows go to std, every
    failing row to quarantine, and the batches are recorded as ``released`` with the reason. The run is
    recorded in ``meta.runs`` (kind ``publish``; a held batch as ``held``)."""
    from pipelines.lake.runs import record_run

    settings = settings or load_settings()
    run_id = run_id or new_run_id()  # a CLI call: its own run; Airflow passes its dag run's
    with record_run("publish", run_id=run_id, target=f"std.{dataset}", settings=settings,
                    snapshot_of=f"std.{dataset}", statuses={QualityGateError: "held"}, dataset=dataset) as run:
        try:
            result = _run_quality(dataset, settings=settings, reference_date=reference_date, run_id=run_id,
                                  retry_held=retry_held, release=release)
        except QualityGateError as exc:
            run.done(rows_in=exc.held, rows_out=0)
            raise
        run.done(status=result.status, rows_in=result.extracted, rows_out=result.published,
                 snapshot=result.std_snapshot, batch_id=",".join(result.batches) or None,
                 detail=f"quarantined {result.quarantined}, deleted {result.deleted}" if result.batches else None)
    return result


def _run_quality(dataset: str, *, settings: Settings, reference_date: date | None, run_id: str,
                 retry_held: bool, release: str | None) -> GateResult:
    standards, systems, contracts = load_config(settings)
    if dataset not in contracts:
        raise CitylakeError(f"no dataset contract {dataset!r} (known: {', '.join(sorted(contracts))})")
    contract = contracts[dataset]
    reference_date = reference_date or datetime.now(TZ).date()
    catalog = get_catalog(settings)
    raw = open_table(catalog, contract.raw_table)
    if raw is not None:  # a source column the raw table lacks would publish an all-null column
        contract.check_sources(raw.schema().column_names, contract.raw_table)
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
    source = systems[contract.source["system"]].table(contract.source["table"])
    rules = load_suite(settings.root / "expectations", contract, standards, reference_date)
    keys = contract.primary_key
    reader = stream_scan(catalog.load_table(contract.raw_table).scan(row_filter=In("_batch_id", batches)))
    with tempfile.TemporaryDirectory(prefix=f"citylake-gate-{dataset}-") as tmp_name:
        tmp = Path(tmp_name)
        staged = _stage(reader, contract, standards, source.crs, rules, tmp / "staged.parquet")
        _release_memory()
        extras = _extra_copies(staged, keys, contract.cursor, tmp)
        _release_memory()
        tallies = [RuleTally(r, error=staged.errors.get(i)) for i, r in enumerate(rules)]
        dup = RuleTally(_duplicate_rule(contract))
        masker = _Masker(contract, standards)
        good_path, quarantine_path = tmp / "good.parquet", tmp / "quarantine.parquet"
        split = _split(staged, extras, rules, tallies, dup, masker, run_id, good_path, quarantine_path)
        _release_memory()
        result.extracted = staged.extracted
        over = over_threshold(tallies)
        blocking = [] if release is not None else over
        _record_results(catalog, run_id, contract, [*tallies, dup])
        write_gx_result(settings, contract, [*tallies, dup], run_id, reference_date, batches)
        replace_run(catalog, "meta.standardization_log", run_id,
                    [{"dataset": dataset, "column": c, "transformation": t, "rows_changed": n, "run_id": run_id}
                     for (c, t), n in staged.changes.items()], datasets=[dataset])
        result.failures = [{"rule": t.rule.id, "failed": t.failed, "evaluated": t.evaluated} for t in over]
        if blocking:
            result.status, result.held = "held", result.extracted
            result.batch_counts = {b: {"extracted": staged.extracted_by_batch[b], "published": 0, "quarantined": 0,
                                       "held": staged.extracted_by_batch[b]} for b in batches}
            _record_batches(catalog, contract, result, None)
            raise hold_error(contract, blocking, result.held)
        result.quarantined = split.quarantined
        result.warned = split.warned
        result.deleted = staged.gone.num_rows
        # extracted = published + quarantined (+ held when blocked): deletion rows count as published
        result.published = split.published + staged.gone.num_rows
        assert result.extracted == result.published + result.quarantined + result.held, result
        result.batch_counts = {b: {"extracted": staged.extracted_by_batch[b],
                                   "published": split.published_by_batch[b] + staged.gone_by_batch[b],
                                   "quarantined": split.quarantined_by_batch[b], "held": 0} for b in batches}
        for b, n in result.batch_counts.items():  # the invariant holds per raw batch, not only in total
            assert n["extracted"] == n["published"] + n["quarantined"], (b, n)
        applied: list[pa.Table] = []
        result.std_snapshot, done = _publish(catalog, contract, good_path, staged.gone, keys, run_id, batches,
                                             _raw_versions(catalog, contract, standards), applied)
        if done:  # a concurrent run published these first: they are its to record, not this run's
            batches = result.batches = [b for b in batches if b not in done]
            for b in done:
                n = result.batch_counts.pop(b)
                result.extracted -= n["extracted"]
                result.published -= n["published"]
                result.quarantined -= n["quarantined"]
            if not batches:
                result.status, result.std_snapshot = "nothing_new", None
                return result
        _record_deletions(catalog, dataset, run_id, batches, result.std_snapshot, keys, applied)
        # a retry (its batches not yet recorded) replaces the rows an earlier attempt quarantined
        kept = quarantine_path
        if done and quarantine_path.exists():
            kept = tmp / "quarantine-kept.parquet"
            q = pq.read_table(quarantine_path)
            pq.write_table(q.filter(pc.is_in(q["_batch_id"], value_set=pa.array(batches))), kept)
        append(catalog, f"quarantine.{dataset}", kept, props={"citylake.run-id": run_id},
               properties=QUARANTINE_PROPS, replace=In("_batch_id", batches))
    result.status = "published" if release is None else "released"
    _record_batches(catalog, contract, result, result.std_snapshot)
    return result


def _key_strings(table: pa.Table, keys: list[str]) -> pa.Array:
    """One comparable string per row: the key, or its columns joined with U+001F (composite keys)."""
    parts = [pc.fill_null(pc.cast(table.column(k), pa.string()), "\x00") for k in keys]
    joined = parts[0] if len(parts) == 1 else pc.binary_join_element_wise(*parts, "\x1f")
    return joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined


def _removed_by_run(table: Any, run_id: str, batches: set[str], keys: list[str], watch: pa.Array) -> pa.Array:
    """The key strings of ``watch`` held by the std data files that earlier commits of this run (for any of
    ``batches``) removed: a rerun after a crash between the std commit and the batches' record finds those
    keys gone from std, yet that commit deleted them from what std held. Metadata first; only the removed
    files' key columns are read, and only on such a rerun."""
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan
    from pyiceberg.manifest import ManifestEntryStatus
    from pyiceberg.table import FileScanTask

    own = [snap for snap in table.metadata.snapshots
           if snap.summary is not None and snap.summary.get("citylake.run-id") == run_id
           and batches & set(json.loads(snap.summary.get(PUBLISHED_BATCHES) or "[]"))]
    found: list[pa.Array] = []
    projected = table.metadata.schema().select(*keys)
    for snap in own:
        for manifest in snap.manifests(table.io):
            if manifest.added_snapshot_id != snap.snapshot_id:
                continue  # a manifest carried over from an earlier snapshot: nothing this commit removed
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=False):
                if entry.status != ManifestEntryStatus.DELETED or entry.snapshot_id != snap.snapshot_id:
                    continue
                scan = ArrowScan(table_metadata=table.metadata, io=table.io, projected_schema=projected,
                                 row_filter=AlwaysTrue())
                held = _key_strings(scan.to_table(tasks=[FileScanTask(entry.data_file)]), keys)
                hit = held.filter(pc.is_in(held, value_set=watch))
                if len(hit):
                    found.append(pc.unique(hit))
    return pc.unique(pa.concat_arrays(found)) if found else pa.array([], pa.string())


def _drop_keys(tx: Any, table: Any, keys: list[str], replace: pa.Array, props: dict[str, str],
               watch: pa.Array | None = None) -> pa.Array:
    """Copy-on-write removal of every std row whose key is in ``replace``, one data file at a time.

    This is what pyiceberg's ``Transaction.delete`` does, with a hashed key-set test instead of an
    expression: its ``upsert`` builds ``In(key, [...])`` (or an ``Or`` of ``And`` per composite key) with a
    literal per key, which took 13 s for 0.5 M keys. Only files holding a replaced key are read whole.

    Returns the key strings of ``watch`` (the tombstones) that std held: found in the key columns this
    already reads, so a recorded deletion is one std really had (never a key that was always quarantined),
    at no extra scan; memory is bounded by ``watch``."""
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files  # pyiceberg is pinned (0.12.0)

    meta = tx.table_metadata
    schema = meta.schema()
    commit, counter = uuid.uuid4(), itertools.count(0)
    replaced: list[tuple[Any, list[Any]]] = []
    present: list[pa.Array] = []
    for task in table.scan().plan_files():
        if task.delete_files:  # citylake writes copy-on-write only; another writer added delete files
            raise CitylakeError(f"{table.name()}: data file {task.file.file_path} has delete files; "
                                "citylake cannot upsert into merge-on-read tables")
        scan = ArrowScan(table_metadata=meta, io=table.io, projected_schema=schema.select(*keys), row_filter=AlwaysTrue())
        held = _key_strings(scan.to_table(tasks=[task]), keys)
        hit = pc.is_in(held, value_set=replace)
        if not pc.any(hit).as_py():
            continue
        if watch is not None and len(watch):
            found = held.filter(pc.is_in(held, value_set=watch))
            if len(found):
                present.append(pc.unique(found))
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
    return pc.unique(pa.concat_arrays(present)) if present else pa.array([], pa.string())


def load_seqs(table: pa.Table | pa.RecordBatch) -> pa.Array | pa.ChunkedArray:
    """The rows' ``_load_seq``; null for rows of raw tables written before it existed (they order first)."""
    if "_load_seq" in table.schema.names:
        return table.column("_load_seq")
    return pa.nulls(table.num_rows, pa.int64())


def _deleted_since(gone_keys: pa.Table, gone: pa.Table, keys: list[str]) -> pa.Table:
    """key string → the latest load (``_load_seq``, then ``_extracted_at``) that found it deleted at the
    source (runs can span several batches)."""
    events = pa.table({"key": _key_strings(gone_keys, keys), "seq": pc.fill_null(load_seqs(gone), -1),
                       "at": gone["_extracted_at"]}).sort_by([("seq", "ascending"), ("at", "ascending")])
    return events.group_by("key", use_threads=False).aggregate([("seq", "last"), ("at", "last")])


def _still_alive(batch: pa.RecordBatch, keys: list[str], deleted: pa.Table) -> pa.Array:
    """False for a row whose key a later load of the same run deleted at the source."""
    if not deleted.num_rows:
        return pa.repeat(pa.scalar(True), batch.num_rows)
    idx = pc.index_in(_key_strings(pa.Table.from_batches([batch]), keys), value_set=deleted["key"])
    died_seq, died_at = pc.take(deleted["seq_last"], idx), pc.take(deleted["at_last"], idx)
    seq = pc.fill_null(load_seqs(batch), -1)
    later = pc.or_(pc.greater(seq, died_seq),
                   pc.and_(pc.equal(seq, died_seq), pc.less_equal(died_at, batch.column("_extracted_at"))))
    return pc.fill_null(later, True)


def _incoming(good: Path, gone_keys: pa.Table, gone: pa.Table, keys: list[str], done: set[str]) -> pa.Table:
    """(key string, load sequence) of every passing row and tombstone this publish carries, the batches in
    ``done`` (another run published them) left out."""
    parts = [pa.table({"key": _key_strings(gone_keys, keys), "seq": pc.fill_null(load_seqs(gone), -1)})
             .filter(_not_done(gone, done))]
    if good.exists():
        names = pq.ParquetFile(good).schema_arrow.names
        rows = pq.read_table(good, columns=[*keys, *[c for c in ("_load_seq", "_batch_id") if c in names]])
        parts.append(pa.table({"key": _key_strings(rows, keys), "seq": pc.fill_null(load_seqs(rows), -1)})
                     .filter(_not_done(rows, done)))
    return pa.concat_tables(parts)


def _not_done(rows: pa.Table | pa.RecordBatch, done: set[str]) -> pa.Array:
    if not done or "_batch_id" not in rows.schema.names:
        return pa.repeat(pa.scalar(True), rows.num_rows)
    return pc.invert(pc.fill_null(pc.is_in(rows.column("_batch_id"), value_set=pa.array(sorted(done))), False))


Later = Callable[[int], Iterable[pa.Table]]
"""Raw's versions (standardized key columns and ``_load_seq``) loaded after a load sequence."""


def _raw_versions(catalog: Any, contract: DatasetContract, standards: Any) -> Later:
    """Raw's rows, deletion rows included, with a load sequence above ``after``: the data files of later
    loads only (their ``_load_seq`` bounds prune the rest), read a record batch at a time."""
    keys = contract.primary_key
    source_keys = [next(c.source for c in contract.columns if c.name == k) for k in keys]

    def read(after: int) -> Iterator[pa.Table]:
        raw = open_table(catalog, contract.raw_table)
        if raw is None or raw.current_snapshot() is None or "_load_seq" not in raw.schema().column_names:
            return
        scan = raw.scan(row_filter=GreaterThan("_load_seq", after), selected_fields=(*source_keys, "_load_seq"))
        for batch in stream_scan(scan):
            part = pa.Table.from_batches([batch])
            yield standardize(part.select(source_keys), contract, standards)[0].select(keys) \
                .append_column("_load_seq", part["_load_seq"])

    return read


def _stale_keys(incoming: pa.Table, keys: list[str], later: Later | None) -> pa.Array:
    """Keys a later load (by ``_load_seq``, ``latest_order``'s first term) than every row and tombstone this
    publish carries for them wrote or deleted in raw: a held batch released after newer loads must not
    bring an older value back, nor a key a later load deleted (std has no row left to compare with, so
    raw's versions decide, deletion rows included). Only the loads after the oldest incoming one are read."""
    empty = pa.array([], pa.string())
    if later is None or not incoming.num_rows:
        return empty
    latest = incoming.group_by("key").aggregate([("seq", "max")])
    stale: list[pa.Array] = []
    for part in later(int(pc.min(latest["seq_max"]).as_py())):
        idx = pc.index_in(_key_strings(part, keys), value_set=latest["key"])
        newer = pc.fill_null(pc.greater(part["_load_seq"], pc.take(latest["seq_max"], idx)), False)
        if pc.any(newer).as_py():
            stale.append(_key_strings(part.filter(newer), keys))
    return pc.unique(pa.concat_arrays(stale)) if stale else empty


def _published_elsewhere(table: Any, run_id: str) -> set[str]:
    """Raw batches another run already published to std (from snapshot summaries, metadata only): their
    ``meta.batches`` event may not be written yet, so ``_new_batches`` could not tell."""
    out: set[str] = set()
    for snap in table.metadata.snapshots:
        summary = snap.summary
        text = summary.get(PUBLISHED_BATCHES) if summary is not None else None
        if text and summary.get("citylake.run-id") != run_id:
            out.update(json.loads(text))
    return out


def _publish(catalog: Any, contract: DatasetContract, good: Path, gone: pa.Table, keys: list[str],
             run_id: str, batches: list[str] | None = None, later: Later | None = None,
             applied: list[pa.Table] | None = None) -> tuple[int | None, set[str]]:
    """One commit: replace the std rows of every key the batch carries (upsert) and drop the keys deleted
    at the source; the passing rows stream in from their staged file. A first publish only appends. When
    a run validates several batches, a key's latest event wins: a row extracted before the batch that
    found its key deleted is not appended (it still counts as published: it passed, then was deleted).
    Across runs too: a key a later raw load wrote or deleted is left as it is (``_stale_keys``).

    The commit is a single attempt (pyiceberg's retry would re-apply a fast append of keys another publish
    just appended: two copies); refused, everything is decided again on the reloaded table, and the batches
    another run published meanwhile are left out. Returns (std snapshot, those batches); ``applied`` gets the
    tombstones the committed attempt applied (key columns typed as std's, ``_batch_id``): only keys std held
    before the commit (``_drop_keys`` says which), not those of the batches left out, nor stale keys."""
    name = contract.std_table
    rows = pq.ParquetFile(good) if good.exists() else None

    def attempt() -> tuple[int | None, set[str]]:
        if applied is not None:
            applied.clear()
        table = open_table(catalog, name)
        if rows is not None or table is not None:  # creates or evolves it, and gives older std tables STD_PROPS
            table = table_for(catalog, name, rows.schema_arrow if rows is not None else arrow_schema(table), STD_PROPS)
        if table is None:
            return None, set()
        done = _published_elsewhere(table, run_id) & set(batches or ())
        if batches and done >= set(batches):
            return None, done
        props = {"citylake.run-id": run_id, **({PUBLISHED_BATCHES: json.dumps(sorted(set(batches) - done))}
                                               if batches else {})}
        types = arrow_schema(table)
        gone_keys = pa.table({k: pc.cast(gone.column(k), types.field(k).type) for k in keys})
        incoming = _incoming(good, gone_keys, gone, keys, done)
        stale = _stale_keys(incoming, keys, later)
        batch_ids = gone["_batch_id"] if "_batch_id" in gone.schema.names else pa.nulls(gone.num_rows, pa.string())
        dead = gone_keys.append_column("_batch_id", batch_ids)  # every publish's tombstones carry it; bare tests not
        dead = dead.filter(_not_done(gone, done))
        if len(stale):
            dead = dead.filter(pc.invert(pc.is_in(_key_strings(dead, keys), value_set=stale)))
        dead_keys = _key_strings(dead, keys)
        held = pa.array([], pa.string())  # the tombstoned keys std holds: those this commit really deletes
        tx = single_attempt(table).transaction()
        if table.current_snapshot() is not None:  # a first publish has nothing to replace
            replace = pc.unique(incoming["key"].combine_chunks())
            if len(stale):
                replace = replace.filter(pc.invert(pc.is_in(replace, value_set=stale)))
            if len(replace):
                held = _drop_keys(tx, table, keys, replace, props, dead_keys)
            if len(dead_keys):  # a rerun: an earlier attempt of this run may have removed them already
                earlier = _removed_by_run(table, run_id, set(batches or ()) - done, keys, dead_keys)
                held = pc.unique(pa.concat_arrays([held, earlier])) if len(earlier) else held
        if applied is not None:  # a key std never held (always quarantined, never published) is not recorded
            applied.append(dead.filter(pc.is_in(dead_keys, value_set=held)))
        if rows is not None:
            live_gone = gone.filter(_not_done(gone, done))
            deleted = _deleted_since(gone_keys.filter(_not_done(gone, done)), live_gone, keys)

            def keep(b: pa.RecordBatch) -> pa.Array:
                alive = pc.and_(_still_alive(b, keys, deleted), _not_done(b, done))
                if not len(stale):
                    return alive
                fresh = pc.invert(pc.is_in(_key_strings(pa.Table.from_batches([b]), keys), value_set=stale))
                return pc.and_(alive, fresh)

            append_staged(tx, table, rows, props, keep, CHUNK_ROWS)
        tx.commit_transaction()  # refused (a concurrent publish): nothing landed, decided again
        snap = catalog.load_table(name).current_snapshot()
        return (snap.snapshot_id if snap else None), done

    return retry_conflicts(f"{name}: publish", attempt)


def _record_results(catalog: Any, run_id: str, contract: AnyContract, tallies: list[RuleTally]) -> None:
    rows = [{"run_id": run_id, "dataset": contract.dataset, "department": contract.owner, "rule": t.rule.id, "tag": t.rule.tag,
             "dimension": t.rule.dimension, "element": t.rule.element, "column": t.rule.column,
             "evaluated": t.evaluated, "failed": t.failed, "severity": t.rule.severity,
             "passed": t.failed == 0, "error": t.error} for t in tallies]
    replace_run(catalog, "meta.quality_results", run_id, rows, datasets=[contract.dataset])


def _record_deletions(catalog: Any, dataset: str, run_id: str, batches: list[str], snapshot: int | None,
                      keys: list[str], applied: list[pa.Table]) -> None:
    """The keys this publish deleted at the source (std held them), once per (raw batch, key), in
    ``meta.deleted_keys``; replaces what an earlier attempt of the run recorded for these batches (also
    when none are left)."""
    dead = pa.concat_tables(applied) if applied else None
    rows = pa.table({"raw_batch_id": pa.array([], pa.string()), "key": pa.array([], pa.string())})
    if dead is not None and dead.num_rows:
        rows = pa.table({"raw_batch_id": dead["_batch_id"], "key": key_json(dead, keys)}) \
            .group_by(["raw_batch_id", "key"], use_threads=False).aggregate([])
    n = rows.num_rows
    rows = rows.append_column("dataset", pa.repeat(pa.scalar(dataset), n)) \
        .append_column("run_id", pa.repeat(pa.scalar(run_id), n)) \
        .append_column("std_snapshot_id", pa.repeat(pa.scalar(snapshot, pa.int64()), n))
    replace_run(catalog, "meta.deleted_keys", run_id, rows, datasets=[dataset], raw_batches=batches)


def _record_batches(catalog: Any, contract: AnyContract, result: GateResult, snapshot: int | None) -> None:
    rows = [{"dataset": contract.dataset, "raw_batch_id": b, "run_id": result.run_id, "status": result.status,
             **result.batch_counts[b], "std_snapshot_id": snapshot,
             "detail": json.dumps(result.failures, ensure_ascii=False), "reason": result.reason}
            for b in result.batches]
    append_events(catalog, rows)


def _gx_version() -> str:
    from importlib.metadata import version

    return version("great_expectations")


def write_gx_result(settings: Settings, contract: AnyContract, results: list[RuleTally], run_id: str,
                    reference_date: date, raw_batches: list[str] | None = None,
                    batch_spec: dict[str, Any] | None = None) -> Path:
    """Keep the run's result in GX's ExpectationSuiteValidationResult JSON shape, every failing key listed
    (personal values masked), under ``<lake>/gx/validations/<dataset>/<run_id>.json`` (written whole: temp
    name and rename), and when the artifacts root is elsewhere (``pipelines.lake.artifacts``: the Data Docs
    build may run on another worker) as ``<run_id>__<run time>.json`` (``artifacts.result_name``), locally and
    there, one file per attempt. ``batch_spec`` adds to (or replaces) the batch spec's entries: a curated
    build names its build and input snapshots there."""
    keys = contract.primary_key
    entries = []
    for r in results:
        result: dict[str, Any] = {
            "element_count": r.evaluated, "unexpected_count": r.failed,
            "unexpected_percent": round(100 * r.failed / r.evaluated, 6) if r.evaluated else 0.0,
            "unexpected_index_list": r.index, "unexpected_index_column_names": keys}
        if r.partial:
            result["partial_unexpected_list"] = r.partial
        if r.counts:
            result["partial_unexpected_counts"] = [{"value": v, "count": n} for v, n in r.counts.most_common(20)]
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
           "meta": {"run_id": {"run_name": run_id, "run_time": now.astimezone(UTC).isoformat(timespec="microseconds")},
                    "validation_time": now.isoformat(timespec="seconds"),
                    "great_expectations_version": _gx_version(),
                    "batch_spec": {"data_asset_name": contract.std_table, "raw_table": getattr(contract, "raw_table", None),
                                   "raw_batches": raw_batches or [], "engine": "citylake vectorised (Arrow/numpy)",
                                   **(batch_spec or {})},
                    "reference_date": reference_date.isoformat(), "std_table": contract.std_table,
                    "unexpected_index_column_names": keys, "masked": True}}
    store = artifacts.open_artifacts(settings)
    # with an artifacts root the attempt's own name (the store's, never rewritten: a Data Docs build on this
    # worker fetching at the same moment cannot put an older attempt over it, and does not fetch it back);
    # without one a rerun replaces ``<run>.json``
    name = (artifacts.result_name(run_id, now) if store is not None
            else f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', run_id)}.json")
    path = settings.lake_dir / "gx" / "validations" / contract.dataset / name
    # compact: with ``indent`` json falls back to its pure-Python encoder (3.4 s for 0.5 M failing keys)
    artifacts.write_atomic(path, json.dumps(doc, ensure_ascii=False, separators=(",", ":"), default=str).encode())
    if store is not None:
        artifacts.put_file(store, path, f"{artifacts.VALIDATIONS}/{contract.dataset}/{path.name}")
    return path


# The pieces the curated gate (``pipelines.curate.runner``) reuses, under public names: one rules engine, one
# split into published / quarantined rows, one way of recording results and batch events. The std gate keeps
# calling them by their private names (tests patch those).
Masker = _Masker
Staged = _Staged
duplicate_rule = _duplicate_rule
split_staged = _split
chunks = _chunks
ordered_map = _ordered_map
record_results = _record_results
record_batches = _record_batches
