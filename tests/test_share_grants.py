"""Sharing grants: the loader names file:line of every structural problem; the policy refuses with each of its
codes on small crafted grants against the real project config, and lets the demo grants through as designed."""

from __future__ import annotations

import dataclasses
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.config import Config, load_all, load_departments
from pipelines.contracts import Sharing
from pipelines.errors import ConfigError
from pipelines.settings import Settings, load_settings
from pipelines.share.grants import Grants, grant_ids, load_grants, read_grant_ids
from pipelines.share.policy import REFUSAL_CODES, Decision, decide

DAY = date(2026, 11, 20)  # the demo city's reference date
SCJG = "113401000030022204"  # 合肥市市场监督管理局
GJJ = "123401004850066616"   # 合肥住房公积金管理中心
DEMO_APPROVAL = "示例 (演示数据, 未经实际审批)"


@pytest.fixture(scope="module")
def config() -> Config:
    return load_all(load_settings())


def _settings(tmp_path: Path) -> Settings:
    return dataclasses.replace(load_settings(), grants_dir=tmp_path)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """\
# a test grant file
grants:
  - id: g1
    consumer: "113401000030022204"
    dataset: enterprise
    columns: [uscc, enterprise_name]
    delivery: {method: file}
"""


# --- loading --------------------------------------------------------------------------------------


def test_demo_grants_load_and_decide_as_designed(config: Config) -> None:
    settings = load_settings()
    grants = load_grants(settings)
    outcome = {gid: (d.refusal.code if (d := decide(g, config, load_departments(settings), grants, DAY)).refusal
                     else "ok") for gid, g in grants.grants.items()}
    assert outcome == {"gjj-insured-loan": "ok", "jtys-insured": "missing_approver", "rsj-housing-fund": "ok",
                       "scjg-person": "ok", "zrzy-enterprise": "ok", "zrzy-poi-2026h1": "expired"}
    assert not any(g.delivery.method == "database" for g in grants.grants.values())  # the demo has no PostgreSQL
    assert all(g.approver.startswith(DEMO_APPROVAL) for g in grants.grants.values() if g.approver)
    assert all(s.approved_by.startswith(DEMO_APPROVAL) for s in grants.scenarios.values())
    assert grants.grants["scjg-person"].where == "schemas/grants/scjg.yml:5"
    assert grant_ids(settings) == list(grants.grants) == grant_ids(settings.grants)


def test_good_file_loads_with_its_place(tmp_path: Path) -> None:
    path = _write(tmp_path, "scjg.yml", GOOD)
    grants = load_grants(_settings(tmp_path))
    g = grants.grants["g1"]
    assert (g.consumer, g.dataset, g.columns, g.delivery.method, g.deid) == (
        SCJG, "enterprise", ["uscc", "enterprise_name"], "file", {})
    assert (g.file, g.line) == (str(path), 3)  # outside the project root: the path as is
    assert grants.scenarios == {}


def test_missing_folder_is_no_grants(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "none")
    assert load_grants(settings) == Grants({}, {})
    assert grant_ids(settings) == []


def test_typo_key_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "a.yml", GOOD + "    purpse: 核对\n")
    with pytest.raises(ConfigError) as err:
        load_grants(_settings(tmp_path))
    assert err.value.problems == [f"{path}:8: grants.0.purpse: unknown field; allowed fields: approved_on, approver, "
                                  "columns, consumer, dataset, deid, delivery, expires, id, legal_basis, purpose, "
                                  "scenario, verification"]


@pytest.mark.parametrize(("value", "line_text"), [
    ("2026-02-30", "'2026-02-30': invalid date in YAML: day is out of range for month"),  # YAML cannot build it
    ('"2026-13-01"', "grants.0.expires: Input should be a valid date"),
    ("20261231", "grants.0.expires: write a date as YYYY-MM-DD, not 20261231"),
    ("2026-12-31 10:00:00", "grants.0.expires: write a date as YYYY-MM-DD"),
])
def test_bad_date_names_file_and_line(tmp_path: Path, value: str, line_text: str) -> None:
    path = _write(tmp_path, "a.yml", GOOD.replace("    delivery:", f"    expires: {value}\n    delivery:"))
    with pytest.raises(ConfigError) as err:
        load_grants(_settings(tmp_path))
    assert len(err.value.problems) == 1
    assert err.value.problems[0].startswith(f"{path}:7: {line_text}")


def test_duplicate_grant_id_across_files(tmp_path: Path) -> None:
    first = _write(tmp_path, "a.yml", GOOD)
    second = _write(tmp_path, "b.yml", GOOD.replace("# a test grant file\n", ""))
    with pytest.raises(ConfigError) as err:
        load_grants(_settings(tmp_path))
    assert err.value.problems == [f"{second}:2: grants.0.id: grant id 'g1' is already used at {first}:3"]


def test_every_problem_of_every_file_at_once(tmp_path: Path) -> None:
    broken_yaml = _write(tmp_path, "a.yml", "grants:\n  - id: x\n    columns: [a\n")
    database = _write(tmp_path, "b.yml", GOOD.replace("{method: file}", "{method: database}"))
    wrong = _write(tmp_path, "c.yml", GOOD.replace("g1", "Bad Id").replace("enterprise_name]", "enterprise_name]\n"
                                                                        "    verification: maybe\n    deid: {uscc: hide}"))
    digits = _write(tmp_path, "d.yml", GOOD.replace('"113401000030022204"', "340100001").replace("g1", "g4"))
    scenarios = _write(tmp_path, "scenarios.yml", "scenarios:\n  - id: s1\n    name: 场景\n    dataset: insured\n")
    with pytest.raises(ConfigError) as err:
        load_grants(_settings(tmp_path))
    problems = err.value.problems
    assert problems[0].startswith(f"{broken_yaml}:4: invalid YAML")
    assert f"{database}:7: grants.0.delivery: a database delivery needs conn_id" in problems[1]
    assert any(p.startswith(f"{wrong}:3: grants.0.id: grant id 'Bad Id' must match") for p in problems)
    assert any(p.startswith(f"{wrong}:7: grants.0.verification: Input should be a valid boolean") for p in problems)
    assert any(p.startswith(f"{wrong}:8: grants.0.deid.uscc: Input should be 'keep', 'pseudonym' or 'mask'")
               for p in problems)
    assert any(p == f'{digits}:4: grants.0.consumer: quote the code: YAML reads 340100001 as a number (write '
               f'consumer: "340100001")' for p in problems)
    assert any(p == f"{scenarios}:2: scenarios.0.columns: required field is missing" for p in problems)


def test_one_grant_per_consumer_dataset_and_delivery(tmp_path: Path) -> None:
    first = _write(tmp_path, "a.yml", GOOD)
    renewal = _write(tmp_path, "b.yml", GOOD.replace("g1", "g1-2027"))
    with pytest.raises(ConfigError) as err:
        load_grants(_settings(tmp_path))
    [problem] = err.value.problems
    assert problem.startswith(f"{renewal}:3: grants.0: grant 'g1-2027' gives consumer {SCJG} dataset enterprise "
                              f"by file like grant 'g1' at {first}:3")
    assert "a renewal under a new id replaces the old entry" in problem
    # another destination of the same dataset is another grant
    _write(tmp_path, "b.yml", GOOD.replace("g1", "g1-db").replace("{method: file}",
                                                                  "{method: database, conn_id: scjg_pg}"))
    assert list(load_grants(_settings(tmp_path)).grants) == ["g1", "g1-db"]


def test_isolate_leaves_a_broken_file_out_and_says_why(tmp_path: Path) -> None:
    _write(tmp_path, "a.yml", GOOD)
    broken = _write(tmp_path, "b.yml", GOOD.replace("g1", "g2").replace("enterprise", "poi") + "    purpse: x\n")
    twice = _write(tmp_path, "c.yml", GOOD.replace("g1", "g3").replace("enterprise", "person"))
    _write(tmp_path, "d.yml", GOOD.replace("g1", "g4").replace("enterprise", "person"))  # same place as g3
    scenarios = _write(tmp_path, "scenarios.yml", "scenarios:\n  - id: s1\n")
    settings = _settings(tmp_path)
    with pytest.raises(ConfigError):
        load_grants(settings)
    grants = load_grants(settings, isolate=True)
    assert list(grants.grants) == ["g1", "g3"] and grants.scenarios == {}
    assert list(grants.problems) == [str(broken), str(tmp_path / "d.yml"), str(scenarios)]
    assert grants.problems[str(broken)] == [f"{broken}:8: grants.0.purpse: unknown field; allowed fields: "
                                            "approved_on, approver, columns, consumer, dataset, deid, delivery, "
                                            "expires, id, legal_basis, purpose, scenario, verification"]
    assert grants.problems[str(tmp_path / "d.yml")][0].startswith(f"{tmp_path / 'd.yml'}:3: grants.0: grant 'g4'")
    assert f"like grant 'g3' at {twice}:3" in grants.problems[str(tmp_path / "d.yml")][0]
    assert load_grants(_settings(tmp_path / "none"), isolate=True) == Grants({}, {}, {})


def test_file_delivery_takes_no_conn_id_and_dates_are_ordered(tmp_path: Path) -> None:
    conn = _write(tmp_path, "a.yml", GOOD.replace("{method: file}", "{method: file, conn_id: pg}"))
    dates = _write(tmp_path, "b.yml", GOOD.replace("g1", "g2").replace(
        "    delivery:", "    approved_on: 2026-10-01\n    expires: 2026-09-30\n    delivery:"))
    with pytest.raises(ConfigError) as err:
        load_grants(_settings(tmp_path))
    assert err.value.problems == [
        f"{conn}:7: grants.0.delivery: conn_id is for a database delivery; a file delivery has none: remove it",
        f"{dates}:3: grants.0: expires 2026-09-30 is before approved_on 2026-10-01"]


def test_grant_ids_read_only_the_yaml(tmp_path: Path) -> None:
    _write(tmp_path, "a.yml", GOOD + "  - id: g2\n    dataset: nonsense\n")  # invalid for the loader, ids readable
    _write(tmp_path, "b.yml", "grants:\n  - id: g3\n    expires: 2026-02-30\n  - {dataset: x}\n")
    _write(tmp_path, "scenarios.yml", "scenarios:\n  - id: s1\n")
    assert grant_ids(tmp_path) == ["g1", "g2", "g3"]
    # an id that cannot name a task is left out of the DAG; the loader names it with file:line
    _write(tmp_path, "b.yml", "grants:\n  - id: Bad Id\n  - id: g3\n")
    assert grant_ids(tmp_path) == ["g1", "g2", "g3"]
    assert read_grant_ids(tmp_path) == (["g1", "g2", "g3"], ["Bad Id"], [])
    _write(tmp_path, "c.yml", "grants: [\n")
    with pytest.raises(ConfigError, match=r"c\.yml:2: invalid YAML"):
        grant_ids(tmp_path)
    valid, _, problems = read_grant_ids(tmp_path)  # the DAG's reader: the other files' ids stay
    assert valid == ["g1", "g2", "g3"] and len(problems) == 1 and "c.yml:2: invalid YAML" in problems[0]


# --- the policy -----------------------------------------------------------------------------------

SCENARIO = {"id": "loan_check", "name": "公积金贷款社保缴存核验", "dataset": "insured",
            "columns": ["resident_id", "insurance_type", "uscc"], "purpose": "贷款审核核验参保",
            "legal_basis": "测试", "approved_by": "测试决定", "consumers": [SCJG]}


def _grant(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"id": "t1", "consumer": SCJG, "dataset": "person",
                            "columns": ["resident_id", "person_name", "residence_district_code"],
                            "purpose": "登记信息核对", "delivery": {"method": "file"},
                            "deid": {"resident_id": "pseudonym"}}
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def _decide(tmp_path: Path, config: Config, entry: dict[str, Any], on: date = DAY, today: date = DAY) -> Decision:
    _write(tmp_path, "t.yml", "# crafted\n" + yaml.safe_dump({"grants": [entry]}, allow_unicode=True, sort_keys=False))
    _write(tmp_path, "scenarios.yml", yaml.safe_dump({"scenarios": [SCENARIO]}, allow_unicode=True))
    settings = _settings(tmp_path)
    grants = load_grants(settings)
    return decide(grants.grants[entry["id"]], config, load_departments(settings), grants, on, today=today)


APPROVED = {"approver": "人社局 审批", "approved_on": "2026-10-01", "expires": "2027-12-31"}
INSURED = {"dataset": "insured", "columns": ["resident_id", "insurance_type"]}

REFUSALS: dict[str, dict[str, Any]] = {
    "unknown_department": _grant(consumer="340100BM999"),
    "unknown_dataset": _grant(dataset="persons"),
    "not_shared": _grant(dataset="secret_person"),  # person under 不予共享 (see _with_not_shared)
    "unknown_column": _grant(columns=["resident_id", "salary"]),
    "column_outside_grant": _grant(deid={"resident_id": "pseudonym", "mobile_phone": "mask"}),
    "key_not_granted": _grant(columns=["person_name", "residence_district_code"], deid={}),
    "unknown_scenario": _grant(**INSURED, scenario="no_such_scenario"),
    "method_not_offered": _grant(dataset="bus_route", columns=["bus_line_id"], deid={},
                                 delivery={"method": "database", "conn_id": "pg"}),
    "expired": _grant(expires="2026-11-19"),
    "missing_approver": _grant(**INSURED),
    "missing_expiry": _grant(**INSURED, **{**APPROVED, "expires": None}),
    "missing_purpose": _grant(purpose=None),
    "clear_not_allowed": _grant(deid={"resident_id": "pseudonym", "person_name": "keep"}),
    "key_masked": _grant(deid={}),
}


def _with_not_shared(config: Config) -> Config:
    person = config.contracts["person"]
    hidden = person.model_copy(update={"dataset": "secret_person",
                                       "sharing": Sharing(type="不予共享", basis="测试依据")})
    return config._replace(contracts={**config.contracts, "secret_person": hidden})


def test_every_refusal_code_is_tested() -> None:
    assert set(REFUSALS) == set(REFUSAL_CODES)


@pytest.mark.parametrize("code", list(REFUSALS))
def test_refusal(tmp_path: Path, config: Config, code: str) -> None:
    decision = _decide(tmp_path, _with_not_shared(config), REFUSALS[code])
    assert decision.refusal is not None
    assert decision.refusal.code == code, decision.refusal.detail
    assert decision.refusal.detail.startswith(f"授权 t1 ({tmp_path / 't.yml'}:3)：")
    assert "\n" not in decision.refusal.detail


def test_refusal_details_name_the_thing(tmp_path: Path, config: Config) -> None:
    cases = {
        "unknown_department": "用数部门代码 340100BM999 不在部门注册表 (departments.yml) 中",
        "unknown_dataset": "数据集 persons 没有数据契约 (schemas/datasets、schemas/curated)，是否为 person",
        "not_shared": "数据集 secret_person (人口基础信息) 为不予共享，依据：测试依据",
        "unknown_column": "数据集 person (人口基础信息) 没有列 salary",
        "column_outside_grant": "deid 指定的列 mobile_phone 不在授权的 columns 中",
        "key_not_granted": "主键列 resident_id 未授权",
        "unknown_scenario": "免审即享场景 no_such_scenario 不存在 (scenarios.yml 有：loan_check)",
        "method_not_offered": "的共享方式为 file，不提供 database",
        "expired": "授权已于 2026-11-19 到期 (交付日 2026-11-20)",
        "missing_approver": "为有条件共享，需经审批 (或引用免审即享场景)：缺少 approver、approved_on",
        "missing_expiry": "审批须有有效期 (expires)",
        "missing_purpose": "授权了个人信息列 resident_id、person_name，须说明用途 (purpose)",
        "clear_not_allowed": "个人信息列 person_name 要求明文 (keep)",
        "key_masked": "主键列 resident_id 不能掩码 (mask)",
    }
    for code, text in cases.items():
        detail = _decide(tmp_path, _with_not_shared(config), REFUSALS[code]).refusal.detail  # type: ignore[union-attr]
        assert text in detail, (code, detail)


def test_refused_decision_still_says_what_would_have_gone(tmp_path: Path, config: Config) -> None:
    d = _decide(tmp_path, config, REFUSALS["expired"])
    assert (d.table, d.kind, d.keys) == ("std.person", "std", ["resident_id"])
    assert d.columns == {"resident_id": "pseudonym", "person_name": "mask", "residence_district_code": "keep"}
    unknown = _decide(tmp_path, config, REFUSALS["unknown_dataset"])
    assert (unknown.table, unknown.kind, unknown.columns) == (None, None, {})


def test_unconditional_personal_columns_default_to_mask_in_dataset_order(tmp_path: Path, config: Config) -> None:
    d = _decide(tmp_path, config, _grant(columns=["mobile_phone", "residence_district_code", "resident_id",
                                                  "birth_date"]))
    assert d.refusal is None
    assert list(d.columns.items()) == [("resident_id", "pseudonym"), ("birth_date", "mask"),
                                       ("residence_district_code", "keep"), ("mobile_phone", "mask")]
    assert d.elements == {"resident_id": "resident_id", "birth_date": "birth_date",
                          "residence_district_code": "residence_district_code", "mobile_phone": "mobile_phone"}


def test_non_personal_columns_need_no_purpose_and_may_be_pseudonymised(tmp_path: Path, config: Config) -> None:
    d = _decide(tmp_path, config, _grant(dataset="enterprise", columns=["uscc", "enterprise_name"], purpose=None,
                                         deid={"uscc": "pseudonym"}))
    assert d.refusal is None and d.columns == {"uscc": "pseudonym", "enterprise_name": "keep"}
    # a personal column in the same dataset needs the purpose
    d = _decide(tmp_path, config, _grant(dataset="enterprise", columns=["uscc", "legal_representative"],
                                         purpose=None, deid={}))
    assert d.refusal is not None and d.refusal.code == "missing_purpose"


def test_clear_personal_values_only_for_approved_verification(tmp_path: Path, config: Config) -> None:
    clear = {"resident_id": "keep", "person_name": "keep"}
    d = _decide(tmp_path, config, _grant(deid=clear, verification=True, **APPROVED))
    assert d.refusal is None and d.columns["person_name"] == "keep" and d.columns["resident_id"] == "keep"
    d = _decide(tmp_path, config, _grant(deid=clear, verification=True))
    assert d.refusal is not None and d.refusal.code == "missing_approver"
    assert "个人信息列 resident_id、person_name 以明文交付 (身份核验) 需要审批人" in d.refusal.detail
    # an approver alone is not an approval: it needs its date and an expiry
    d = _decide(tmp_path, config, _grant(deid=clear, verification=True, approver="公安局 审批"))
    assert d.refusal is not None and d.refusal.code == "missing_approver" and "缺少 approved_on" in d.refusal.detail
    d = _decide(tmp_path, config, _grant(deid=clear, verification=True, **{**APPROVED, "expires": None}))
    assert d.refusal is not None and d.refusal.code == "missing_expiry"


def test_mask_that_leaves_values_clear_is_recorded_as_keep(tmp_path: Path, config: Config) -> None:
    # sex_code is personal but a code list (its mask is the value); uscc is not personal
    d = _decide(tmp_path, config, _grant(columns=["resident_id", "sex_code", "person_name"],
                                         deid={"resident_id": "pseudonym", "sex_code": "mask"}))
    assert d.refusal is None, d.refusal
    assert list(d.columns.items()) == [("resident_id", "pseudonym"), ("person_name", "mask"), ("sex_code", "keep")]
    d = _decide(tmp_path, config, _grant(dataset="enterprise", columns=["uscc", "enterprise_name"], purpose=None,
                                         deid={"uscc": "mask"}))
    assert d.refusal is None and d.columns == {"uscc": "keep", "enterprise_name": "keep"}


def test_expired_by_today_even_for_an_earlier_delivery_day(tmp_path: Path, config: Config) -> None:
    entry = _grant(expires="2026-11-25")
    assert _decide(tmp_path, config, entry, on=DAY, today=date(2026, 11, 25)).refusal is None
    d = _decide(tmp_path, config, entry, on=DAY, today=date(2026, 11, 26))
    assert d.refusal is not None and d.refusal.code == "expired"
    assert "授权已于 2026-11-25 到期 (今天 2026-11-26" in d.refusal.detail
    # the default today is the real one (Asia/Shanghai): an expiry long past is refused for any delivery day
    settings = _settings(tmp_path)
    grants = load_grants(settings)
    past = grants.grants["t1"].model_copy(update={"expires": date(2020, 1, 1)})
    d = decide(past, config, load_departments(settings), grants, date(2019, 6, 1))
    assert d.refusal is not None and d.refusal.code == "expired"


def test_approval_after_the_delivery_day_is_not_yet_an_approval(tmp_path: Path, config: Config) -> None:
    # unconditional data too: clear values under an approval dated after the delivery day
    d = _decide(tmp_path, config, _grant(deid={"resident_id": "keep"}, verification=True,
                                         **{**APPROVED, "approved_on": "2026-11-21"}))
    assert d.refusal is not None and d.refusal.code == "missing_approver" and "晚于交付日" in d.refusal.detail


def test_conditional_dataset_needs_an_unexpired_approval(tmp_path: Path, config: Config) -> None:
    assert _decide(tmp_path, config, _grant(**INSURED, **APPROVED)).refusal is None
    d = _decide(tmp_path, config, _grant(**INSURED, **{**APPROVED, "approved_on": "2026-11-21"}))
    assert d.refusal is not None and d.refusal.code == "missing_approver" and "晚于交付日" in d.refusal.detail
    d = _decide(tmp_path, config, _grant(**INSURED, **APPROVED), on=date(2028, 1, 1))
    assert d.refusal is not None and d.refusal.code == "expired"


def test_scenario_shares_a_conditional_dataset_without_approver(tmp_path: Path, config: Config) -> None:
    d = _decide(tmp_path, config, _grant(**{**INSURED, "columns": ["resident_id", "insurance_type", "uscc"]},
                                         scenario="loan_check", purpose=None))
    assert d.refusal is None  # the scenario's purpose states the use
    assert d.columns == {"resident_id": "pseudonym", "uscc": "keep", "insurance_type": "keep"}
    d = _decide(tmp_path, config, _grant(**{**INSURED, "columns": ["resident_id", "insurance_type",
                                                                    "contribution_base"]}, scenario="loan_check"))
    assert d.refusal is not None and d.refusal.code == "column_outside_grant"
    assert "列 contribution_base 超出免审即享场景 loan_check (公积金贷款社保缴存核验) 的范围" in d.refusal.detail
    d = _decide(tmp_path, config, _grant(scenario="loan_check"))  # a scenario of another dataset
    assert d.refusal is not None and d.refusal.code == "unknown_scenario"
    assert "适用于数据集 insured，不适用于 person" in d.refusal.detail
    # a department the scenario's decision does not name may not cite it
    d = _decide(tmp_path, config, _grant(**INSURED, scenario="loan_check", consumer=GJJ))
    assert d.refusal is not None and d.refusal.code == "unknown_scenario"
    assert f"用数部门 {GJJ} 不在免审即享场景 loan_check" in d.refusal.detail and "不具备引用资格" in d.refusal.detail


def test_curated_dataset(tmp_path: Path, config: Config) -> None:
    d = _decide(tmp_path, config, _grant(dataset="golden_legal_person", columns=["uscc", "enterprise_name",
                                                                                 "legal_representative"], deid={}))
    assert d.refusal is None
    assert (d.table, d.kind, d.keys) == ("curated.golden_legal_person", "curated", ["uscc"])
    assert d.columns == {"uscc": "keep", "enterprise_name": "keep", "legal_representative": "mask"}
