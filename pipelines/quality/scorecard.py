"""Quality scores by GB/T 36344 dimension, rolled up per dataset, per department and per day.

A dimension's score is the share of evaluated values that pass its rules, weighted by rows evaluated:
``1 − Σfailed / Σevaluated`` over the dimension's rule results. A dimension with no rules (or nothing
evaluated) has no score (``None``, shown "—"): an unmeasured dimension is not a perfect one. The overall
score is the mean of the dimensions present. Days are Asia/Shanghai calendar days of ``recorded_at``.

Everything works on ``meta.quality_results`` as one Arrow table, aggregated once with DuckDB, so the report
reads the table a single time however many pages it renders.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.lake.meta import QUALITY_RESULTS

DIMENSIONS = ("规范性", "完整性", "准确性", "一致性", "时效性", "可访问性")
TZ_NAME = "Asia/Shanghai"

KIND = "coalesce(tag, '') = 'source_conflict'"
"""SQL: a result's run kind, consistency (tag ``source_conflict``: ``quality run all``, the demo, the report
DAG) or gate (the nightly validation). The two kinds run on their own schedules and the gate writes nothing
on a night without new batches, so "a dataset's latest day" is taken per (dataset, kind): a day with only a
consistency run must not hide the gate's results, nor a gate-only night the latest consistency results."""

Scores = dict[str, float | None]
"""Dimension → score (0..1) or None when the dimension has no rules; every DIMENSIONS key present."""


def read_results(catalog: Any, *, since: date | None = None) -> pa.Table:
    """``meta.quality_results`` as Arrow in its current schema (older lakes' missing columns as nulls);
    an empty typed table when the lake has no results yet. With ``since`` only what a report from that day
    on needs is kept (``trim``). Key them by contract dataset with ``by_contract``."""
    from pipelines.lake.raw import open_table

    table = open_table(catalog, "meta.quality_results")
    if table is None:
        return QUALITY_RESULTS.empty_table()
    results = conform(table.scan().to_arrow())
    if since is not None:
        results = trim(results, since)
    return results


def read_events(catalog: Any) -> pa.Table:
    """``meta.batches`` as Arrow (what ``current`` needs to link runs to the batches they validated)."""
    from pipelines.lake.raw import open_table

    log = open_table(catalog, "meta.batches")
    return log.scan().to_arrow() if log is not None else pa.table({})


def _lookup(column: pa.ChunkedArray | pa.Array, mapping: Mapping[str, str]) -> pa.ChunkedArray | pa.Array:
    """``mapping[value]`` per value, null where the value is not a key (vectorised)."""
    if not mapping:
        return pa.nulls(len(column), pa.string())
    index = pc.index_in(column, value_set=pa.array(list(mapping), pa.string()))
    return pc.take(pa.array(list(mapping.values()), pa.string()), index)


def by_contract(results: pa.Table, contracts: Mapping[str, Any],
                departments: Mapping[str, Any] | None = None) -> pa.Table:
    """Results keyed by contract: consistency rows (tag ``source_conflict``) are recorded under the copy's
    ``<system>.<table>`` and count for the contract built from that table; each contracted dataset's
    department is its contract's owner; an old row of another dataset naming its department by name gets
    that department's code from the registry (``departments``: code → Department)."""
    by_source = {f"{c.source['system']}.{c.source['table']}": c.dataset for c in contracts.values()}
    owner = {c.dataset: c.owner for c in contracts.values()}
    by_name = {d.name: code for code, d in (departments or {}).items()}
    recorded = results.column("dataset")
    conflict = pc.fill_null(pc.equal(results.column("tag"), "source_conflict"), False)
    datasets = pc.if_else(conflict, pc.coalesce(_lookup(recorded, by_source), recorded), recorded)
    named = results.column("department")
    depts = pc.coalesce(_lookup(datasets, owner), _lookup(named, by_name), named)
    results = results.set_column(results.schema.get_field_index("dataset"), "dataset", pc.cast(datasets, pa.string()))
    return results.set_column(results.schema.get_field_index("department"), "department", pc.cast(depts, pa.string()))


def _sql(sql: str, params: dict[str, Any] | None = None, **tables: pa.Table) -> pa.Table:
    con = duckdb.connect()
    try:
        for name, t in tables.items():
            con.register(name, t)
        return con.sql(sql, params=params).to_arrow_table()
    finally:
        con.close()


def trim(results: pa.Table, since: date) -> pa.Table:
    """The rows a report from ``since`` on can show: days from ``since``, plus each dataset's latest day
    before it per run kind (``KIND``: its "as of" state at the window's start). Rows without
    ``recorded_at`` (very old lakes) belong to no day and are left out."""
    dayed = with_day(results)
    out = _sql("SELECT * FROM r WHERE day IS NOT NULL QUALIFY day >= $since "
               f"OR day = max(day) FILTER (WHERE day < $since) OVER (PARTITION BY dataset, {KIND})",
               {"since": since}, r=dayed)
    return out.drop_columns(["day"])


def current(results: pa.Table, events: pa.Table) -> pa.Table:
    """``results`` without what a later check of the same day replaced, so nothing is counted twice:
    - a gate run whose raw batches all got a later ``meta.batches`` event from another run that day (held,
      then released or validated again with ``--retry-held``): the later run's counts stand;
    - consistency rows (tag ``source_conflict``): the latest run per (dataset, rule) and day.
    Across days nothing needs dropping: scores take a dataset's latest day per run kind (or the latest up
    to a day)."""
    dayed = with_day(results)
    keep = ["dataset", "raw_batch_id", "run_id", "recorded_at"]
    ev = events.select([c for c in keep if c in events.column_names])
    if ev.num_columns < len(keep):  # a log older than run ids: nothing links results to batches
        ev = pa.table({c: pa.array([], pa.timestamp("us", tz="UTC") if c == "recorded_at" else pa.string())
                       for c in keep})
    ev = with_day(ev.cast(pa.schema([(c, pa.timestamp("us", tz="UTC") if c == "recorded_at" else pa.string())
                                     for c in keep])))
    out = _sql(
        "WITH e AS (SELECT * FROM ev WHERE run_id IS NOT NULL AND recorded_at IS NOT NULL), "
        "v AS (SELECT dataset, run_id, raw_batch_id, max(recorded_at) AS at, max(day) AS day FROM e GROUP BY ALL), "
        "s AS (SELECT v.dataset, v.run_id FROM v GROUP BY ALL HAVING bool_and(EXISTS ("
        "  SELECT 1 FROM e WHERE e.dataset = v.dataset AND e.raw_batch_id = v.raw_batch_id "
        "  AND e.run_id <> v.run_id AND e.recorded_at > v.at AND e.day = v.day))) "
        "SELECT r.* FROM r ANTI JOIN s ON r.dataset = s.dataset AND r.run_id = s.run_id "
        "QUALIFY coalesce(r.tag, '') <> 'source_conflict' OR r.day IS NULL OR row_number() OVER "
        "(PARTITION BY r.dataset, r.rule, r.day ORDER BY r.recorded_at DESC) = 1",
        r=dayed, ev=ev)
    return out.drop_columns(["day"])


def latest_day(dayed: pa.Table, by: str = "dataset", until: date | None = None) -> pa.Table:
    """The rows of each ``by`` value's latest day (column ``day``) on or before ``until``, per run kind
    (``KIND``: the latest gate day and the latest consistency day may differ): the one "latest day" rule of
    the scorecard, the catalog score and the report. Rows without a day are skipped."""
    bound = "AND day <= $until" if until is not None else ""
    return _sql(f'SELECT * FROM r WHERE day IS NOT NULL {bound} '
                f'QUALIFY day = max(day) OVER (PARTITION BY "{by}", {KIND})',
                {"until": until} if until is not None else None, r=dayed)


def conform(results: pa.Table, schema: pa.Schema = QUALITY_RESULTS) -> pa.Table:
    """Cast/complete a table read from the lake to ``schema`` (default ``QUALITY_RESULTS``; the report uses
    it for the other meta tables): columns in order, absent ones null (rows written before they existed)."""
    columns = []
    for f in schema:
        if f.name in results.column_names:
            columns.append(pc.cast(results.column(f.name), f.type))
        else:
            columns.append(pa.nulls(results.num_rows, f.type))
    return pa.Table.from_arrays(columns, schema=schema)


def with_day(results: pa.Table) -> pa.Table:
    """``results`` plus a ``day`` column: the Asia/Shanghai calendar day of ``recorded_at`` (null without)."""
    local = pc.local_timestamp(pc.cast(results.column("recorded_at"), pa.timestamp("us", tz=TZ_NAME)))
    return results.append_column("day", pc.cast(local, pa.date32()))


def score(evaluated: int | None, failed: int | None) -> float | None:
    """1 − failed/evaluated, clamped to 0..1; None when nothing was evaluated."""
    if not evaluated:
        return None
    return min(1.0, max(0.0, 1.0 - (failed or 0) / evaluated))


def overall(scores: Mapping[str, float | None]) -> float | None:
    """Mean of the dimensions that have a score; None when none has."""
    present = [s for s in scores.values() if s is not None]
    return sum(present) / len(present) if present else None


@dataclass
class Card:
    """One group's scorecard: per-dimension counts and scores, and the overall score."""

    evaluated: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    rules: dict[str, int] = field(default_factory=dict)

    @property
    def scores(self) -> Scores:
        return {d: score(self.evaluated.get(d), self.failed.get(d)) for d in DIMENSIONS}

    @property
    def overall(self) -> float | None:
        return overall(self.scores)

    def add(self, dimension: str, evaluated: int, failed: int, rules: int) -> None:
        self.evaluated[dimension] = self.evaluated.get(dimension, 0) + evaluated
        self.failed[dimension] = self.failed.get(dimension, 0) + failed
        self.rules[dimension] = self.rules.get(dimension, 0) + rules


def _aggregate(results: pa.Table, keys: Iterable[str]) -> list[dict[str, Any]]:
    """Σevaluated, Σfailed and the rule count per (keys…, dimension), one DuckDB pass over Arrow."""
    keys = list(keys)
    group = ", ".join([*(f'"{k}"' for k in keys), "dimension"])
    con = duckdb.connect()
    try:
        con.register("results", results)
        rows = con.sql(
            f"SELECT {group}, sum(coalesce(evaluated, 0))::BIGINT AS evaluated, "
            f"sum(coalesce(failed, 0))::BIGINT AS failed, count(DISTINCT rule) AS rules "
            f"FROM results WHERE dimension IS NOT NULL GROUP BY {group}").to_arrow_table().to_pylist()
    finally:
        con.close()
    return rows


def cards(results: pa.Table, by: str | tuple[str, ...]) -> dict[Any, Card]:
    """A scorecard per value of ``by`` (a column such as ``dataset`` or ``department``; a tuple of columns
    gives tuple keys). Dimensions outside GB/T 36344's six are ignored."""
    keys = (by,) if isinstance(by, str) else by
    out: dict[Any, Card] = {}
    for r in _aggregate(results, keys):
        if r["dimension"] not in DIMENSIONS:
            continue
        key = r[keys[0]] if len(keys) == 1 else tuple(r[k] for k in keys)
        out.setdefault(key, Card()).add(r["dimension"], r["evaluated"], r["failed"], r["rules"])
    return out


def card(results: pa.Table) -> Card:
    """One scorecard over all of ``results``."""
    out = Card()
    for r in _aggregate(results, ()):
        if r["dimension"] in DIMENSIONS:
            out.add(r["dimension"], r["evaluated"], r["failed"], r["rules"])
    return out


def daily(results: pa.Table, by: str | None = None) -> dict[Any, dict[date, Card]]:
    """Per value of ``by`` (or ``None`` for all results) a scorecard for each Asia/Shanghai day it has
    results (rows without ``recorded_at`` belong to no day): that day's state as the headline computes it
    (``as_of``: each dataset's latest day per run kind), so a day with only a consistency run is not a
    score of 一致性 alone."""
    dayed = with_day(results)
    dayed = dayed.filter(pc.is_valid(dayed.column("day")))
    days = dayed.column("day").to_pylist()
    keys = dayed.column(by).to_pylist() if by is not None else [None] * len(days)
    present = set(zip(keys, days, strict=True))
    carried = as_of(dayed, set(days), by)
    return {k: kept for k, v in carried.items()
            if (kept := {d: c for d, c in v.items() if (k, d) in present})}


def as_of(dayed: pa.Table, days: Iterable[date], by: str | None = None) -> dict[Any, dict[date, Card]]:
    """Per value of ``by`` (or ``None``) and per day of ``days``: the scorecard of each dataset's latest
    day of results per run kind (``KIND``) up to that day, so a weekly dataset counts every day until its next check and the
    point of the report day equals the headline (``latest_day`` with ``until``). ``dayed`` has ``day``."""
    group = f'"{by}"' if by is not None else "NULL"
    labels = pa.table({"label": pa.array(sorted(set(days)), pa.date32())})
    rows = _sql(
        f"WITH a AS (SELECT {group} AS grp, dataset, {KIND} AS kind, day, dimension, sum(coalesce(evaluated, 0)) AS ev, "
        "  sum(coalesce(failed, 0)) AS f, count(DISTINCT rule) AS n FROM r "
        "  WHERE day IS NOT NULL AND dimension IS NOT NULL GROUP BY ALL), "
        "p AS (SELECT l.label, d.grp, d.dataset, d.kind, max(d.day) AS day FROM labels l "
        "  JOIN (SELECT DISTINCT grp, dataset, kind, day FROM a) d ON d.day <= l.label GROUP BY ALL) "
        "SELECT p.label, p.grp, a.dimension, sum(a.ev)::BIGINT AS evaluated, sum(a.f)::BIGINT AS failed, "
        "  sum(a.n)::BIGINT AS rules FROM p JOIN a ON a.grp IS NOT DISTINCT FROM p.grp AND a.dataset IS NOT "
        "  DISTINCT FROM p.dataset AND a.kind = p.kind AND a.day = p.day GROUP BY ALL",
        r=dayed, labels=labels).to_pylist()
    out: dict[Any, dict[date, Card]] = {}
    for r in rows:
        if r["dimension"] in DIMENSIONS:
            out.setdefault(r["grp"], {}).setdefault(r["label"], Card()).add(
                r["dimension"], r["evaluated"], r["failed"], r["rules"])
    return out


def latest_day_cards(results: pa.Table, by: str = "dataset", until: date | None = None
                     ) -> dict[str, tuple[date, Card]]:
    """Per value of ``by``: its latest day with results (on or before ``until``) and the scorecard of its
    latest day per run kind (``latest_day``)."""
    latest = latest_day(with_day(results), by, until)
    last = {r["k"]: r["day"] for r in _sql(f'SELECT "{by}" AS k, max(day) AS day FROM r GROUP BY ALL', r=latest).to_pylist()}
    return {key: (last[key], c) for key, c in cards(latest, by).items()}


def latest_scores(catalog: Any, contracts: Mapping[str, Any] | None = None) -> dict[str, float | None]:
    """Dataset → overall score of its latest day of results (Asia/Shanghai day of ``recorded_at``), runs a
    later check replaced left out (``current``). Pass the contracts so a dataset's 一致性 results (recorded
    under its source table) count, as the report does (the report computes its own once and hands them to
    ``build_catalog``)."""
    results = current(read_results(catalog), read_events(catalog))
    if contracts is not None:
        results = by_contract(results, contracts)
    return {k: c.overall for k, (_day, c) in latest_day_cards(results).items()}
