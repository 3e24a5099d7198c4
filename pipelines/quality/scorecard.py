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

Scores = dict[str, float | None]
"""Dimension → score (0..1) or None when the dimension has no rules; every DIMENSIONS key present."""


def read_results(catalog: Any, contracts: Mapping[str, Any] | None = None) -> pa.Table:
    """``meta.quality_results`` as Arrow in its current schema (older lakes' missing columns as nulls);
    an empty typed table when the lake has no results yet. With ``contracts``, results are keyed by
    contract dataset (``by_contract``)."""
    from pipelines.lake.raw import open_table

    table = open_table(catalog, "meta.quality_results")
    if table is None:
        return QUALITY_RESULTS.empty_table()
    results = conform(table.scan().to_arrow())
    return by_contract(results, contracts) if contracts is not None else results


def by_contract(results: pa.Table, contracts: Mapping[str, Any]) -> pa.Table:
    """Results keyed by contract: consistency rows (tag ``source_conflict``) are recorded under the copy's
    ``<system>.<table>`` and count for the contract built from that table; each contracted dataset's
    department is its contract's owner (old rows hold a department's name, new ones its code)."""
    by_source = {f"{c.source['system']}.{c.source['table']}": c.dataset for c in contracts.values()}
    owner = {c.dataset: c.owner for c in contracts.values()}
    datasets = [by_source.get(d, d) if t == "source_conflict" else d
                for d, t in zip(results.column("dataset").to_pylist(), results.column("tag").to_pylist(), strict=True)]
    departments = [owner.get(d, dep) for d, dep in zip(datasets, results.column("department").to_pylist(), strict=True)]
    results = results.set_column(results.schema.get_field_index("dataset"), "dataset", pa.array(datasets, pa.string()))
    return results.set_column(results.schema.get_field_index("department"), "department",
                              pa.array(departments, pa.string()))


def conform(results: pa.Table) -> pa.Table:
    """Cast/complete a results table to ``QUALITY_RESULTS`` (columns in order, absent ones null)."""
    columns = []
    for f in QUALITY_RESULTS:
        if f.name in results.column_names:
            columns.append(pc.cast(results.column(f.name), f.type))
        else:
            columns.append(pa.nulls(results.num_rows, f.type))
    return pa.Table.from_arrays(columns, schema=QUALITY_RESULTS)


def with_day(results: pa.Table) -> pa.Table:
    """``results`` plus a ``day`` column: the Asia/Shanghai calendar day of ``recorded_at``."""
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
    """Per value of ``by`` (or ``None`` for all results) the scorecard of each Asia/Shanghai day."""
    dayed = with_day(results)
    out: dict[Any, dict[date, Card]] = {}
    if by is None:
        for day, c in cards(dayed, "day").items():
            out.setdefault(None, {})[day] = c
        return out
    for (key, day), c in cards(dayed, (by, "day")).items():
        out.setdefault(key, {})[day] = c
    return out


def latest_day_cards(results: pa.Table, by: str = "dataset") -> dict[str, tuple[date, Card]]:
    """Per value of ``by``: its latest day with results and that day's scorecard."""
    out: dict[str, tuple[date, Card]] = {}
    for key, days in daily(results, by).items():
        last = max(days)
        out[key] = (last, days[last])
    return out


def latest_scores(catalog: Any, contracts: Mapping[str, Any] | None = None) -> dict[str, float | None]:
    """Dataset → overall score of its latest day of results (Asia/Shanghai day of ``recorded_at``). Pass the
    contracts so a dataset's 一致性 results (recorded under its source table) count, as the report does."""
    return {k: c.overall for k, (_day, c) in latest_day_cards(read_results(catalog, contracts)).items()}
