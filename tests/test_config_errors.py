"""Config that would silently do nothing is an error naming its file and line (issue 8, item 6).

References the YAML alone resolves (system, table, element, code list) fail when the config loads;
columns, which only the source knows, fail at ingest (against the source) and at publish (against the
raw schema). Every problem of a load is listed, one line each.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from conftest import TEST_DEPARTMENT

from pipelines.contracts import load_contracts
from pipelines.departments import check_department, department_name, load_departments
from pipelines.errors import ConfigError
from pipelines.ingest import ingest_table
from pipelines.lake.catalog import get_catalog
from pipelines.lake.raw import open_table
from pipelines.quality.gate import run_quality
from pipelines.registry import get_system, load_registry
from pipelines.settings import PROJECT_ROOT, Settings, load_settings
from pipelines.standards import load_standards

SCHEMAS = PROJECT_ROOT / "schemas"


def _edit(path: Path, old: str, new: str) -> int:
    """Replace ``old`` once; return the 1-based line the replacement starts on."""
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, old
    path.write_text(text.replace(old, new), encoding="utf-8")
    return text[: text.index(old)].count("\n") + 1 + old[: len(old) - len(old.lstrip("\n"))].count("\n")


def _schemas(tmp_path: Path) -> Path:
    target = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, target)
    return target


def _load_all(schemas: Path) -> None:
    systems, errors = load_registry(schemas / "sources")
    assert not errors
    standards = load_standards(schemas / "standards", systems)
    load_contracts(schemas / "datasets", standards, systems)


# --- at load: references the YAML resolves --------------------------------------------------------

@pytest.mark.parametrize(("file", "old", "new", "message"), [
    ("datasets/insured.yml", "element: insurance_type,", "element: insurance_kind,",
     r"insured\.yml:{line}: columns\.3\.element: unknown data element 'insurance_kind'"),
    ("datasets/insured.yml", "source: {system: social_insurance, table: insured}",
     "source: {system: social_insurence, table: insured}",
     r"insured\.yml:{line}: source: source system 'social_insurence' is not in the registry"),
    ("datasets/insured.yml", "source: {system: social_insurance, table: insured}",
     "source: {system: social_insurance, table: insureds}",
     r"insured\.yml:{line}: source: system social_insurance has no table 'insureds'"),
    ("standards/elements.yml", "    code_list: sex\n", "    code_list: gender\n",
     r"elements\.yml:{line}: elements\.2\.code_list: element sex_code \(性别代码\): unknown code list 'gender'"),
    ("standards/elements.yml", "    - {system: social_insurance, table: insured, column: resident_id}\n",
     "    - {system: social_insurance, table: insurd, column: resident_id}\n",
     r"elements\.yml:{line}: elements\.0\.copies\.0: system social_insurance has no table 'insurd'"),
    ("standards/elements.yml", "    - {system: population, table: person, column: resident_id}\n",
     "    - {system: populaton, table: person, column: resident_id}\n",
     r"elements\.yml:{line}: elements\.0\.authoritative\.0: system 'populaton' is not in the registry"),
])
def test_unknown_reference_fails_at_load_with_file_and_line(tmp_path: Path, file: str, old: str, new: str,
                                                             message: str) -> None:
    schemas = _schemas(tmp_path)
    line = _edit(schemas / file, old, new)
    with pytest.raises(ConfigError, match=message.format(line=line)):
        _load_all(schemas)


def test_unknown_department_code_fails_with_file_and_line(tmp_path: Path) -> None:
    """Registry files and contracts name their department by a code of schemas/departments.yml."""
    schemas = _schemas(tmp_path)
    registry = schemas / "sources" / "population.yml"
    line = _edit(registry, 'department: "11340100003001113F"', "department: 市公安局")
    systems, errors = load_registry(schemas / "sources")
    assert "population" not in systems and set(errors) == {registry}
    (problem,) = errors[registry].problems
    # the registry file and the near matches, never the whole list (a city has a hundred departments);
    # an old free-text name points at its code
    assert problem == (f"{registry}:{line}: department: unknown department code '市公安局' (not in "
                       f"{SCHEMAS / 'departments.yml'}); did you mean '11340100003001113F' (合肥市公安局)?")

    _edit(registry, "department: 市公安局", 'department: "11340100003001113F"')
    contract = schemas / "datasets" / "person.yml"
    line = _edit(contract, 'owner: "11340100003001113F"', 'owner: "11340100003001113X"')
    with pytest.raises(ConfigError, match=rf"person\.yml:{line}: owner: unknown department code "
                                          r"'11340100003001113X' \(not in .*departments\.yml\); did you mean "
                                          r"'11340100003001113F' \(合肥市公安局\)\?"):
        _load_all(schemas)
    # nothing near: the file to add it to, and no list
    departments = load_departments(schemas / "departments.yml")
    with pytest.raises(ValueError, match=r"^unknown department code 'ZZZ' \(not in .*departments\.yml\); add the "
                                         r"department there first, or use one of its codes$"):
        check_department("ZZZ", departments)


def test_unquoted_numeric_department_code_says_quote_it(tmp_path: Path) -> None:
    """YAML reads an all-digit 统一社会信用代码 as a number: say so, not "Input should be a valid string"."""
    schemas = _schemas(tmp_path)
    registry = schemas / "sources" / "enterprise.yml"
    line = _edit(registry, 'department: "113401000030022204"', "department: 113401000030022204")
    _systems, errors = load_registry(schemas / "sources")
    assert errors[registry].problems == [f"{registry}:{line}: department: quote the code: YAML reads "
                                         '113401000030022204 as a number (write department: "113401000030022204")']


def test_department_registry_checks_codes_with_line(tmp_path: Path) -> None:
    path = tmp_path / "departments.yml"
    text = (SCHEMAS / "departments.yml").read_text(encoding="utf-8")
    path.write_text(text, encoding="utf-8")
    departments = load_departments(path)
    assert department_name(departments, "11340100003001113F") == "合肥市公安局"
    assert department_name(departments, "市公安局") == "市公安局"  # old meta rows hold names
    assert department_name(departments, None) == "未指定部门"
    assert departments[TEST_DEPARTMENT].name == "合肥市数据资源局"
    assert departments.file == path  # what an unknown code's error names

    line = _edit(path, '"11340100003003338T"', '"11340100003003338U"')  # wrong check char
    with pytest.raises(ConfigError, match=rf"departments\.yml:{line}: departments\.2\.code: department code "
                                          r"'11340100003003338U': the check character 'U' does not match"):
        load_departments(path)
    _edit(path, '"11340100003003338U"', '"11340100003001113F"')  # a code listed twice
    with pytest.raises(ConfigError, match=rf"departments\.yml:{line}: departments\.2\.code: department code "
                                          r"'11340100003001113F' is listed twice"):
        load_departments(path)
    _edit(path, '"11340100003001113F"\n    name: 合肥市生态环境局', '"3401BM1"\n    name: 合肥市生态环境局')
    with pytest.raises(ConfigError, match=rf"departments\.yml:{line}: departments\.2\.code: department code "
                                          r"'3401BM1' is neither a 统一社会信用代码 .* nor a 部门编码"):
        load_departments(path)


def test_broken_department_registry_fails_every_registry_file(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The registry never loads with its departments unchecked."""
    schemas = _schemas(tmp_path)
    monkeypatch.setenv("CITYLAKE_ROOT", str(tmp_path))
    line = _edit(schemas / "departments.yml", "email: ga.data@hefei.example.org", "email: ga.data")
    systems, errors = load_registry(schemas / "sources")
    assert not systems and len(errors) == len(list((schemas / "sources").glob("*.yml")))
    assert all(str(e) == f"{schemas / 'departments.yml'}:{line}: departments.0.contact.email: value is not a "
               "valid email address: An email address must have an @-sign." for e in errors.values())


def test_source_name_the_registry_renames_fails_at_load(tmp_path: Path) -> None:
    schemas = _schemas(tmp_path)
    _edit(schemas / "sources" / "poi.yml", "名称: name", "title: name")
    line = _edit(schemas / "datasets" / "poi.yml", "source: name,", "source: title,")
    with pytest.raises(ConfigError, match=rf"poi\.yml:{line}: columns\.1\.source: column poi_name: source "
                                          r"'title' is renamed by the registry; the raw column is 'name'"):
        _load_all(schemas)


def test_element_column_no_contract_maps_fails_at_load(tmp_path: Path) -> None:
    """A typo in an element's copy column: the item would never reach std, and consistency could not compare it."""
    schemas = _schemas(tmp_path)
    line = _edit(schemas / "standards" / "elements.yml", "    - {system: housing_fund, table: account, column: name}\n",
                 "    - {system: housing_fund, table: account, column: nam}\n")
    with pytest.raises(ConfigError, match=rf"elements\.yml:{line}: elements\.1\.copies\.1: element person_name: "
                                          r"column 'nam' is no column source of contract housing_fund_account "
                                          r"\(.*housing_fund_account\.yml:\d+ maps it from 'name'\)"):
        _load_all(schemas)


def test_every_problem_of_a_file_is_listed(tmp_path: Path) -> None:
    schemas = _schemas(tmp_path)
    contract = schemas / "datasets" / "insured.yml"
    owner = _edit(contract, "owner: \"113401000030088844\"  # 合肥市人力资源和社会保障局\n", "")
    cycle = _edit(contract, "update_cycle: 每日", "update_cycle: 每天")
    element = _edit(contract, "element: insurance_type,", "element: insurance_kind,")
    with pytest.raises(ConfigError) as info:
        _load_all(schemas)
    problems = info.value.problems
    assert len(problems) == 3 and "more)" not in str(info.value), problems
    assert any(p.startswith(f"{contract}:") and p.endswith(": owner: required field is missing") for p in problems)
    assert any(p.startswith(f"{contract}:{cycle}: update_cycle: ") for p in problems)
    assert any(p.startswith(f"{contract}:{element}: columns.3.element: unknown data element") for p in problems)
    assert owner < cycle
    assert str(info.value).count("\n") == 2  # one line each

    # elements.yml: a structural error and two wrong references in one pass
    elements = schemas / "standards" / "elements.yml"
    _edit(elements, "    name_en: sex code\n", "")
    listed = _edit(elements, "    code_list: sex\n", "    code_list: gender\n")
    copy = _edit(elements, "    - {system: housing_fund, table: account, column: resident_id}\n",
                 "    - {system: housing_funds, table: account, column: resident_id}\n")
    systems, _ = load_registry(schemas / "sources")
    with pytest.raises(ConfigError) as info:
        load_standards(schemas / "standards", systems)
    problems = info.value.problems
    assert len(problems) == 3, problems
    assert any("elements.2.name_en: required field is missing" in p for p in problems)
    assert any(p.startswith(f"{elements}:{listed}: elements.2.code_list:") for p in problems)
    assert any(p.startswith(f"{elements}:{copy}: elements.0.copies.1: system 'housing_funds'") for p in problems)


# --- at ingest and at publish: columns only the source knows ---------------------------------------

@pytest.fixture
def small_city(lake_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The project's schemas under a scratch root, and a three-person population source."""
    root = tmp_path / "root"
    shutil.copytree(SCHEMAS, root / "schemas")
    shutil.copytree(PROJECT_ROOT / "expectations", root / "expectations")
    monkeypatch.setenv("CITYLAKE_ROOT", str(root))
    monkeypatch.setenv("CITYLAKE_REGISTRY_DIR", str(root / "schemas" / "sources"))
    settings = load_settings()
    (settings.data_dir / "sources").mkdir(parents=True)
    con = sqlite3.connect(settings.data_dir / "sources" / "population.db")
    con.execute("CREATE TABLE person (resident_id TEXT, name TEXT, sex TEXT, birth_date DATE, district_code TEXT, "
                "address TEXT, phone TEXT, updated_at DATETIME)")
    con.executemany("INSERT INTO person VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
        ("34010419900307123X", "张三", "1", "1990-03-07", "340104", "合肥市蜀山区", "13800000000", "2026-11-19 10:00:00"),
        ("340104199104151247", "李四", "2", "1991-04-15", "340104", "合肥市蜀山区", "13900000000", "2026-11-19 11:00:00"),
        ("340111198512240018", "王五", "1", "1985-12-24", "340111", "合肥市包河区", None, "2026-11-19 12:00:00")])
    con.commit()
    con.close()
    return settings


def test_missing_source_column_fails_at_load_ingest_and_publish(small_city: Settings) -> None:
    schemas = small_city.root / "schemas"
    contract, elements = schemas / "datasets" / "person.yml", schemas / "standards" / "elements.yml"
    line = _edit(contract, "source: phone,", "source: phon,")
    expected = (rf"{contract}:{line}: columns\.6\.source: column mobile_phone: source column 'phon' is not in "
                r"{where} \(did you mean 'phone'\?\)")
    population = get_system(small_city.registry_dir, "population")
    catalog = get_catalog(small_city)

    # the element still names population.person.phone: the contract disagrees with it, found at load
    with pytest.raises(ConfigError, match=rf"elements\.yml:\d+: elements\.6\.authoritative\.0: element "
                                          rf"mobile_phone: column 'phone' .*{contract}:{line} maps it from 'phon'"):
        _load_all(schemas)
    # ingest reads the source: the column is not there, nothing is written
    with pytest.raises(ConfigError, match=expected.format(where="system population, table person")):
        ingest_table(population, "person", settings=small_city, batch_id="b1")
    assert open_table(catalog, "raw.population__person") is None

    _edit(contract, "source: phon,", "source: phone,")
    assert ingest_table(population, "person", settings=small_city, batch_id="b1").rows_written == 3
    # the same typo in the contract and the element: the YAML agrees with itself, only the raw schema tells
    _edit(contract, "source: phone,", "source: phon,")
    _edit(elements, "{system: population, table: person, column: phone}", "{system: population, table: person, column: phon}")
    with pytest.raises(ConfigError, match=expected.format(where=r"raw\.population__person")):
        run_quality("person", settings=small_city)
    assert open_table(catalog, "std.person") is None and open_table(catalog, "meta.batches") is None


def test_an_impossible_date_names_its_file_and_line(tmp_path: Path) -> None:
    """YAML reads 2026-02-30 as a date and the calendar refuses it with a bare ValueError: every loader must
    still get a one-line ConfigError naming the file and the line."""
    from pipelines.registry import load_yaml

    bad = tmp_path / "x.yml"
    bad.write_text("dataset: x\ncolumns:\n  - name: a\n    since: 2026-02-30\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_yaml(bad)
    assert str(err.value).startswith(f"{bad}:4: '2026-02-30': invalid date")
