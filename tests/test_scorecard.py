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
    monkeypatch.setattr(scorecard, "read_events", lambda catalog: pa.table({}))
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
    monkeypatch.setattr(scorecard, "read_events", lambda catalog: pa.table({}))
    assert latest_scores(object(), {"insured": contract}) == {"insured": pytest.approx(0.75)}


def _events(rows: list[tuple[str, str, str, datetime]]) -> pa.Table:
    """meta.batches rows: (raw batch, run id, status, recorded_at) of dataset ``enterprise``."""
    from pipelines.lake.meta import BATCHES

    return pa.Table.from_pylist([{"dataset": "enterprise", "raw_batch_id": b, "run_id": run, "status": st, "recorded_at": at}
                                 for b, run, st, at in rows], schema=BATCHES)


@pytest.mark.parametrize("later", ["released", "published"])  # quality release / run --retry-held
def test_a_held_run_checked_again_the_same_day_counts_once(later: str) -> None:
    held_at, again_at = datetime(2026, 11, 30, 1, tzinfo=UTC), datetime(2026, 11, 30, 3, tzinfo=UTC)
    row = {"dataset": "enterprise", "rule": "enterprise.uscc.check_digit", "dimension": "准确性"}
    r = _results([{**row, "run_id": "hold", "evaluated": 120, "failed": 120, "recorded_at": held_at},
                  {**row, "run_id": "again", "evaluated": 120, "failed": 120 if later == "released" else 0,
                   "recorded_at": again_at},
                  # another batch validated that day by a run of its own still counts
                  {**row, "run_id": "other", "evaluated": 30, "failed": 0, "recorded_at": again_at}])
    events = _events([("bad", "hold", "held", held_at), ("bad", "again", later, again_at),
                      ("next", "other", "published", again_at)])
    kept = scorecard.current(r, events)
    assert sorted(kept.column("run_id").to_pylist()) == ["again", "other"]
    day, c = scorecard.latest_day_cards(kept)["enterprise"]
    assert day == date(2026, 11, 30)
    assert c.evaluated["准确性"] == 150 and c.failed["准确性"] == (120 if later == "released" else 0)
    # a rerun of the held run itself (same run id, an Airflow retry) is no other run: nothing dropped
    same = _events([("bad", "hold", "held", held_at), ("bad", "hold", "held", again_at)])
    assert scorecard.current(r.slice(0, 1), same).num_rows == 1


def test_a_batch_checked_again_on_a_later_day_keeps_the_earlier_days_result() -> None:
    held_at, released_at = datetime(2026, 11, 28, 1, tzinfo=UTC), datetime(2026, 11, 30, 1, tzinfo=UTC)
    row = {"dataset": "enterprise", "rule": "a", "dimension": "准确性", "evaluated": 10}
    r = _results([{**row, "run_id": "hold", "failed": 10, "recorded_at": held_at},
                  {**row, "run_id": "release", "failed": 10, "recorded_at": released_at}])
    kept = scorecard.current(r, _events([("bad", "hold", "held", held_at), ("bad", "release", "released", released_at)]))
    assert kept.num_rows == 2  # as of the 29th the held run's result was the state
    assert scorecard.latest_day_cards(kept)["enterprise"][1].evaluated["准确性"] == 10


def test_consistency_checked_twice_a_day_keeps_the_latest_run() -> None:
    row = {"dataset": "social_insurance.insured", "rule": "person_name.consistency.social_insurance",
           "tag": "source_conflict", "dimension": "一致性"}
    r = _results([{**row, "run_id": "c1", "evaluated": 200, "failed": 20, "recorded_at": datetime(2026, 11, 30, 1, tzinfo=UTC)},
                  {**row, "run_id": "c2", "evaluated": 200, "failed": 4, "recorded_at": datetime(2026, 11, 30, 5, tzinfo=UTC)},
                  {**row, "run_id": "c0", "evaluated": 100, "failed": 1, "recorded_at": datetime(2026, 11, 29, 5, tzinfo=UTC)}])
    kept = scorecard.current(r, pa.table({}))
    assert sorted(kept.column("run_id").to_pylist()) == ["c0", "c2"]
    c = scorecard.latest_day_cards(kept)["social_insurance.insured"][1]
    assert (c.evaluated["一致性"], c.failed["一致性"]) == (200, 4)


def test_rows_without_recorded_at_break_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    r = _results([{"rule": "a", "dimension": "规范性", "evaluated": 10, "failed": 5, "recorded_at": None},
                  {"rule": "a", "dimension": "规范性", "evaluated": 10, "failed": 1},
                  {"dataset": "old", "rule": "a", "dimension": "规范性", "evaluated": 10, "failed": 9, "recorded_at": None}])
    monkeypatch.setattr(scorecard, "read_results", lambda catalog, contracts=None: r)
    monkeypatch.setattr(scorecard, "read_events", lambda catalog: pa.table({}))
    assert latest_scores(object()) == {"person": pytest.approx(0.9)}  # a row of no day belongs to no day
    assert set(daily(r, "dataset")) == {"person"}
    assert scorecard.trim(r, date(2026, 11, 1)).num_rows == 1
    assert scorecard.current(r, pa.table({})).num_rows == 3


def test_trim_keeps_the_window_and_each_datasets_latest_day_before_it() -> None:
    def at(day: int) -> datetime:
        return datetime(2026, 11, day, 2, tzinfo=UTC)

    r = _results([{"dataset": "weekly", "rule": "a", "dimension": "规范性", "evaluated": 1, "failed": 0, "recorded_at": at(d)}
                  for d in (1, 5, 20)] + [
                 {"dataset": "monthly", "rule": "a", "dimension": "规范性", "evaluated": 1, "failed": 0, "recorded_at": at(d)}
                  for d in (2, 3)])
    kept = scorecard.trim(r, date(2026, 11, 10))
    got = sorted((d, t.day) for d, t in zip(kept.column("dataset").to_pylist(), kept.column("recorded_at").to_pylist(), strict=True))
    assert got == [("monthly", 3), ("weekly", 5), ("weekly", 20)]


def test_as_of_trend_carries_each_datasets_latest_result_on_shanghai_days() -> None:
    r = _results([
        # 2026-11-27 16:30 UTC is the 28th 00:30 in Shanghai
        {"dataset": "weekly", "rule": "a", "dimension": "规范性", "evaluated": 100, "failed": 50,
         "recorded_at": datetime(2026, 11, 27, 16, 30, tzinfo=UTC)},
        {"dataset": "daily", "rule": "b", "dimension": "规范性", "evaluated": 100, "failed": 0,
         "recorded_at": datetime(2026, 11, 27, 15, 30, tzinfo=UTC)},  # 23:30 on the 27th
        {"dataset": "daily", "rule": "b", "dimension": "规范性", "evaluated": 100, "failed": 10,
         "recorded_at": datetime(2026, 11, 29, 2, tzinfo=UTC)},
        {"dataset": "daily", "rule": "c", "dimension": "完整性", "evaluated": 100, "failed": 0,
         "recorded_at": datetime(2026, 11, 29, 2, tzinfo=UTC)}])
    days = [date(2026, 11, d) for d in (26, 27, 28, 29, 30)]
    trend = scorecard.as_of(scorecard.with_day(r), days)[None]
    assert date(2026, 11, 26) not in trend
    assert trend[date(2026, 11, 27)].overall == 1.0  # only daily so far; weekly's check is on the 28th
    assert trend[date(2026, 11, 28)].scores["规范性"] == pytest.approx(0.75)
    # the 30th has no check: both datasets' latest results stand, as in the headline of that day
    headline = card(scorecard.latest_day(scorecard.with_day(r), until=date(2026, 11, 30)))
    assert trend[date(2026, 11, 30)].scores == headline.scores == trend[date(2026, 11, 29)].scores
    assert headline.scores["规范性"] == pytest.approx(1 - 60 / 200) and headline.scores["完整性"] == 1.0
    assert headline.overall == pytest.approx((0.7 + 1.0) / 2)  # the mean of the dimensions present
    by_ds = scorecard.as_of(scorecard.with_day(r), days, "dataset")
    assert by_ds["weekly"][date(2026, 11, 30)].overall == pytest.approx(0.5)


def test_old_rows_naming_a_department_get_its_code() -> None:
    from types import SimpleNamespace

    contract = SimpleNamespace(dataset="insured", source={"system": "social_insurance", "table": "insured"}, owner="CODE1")
    registry = {"CODE2": SimpleNamespace(name="合肥市市场监督管理局")}
    r = _results([{"dataset": "retired", "department": "合肥市市场监督管理局", "rule": "a", "dimension": "规范性",
                   "evaluated": 1, "failed": 0},
                  {"dataset": "insured", "department": "人社局", "rule": "a", "dimension": "规范性", "evaluated": 1, "failed": 0},
                  {"dataset": "gone", "department": "已撤销局", "rule": "a", "dimension": "规范性", "evaluated": 1, "failed": 0}])
    keyed = scorecard.by_contract(r, {"insured": contract}, registry)
    assert keyed.column("department").to_pylist() == ["CODE2", "CODE1", "已撤销局"]


def test_latest_day_is_taken_per_run_kind() -> None:
    """The gate and the consistency check run on their own schedules (the gate writes nothing on a night
    without new batches): a consistency-only day keeps the gate's latest results, a gate-only night keeps
    the latest consistency results, in the headline, the latest-day cards and both trends."""
    def at(day: int) -> datetime:
        return datetime(2026, 11, day, 2, tzinfo=UTC)

    r = _results([
        {"rule": "a", "dimension": "规范性", "evaluated": 100, "failed": 10, "recorded_at": at(27)},
        {"rule": "b", "dimension": "完整性", "evaluated": 100, "failed": 20, "recorded_at": at(27)},
        {"rule": "c", "tag": "source_conflict", "dimension": "一致性", "evaluated": 100, "failed": 0,
         "recorded_at": at(28)},
        {"rule": "a", "dimension": "规范性", "evaluated": 100, "failed": 30, "recorded_at": at(29)}])
    day, c = scorecard.latest_day_cards(r)["person"]
    assert day == date(2026, 11, 29)
    assert c.scores["规范性"] == pytest.approx(0.7) and c.scores["完整性"] is None  # the gate's latest day: the 29th
    assert c.scores["一致性"] == 1.0  # the 28th's consistency still stands after a gate-only night
    on_28 = card(scorecard.latest_day(scorecard.with_day(r), until=date(2026, 11, 28)))
    assert on_28.scores == {**{d: None for d in DIMENSIONS}, "规范性": 0.9, "完整性": 0.8, "一致性": 1.0}
    assert on_28.overall == pytest.approx(0.9)  # not 1.0 (一致性 alone)
    assert daily(r, "dataset")["person"][date(2026, 11, 28)].scores == on_28.scores
    assert scorecard.as_of(scorecard.with_day(r), [date(2026, 11, 28)], "dataset")["person"][date(2026, 11, 28)].scores \
        == on_28.scores
    # the window's start keeps each kind's latest earlier day
    assert sorted(t.day for t in scorecard.trim(r, date(2026, 11, 29)).column("recorded_at").to_pylist()) == [27, 27, 28, 29]
