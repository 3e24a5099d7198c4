"""Every ``meta.*`` table: its schema and its idempotent write.

The kinds of table:
- per-run tables (``quality_results``, ``standardization_log``, ``conflicts``): what one run found. A rerun
  of the same run id (an Airflow retry, a held batch validated again by the run that held it) replaces
  that run's rows in one commit (delete + append in one transaction) instead of adding them again;
  ``quality_results`` and ``standardization_log`` are replaced per dataset, so two datasets validated
  under one run id do not erase each other.
- ``batches``: an append-only log of status events per raw batch (held → released, or published) with that
  batch's own counts. The latest row of a batch (``recorded_at``) is its status; a rerun of the same run
  id that reaches the same status for a batch replaces its earlier event rather than repeating it.
- ``registrations``: an append-only log of 公共数据资源登记 codes recorded per dataset (``append_log``); the
  latest row of a dataset is its registration (``pipelines.catalog.registration``).
- ``requests``: an append-only log of open-data (and sharing) requests, one row per intake or status change
  (``append_log``); the latest row of a request id is its state (``pipelines.catalog.requests``).
- ``deleted_keys``: per-run, replaced per (run id, dataset): the keys each std publish deleted at the source
  (one row per key, with its raw batch and std snapshot), so a consumer's incremental delivery can pass
  the deletions on (``pipelines.lake.changes.deleted_keys``).
- ``sharing_audit``: an append-only log (``append_log``) of every departmental delivery and refusal; never
  updated in place.
- ``runs``: the run ledger, one row per stage run (``pipelines.lake.runs.record_run``); a rerun of the same run
  id, kind and target replaces its row (``replace_run(..., kind=, target=)``).
Every row carries ``recorded_at`` (UTC). Old lakes lack the newer columns: the tables evolve on write.

Run ids: an Airflow task uses its dag run id (plus the mapped dataset), so a retry reuses it; every CLI
invocation gets its own (``new_run_id``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
from pyiceberg.expressions import And, BooleanExpression, EqualTo, In, Or

from pipelines.lake.tables import PROPS, append

RECORDED_AT = ("recorded_at", pa.timestamp("us", tz="UTC"))

QUALITY_RESULTS = pa.schema([
    ("run_id", pa.string()), ("dataset", pa.string()), ("department", pa.string()), ("rule", pa.string()),
    ("tag", pa.string()), ("dimension", pa.string()), ("element", pa.string()), ("column", pa.string()),
    ("evaluated", pa.int64()), ("failed", pa.int64()), ("severity", pa.string()), ("passed", pa.bool_()),
    ("error", pa.string()), RECORDED_AT])

STANDARDIZATION_LOG = pa.schema([
    ("dataset", pa.string()), ("column", pa.string()), ("transformation", pa.string()),
    ("rows_changed", pa.int64()), ("run_id", pa.string()), RECORDED_AT])

CONFLICTS = pa.schema([
    *[(n, pa.string()) for n in ("run_id", "element", "element_name", "authoritative_system", "other_system",
                                 "other_table", "other_column", "key", "authoritative_value", "other_value")],
    RECORDED_AT])

# One row per (raw batch, status event); the counts are that batch's own.
BATCHES = pa.schema([
    ("dataset", pa.string()), ("raw_batch_id", pa.string()), ("run_id", pa.string()), ("status", pa.string()),
    ("extracted", pa.int64()), ("published", pa.int64()), ("quarantined", pa.int64()), ("held", pa.int64()),
    ("std_snapshot_id", pa.int64()), ("detail", pa.string()), ("reason", pa.string()), RECORDED_AT])

# 公共数据资源登记: one row per recording of a registration code the authority issued (never minted here);
# append-only, the latest row of a dataset (recorded_at) is its registration.
REGISTRATIONS = pa.schema([
    ("dataset", pa.string()), ("registration_code", pa.string()), ("registered_on", pa.date32()),
    ("recorded_by", pa.string()), RECORDED_AT])

# 开放需求受理反馈 (and the sharing issue's department requests, kind "share"): one row per intake or status
# change of a request; append-only, the latest row of a request_id (recorded_at) is its state
# (``pipelines.catalog.requests``). ``contact`` is personal: stored, masked wherever it is shown.
REQUESTS = pa.schema([
    *[(n, pa.string()) for n in ("request_id", "kind", "dataset", "title", "requester", "requester_department",
                                 "contact", "purpose", "status", "answer", "answered_by")],
    ("received_at", pa.timestamp("us", tz="UTC")), ("source", pa.string()), RECORDED_AT])

# The open-data release (pipelines.publish): one row per dataset and release attempt; append-only. status:
# released | unchanged | blocked (the leak gate found personal values) | failed | not_open (不予开放) |
# not_passed (the current build did not pass the gate). ``reason`` is masked; ``leak_hits`` is JSON text
# [{file, column, row, kind, value}] with every value masked.
RELEASES = pa.schema([
    ("release_date", pa.string()), ("dataset", pa.string()), ("status", pa.string()), ("folder", pa.string()),
    ("rows", pa.int64()), ("build_id", pa.string()), ("reason", pa.string()), ("leak_hits", pa.string()),
    ("run_id", pa.string()), RECORDED_AT])

# The keys a std publish deleted at the source (tombstones applied), one row per key; ``key`` is the JSON
# array of the key's values as text, in primary_key order. Per-run: replaced per (run_id, dataset).
DELETED_KEYS = pa.schema([
    ("dataset", pa.string()), ("raw_batch_id", pa.string()), ("run_id", pa.string()),
    ("std_snapshot_id", pa.int64()), ("key", pa.string()), RECORDED_AT])

# Departmental sharing (pipelines.share): one row per delivery attempt or refusal of a grant; append-only.
# outcome: delivered | nothing_new | refused | failed; ``detail`` masks personal values and holds no secret;
# ``columns`` is JSON {column: deid method}; ``batches`` a JSON list; ``checksum`` sha256 hex of the
# manifest (file) or of the delivered rows (database); ``fingerprint`` what the consumer's copy depends on
# besides the rows (a change re-bases it in full); ``grant_basis`` JSON of the grant's purpose, legal basis,
# approval, expiry, scenario, verification and grant_sha256.
SHARING_AUDIT = pa.schema([
    *[(n, pa.string()) for n in ("audit_id", "run_id", "delivery_date", "consumer", "dataset", "grant_id",
                                 "grant_file", "outcome", "reason", "detail", "mode", "columns")],
    ("rows", pa.int64()), ("deleted", pa.int64()), ("std_snapshot_id", pa.int64()), ("batches", pa.string()),
    ("method", pa.string()), ("target", pa.string()), ("checksum", pa.string()), ("fingerprint", pa.string()),
    ("grant_basis", pa.string()), RECORDED_AT])

# The run ledger (pipelines.lake.runs.record_run): one row per stage run (kind: ingest | publish | curate | share |
# release | maintenance), what it ran on, rows in and out, seconds, the target's snapshot before and after, status
# (succeeded | failed | held | refused | …) and a one-line masked error. Per-run: a rerun of the same
# (run_id, kind, target) replaces its row (``record_run``).
RUNS = pa.schema([
    *[(n, pa.string()) for n in ("run_id", "kind", "target", "system", "dataset", "table", "batch_id", "status")],
    ("rows_in", pa.int64()), ("rows_out", pa.int64()), ("seconds", pa.float64()),
    ("snapshot_before", pa.int64()), ("snapshot_after", pa.int64()), ("error", pa.string()), ("detail", pa.string()),
    ("started_at", pa.timestamp("us", tz="UTC")), ("finished_at", pa.timestamp("us", tz="UTC")), RECORDED_AT])

SCHEMAS = {"meta.quality_results": QUALITY_RESULTS, "meta.standardization_log": STANDARDIZATION_LOG,
           "meta.conflicts": CONFLICTS, "meta.batches": BATCHES, "meta.registrations": REGISTRATIONS,
           "meta.requests": REQUESTS, "meta.releases": RELEASES, "meta.deleted_keys": DELETED_KEYS,
           "meta.sharing_audit": SHARING_AUDIT, "meta.runs": RUNS}
APPEND_ONLY = {"meta.batches", "meta.registrations", "meta.requests", "meta.releases", "meta.sharing_audit"}
"""Event logs: appended to, never replaced per run (``replace_run`` refuses them)."""
PER_DATASET = {"meta.quality_results", "meta.standardization_log", "meta.deleted_keys"}
"""Per-run tables replaced per (run id, dataset): several datasets share one CLI run id."""

# Exact (not 16-character truncated) column bounds for the columns a replace filters on, so that a
# rerun's delete skips other runs' files by their statistics instead of reading them.
META_PROPS = {**PROPS, **{f"write.metadata.metrics.column.{c}": "full"
                          for c in ("run_id", "dataset", "raw_batch_id", "status")}}


def new_run_id(prefix: str = "cli") -> str:
    """A run id of its own for one invocation (UTC time to the microsecond, plus a short random tail)."""
    return f"{prefix}__{datetime.now(UTC):%Y%m%dT%H%M%S.%fZ}__{uuid.uuid4().hex[:6]}"


def _rows(name: str, rows: list[dict[str, Any]] | pa.Table) -> pa.Table:
    schema = SCHEMAS[name]
    given = set(rows.column_names) if isinstance(rows, pa.Table) else {k for r in rows for k in r}
    unknown = given - set(schema.names)
    if unknown:  # from_pylist would drop them silently: a new column belongs in the schema above
        raise ValueError(f"{name}: columns {sorted(unknown)} are not in its schema (pipelines/lake/meta.py)")
    now = datetime.now(UTC)
    if isinstance(rows, pa.Table):  # many rows (deleted keys): no Python object per row
        return pa.table({f.name: rows.column(f.name).cast(f.type) if f.name in given and f.name != "recorded_at"
                         else pa.repeat(pa.scalar(now if f.name == "recorded_at" else None, f.type), rows.num_rows)
                         for f in schema}, schema=schema)
    return pa.Table.from_pylist([{**r, "recorded_at": now} for r in rows], schema=schema)


def replace_run(catalog: Any, name: str, run_id: str, rows: list[dict[str, Any]] | pa.Table,
                datasets: Iterable[str] | None = None, tag: str | None = None,
                raw_batches: Iterable[str] | None = None, kind: str | None = None, target: str | None = None) -> None:
    """Replace run ``run_id``'s rows of a per-run meta table with ``rows`` (dicts, or an Arrow table of the
    schema's columns), in one commit.

    For the PER_DATASET tables only the run's rows of ``datasets`` (default: the datasets in ``rows``) are
    replaced; ``conflicts`` are replaced by run id. ``tag`` narrows the replace to the run's
    ``quality_results`` rows with that tag (the consistency check beside the gate's rules under one CLI run
    id); ``raw_batches`` to the run's ``deleted_keys`` rows of those batches (a rerun that validates a new
    batch keeps the deletions an earlier attempt recorded for the batches it published). No rows still
    replaces: a rerun that found nothing erases the earlier attempt's rows."""
    if name not in SCHEMAS or name in APPEND_ONLY:
        raise ValueError(f"{name}: not a per-run meta table")
    scope: BooleanExpression = EqualTo("run_id", run_id)
    if tag is not None:
        scope = And(scope, EqualTo("tag", tag))
    if raw_batches is not None:
        scope = And(scope, In("raw_batch_id", sorted(set(raw_batches))))
    if kind is not None and target is not None:  # meta.runs: one row per (run id, kind, target)
        scope = And(scope, And(EqualTo("kind", kind), EqualTo("target", target)))
    if name in PER_DATASET:
        if datasets is None:
            datasets = rows.column("dataset").to_pylist() if isinstance(rows, pa.Table) else [r["dataset"] for r in rows]
        names = sorted(set(datasets))
        if names:  # none (no rows, no datasets): the scope above alone, every dataset of the run (and tag)
            scope = And(scope, In("dataset", names))
    append(catalog, name, _rows(name, rows), props={"citylake.run-id": run_id}, properties=META_PROPS,
           replace=scope)


def append_events(catalog: Any, rows: list[dict[str, Any]]) -> None:
    """Record batch status events in ``meta.batches``; a repeated event (same dataset, raw batch, run id and
    status: a retry) replaces the earlier one, so the log holds each transition once."""
    if not rows:
        return
    replace: BooleanExpression | None = None
    for (dataset, run_id, status), batches in _group(rows).items():
        one = And(And(EqualTo("dataset", dataset), EqualTo("run_id", run_id)),
                  And(EqualTo("status", status), In("raw_batch_id", batches)))
        replace = one if replace is None else Or(replace, one)
    append(catalog, "meta.batches", _rows("meta.batches", rows), properties=META_PROPS, replace=replace)


def append_log(catalog: Any, name: str, rows: list[dict[str, Any]]) -> None:
    """Append rows to an append-only meta table other than ``meta.batches`` (``meta.registrations``)."""
    if name not in APPEND_ONLY or name == "meta.batches":
        raise ValueError(f"{name}: not an append-only log (meta.batches goes through append_events)")
    if rows:
        append(catalog, name, _rows(name, rows), properties=META_PROPS)


def latest_events(events: pa.Table, by: tuple[str, ...] = ("dataset", "raw_batch_id")) -> pa.Table:
    """The status of every raw batch: its latest ``meta.batches`` row per (dataset, raw batch id), newest
    first. Rows written before ``recorded_at`` existed count as the oldest. The one rule for "latest event"
    (the gate decides what to validate with it, the report shows it); ``by``: the columns an event log is
    partitioned by instead (``meta.releases``: ``("dataset",)``)."""
    import duckdb

    if "recorded_at" not in events.column_names:  # a log older than the column: every row equally old
        events = events.append_column("recorded_at", pa.nulls(events.num_rows, RECORDED_AT[1]))
    partition = ", ".join(f'"{c}"' for c in by)
    con = duckdb.connect()
    try:
        con.register("events", events)
        return con.sql(
            f"SELECT * FROM events QUALIFY row_number() OVER (PARTITION BY {partition} "
            "ORDER BY recorded_at DESC NULLS LAST) = 1 ORDER BY recorded_at DESC NULLS LAST").to_arrow_table()
    finally:
        con.close()


def batch_status(catalog: Any, dataset: str) -> dict[str, dict[str, Any]]:
    """raw batch id → its latest ``meta.batches`` row (``latest_events``) for one dataset."""
    from pipelines.lake.raw import open_table

    done = open_table(catalog, "meta.batches")
    if done is None or done.current_snapshot() is None:
        return {}
    events = done.scan(row_filter=EqualTo("dataset", dataset)).to_arrow()
    return {r["raw_batch_id"]: r for r in latest_events(events).to_pylist()}


def _group(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str], list[str]]:
    out: dict[tuple[str, str, str], list[str]] = {}
    for r in rows:
        out.setdefault((r["dataset"], r["run_id"], r["status"]), []).append(r["raw_batch_id"])
    return out

