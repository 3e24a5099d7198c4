"""Scorecard arithmetic on small Arrow tables: weighted by rows evaluated, no rules → None, Shanghai days."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa
import pytest

from pipelines.lake.meta import QUALITY_RESULTS
from pipelines.quality import scorecard
from pipelines.quality.scorecard import DIMENSIONS, card, cards, daily, latest_scores, overall, read_results


def _results(rows: list[dict[str, Any]]) -> pa.Table:
    base = {"run_id": "r", "dataset": "person", "department": "D1", "rule": "x", "tag": "", "element": "",
            "column": "", "severity": "critical", "passed": True, "error": None,
            "recorded_at": datetime(2026, 11, 30, 1, tzinfo=UTC)}
    return pa.Table.from_pylist([{**base, **r} for r in rows], schema=QUALITY_RESULTS)


def test_dimension_score_is_weighted_by_rows_evaluated() -> None:
    r = _results([
        {"rule": "a", "dimension": "规范性", "evaluated": 1000, "failed": 10},
        {"rule": "b", "dimension": "规范性", "evaluated": 10, "failed": 10},  # a plain mean of rates would say 49.5 %
        {"rule": "c", "dimension": "完整性", "evaluated": 100, "failed": 0}])
    c = card(r)
    assert c.scores["规范性"] == pytest.approx(1 - 20 / 1010)
    assert c.scores["完整性"] == 1.0
    assert c.rules == {"规范性": 2, "完整性": 1}


def test_a_dimension_without_rules_is_none_and_overall_is_the_mean_of_those_present() -> None:
    r = _results([{"rule": "a", "dimension": "规范性", "evaluated": 100, "failed": 50},
                  {"rule": "b", "dimension": "完整性", "evaluated": 100, "failed": 0}])
    s = card(r).scores
    assert set(s) == set(DIMENSIONS)
    assert s["准确性"] is None and s["时效性"] is None and s["可访问性"] is None and s["一致性"] is None
    assert overall(s) == pytest.approx(0.75)
    assert card(r).overall == pytest.approx(0.75)


def test_nothing_evaluated_is_no_score_not_full_marks() -> None:
    c = card(_results([{"rule": "a", "dimension": "准确性", "evaluated": 0, "failed": 0}]))
    assert c.scores["准确性"] is None and c.overall is None
    assert card(QUALITY_RESULTS.empty_table()).overall is None
    assert overall({d: None for d in DIMENSIONS}) is None


def test_cards_per_dataset_and_department() -> None:
    r = _results([
        {"dataset": "person", "department": "D1", "rule": "a", "dimension": "规范性", "evaluated": 10, "failed": 1},
        {"dataset": "enterprise", "department": "D2", "rule": "b", "dimension": "规范性", "evaluated": 10, "failed": 5},
        {"dataset": "household", "department": "D1", "rule": "c", "dimension": "规范性", "evaluated": 30, "failed": 3},
        {"dataset": "household", "department": "D1", "rule": "d", "dimension": "未知维度", "evaluated": 30, "failed": 30}])
    by_ds = cards(r, "dataset")
    assert by_ds["person"].overall == pytest.approx(0.9)
    assert by_ds["enterprise"].overall == pytest.approx(0.5)
    assert by_ds["household"].overall == pytest.approx(0.9)  # an unknown dimension is ignored
    by_dept = cards(r, "department")
    assert by_dept["D1"].scores["规范性"] == pytest.approx(1 - 4 / 40)


def test_days_are_shanghai_days_of_recorded_at() -> None:
    r = _results([
        # 2026-11-29 17:00 UTC is 2026-11-30 01:00 in Shanghai
        {"rule": "a", "dimension": "规范性", "evaluated": 10, "failed": 5,
         "recorded_at": datetime(2026, 11, 29, 17, tzinfo=UTC)},
        {"rule": "a", "dimension": "规范性", "evaluated": 10, "failed": 0,
         "recorded_at": datetime(2026, 11, 29, 15, tzinfo=UTC)},  # 23:00 Shanghai, still the 29th
        {"rule": "a", "dimension": "规范性", "evaluated": 10, "failed": 1,
         "recorded_at": datetime(2026, 11, 30, 3, tzinfo=UTC)}])
    days = daily(r, "dataset")["person"]
    assert sorted(days) == [date(2026, 11, 29), date(2026, 11, 30)]
    assert days[date(2026, 11, 29)].overall == 1.0
    assert days[date(2026, 11, 30)].overall == pytest.approx(1 - 6 / 20)
    assert set(daily(r)[None]) == set(days)


def test_latest_scores_use_each_datasets_latest_day(monkeypatch: pytest.MonkeyPatch) -> None:
    r = _results([
        {"dataset": "person", "rule": "a", "dimension": "规范性", "evaluated": 10, "failed": 10,
         "recorded_at": datetime(2026, 11, 1, 2, tzinfo=UTC)},
        {"dataset": "person", "rule": "a", "dimension": "规范性", "evaluated": 10, "failed": 2,
         "recorded_at": datetime(2026, 11, 3, 2, tzinfo=UTC)},
        {"dataset": "enterprise", "rule": "b", "dimension": "完整性", "evaluated": 4, "failed": 1,
         "recorded_at": datetime(2026, 11, 2, 2, tzinfo=UTC)}])
    monkeypatch.setattr(scorecard, "read_results", lambda catalog, contracts=None: r)
    assert latest_scores(object()) == {"person": pytest.approx(0.8), "enterprise": pytest.approx(0.75)}


def test_read_results_of_an_empty_lake_is_an_empty_typed_table(lake_settings: Any) -> None:
    from pipelines.lake.catalog import get_catalog

    catalog = get_catalog(lake_settings)
    t = read_results(catalog)
    assert t.num_rows == 0 and t.schema == QUALITY_RESULTS
    assert latest_scores(catalog) == {}


def test_conform_fills_columns_an_old_lake_lacks() -> None:
    old = pa.table({"dataset": ["person"], "dimension": ["规范性"], "evaluated": [5], "failed": [1], "rule": ["a"],
                    "recorded_at": pa.array([datetime(2026, 11, 30, tzinfo=UTC)], pa.timestamp("us", tz="UTC"))})
    t = scorecard.conform(old)
    assert t.schema == QUALITY_RESULTS and t.column("department").null_count == 1
    assert card(t).overall == pytest.approx(0.8)


def test_consistency_rows_count_for_the_contract_of_their_source_table(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    contract = SimpleNamespace(dataset="insured", source={"system": "social_insurance", "table": "insured"},
                               owner="CODE1")
    r = _results([
        {"dataset": "insured", "department": "人社局", "rule": "a", "dimension": "规范性", "evaluated": 10, "failed": 0},
        {"dataset": "social_insurance.insured", "department": "CODE1", "rule": "person_name.consistency.social_insurance",
         "tag": "source_conflict", "dimension": "一致性", "evaluated": 10, "failed": 5}])
    keyed = scorecard.by_contract(r, {"insured": contract})
    assert set(keyed.column("dataset").to_pylist()) == {"insured"}
    assert set(keyed.column("department").to_pylist()) == {"CODE1"}  # the contract's owner, not an old name
    monkeypatch.setattr(scorecard, "read_results",
                        lambda catalog, contracts=None: scorecard.by_contract(r, contracts) if contracts else r)
    assert latest_scores(object(), {"insured": contract}) == {"insured": pytest.approx(0.75)}
