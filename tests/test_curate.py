"""Curated layer: each model on small hand-made std tables with exact expected rows, and the curated gate (hold,
quarantine, nothing_new, a new build for changed inputs) on a tiny lake of its own."""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from conftest import scoped_env
from pyiceberg.expressions import AlwaysTrue

from pipelines.settings import PROJECT_ROOT, Settings, load_settings

REF = date(2026, 11, 20)
T0 = datetime(2026, 11, 19, 2, tzinfo=UTC)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    base = tmp_path_factory.mktemp("curate")
    env = {"CITYLAKE_LAKE_DIR": str(base / "lake"), "CITYLAKE_DATA_DIR": str(base / "data"),
           "CITYLAKE_REGISTRY_DIR": str(PROJECT_ROOT / "schemas" / "sources"), "CITYLAKE_ROOT": str(PROJECT_ROOT)}
    with scoped_env(env):
        yield load_settings()


def put(settings: Settings, dataset: str, rows: list[dict[str, Any]]) -> int:
    """Replace std.<dataset> with ``rows`` (contract columns; ``_extracted_at`` defaults to T0) in one new
    snapshot, typed as the gate types std; returns the snapshot id."""
    from pipelines.config import load_all
    from pipelines.curate.runner import TYPES
    from pipelines.lake.catalog import get_catalog
    from pipelines.lake.tables import append

    config = load_all(settings)
    contract = config.contracts[dataset]
    schema = pa.schema([*(pa.field(c.name, TYPES[config.standards.element(c.element).type]) for c in contract.columns),
                        pa.field("_batch_id", pa.string()), pa.field("_extracted_at", pa.timestamp("us", tz="UTC")),
                        pa.field("_load_seq", pa.int64()), pa.field("_warnings", pa.list_(pa.string()))])
    full = [{**{f.name: None for f in schema}, "_batch_id": "hand", "_extracted_at": T0, "_load_seq": 1,
             "_warnings": [], **r} for r in rows]
    catalog = get_catalog(settings)
    append(catalog, f"std.{dataset}", pa.Table.from_pylist(full, schema=schema), replace=AlwaysTrue())
    return int(catalog.load_table(f"std.{dataset}").current_snapshot().snapshot_id)


def rows_of(table: pa.Table) -> list[dict[str, Any]]:
    return table.drop_columns([c for c in table.column_names if c.startswith("_")]).to_pylist()


def prov(system: str, table: str, dataset: str, snapshot: int, authoritative: bool) -> dict[str, Any]:
    return {"system": system, "table": table, "dataset": dataset, "snapshot": snapshot, "authoritative": authoritative}


def test_golden_resident_takes_each_field_from_its_authority_and_a_copy_only_for_a_null(lake: Settings) -> None:
    from pipelines.curate.runner import model_rows
    from pipelines.seed.ids import resident_id

    r1 = resident_id("340104", date(1980, 5, 1), 11)
    r2 = resident_id("340102", date(1990, 2, 3), 22)
    r3 = resident_id("340111", date(1975, 7, 8), 33)  # known only to social insurance
    person = put(lake, "person", [
        {"resident_id": r1, "person_name": "张三", "sex_code": "1", "birth_date": date(1980, 5, 1),
         "residence_district_code": "340104", "residence_address": "安徽省合肥市蜀山区长江西路1号"},
        {"resident_id": r2, "person_name": None, "sex_code": "2", "birth_date": date(1990, 2, 3),
         "residence_district_code": "340102", "mobile_phone": "13800000000"}])
    insured = put(lake, "insured", [
        {"resident_id": r1, "person_name": "张叁", "insurance_type": "310"},
        {"resident_id": r1, "person_name": "张叁", "insurance_type": "110"},
        {"resident_id": r2, "person_name": "李四", "insurance_type": "110", "_extracted_at": T0 + timedelta(hours=2)},
        {"resident_id": r3, "person_name": "王五", "insurance_type": "410"}])
    put(lake, "housing_fund_account", [
        {"resident_id": r1, "person_name": "张三", "housing_fund_account": "HF000000000001",
         "account_opened_on": date(2010, 1, 1)},
        {"resident_id": r1, "person_name": "张三", "housing_fund_account": "HF000000000002",
         "account_opened_on": date(2020, 1, 1)},
        # an older copy of r2's name than social insurance's: the latest copy wins
        {"resident_id": r2, "person_name": "李肆", "housing_fund_account": "HF000000000003",
         "account_opened_on": date(2015, 1, 1), "_extracted_at": T0 + timedelta(hours=1)}])

    got = model_rows("golden_resident", settings=lake).to_pylist()
    provenance = [json.loads(r.pop("field_provenance")) for r in got]
    p = {c: prov("population", "person", "person", person, True) for c in
         ("resident_id", "person_name", "sex_code", "birth_date", "residence_district_code", "residence_address",
          "mobile_phone")}
    expected = sorted([
        ({"resident_id": r1, "person_name": "张三", "sex_code": "1", "birth_date": date(1980, 5, 1),
          "residence_district_code": "340104", "residence_address": "安徽省合肥市蜀山区长江西路1号", "mobile_phone": None},
         p),
        ({"resident_id": r2, "person_name": "李四", "sex_code": "2", "birth_date": date(1990, 2, 3),
          "residence_district_code": "340102", "residence_address": None, "mobile_phone": "13800000000"},
         {**p, "person_name": prov("social_insurance", "insured", "insured", insured, False)}),  # a copy fills a null
        ({"resident_id": r3, "person_name": "王五", "sex_code": None, "birth_date": None,
          "residence_district_code": None, "residence_address": None, "mobile_phone": None},
         {"resident_id": prov("social_insurance", "insured", "insured", insured, False),
          "person_name": prov("social_insurance", "insured", "insured", insured, False),
          "sex_code": None, "birth_date": None, "residence_district_code": None, "residence_address": None,
          "mobile_phone": None}),
    ], key=lambda e: e[0]["resident_id"])
    assert got == [e[0] for e in expected]
    assert provenance == [e[1] for e in expected]
    assert list(json.loads(json.dumps(provenance[0]))) == [c for c in got[0]]  # one key per data column, in order


def test_golden_legal_person_counts_credit_records_and_registrations_roll_up_by_industry_section(
        lake: Settings) -> None:
    from pipelines.curate.runner import model_rows
    from pipelines.seed.ids import credit_code

    rng = random.Random(7)
    e1, e2, e3, e4, e5 = (credit_code(rng, d) for d in ("340104", "340104", "340102", "340104", "340111"))
    firm = {"legal_representative": "赵六", "enterprise_status": "1"}
    enterprise = put(lake, "enterprise", [
        {**firm, "uscc": e1, "enterprise_name": None, "registered_capital": Decimal("1000000.5"),
         "established_on": date(2024, 3, 15), "enterprise_district_code": "340104", "industry_code": "39"},
        {**firm, "uscc": e2, "enterprise_name": "合肥乙科技有限公司", "established_on": date(2024, 3, 20),
         "enterprise_district_code": "340104", "industry_code": "39"},
        {**firm, "uscc": e3, "enterprise_name": "合肥丙农业有限公司", "established_on": date(2024, 4, 2),
         "enterprise_district_code": "340102", "industry_code": "01"},
        {**firm, "uscc": e4, "enterprise_name": "合肥丁有限公司", "established_on": date(2024, 3, 1),
         "enterprise_district_code": "340104", "industry_code": "ZZ"},  # no such 大类: no 门类
        # a 个体工商户 (USCC 92…) is no 法人: left out of the golden record
        {**firm, "uscc": "92" + e4[2:], "enterprise_name": "合肥市蜀山区赵六小吃店", "established_on": date(2024, 3, 1),
         "enterprise_district_code": "340104", "industry_code": "62"}])
    credit = put(lake, "credit_record", [
        {"uscc": e1, "enterprise_name": "合肥甲商贸有限公司", "credit_record_id": "CR1", "credit_record_type": "R"},
        {"uscc": e1, "enterprise_name": "合肥甲贸易有限公司", "credit_record_id": "CR2", "credit_record_type": "B",
         "_extracted_at": T0 + timedelta(hours=3)},
        {"uscc": e1, "enterprise_name": None, "credit_record_id": "CR3", "credit_record_type": "B",
         "_extracted_at": T0 + timedelta(hours=4)},
        {"uscc": e5, "enterprise_name": "合肥戊公司", "credit_record_id": "CR4", "credit_record_type": "W"}])

    got = model_rows("golden_legal_person", settings=lake).to_pylist()
    provenance = {r["uscc"]: json.loads(r.pop("field_provenance")) for r in got}
    fields = ("uscc", "enterprise_name", "legal_representative", "registered_capital", "established_on",
              "enterprise_district_code", "industry_code", "enterprise_status")
    auth = {f: prov("enterprise", "enterprise", "enterprise", enterprise, True) for f in fields}
    counts = {f"credit_{k}_count": prov("credit", "credit_record", "credit_record", credit, True)
              for k in ("red", "black", "watch")}
    copy = prov("credit", "credit_record", "credit_record", credit, False)
    none = {"legal_representative": None, "registered_capital": None, "established_on": None,
            "enterprise_district_code": None, "industry_code": None, "enterprise_status": None}
    expected = {
        e1: ({"uscc": e1, "enterprise_name": "合肥甲贸易有限公司", "legal_representative": "赵六",
              "registered_capital": Decimal("1000000.5"), "established_on": date(2024, 3, 15),
              "enterprise_district_code": "340104", "industry_code": "39", "enterprise_status": "1",
              "credit_red_count": 1, "credit_black_count": 2, "credit_watch_count": 0},
             {**auth, "enterprise_name": copy, **counts}),  # the latest non-null copy of the name
        e2: ({"uscc": e2, "enterprise_name": "合肥乙科技有限公司", "legal_representative": "赵六",
              "registered_capital": None, "established_on": date(2024, 3, 20), "enterprise_district_code": "340104",
              "industry_code": "39", "enterprise_status": "1", "credit_red_count": 0, "credit_black_count": 0,
              "credit_watch_count": 0}, {**auth, **counts}),
        e5: ({"uscc": e5, "enterprise_name": "合肥戊公司", **none, "credit_red_count": 0, "credit_black_count": 0,
              "credit_watch_count": 1}, {"uscc": copy, "enterprise_name": copy, **dict.fromkeys(none), **counts}),
    }
    assert [r for r in got if r["uscc"] in expected] == [expected[k][0] for k in sorted(expected)]
    assert {k: provenance[k] for k in expected} == {k: v[1] for k, v in expected.items()}
    assert len(got) == 5 and got == sorted(got, key=lambda r: r["uscc"])
    assert str(got[[r["uscc"] for r in got].index(e1)]["registered_capital"]) == "1000000.50"  # decimal(18,2)

    # 门类 from the 大类's parent in GB/T 4754-2017 (39 → C, 01 → A); an unknown 大类 counts under a null 门类
    assert rows_of(model_rows("enterprise_registrations_monthly", settings=lake)) == [
        {"registration_month": "2024-03", "enterprise_district_code": "340104", "industry_section": "C",
         "registrations": 2},
        # the 个体工商户 is a registration all the same (62 餐饮业 → H)
        {"registration_month": "2024-03", "enterprise_district_code": "340104", "industry_section": "H",
         "registrations": 1},
        {"registration_month": "2024-03", "enterprise_district_code": "340104", "industry_section": None,
         "registrations": 1},
        {"registration_month": "2024-04", "enterprise_district_code": "340102", "industry_section": "A",
         "registrations": 1}]


def _hours(station: str, name: str, day: date, pm25: list[float], pm10: list[float | None],
           aqi: list[int] | None = None) -> list[dict[str, Any]]:
    """Hourly rows of one station from local (Asia/Shanghai) midnight of ``day``."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(hours=8)
    return [{"station_id": station, "station_name": name, "observed_at": start + timedelta(hours=h),
             "pm25": a, "pm10": b, "aqi": (aqi or [None] * len(pm25))[h]}
            for h, (a, b) in enumerate(zip(pm25, pm10, strict=True))]


def _registry() -> dict[str, dict[str, str]]:
    path = PROJECT_ROOT / "schemas" / "standards" / "code_lists" / "air_station.csv"
    with path.open(encoding="utf-8", newline="") as fh:
        return {r["code"]: r for r in csv.DictReader(fh)}


DAY = date(2026, 11, 18)
# 12 hours at 0 and 12 at 300 μg/m³: the 24-hour mean 150 indexes to 200, while the mean of the hourly AQIs
# (0 and 350) would be 175
CLEAN_DIRTY = _hours("340100052", "三里街", DAY, [0.0, 300.0] * 12, [40.0] * 24, [0, 350] * 12)
STEADY = _hours("340100057", "瑶海区", DAY, [50.0] * 24, [100.0] * 24)
TWENTY = _hours("340100054", "董铺水库", DAY, [35.0] * 20, [50.0] * 20)   # the least a daily mean needs
NINETEEN = _hours("340100053", "琥珀山庄", DAY, [30.0] * 19, [60.0] * 19)  # one short
TIED = _hours("340100057", "瑶海区", DAY + timedelta(days=1), [75.0] * 24, [150.0] * 24)


def test_air_quality_daily_indexes_the_24_hour_means_and_needs_20_hours(lake: Settings) -> None:
    from pipelines.curate.runner import model_rows

    put(lake, "air_quality_hourly", [*CLEAN_DIRTY, *STEADY, *TWENTY, *NINETEEN, *TIED])
    got = rows_of(model_rows("air_quality_daily", settings=lake))
    reg = _registry()

    def station(code: str, name: str, hours: int, pm25: float | None, pm10: float | None, aqi: int | None,
                level: str | None, category: str | None, primary: str | None) -> dict[str, Any]:
        return {"station_id": code, "station_name": name, "station_district_code": reg[code]["parent"],
                "station_longitude": float(reg[code]["longitude"]), "station_latitude": float(reg[code]["latitude"]),
                "observed_date": DAY, "hours_observed": hours, "pm25_24h": pm25, "pm10_24h": pm10, "aqi_daily": aqi,
                "aqi_level": level, "aqi_category": category, "primary_pollutant": primary}

    assert got == [
        station("340100052", "三里街", 24, 150.0, 40.0, 200, "四级", "中度污染", "PM2.5"),
        station("340100053", "琥珀山庄", 19, None, None, None, None, None, None),  # < 20 hours: no daily value
        station("340100054", "董铺水库", 20, 35.0, 50.0, 50, "一级", "优", None),  # ≤ 50: no primary pollutant
        station("340100057", "瑶海区", 24, 50.0, 100.0, 75, "二级", "良", "PM10"),
        # PM2.5 75 and PM10 150 both index to 100: both primary, joined with "|" as the element's format says
        {**station("340100057", "瑶海区", 24, 75.0, 150.0, 100, "二级", "良", "PM2.5|PM10"),
         "observed_date": DAY + timedelta(days=1)}]
    # the mean of the hours' own indices (what HJ 633 forbids) would have given 175, not 200
    from pipelines.curate.aqi import iaqi

    assert float(iaqi("pm25_24h", [r["pm25"] for r in CLEAN_DIRTY]).mean()) == 175 != got[0]["aqi_daily"]


def test_district_daily_indexes_the_mean_of_its_stations_through_the_gate(lake: Settings) -> None:
    """Built for real: the station build is published, then the district build reads curated.air_quality_daily."""
    from pipelines.curate.runner import build_curated
    from pipelines.lake.catalog import get_catalog

    # 琥珀山庄 (蜀山区 340104) has 19 hours: no valid daily mean, so 蜀山区 has no district row that day
    put(lake, "air_quality_hourly", [*CLEAN_DIRTY, *STEADY, *TWENTY, *NINETEEN])
    stations = build_curated("air_quality_daily", settings=lake, reference_date=REF)
    assert (stations.status, stations.rows, stations.quarantined) == ("published", 4, 0)
    districts = build_curated("air_quality_district_daily", settings=lake, reference_date=REF)
    assert districts.inputs == {"curated.air_quality_daily": stations.snapshot_id}
    assert (districts.status, districts.rows) == ("published", 2)
    got = rows_of(get_catalog(lake).load_table("curated.air_quality_district_daily").scan().to_arrow())
    # 瑶海区: PM2.5 mean of 150 and 50 = 100 → IAQI 132 (the mean of the two stations' AQIs would be 137.5)
    assert got == [
        {"station_district_code": "340102", "observed_date": DAY, "stations": 2, "pm25_24h": 100.0, "pm10_24h": 70.0,
         "aqi_daily": 132, "aqi_level": "三级", "aqi_category": "轻度污染", "primary_pollutant": "PM2.5"},
        {"station_district_code": "340103", "observed_date": DAY, "stations": 1, "pm25_24h": 35.0, "pm10_24h": 50.0,
         "aqi_daily": 50, "aqi_level": "一级", "aqi_category": "优", "primary_pollutant": None}]


def test_bus_ridership_sums_stops_and_hours_per_line_and_day(lake: Settings) -> None:
    from pipelines.curate.runner import model_rows

    put(lake, "bus_ridership", [
        {"bus_line_id": "1路", "bus_stop_id": "1路-01", "ridership_date": DAY, "ridership_hour": 7, "boardings": 100},
        {"bus_line_id": "1路", "bus_stop_id": "1路-02", "ridership_date": DAY, "ridership_hour": 8, "boardings": 50},
        {"bus_line_id": "1路", "bus_stop_id": "1路-01", "ridership_date": REF, "ridership_hour": 7, "boardings": 30},
        {"bus_line_id": "2路", "bus_stop_id": "2路-01", "ridership_date": DAY, "ridership_hour": 9, "boardings": 5}])
    put(lake, "bus_route", [{"bus_line_id": "1路", "bus_line_name": "合肥公交1路"}])
    assert rows_of(model_rows("bus_ridership_daily", settings=lake)) == [
        {"bus_line_id": "1路", "bus_line_name": "合肥公交1路", "ridership_date": DAY, "boardings": 150},
        {"bus_line_id": "1路", "bus_line_name": "合肥公交1路", "ridership_date": REF, "boardings": 30},
        {"bus_line_id": "2路", "bus_line_name": None, "ridership_date": DAY, "boardings": 5}]


def _pois(n: int, *, nameless: int = 0, start: int = 0) -> list[dict[str, Any]]:
    return [{"poi_id": f"P{start + i:03d}", "poi_name": None if i < nameless else f"兴趣点{start + i}",
             "poi_category": "EDU", "longitude": 117.2 + i / 1000, "latitude": 31.8, "poi_district_code": "340104"}
            for i in range(n)]


def test_curated_gate_quarantines_holds_and_builds_once_per_input_snapshot(lake: Settings) -> None:
    from pipelines.config import load_all
    from pipelines.curate.runner import build_curated, build_id_of, definition_hash, model_sql
    from pipelines.lake.catalog import get_catalog
    from pipelines.lake.meta import batch_status
    from pipelines.quality.gate import QualityGateError

    catalog = get_catalog(lake)
    contract = load_all(lake).curated["poi_wgs84"]
    definition = definition_hash(lake, contract, model_sql(contract))
    poi = put(lake, "poi", _pois(6, nameless=1))
    first = build_curated("poi_wgs84", settings=lake, reference_date=REF, run_id="run-1")
    assert first.build_id == build_id_of({"std.poi": poi}, definition) and first.inputs == {"std.poi": poi}
    # one of six rows fails a critical rule: under the 20 % threshold, so it goes to quarantine alone
    assert (first.status, first.rows, first.quarantined, first.produced) == ("published", 5, 1, 6)
    table = catalog.load_table("curated.poi_wgs84")
    snap = table.current_snapshot()
    assert snap.snapshot_id == first.snapshot_id
    summary = snap.summary.additional_properties
    assert summary["citylake.build-id"] == first.build_id and summary["citylake.run-id"] == "run-1"
    assert json.loads(summary["citylake.inputs"]) == {"std.poi": poi}
    assert json.loads(summary["citylake.batches"]) == [first.build_id]
    assert rows_of(table.scan().to_arrow()) == [{**r, "crs": "WGS-84"} for r in _pois(6)[1:]]
    (bad,) = catalog.load_table("quarantine.poi_wgs84").scan().to_arrow().to_pylist()
    assert (bad["poi_id"], bad["_rules"], bad["_batch_id"], bad["_run_id"]) == \
        ("P000", ["poi_wgs84.poi_name.required"], first.build_id, "run-1")
    event = batch_status(catalog, "poi_wgs84")[first.build_id]
    assert (event["status"], event["extracted"], event["published"], event["quarantined"], event["held"],
            event["std_snapshot_id"]) == ("published", 6, 5, 1, 0, first.snapshot_id)
    results = catalog.load_table("meta.quality_results").scan(row_filter="run_id = 'run-1'").to_arrow().to_pylist()
    assert {r["rule"]: r["failed"] for r in results}["poi_wgs84.poi_name.required"] == 1
    assert (lake.lake_dir / "gx" / "validations" / "poi_wgs84" / "run-1.json").is_file()

    # the same inputs again: nothing to build, nothing recorded
    again = build_curated("poi_wgs84", settings=lake, reference_date=REF, run_id="run-2")
    assert (again.status, again.build_id, again.snapshot_id, again.rows) == \
        ("nothing_new", first.build_id, first.snapshot_id, 5)
    assert catalog.load_table("curated.poi_wgs84").current_snapshot().snapshot_id == first.snapshot_id
    assert "run-2" not in {r["run_id"] for r in batch_status(catalog, "poi_wgs84").values()}

    # a changed input is a new build, replacing the table whole in one commit
    put(lake, "poi", _pois(7, nameless=1))
    second = build_curated("poi_wgs84", settings=lake, reference_date=REF, run_id="run-3")
    assert second.build_id != first.build_id and (second.status, second.rows, second.quarantined) == ("published", 6, 1)
    table = catalog.load_table("curated.poi_wgs84")
    assert table.scan().to_arrow().num_rows == 6 and table.current_snapshot().snapshot_id == second.snapshot_id
    # quarantine holds the current build's failing rows only: one copy of P000, not one per build
    (bad,) = catalog.load_table("quarantine.poi_wgs84").scan().to_arrow().to_pylist()
    assert (bad["poi_id"], bad["_batch_id"]) == ("P000", second.build_id)

    # half the rows nameless: held, nothing written, the hold recorded against the build
    put(lake, "poi", [*_pois(6, nameless=6, start=100), *_pois(6)])
    with pytest.raises(QualityGateError) as held:
        build_curated("poi_wgs84", settings=lake, reference_date=REF, run_id="run-4")
    assert held.value.dataset == "poi_wgs84" and held.value.rule == "poi_wgs84.poi_name.required"
    assert held.value.count == 6 and "curated.poi_wgs84 held at its previous snapshot" in str(held.value)
    assert catalog.load_table("curated.poi_wgs84").current_snapshot().snapshot_id == second.snapshot_id
    current = catalog.load_table("std.poi").current_snapshot().snapshot_id
    event = batch_status(catalog, "poi_wgs84")[build_id_of({"std.poi": current}, definition)]
    assert (event["status"], event["held"], event["published"], event["run_id"]) == ("held", 12, 0, "run-4")
    quarantine = catalog.load_table("quarantine.poi_wgs84")
    assert quarantine.scan().to_arrow().num_rows == 1  # still the published build's

    # released by hand: passing rows published, failing ones quarantined, the reason recorded
    released = build_curated("poi_wgs84", settings=lake, reference_date=REF, run_id="run-5",
                             release="名称缺失的兴趣点由测绘部门补录，先发布有名称的 6 条")
    assert (released.status, released.rows, released.quarantined) == ("released", 6, 6)
    assert released.build_id == held_build_id(lake, current, definition)
    event = batch_status(catalog, "poi_wgs84")[released.build_id]
    assert (event["status"], event["published"], event["quarantined"], event["reason"]) == \
        ("released", 6, 6, "名称缺失的兴趣点由测绘部门补录，先发布有名称的 6 条")
    assert catalog.load_table("quarantine.poi_wgs84").scan().to_arrow().num_rows == 6
    assert build_curated("poi_wgs84", settings=lake, reference_date=REF).status == "nothing_new"


def held_build_id(settings: Settings, snapshot: int, definition: str) -> str:
    from pipelines.curate.runner import build_id_of

    return build_id_of({"std.poi": snapshot}, definition)


def test_a_crash_between_the_commit_and_the_event_is_recorded_by_the_retry(
        lake: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.curate.runner as runner
    from pipelines.lake.catalog import get_catalog
    from pipelines.lake.meta import batch_status

    catalog = get_catalog(lake)
    put(lake, "poi", _pois(8, nameless=1, start=500))
    real = runner.record_batches
    calls = {"n": 0}

    def crash_once(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("worker killed")
        real(*args, **kwargs)

    monkeypatch.setattr(runner, "record_batches", crash_once)
    with pytest.raises(RuntimeError, match="worker killed"):
        runner.build_curated("poi_wgs84", settings=lake, reference_date=REF, run_id="crash-1")
    committed = catalog.load_table("curated.poi_wgs84").current_snapshot()
    (bad,) = catalog.load_table("quarantine.poi_wgs84").scan().to_arrow().to_pylist()  # written before the commit
    assert bad["poi_id"] == "P500"
    retry = runner.build_curated("poi_wgs84", settings=lake, reference_date=REF, run_id="crash-2")
    assert (retry.status, retry.rows, retry.quarantined, retry.snapshot_id) == \
        ("published", 7, 1, committed.snapshot_id)
    event = batch_status(catalog, "poi_wgs84")[retry.build_id]
    assert (event["status"], event["published"], event["quarantined"], event["extracted"], event["run_id"]) == \
        ("published", 7, 1, 8, "crash-1")
    again = runner.build_curated("poi_wgs84", settings=lake, reference_date=REF, run_id="crash-3")
    assert again.status == "nothing_new" and batch_status(catalog, "poi_wgs84")[retry.build_id]["run_id"] == "crash-1"


def test_a_changed_definition_is_a_new_build(lake: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pipelines.config import load_all
    from pipelines.curate.runner import build_curated

    put(lake, "poi", _pois(3, start=700))
    first = build_curated("poi_wgs84", settings=lake, reference_date=REF)
    contract = load_all(lake).curated["poi_wgs84"]
    model = tmp_path / "poi_wgs84.sql"
    model.write_text(contract.model_path.read_text(encoding="utf-8") + "\n-- corrected\n", encoding="utf-8")
    monkeypatch.setattr(type(contract), "model_path", property(lambda self: model))
    second = build_curated("poi_wgs84", settings=lake, reference_date=REF)
    assert first.inputs == second.inputs and second.build_id != first.build_id
    assert second.status == "published"


def test_a_missing_input_is_waiting_not_an_error(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app
    from pipelines.curate.runner import build_curated

    env = {"CITYLAKE_LAKE_DIR": str(tmp_path / "lake"), "CITYLAKE_DATA_DIR": str(tmp_path / "data"),
           "CITYLAKE_REGISTRY_DIR": str(PROJECT_ROOT / "schemas" / "sources"), "CITYLAKE_ROOT": str(PROJECT_ROOT)}
    with scoped_env(env):
        r = build_curated("bus_ridership_daily", settings=load_settings())
        assert (r.status, r.waiting_for) == ("waiting", ["std.bus_ridership", "std.bus_route"])
        done = CliRunner().invoke(app, ["curate", "all"])
        assert done.exit_code == 0, done.output
        assert "waiting: curated.poi_wgs84 needs std.poi" in done.output


def test_a_model_whose_columns_differ_from_its_contract_is_refused_naming_both(
        lake: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pipelines.config import load_all
    from pipelines.curate.runner import model_rows
    from pipelines.errors import ConfigError

    put(lake, "poi", _pois(2))
    contract = load_all(lake).curated["poi_wgs84"]
    model = tmp_path / "poi_wgs84.sql"
    model.write_text("SELECT poi_id, poi_name, poi_category, longitude, latitude, 'WGS-84' AS crs_code FROM std_poi;\n",
                     encoding="utf-8")
    # on the class: the contract object is load_all's cached one, shared with the other tests
    monkeypatch.setattr(type(contract), "model_path", property(lambda self: model))
    with pytest.raises(ConfigError, match=r"poi_wgs84\.sql: the model's columns differ from .*poi_wgs84\.yml's "
                                          r"\(missing poi_district_code, crs; not in the contract: crs_code\)"):
        model_rows("poi_wgs84", settings=lake)


def test_cli_curate_prints_the_build_and_names_an_unknown_dataset(lake: Settings) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    put(lake, "poi", _pois(3))
    done = CliRunner().invoke(app, ["curate", "poi_wgs84", "--run-id", "cli-1", "--reference-date", "2026-11-20"])
    assert done.exit_code == 0, done.output
    assert "poi_wgs84" in done.output and "published" in done.output and "build__" in done.output
    again = CliRunner().invoke(app, ["curate", "poi_wgs84", "--reference-date", "2026-11-20"])
    assert again.exit_code == 0 and "nothing_new" in again.output
    unknown = CliRunner().invoke(app, ["curate", "no_such"])
    assert unknown.exit_code == 1 and "no curated contract 'no_such'" in unknown.output


def test_lake_show_of_a_curated_table_masks_by_its_declared_elements(lake: Settings) -> None:
    """curated.<ds> and quarantine.<ds> of a curated dataset are declared by the curated contract: personal
    columns are masked as in std, not left to detection."""
    from pipelines.curate.runner import model_rows
    from pipelines.lake.catalog import get_catalog
    from pipelines.lake.inspect import show
    from pipelines.lake.tables import append
    from pipelines.privacy import load_declarations
    from pipelines.seed.ids import resident_id

    rid = resident_id("340104", date(1980, 5, 1), 11)
    put(lake, "person", [{"resident_id": rid, "person_name": "张三", "sex_code": "1", "birth_date": date(1980, 5, 1),
                          "residence_district_code": "340104", "residence_address": "安徽省合肥市蜀山区长江西路1号",
                          "mobile_phone": "13800000000"}])
    put(lake, "insured", [{"resident_id": rid, "person_name": "张叁", "insurance_type": "310"}])
    put(lake, "housing_fund_account", [{"resident_id": rid, "person_name": "张三",
                                         "housing_fund_account": "HF000000000001"}])
    rows = model_rows("golden_resident", settings=lake)
    for table in ("curated.golden_resident", "quarantine.golden_resident"):
        append(get_catalog(lake), table, rows.append_column("_batch_id", pa.repeat(pa.scalar("b"), len(rows))),
               replace=AlwaysTrue())
        columns, (row,), warning = show(table, settings=lake)
        assert warning is None
        assert row["resident_id"] != rid and row["resident_id"].startswith("340104")
        assert row["person_name"] != "张三" and row["birth_date"] != date(1980, 5, 1)
        assert row["mobile_phone"] != "13800000000" and "长江西路1号" not in (row["residence_address"] or "")
        assert row["sex_code"] == "1" and row["residence_district_code"] == "340104"
    decl, _ = load_declarations(lake)
    assert decl is not None and decl.columns_of("curated.golden_resident")["birth_date"].code == "birth_date"


def test_golden_provenance_follows_the_authorities_of_elements_yml(lake: Settings) -> None:
    """Every golden_* provenance entry marked authoritative names its element's authoritative system and table in
    elements.yml, and every other entry does not: a change of authority the model does not follow fails here."""
    from pipelines.config import load_all
    from pipelines.curate.runner import model_rows
    from pipelines.seed.ids import credit_code, resident_id

    rng = random.Random(13)
    r1, r2 = resident_id("340104", date(1980, 5, 1), 5), resident_id("340102", date(1990, 2, 3), 6)
    put(lake, "person", [{"resident_id": r1, "person_name": None, "sex_code": "1", "mobile_phone": "13800000001"}])
    put(lake, "insured", [{"resident_id": r1, "person_name": "甲", "insurance_type": "110"},
                          {"resident_id": r2, "person_name": "乙", "insurance_type": "110"}])
    put(lake, "housing_fund_account", [{"resident_id": r2, "person_name": "乙", "housing_fund_account": "HF1"}])
    e1, e2 = credit_code(rng, "340104"), credit_code(rng, "340104")
    put(lake, "enterprise", [{"uscc": e1, "enterprise_name": None, "enterprise_district_code": "340104"}])
    put(lake, "credit_record", [{"uscc": e1, "enterprise_name": "合肥甲公司", "credit_record_id": "C1",
                                 "credit_record_type": "R"},
                                {"uscc": e2, "enterprise_name": "合肥乙公司", "credit_record_id": "C2",
                                 "credit_record_type": "B"}])
    config = load_all(lake)
    checked = {True: 0, False: 0}
    for dataset in sorted(d for d in config.curated if d.startswith("golden_")):
        contract = config.curated[dataset]
        element_of = {c.name: config.standards.element(c.element) for c in contract.columns}
        for row in model_rows(dataset, settings=lake).to_pylist():
            for column, source in json.loads(row["field_provenance"]).items():
                authority = element_of[column].authority
                if source is None or authority is None:  # no value, or an element the lake derives
                    continue
                names_it = (source["system"], source["table"]) == (authority.system, authority.table)
                assert source["authoritative"] is names_it, (dataset, column, source, authority)
                checked[names_it] += 1
    assert checked[True] > 10 and checked[False] >= 4
