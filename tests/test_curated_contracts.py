"""Curated contracts (schemas/curated/, issue 10) load against the standards, the std contracts and the models;
a contract that would open what must stay closed, or build from what does not exist, is refused with its file
and line."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from conftest import apply_edits

from pipelines.code_lists import load_code_list
from pipelines.config import load_all, load_curated
from pipelines.contracts import CuratedContract, load_contracts, load_curated_contracts
from pipelines.curate.plan import build_order
from pipelines.errors import ConfigError
from pipelines.registry import load_registry
from pipelines.settings import PROJECT_ROOT, load_settings
from pipelines.standards import Standards, load_standards

SCHEMAS = PROJECT_ROOT / "schemas"
CURATED = SCHEMAS / "curated"
# The fixed names and column orders every helper of issue 10 codes against (its shared spec).
COLUMNS = {
    "golden_resident": ["resident_id", "person_name", "sex_code", "birth_date", "residence_district_code",
                        "residence_address", "mobile_phone", "field_provenance"],
    "golden_legal_person": ["uscc", "enterprise_name", "legal_representative", "registered_capital", "established_on",
                            "enterprise_district_code", "industry_code", "enterprise_status", "credit_red_count",
                            "credit_black_count", "credit_watch_count", "field_provenance"],
    "enterprise_registrations_monthly": ["registration_month", "enterprise_district_code", "industry_section",
                                         "registrations"],
    "air_quality_daily": ["station_id", "station_name", "station_district_code", "station_longitude",
                          "station_latitude", "observed_date", "hours_observed", "pm25_24h", "pm10_24h", "aqi_daily",
                          "aqi_level", "aqi_category", "primary_pollutant"],
    "air_quality_district_daily": ["station_district_code", "observed_date", "stations", "pm25_24h", "pm10_24h",
                                   "aqi_daily", "aqi_level", "aqi_category", "primary_pollutant"],
    "bus_ridership_daily": ["bus_line_id", "bus_line_name", "ridership_date", "boardings"],
    "poi_wgs84": ["poi_id", "poi_name", "poi_category", "longitude", "latitude", "poi_district_code", "crs"],
}


@pytest.fixture(scope="module")
def base() -> tuple[Standards, dict[str, Any]]:
    """The project's standards and std contracts, read once: every case below edits only curated files."""
    systems, _ = load_registry(SCHEMAS / "sources")
    standards = load_standards(SCHEMAS / "standards", systems)
    return standards, load_contracts(SCHEMAS / "datasets", standards, systems)


def _edited(tmp_path: Path, dataset: str, *edits: tuple[str, str]) -> tuple[Path, Path, list[int]]:
    """The project's curated contracts under tmp_path, one empty model per contract (the real models are the
    curate runner's), ``edits`` applied to one; (contracts folder, models folder, the line of each edit)."""
    d, models = tmp_path / "curated", tmp_path / "models"
    shutil.copytree(CURATED, d)
    models.mkdir()
    for path in d.glob("*.yml"):
        (models / f"{path.stem}.sql").write_text("SELECT 1\n", encoding="utf-8")
    return d, models, apply_edits(d / f"{dataset}.yml", edits)


def _problems(base: tuple[Standards, dict[str, Any]], d: Path, models: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_curated_contracts(d, *base, models_dir=models)
    return info.value.problems


def _one(problems: list[str], pattern: str) -> str:
    found = [p for p in problems if re.search(pattern, p)]
    assert found, f"{pattern!r} not in:\n" + "\n".join(problems)
    return found[0]


def test_the_seven_curated_contracts_load(base: tuple[Standards, dict[str, Any]]) -> None:
    curated = load_curated_contracts(CURATED, *base)
    assert {name: [c.name for c in contract.columns] for name, contract in curated.items()} == COLUMNS
    assert all(c.model_path.is_file() and c.table == f"curated.{name}" == c.std_table for name, c in curated.items())
    assert {c.domain for c in curated.values()} == {"population", "legal_person", "environment", "transport", "geo"}
    opened = {name: c.open.type for name, c in curated.items()}
    assert opened == {"golden_resident": "不予开放", "golden_legal_person": "有条件开放",
                      "enterprise_registrations_monthly": "有条件开放", "air_quality_daily": "无条件开放",
                      "air_quality_district_daily": "无条件开放", "bus_ridership_daily": "有条件开放",
                      "poi_wgs84": "无条件开放"}
    assert curated["golden_resident"].classification.grade == 4
    legal = curated["golden_legal_person"]
    assert "legal_representative" not in [c.name for c in legal.open_columns()] and legal.open.met_by
    assert [c.name for c in curated["bus_ridership_daily"].columns if c.deid == "suppress"] == ["boardings"]
    # resource codes are unique across std and curated; the provider owns an input
    std = base[1]
    codes = [c.resource_code for c in [*std.values(), *curated.values()]]
    assert len(set(codes)) == len(codes)
    assert legal.resource_code == "102003/113401000030022204-0002"
    assert legal.catalog_path == "基础信息资源/法人单位/法人单位综合信息"
    assert all(c.owner in {std[ds].owner if ns == "std" else curated[ds].owner for ns, ds in c.input_datasets}
               for c in curated.values())
    # the two opened more strictly than their grade's default carry the demo's marked override
    assert {n for n, c in curated.items() if c.overrides} == {"enterprise_registrations_monthly", "bus_ridership_daily"}
    assert all(o["approved_by"].startswith("示例 (演示数据, 未经实际审批)") for c in curated.values() for o in c.overrides)
    order = build_order({n: c.inputs for n, c in curated.items()})  # the one order: CLI, DAGs, demo
    assert sorted(order) == sorted(COLUMNS) and order.index("air_quality_daily") < order.index(
        "air_quality_district_daily")
    # every derived element names a column that carries it
    derived = [e for e in base[0].elements.values() if e.derived_by]
    assert derived and all(any(c.name == e.derived_by.column and c.element == e.code
                               for c in curated[e.derived_by.dataset].columns) for e in derived)


def test_load_all_and_load_curated_read_the_project() -> None:
    settings = load_settings()
    config = load_all(settings)
    assert set(config.curated) == set(COLUMNS) and "enterprise" in config.contracts
    assert load_all(settings) is config  # cached while no file changed
    assert set(load_curated(settings)) == set(COLUMNS)
    assert set(load_curated(settings, config.standards, config.contracts)) == set(COLUMNS)


def test_an_opened_grade_4_column_is_refused_with_file_and_line(base: tuple[Standards, dict[str, Any]],
                                                                tmp_path: Path) -> None:
    d, models, (line,) = _edited(tmp_path, "golden_legal_person", (
        "- {name: uscc, element: uscc, required: true}\n",
        "- {name: uscc, element: uscc, required: true}\n- {name: resident_id, element: resident_id}\n"))
    problems = _problems(base, d, models)
    found = _one(problems, r"columns\.1\.deid: column resident_id .* 敏感个人信息 \(grade 4\)")
    assert found.startswith(f"{d / 'golden_legal_person.yml'}:{line + 1}: ") and "deid: drop" in found
    # the hard rule says the same of the whole dataset
    _one(problems, r"golden_legal_person\.yml:\d+: open\.type: 有条件开放 breaks a rule")


def test_a_personal_column_kept_in_an_open_dataset_is_refused(base: tuple[Standards, dict[str, Any]],
                                                              tmp_path: Path) -> None:
    d, models, (line,) = _edited(tmp_path, "golden_legal_person", (
        "element: legal_representative, deid: drop}", "element: legal_representative}"))
    (found,) = _problems(base, d, models)
    assert re.fullmatch(rf"{re.escape(str(d / 'golden_legal_person.yml'))}:{line}: columns\.2\.deid: column "
                        r"legal_representative \(legal_representative, 法定代表人\) is 个人信息 and the open release "
                        r"keeps it as is in a 有条件开放 dataset: drop, mask or generalise it.*", found)


def test_conditional_opening_needs_met_by(base: tuple[Standards, dict[str, Any]], tmp_path: Path) -> None:
    d, models, (line,) = _edited(tmp_path, "bus_ridership_daily", ("  met_by: 本数据集即", "  # met_by: 本数据集即"))
    (found,) = _problems(base, d, models)
    assert re.match(rf"{re.escape(str(d / 'bus_ridership_daily.yml'))}:\d+: open: 有条件开放: say under 'met_by'", found)


@pytest.mark.parametrize(("dataset", "old", "new", "message"), [
    ("golden_resident", "inputs: [std.person,", "inputs: [std.persn,",
     r"golden_resident\.yml:{line}: inputs\.0: std\.persn has no contract in schemas/datasets \(did you mean "
     r"std\.person\?\)"),
    ("air_quality_district_daily", "inputs: [curated.air_quality_daily]", "inputs: [curated.air_quality_dayly]",
     r"inputs\.0: curated\.air_quality_dayly has no contract in schemas/curated"),
    ("air_quality_daily", "inputs: [std.air_quality_hourly]",
     "inputs: [std.air_quality_hourly, curated.air_quality_district_daily]",
     r"inputs: curated\.air_quality_\w+ → curated\.air_quality_\w+ → curated\.air_quality_\w+ is a cycle"),
    ("poi_wgs84", "inputs: [std.poi]", "inputs: [poi]", r"poi_wgs84\.yml:{line}: inputs: input 'poi': write std"),
    ("poi_wgs84", "  sequence: 2\n", "  sequence: 1\n",
     r"poi_wgs84\.yml:{line}: catalog\.sequence: 1 is already used by poi \(.*datasets/poi\.yml:\d+\) of the same "
     r"provider 11340100003007777F"),
    ("air_quality_district_daily", "  sequence: 3\n", "  sequence: 2\n",
     r"air_quality_district_daily\.yml:{line}: catalog\.sequence: 2 is already used by air_quality_daily "
     r"\(.*curated/air_quality_daily\.yml:\d+\)"),
    ("poi_wgs84", 'owner: "11340100003007777F"', 'owner: "11340100003003338T"',
     r"poi_wgs84\.yml:{line}: owner: 11340100003003338T \(合肥市生态环境局\) owns none of its inputs \(std\.poi\).*"
     r"write owner: \"11340100003007777F\""),
    ("poi_wgs84", "- {name: poi_name, element: poi_name, required: true}",
     "- {name: poi_name, element: poi_nam, required: true}", r"columns\.1\.element: unknown data element 'poi_nam'"),
    ("poi_wgs84", "primary_key: [poi_id]", "primary_key: [poi_id]\nmodel: poi.sql",
     r"poi_wgs84\.yml:{line_after}: model: .*models/poi\.sql does not exist"),
    ("poi_wgs84", "- {name: poi_id, element: poi_id, required: true}",
     "- {name: poi_id, element: poi_id, required: true, deid: mask}",
     r"columns\.0\.deid: column poi_id .*deid mask on a primary key column"),
    ("air_quality_daily", "open: {type: 无条件开放}", "open: {type: 无条件开放, k: 10}",
     r"open\.k: the small-cell threshold applies to deid suppress; no column suppresses"),
    ("air_quality_daily", "open: {type: 无条件开放}", "open: {type: 无条件开放, met_by: 汇总}",
     r"open: met_by explains how a 有条件开放 condition is met"),
])
def test_broken_inputs_models_keys_and_sequences_are_refused(base: tuple[Standards, dict[str, Any]], tmp_path: Path,
                                                             dataset: str, old: str, new: str, message: str) -> None:
    d, models, (line,) = _edited(tmp_path, dataset, (old, new))
    problems = _problems(base, d, models)
    _one(problems, message.format(line=line, line_after=line + 1))
    assert all(re.match(r"\S+\.yml:\d+: ", p) for p in problems), problems


def test_a_missing_model_is_refused(base: tuple[Standards, dict[str, Any]], tmp_path: Path) -> None:
    d, models, _ = _edited(tmp_path, "poi_wgs84")
    (models / "poi_wgs84.sql").unlink()
    (found,) = _problems(base, d, models)
    line = (d / "poi_wgs84.yml").read_text(encoding="utf-8").splitlines().index("dataset: poi_wgs84") + 1
    assert re.fullmatch(rf"{re.escape(str(d / 'poi_wgs84.yml'))}:{line}: model: {re.escape(str(models / 'poi_wgs84.sql'))} "
                        r"does not exist; write the model .*", found)


@pytest.mark.parametrize(("dataset", "column", "deid", "message"), [
    ("bus_ridership_daily", "bus_line_name", "suppress", r"deid suppress needs an integer count .* bus_line_name is string"),
    ("poi_wgs84", "poi_name", "year", r"deid year needs a date or timestamp; poi_name is string"),
    ("poi_wgs84", "poi_category", "grid", r"deid grid needs a longitude or latitude"),
    ("poi_wgs84", "poi_name", "district", r"deid district needs an address"),
    ("bus_ridership_daily", "boardings", "mask", r"deid mask needs a text .*daily_boardings is integer \(人次\)"),
])
def test_a_deid_that_does_not_fit_its_column_is_refused(base: tuple[Standards, dict[str, Any]], tmp_path: Path,
                                                        dataset: str, column: str, deid: str, message: str) -> None:
    text = (CURATED / f"{dataset}.yml").read_text(encoding="utf-8")
    old = next(x for x in text.splitlines() if x.startswith(f"- {{name: {column}, "))
    new = re.sub(r", deid: \w+", "", old).removesuffix("}") + f", deid: {deid}}}"
    d, models, (line,) = _edited(tmp_path, dataset, (old, new))
    found = _one(_problems(base, d, models), message)
    assert found.startswith(f"{d / f'{dataset}.yml'}:{line}: columns.") and f"column {column} " in found


def test_fitting_generalisations_load(base: tuple[Standards, dict[str, Any]], tmp_path: Path) -> None:
    """grid on coordinates, year on a date, district on an address, mask on text are accepted (poi_wgs84 and a
    golden_resident opened only in thought: it stays 不予开放, so only the deid types are exercised)."""
    d, models, _ = _edited(tmp_path, "poi_wgs84",
                           ("element: longitude, required: true}", "element: longitude, required: true, deid: grid}"),
                           ("element: latitude, required: true}", "element: latitude, required: true, deid: grid, "
                                                                  "grid: 0.05}"))
    path = d / "golden_resident.yml"
    text = path.read_text(encoding="utf-8")
    for col, deid in (("birth_date", "year"), ("residence_address", "district"), ("person_name", "mask")):
        text = re.sub(rf"(- \{{name: {col}, element: {col}(, required: true)?)\}}", rf"\1, deid: {deid}}}", text)
    path.write_text(text, encoding="utf-8")
    curated = load_curated_contracts(d, *base, models_dir=models)
    poi: CuratedContract = curated["poi_wgs84"]
    assert [(c.deid, c.grid) for c in poi.columns if c.name in ("longitude", "latitude")] == [("grid", 0.01),
                                                                                              ("grid", 0.05)]
    assert {c.name: c.deid for c in curated["golden_resident"].columns
            if c.name in ("birth_date", "residence_address", "person_name")} == {
        "birth_date": "year", "residence_address": "district", "person_name": "mask"}


def test_grid_size_without_grid_is_refused(base: tuple[Standards, dict[str, Any]], tmp_path: Path) -> None:
    d, models, (line,) = _edited(tmp_path, "poi_wgs84", ("element: longitude, required: true}",
                                                         "element: longitude, required: true, grid: 0.1}"))
    (found,) = _problems(base, d, models)
    assert re.match(rf"{re.escape(str(d / 'poi_wgs84.yml'))}:{line}: columns\.3: grid is the cell size of deid grid",
                    found)


def test_derived_by_must_name_a_curated_column_carrying_the_element(base: tuple[Standards, dict[str, Any]],
                                                                    tmp_path: Path) -> None:
    d, models, _ = _edited(tmp_path, "bus_ridership_daily", ("- {name: boardings, element: daily_boardings",
                                                             "- {name: daily_boardings, element: daily_boardings"))
    found = _one(_problems(base, d, models), r"element daily_boardings: curated\.bus_ridership_daily has no column "
                                             r"'boardings'")
    assert re.match(r"\S+elements\.yml:\d+: elements\.\d+\.derived_by: ", found)


def test_an_element_has_an_authority_or_derived_by_not_both(tmp_path: Path) -> None:
    d = tmp_path / "standards"
    shutil.copytree(SCHEMAS / "standards", d)
    path = d / "elements.yml"
    text = path.read_text(encoding="utf-8")
    old = "    derived_by: {dataset: poi_wgs84, column: crs}\n"
    path.write_text(text.replace(old, old + "    authoritative:\n    - {system: poi, table: poi, column: lon}\n"),
                    encoding="utf-8")
    with pytest.raises(ConfigError, match=r"elements\.yml:\d+: element crs \(坐标参考系\): has both authoritative "
                                          r"\(poi\.poi\.lon\) and derived_by \(curated\.poi_wgs84\.crs\)"):
        load_standards(d)
    path.write_text(text.replace(old, ""), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"element crs \(坐标参考系\): needs exactly one authoritative source "
                                          r"\(一数一源\) or derived_by, has 0"):
        load_standards(d)


def test_industry_and_station_code_lists(base: tuple[Standards, dict[str, Any]], tmp_path: Path) -> None:
    standards = base[0]
    industry = standards.code_lists["industry"]
    sections = [c for c, p in industry.parents.items() if not p]
    assert sections == [chr(c) for c in range(ord("A"), ord("T") + 1)]
    divisions = {c: p for c, p in industry.parents.items() if p}
    assert sorted(divisions) == [f"{i:02d}" for i in range(1, 98)]
    assert (divisions["01"], divisions["13"], divisions["43"], divisions["65"], divisions["97"]) == ("A", "C", "C", "I", "T")
    assert industry.codes["C"] == "制造业" and industry.codes["65"] == "软件和信息技术服务业"
    stations = standards.code_lists["air_station"]
    from pipelines.seed.city import RARE_STATION, STATIONS

    assert dict(stations.codes) == dict([*STATIONS, RARE_STATION])
    assert all(p in standards.code_lists["division"].codes for p in stations.parents.values())
    assert stations.columns[-2:] == ("longitude", "latitude")
    assert all(116.68 < float(x["longitude"]) < 117.98 and 30.93 < float(x["latitude"]) < 32.55
               for x in stations.extra.values())
    # a station off the map or in an unknown district is refused with its line
    d = tmp_path / "standards"
    shutil.copytree(SCHEMAS / "standards", d)
    path = d / "code_lists" / "air_station.csv"
    text = path.read_text(encoding="utf-8")
    text = text.replace(",340172,", ",340199,", 1).replace(",117.3079,31.8697", ",121.47,31.23")
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_standards(d)
    assert info.value.problems == [
        f"{path}:2: code 340100051: parent 340199 is not a code of division",
        f"{path}:3: code 340100052: longitude '121.47' is not a decimal degree inside Hefei (116.68–117.98)"]
    assert load_code_list(SCHEMAS / "standards" / "code_lists" / "sex.csv").extra == {}


def test_a_broken_curated_contract_does_not_stop_a_std_held_alert(tmp_path: Path) -> None:
    """A broken schemas/curated/air_quality_daily.yml: a held std batch still alerts, poi_wgs84 still loads for
    its build and alert; what reads air_quality_daily gets that file's error."""
    from conftest import scoped_env

    from pipelines.alerts import held_alert
    from pipelines.config import load_for
    from pipelines.quality.gate import QualityGateError

    shutil.copytree(SCHEMAS, tmp_path / "schemas")
    broken = tmp_path / "schemas" / "curated" / "air_quality_daily.yml"
    broken.write_text(broken.read_text(encoding="utf-8").replace("domain: environment", "domain: [environment"),
                      encoding="utf-8")
    failures = [{"rule": "enterprise.uscc.check_digit", "description": "统一社会信用代码校验位", "failed": 3,
                 "evaluated": 5, "threshold": 0.2}]
    with scoped_env({"CITYLAKE_ROOT": str(tmp_path), "CITYLAKE_REGISTRY_DIR": str(tmp_path / "schemas" / "sources")}):
        settings = load_settings()
        alert = held_alert(settings, QualityGateError("held", dataset="enterprise", held=5, failures=failures))
        assert alert.dataset_or_table == "enterprise" and alert.count == 3
        assert held_alert(settings, QualityGateError("held", dataset="poi_wgs84", held=5, failures=failures)) \
            .dataset_or_table == "poi_wgs84"
        assert set(load_for(settings, "poi_wgs84").curated) == {"poi_wgs84"}
        with pytest.raises(ConfigError, match=r"air_quality_daily\.yml:\d+"):
            load_for(settings, "air_quality_district_daily")  # its input's contract is the broken one


def test_an_internal_column_kept_in_an_open_dataset_is_refused(base: tuple[Standards, dict[str, Any]],
                                                               tmp_path: Path) -> None:
    d, models, (line,) = _edited(tmp_path, "golden_legal_person", (
        "required: true, deid: drop}  # 内部", "required: true}  # 内部"))
    found = _one(_problems(base, d, models), r"column field_provenance .* is 内部")
    assert found.startswith(f"{d / 'golden_legal_person.yml'}:{line}: columns.11.deid: ") and "deid: drop" in found


def test_a_masked_identifier_in_open_data_is_refused(base: tuple[Standards, dict[str, Any]], tmp_path: Path) -> None:
    d, models, (line,) = _edited(tmp_path, "golden_legal_person", (
        "- {name: registered_capital, element: registered_capital}\n",
        "- {name: registered_capital, element: registered_capital}\n"
        "- {name: mobile_phone, element: mobile_phone, deid: mask}\n"))
    found = _one(_problems(base, d, models), r"column mobile_phone .* is an identifier")
    assert found.startswith(f"{d / 'golden_legal_person.yml'}:{line + 1}: ") and "write deid: drop" in found


def test_a_column_from_a_stricter_shared_input_is_refused(base: tuple[Standards, dict[str, Any]],
                                                          tmp_path: Path) -> None:
    """golden_resident is 人口, 无条件共享 by Hefei's base-resource rule; 公积金账号 comes from std.housing_fund_account,
    有条件共享 (社会保障): the column cannot be carried, and no override lifts a hard rule."""
    d, models, (line,) = _edited(tmp_path, "golden_resident", (
        "- {name: mobile_phone, element: mobile_phone}\n",
        "- {name: mobile_phone, element: mobile_phone}\n"
        "- {name: housing_fund_account, element: housing_fund_account}\n"))
    found = _one(_problems(base, d, models), r"column housing_fund_account")
    assert found.startswith(f"{d / 'golden_resident.yml'}:{line + 1}: columns.7: ")
    assert "comes from std.housing_fund_account, shared 有条件共享" in found and "无条件共享 by a hard rule" in found
    assert "move the column out" in found
