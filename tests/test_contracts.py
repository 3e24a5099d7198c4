"""Dataset contracts load against the standards and registry; catalog rules are enforced with file and line."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from conftest import apply_edits

from pipelines.contracts import load_contracts
from pipelines.errors import ConfigError
from pipelines.registry import load_registry
from pipelines.settings import PROJECT_ROOT
from pipelines.standards import load_standards

SCHEMAS = PROJECT_ROOT / "schemas"


def _load(directory: Path):  # noqa: ANN202
    systems, _ = load_registry(SCHEMAS / "sources")
    return load_contracts(directory, load_standards(SCHEMAS / "standards"), systems)


def test_every_contract_loads_and_covers_every_registry_table() -> None:
    contracts = _load(SCHEMAS / "datasets")
    systems, _ = load_registry(SCHEMAS / "sources")
    covered = {(c.source["system"], c.source["table"]) for c in contracts.values()}
    assert covered == {(s.system, t.code) for s in systems.values() for t in s.all_tables}
    person = contracts["person"]
    assert person.raw_table == "raw.population__person" and person.std_table == "std.person"
    assert person.sharing.type == "无条件共享"  # Hefei: population base data is shared unconditionally
    assert contracts["insured"].sharing.type == "有条件共享" and contracts["insured"].sharing.condition


@pytest.mark.parametrize(("old", "new", "message"), [
    ("  condition: 用于社会保障待遇核验, 经人社部门审核, 快速响应\n", "", r"insured\.yml:\d+: sharing: .*state the sharing conditions"),
    ("element: insurance_type", "element: no_such_element", "unknown data element 'no_such_element'"),
    ("primary_key: [resident_id, insurance_type]", "primary_key: [nope]", "'nope' .* not one of the columns"),
])
def test_bad_contracts(tmp_path: Path, old: str, new: str, message: str) -> None:
    d = tmp_path / "datasets"
    shutil.copytree(SCHEMAS / "datasets", d)
    path = d / "insured.yml"
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        _load(d)


def test_base_resource_must_be_shared_unconditionally(tmp_path: Path) -> None:
    d = tmp_path / "datasets"
    shutil.copytree(SCHEMAS / "datasets", d)
    path = d / "enterprise.yml"
    text = path.read_text(encoding="utf-8").replace("type: 无条件共享", "type: 有条件共享").replace(
        "condition: 无条件", "condition: 审核后共享")
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"enterprise\.yml:\d+: .*法人单位 is a base resource"):
        _load(d)


# --- catalog block, defaults and overrides (issue 9) ------------------------------------------------

def _problems(directory: Path) -> list[str]:
    """The problems a contracts folder that must not load is refused with."""
    with pytest.raises(ConfigError) as info:
        _load(directory)
    return info.value.problems


def _edited(tmp_path: Path, dataset: str, *edits: tuple[str, str]) -> tuple[Path, list[int]]:
    """The project's contracts under tmp_path with ``edits`` applied to one; the line each edit starts on."""
    d = tmp_path / "datasets"
    shutil.copytree(SCHEMAS / "datasets", d)
    return d, apply_edits(d / f"{dataset}.yml", edits)


def test_resource_code_path_and_overrides_of_the_project_contracts() -> None:
    contracts = _load(SCHEMAS / "datasets")
    person = contracts["person"]
    assert person.resource_code == "101001/11340100003001113F-0001"
    assert person.catalog_path == "基础信息资源/人口/人口基本信息" and person.overrides == []
    assert contracts["bus_ridership"].resource_code == "209001002/11340100003004445F-0002"
    assert contracts["bus_ridership"].catalog_path == "主题信息资源/城乡建设/公共交通/公交客流"
    codes = [c.resource_code for c in contracts.values()]
    assert len(set(codes)) == len(codes)
    assert all(re.fullmatch(r"[1-3]\d{2}\d{3}(\d{3})?/[0-9A-HJ-NP-RTUW-Y]{18}-\d{4}", code) for code in codes), codes
    # std.enterprise carries legal_representative (个人信息 → grade 3) yet is graded 1 and opened: approved
    override, knock_on = contracts["enterprise"].overrides
    assert override["attribute"] == "classification.grade" and (override["value"], override["default"]) == (1, 3)
    assert "企业信息公示暂行条例" in override["reason"] and override["approved_by"]
    # 无条件开放 is grade 1's default, so no override of its own, but the catalog shows it moved with the grade
    # (grade 3 would give 有条件开放); sharing is fixed by the Hefei rule (法人单位), so it is no knock-on
    assert contracts["enterprise"].open.type == "无条件开放"
    assert {k: knock_on[k] for k in ("attribute", "value", "default")} == {
        "attribute": "open.type", "value": "无条件开放", "default": "有条件开放"}
    assert "随分级覆盖" in knock_on["reason"] and knock_on["approved_by"] == override["approved_by"]
    assert "classification.grade" not in knock_on["reason"] and "定级理由见本数据集「分级」" in knock_on["reason"]  # plain Chinese
    assert {d for d, c in contracts.items() if c.overrides} == {"enterprise", "credit_record", "bus_ridership"}
    # the demo's approvals are invented: they say so wherever they are shown
    assert all(o["approved_by"].startswith("示例 (演示数据, 未经实际审批)") for c in contracts.values() for o in c.overrides)


def test_duplicate_sequence_within_a_provider_names_both_files(tmp_path: Path) -> None:
    d, (line,) = _edited(tmp_path, "bus_route", ("  sequence: 1\n", "  sequence: 2\n"))
    with pytest.raises(ConfigError, match=rf"bus_route\.yml:{line}: catalog\.sequence: 2 is already used by "
                                          rf"bus_ridership \(.*bus_ridership\.yml:{line}\) of the same provider "
                                          r"11340100003004445F"):
        _load(d)


@pytest.mark.parametrize(("old", "new", "message"), [
    ('  item: "01"\n', '  item: "07"\n',
     r"catalog\.item: unknown 项 code '07' under 类 1 基础信息资源 \(have: 01 人口, 02 法人单位, "),
    ('  category: "001"\n', '  category: "009"\n', r"catalog\.category: unknown 目 code '009' under 项 101 人口"),
    ('  class: "1"\n', '  class: "4"\n', r"catalog\.class: unknown 类 code '4' \(have: 1 基础信息资源, 2 主题"),
    ('  item: "01"\n', "  item: 01\n", r"catalog\.item: quote the code"),
])
def test_unknown_classification_code(tmp_path: Path, old: str, new: str, message: str) -> None:
    d, (line,) = _edited(tmp_path, "person", (old, new))
    with pytest.raises(ConfigError, match=rf"person\.yml:{line}: {message}"):
        _load(d)


def test_resource_category_names_the_item(tmp_path: Path) -> None:
    d, (line,) = _edited(tmp_path, "air_quality_hourly", ("resource_category: 生态环保", "resource_category: 生态环境"))
    with pytest.raises(ConfigError, match=rf"air_quality_hourly\.yml:{line}: resource_category: '生态环境' is not the "
                                          r"项 of catalog 211001001 .*; write resource_category: 生态环保"):
        _load(d)


def test_departure_without_override_names_the_default(tmp_path: Path) -> None:
    d, (line, _) = _edited(tmp_path, "enterprise", ("  grade: 1\n", "  grade: 1\n"),  # kept: its line wanted
                           ("  override:\n    reason:", "  # override:\n  # reason:"))
    text = (d / "enterprise.yml").read_text(encoding="utf-8")
    (d / "enterprise.yml").write_text(text.replace("    approved_by:", "  # approved_by:"), encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"enterprise\.yml:{line}: classification\.grade: 1 departs from its "
                                          r"default 3 \(its most sensitive column legal_representative is 个人信息\); "
                                          r"use 3 or give classification\.override"):
        _load(d)

    # sharing: grade 1 defaults to 无条件共享; a condition needs an approved reason
    d2, (line,) = _edited(tmp_path / "b", "air_quality_hourly",
                          ("  type: 无条件共享\n  condition: 无条件\n", "  type: 有条件共享\n  condition: 经审核后共享\n"))
    with pytest.raises(ConfigError, match=rf"air_quality_hourly\.yml:{line}: sharing\.type: 有条件共享 departs from its "
                                          r"default 无条件共享 \(grade 1: STANDARDS\.md grade table\)"):
        _load(d2)


def test_override_present_loads_and_is_listed(tmp_path: Path) -> None:
    d, _ = _edited(tmp_path, "air_quality_hourly", (
        "  type: 无条件共享\n  condition: 无条件\n",
        "  type: 有条件共享\n  condition: 经审核后共享\n  override: {reason: 站点原始数据待质控后方可无条件共享, "
        "approved_by: 合肥市生态环境局}\n"))
    overrides = _load(d)["air_quality_hourly"].overrides
    assert overrides == [{"attribute": "sharing.type", "value": "有条件共享", "default": "无条件共享",
                          "reason": "站点原始数据待质控后方可无条件共享", "approved_by": "合肥市生态环境局"}]


def test_rules_are_not_lifted_by_an_override_and_idle_overrides_fail(tmp_path: Path) -> None:
    d, (line,) = _edited(tmp_path, "person", (
        "open: {type: 不予开放}",
        "open: {type: 有条件开放, condition: 脱敏后开放, override: {reason: 试点开放, approved_by: 某局}}"))
    with pytest.raises(ConfigError, match=rf"person\.yml:{line}: open\.type: 有条件开放 breaks a rule: 一般数据 grade 4 "
                                          r"is 不予开放 \(default 不予开放; a rule is not lifted by an override\)"):
        _load(d)
    d2, (line,) = _edited(tmp_path / "b", "poi", (
        "open: {type: 无条件开放}", "open: {type: 无条件开放, override: {reason: 无需说明的例外, approved_by: 某局}}"))
    with pytest.raises(ConfigError, match=rf"poi\.yml:{line}: open\.override: nothing departs from its default"):
        _load(d2)


ESCALATE = ("classification: {level: 一般数据, grade: 4}",
            "classification: {level: 重要数据, override: {reason: 汇聚后涉及重要数据, approved_by: 某局}}")


@pytest.mark.parametrize("level", ["核心数据", "重要数据"])
def test_core_and_important_data_are_neither_shared_nor_opened(tmp_path: Path, level: str) -> None:
    """No Hefei sharing rule names 生态环保: 核心/重要数据 is 不予共享 and 不予开放, whatever the tier said."""
    escalate = ("classification: {level: 一般数据, grade: 1}",
                f"classification: {{level: {level}, override: {{reason: 监测站点布设属重要数据, approved_by: 某局}}}}")
    d, (_, sharing, opening) = _edited(tmp_path, "air_quality_hourly", escalate,  # values kept: lines wanted
                                       ("  type: 无条件共享\n", "  type: 无条件共享\n"),
                                       ("open: {type: 无条件开放}", "open: {type: 无条件开放}"))
    problems = _problems(d)
    path = d / "air_quality_hourly.yml"
    assert problems == [
        f"{path}:{sharing}: sharing.type: 无条件共享 breaks a rule: {level} is 不予共享 (STANDARDS.md; no Hefei sharing "
        f"rule names 生态环保) (default 不予共享; a rule is not lifted by an override)",
        f"{path}:{opening}: open.type: 无条件开放 breaks a rule: {level} is 不予开放 (STANDARDS.md) (default 不予开放; a "
        "rule is not lifted by an override)"]
    d2, _ = _edited(tmp_path / "b", "air_quality_hourly", escalate,
                    ("  type: 无条件共享\n  condition: 无条件\n", "  type: 不予共享\n  basis: 《数据安全法》第二十一条\n"),
                    ("open: {type: 无条件开放}", "open: {type: 不予开放}"))
    (override,) = _load(d2)["air_quality_hourly"].overrides  # the rules' values need no override of their own
    assert (override["attribute"], override["value"], override["default"]) == ("classification.level", level, "一般数据")


def test_hefei_sharing_rules_win_over_an_escalated_classification(tmp_path: Path) -> None:
    """重要数据 does not lift Hefei's rules: 人口 stays 无条件共享, 社会保障 有条件共享 (and neither is opened)."""
    d, (_, line) = _edited(tmp_path, "person", ESCALATE, (
        "  type: 无条件共享\n  condition: 无条件\n", "  type: 不予共享\n  basis: 《数据安全法》第二十一条\n"))
    with pytest.raises(ConfigError, match=rf"person\.yml:{line}: sharing\.type: 不予共享 breaks a rule: 人口 is a base "
                                          r"resource: Hefei shares it 无条件共享 whatever its level or grade"):
        _load(d)
    d2, _ = _edited(tmp_path / "b", "person", ESCALATE)
    person = _load(d2)["person"]
    assert (person.sharing.type, person.open.type) == ("无条件共享", "不予开放")
    assert [o["attribute"] for o in person.overrides] == ["classification.level"]

    d3, (_, line) = _edited(tmp_path / "c", "insured", ESCALATE, (
        "  type: 有条件共享\n  condition: 用于社会保障待遇核验, 经人社部门审核, 快速响应\n",
        "  type: 不予共享\n  basis: 《数据安全法》第二十一条\n"))
    with pytest.raises(ConfigError, match=rf"insured\.yml:{line}: sharing\.type: 不予共享 breaks a rule: 社会保障: Hefei "
                                          r"shares it 有条件共享 \(with fast response\) whatever its level or grade"):
        _load(d3)
    d4, _ = _edited(tmp_path / "d", "insured", ESCALATE)
    assert _load(d4)["insured"].sharing.type == "有条件共享"


def test_social_security_is_shared_conditionally(tmp_path: Path) -> None:
    d, (line,) = _edited(tmp_path, "housing_fund_account", (
        "  type: 有条件共享\n  condition: 用于住房保障与贷款审核, 经公积金中心审核, 快速响应\n",
        "  type: 无条件共享\n  condition: 无条件\n  override: {reason: 公积金中心同意无条件共享, approved_by: 某局}\n"))
    problems = _problems(d)
    path = d / "housing_fund_account.yml"
    assert problems == [
        f"{path}:{line}: sharing.type: 无条件共享 breaks a rule: 社会保障: Hefei shares it 有条件共享 (with fast response) "
        "whatever its level or grade (default 有条件共享; a rule is not lifted by an override)",
        f"{path}:{line + 2}: sharing.override: sharing.type is fixed by a rule (社会保障: Hefei shares it 有条件共享 "
        "(with fast response) whatever its level or grade) and an override cannot lift it; remove the override (it "
        "records a departure)"]


def test_idle_override_on_a_rule_bound_attribute_fails(tmp_path: Path) -> None:
    """An override beside a value a rule fixes records nothing: it is an error like any idle override."""
    d, (line,) = _edited(tmp_path, "person", (
        "  methods: [database, file, service]\n",
        "  methods: [database, file, service]\n  override: {reason: 人口数据无条件共享, approved_by: 某局}\n"))
    assert _problems(d) == [
        f"{d / 'person.yml'}:{line + 1}: sharing.override: sharing.type is fixed by a rule (人口 is a base resource: "
        "Hefei shares it 无条件共享 whatever its level or grade) and an override cannot lift it; remove the override "
        "(it records a departure)"]


def test_a_sensitive_column_keeps_data_closed_under_a_lower_grade(tmp_path: Path) -> None:
    """A grade override moves the sharing/open defaults, but data with a 敏感个人信息 column stays 不予开放."""
    lower = ("classification: {level: 一般数据, grade: 4}",
             "classification: {level: 一般数据, grade: 3, override: {reason: 仅供内部统计使用, approved_by: 某局}}")
    d, (_, line) = _edited(tmp_path, "insured", lower, ("open: {type: 不予开放}", "open: {type: 有条件开放, condition: 脱敏后}"))
    with pytest.raises(ConfigError, match=rf"insured\.yml:{line}: open\.type: 有条件开放 breaks a rule: its most "
                                          r"sensitive column resident_id is 敏感个人信息 \(grade 4\): 不予开放 whatever "
                                          r"the declared grade"):
        _load(d)
    d2, _ = _edited(tmp_path / "b", "insured", lower)
    assert [o["attribute"] for o in _load(d2)["insured"].overrides] == ["classification.grade"]


def test_owner_is_the_source_systems_department(tmp_path: Path) -> None:
    """The 提供方 in the resource code, the held-batch alerts and the rejected-file alerts is one department."""
    d, (line,) = _edited(tmp_path, "poi", ('owner: "11340100003007777F"  # 合肥市自然资源和规划局',
                                           'owner: "11340100003009991Q"  # 合肥市数据资源局'))
    assert _problems(d) == [
        f"{d / 'poi.yml'}:{line}: owner: 11340100003009991Q (合肥市数据资源局) is not the department of its source system "
        "poi, 11340100003007777F (合肥市自然资源和规划局); the 提供方 is the source system's department: write owner: "
        "\"11340100003007777F\" or fix the system's registry file"]


def test_unquoted_numeric_owner_says_quote_it(tmp_path: Path) -> None:
    d, (line,) = _edited(tmp_path, "enterprise", ('owner: "113401000030022204"', "owner: 113401000030022204"))
    assert _problems(d) == [f"{d / 'enterprise.yml'}:{line}: owner: quote the code: YAML reads "
                                   '113401000030022204 as a number (write owner: "113401000030022204")']


def test_classification_code_list_checks_its_rows(tmp_path: Path) -> None:
    from pipelines.resource_classification import load_resource_classification

    path = tmp_path / "resource_classification.csv"
    path.write_text("code,name,level,parent,note\n1,基础信息资源,类,,\n101,人口,项,1,\n1010,x,目,101,\n"
                    "102001,法人单位基本信息,目,102,\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_resource_classification(path)
    assert info.value.problems == [
        f"{path}:4: code '1010': a 目 code has 6 digits (类 1 + 项 2 + 目 3 + 细目 3, cumulative)",
        f"{path}:5: code 102001: parent must be 102, listed above it"]
