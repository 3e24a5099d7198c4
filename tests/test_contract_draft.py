"""`citylake contract new`: a contract drafted from a raw table a new system landed, with TODOs that fail
validation (one problem per TODO, with file and line) until a person fills them in."""

from __future__ import annotations

import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from pipelines.catalog.draft import Guess, _name_matches, _target, draft, draft_contract
from pipelines.config import load_config
from pipelines.errors import CitylakeError, ConfigError
from pipelines.ingest import ingest_table
from pipelines.registry import get_system
from pipelines.seed.ids import resident_id
from pipelines.settings import PROJECT_ROOT, Settings, load_settings
from pipelines.standards import load_standards

ROWS = 1500  # more than the draft samples: it must not need the whole table
DISTRICTS = ["340102", "340103", "340104", "340111", "340121"]

HR = """\
system: hr
name: 人事管理系统
department: {department}
connection: src_hr
default_url: sqlite:///{{data_dir}}/sources/hr.db
tables:
  - code: staff
    source: 员工
    primary_key: [sfzh]
    cursor: gxsj
    columns: {{联系电话: lxdh}}
  - code: leave
    source: 请假
    primary_key: [id]
"""


def _people(n: int) -> list[tuple[object, ...]]:
    rng = random.Random(9)
    rows = []
    for i in range(n):
        birth = date(1960, 1, 1) + timedelta(days=rng.randrange(16000))
        seq = rng.randrange(1, 999)
        sex = "1" if seq % 2 else "2"
        rows.append((resident_id(rng.choice(DISTRICTS), birth, seq), rng.choice("张王李赵刘陈杨") + rng.choice(["伟", "芳", "静", "磊"]),
                     sex, birth.isoformat(), f"1{rng.choice('3589')}{rng.randrange(10**9):09d}", rng.choice(DISTRICTS),
                     f"2015-0{1 + i % 9}-01", f"备注{i}", f"2026-11-{1 + i % 20:02d} 09:00:00"))
    return rows


def _hr_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The project's schemas under a scratch root (the environment points at it) plus the system `hr`."""
    root = tmp_path / "root"
    shutil.copytree(PROJECT_ROOT / "schemas", root / "schemas")
    monkeypatch.setenv("CITYLAKE_ROOT", str(root))
    monkeypatch.setenv("CITYLAKE_REGISTRY_DIR", str(root / "schemas" / "sources"))
    settings = load_settings()
    # the department of an existing system: a valid department (code) whatever the registry holds
    department = yaml.safe_load((root / "schemas" / "sources" / "population.yml").read_text(encoding="utf-8"))["department"]
    (settings.registry_dir / "hr.yml").write_text(HR.format(department=f'"{department}"'), encoding="utf-8")
    return settings


@pytest.fixture
def hr_lake(lake_settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The project's schemas under a scratch root, plus a new system `hr` whose staff table is in raw."""
    settings = _hr_root(tmp_path, monkeypatch)
    (settings.data_dir / "sources").mkdir(parents=True)
    con = sqlite3.connect(settings.data_dir / "sources" / "hr.db")
    con.execute('CREATE TABLE "员工" (sfzh TEXT, xm TEXT, xb TEXT, csrq TEXT, "联系电话" TEXT, ssqx TEXT, rzrq DATE, '
                'bz TEXT, gxsj DATETIME)')
    con.executemany('INSERT INTO "员工" VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)', _people(ROWS))
    con.execute('CREATE TABLE "请假" (id INTEGER, days INTEGER)')
    con.commit()
    con.close()
    assert ingest_table(get_system(settings.registry_dir, "hr"), "staff", settings=settings,
                        batch_id="b1").rows_written == ROWS
    return settings


def _column(text: str, source: str) -> tuple[str, str]:
    """(the column's flow mapping, the comment line above it) of the column built from ``source``."""
    lines = text.splitlines()
    i = next(i for i, line in enumerate(lines) if re.search(rf"source: {source}[,}}]", line))
    return lines[i], lines[i - 1]


FILL = {("", "resource_category"): "社会保障", ("", "update_cycle"): "每日",
        ("catalog", "class"): '"2"', ("catalog", "item"): '"03"', ("catalog", "category"): '"001"',  # 社会保险
        ("classification", "level"): "一般数据", ("classification", "grade"): "4",
        ("sharing", "type"): "有条件共享", ("sharing", "condition"): "用于人事核验, 经人社部门审核",
        ("sharing", "methods"): "[service]", ("open", "type"): "不予开放"}


def _fill(text: str) -> str:
    """What a person does: decide every TODO (the draft's suggestions), drop two columns, element the cursor."""
    out, section = [], ""
    for line in text.splitlines():
        m = re.match(r"^(\s*)([a-z_]+): (TODO|\[TODO\])", line)
        if not line.startswith((" ", "#")):
            section = line[:-1] if line.endswith(":") else ""
        if m:
            key = m.group(2)
            if (section, key) == ("open", "condition"):
                continue
            suggested = re.search(r"建议 (\d+)", line)
            value = suggested.group(1) if key == "sequence" and suggested else FILL[(section, key)]
            line = f"{m.group(1)}{key}: {value}"
        elif "element: TODO" in line:
            if "source: gxsj" not in line:
                continue  # leave bz and rzrq out of std
            line = line.replace("element: TODO", "element: person_updated_at").split("  # TODO")[0]
        out.append(line)
    return "\n".join(out) + "\n"


def test_draft_proposes_elements_leaves_todos_that_fail_then_load(hr_lake: Settings) -> None:
    path, text = draft_contract(hr_lake, "hr", "staff")
    assert path == hr_lake.root / "schemas" / "datasets" / "staff.yml" and path.read_text(encoding="utf-8") == text
    parsed = yaml.safe_load(text)
    assert parsed["source"] == {"system": "hr", "table": "staff"} and parsed["dataset"] == "staff"
    assert parsed["owner"] == yaml.safe_load((hr_lake.registry_dir / "hr.yml").read_text(encoding="utf-8"))["department"]
    assert parsed["primary_key"] == ["resident_id"] and parsed["cursor"] == "gxsj"
    elements = {c["source"]: c["element"] for c in parsed["columns"]}
    # unfamiliar names, recognised by their values (and the row's resident ID for sex and birth date)
    assert elements == {"sfzh": "resident_id", "xm": "person_name", "xb": "sex_code", "csrq": "birth_date",
                        "lxdh": "mobile_phone", "ssqx": "residence_district_code", "rzrq": "TODO", "bz": "TODO",
                        "gxsj": "TODO"}
    line, reason = _column(text, "sfzh")
    assert "required: true" in line and re.search(r"# sfzh: 按取值识别: 100% 为有效身份证号 .*抽样 1,000 个非空值", reason)
    assert "100% 与同行身份证号中的出生日期一致" in _column(text, "csrq")[1]
    assert "为手机号码" in _column(text, "lxdh")[1] and "lxdh (联系电话)" in _column(text, "lxdh")[1]
    assert "GB/T 2260" in _column(text, "ssqx")[1] and "enterprise_district_code" in _column(text, "ssqx")[1]
    assert "未识别" in _column(text, "bz")[1] and "取值为日期" in _column(text, "rzrq")[1]
    assert "建议 一般数据, grade 4: 最敏感的列 sfzh (敏感个人信息)" in text and "建议 有条件共享" in text
    assert "建议 不予开放" in text and "'0 2 * * *' 建议 每日" in text
    people = _people(ROWS)
    assert not any(v in text for row in people[:50] for v in (row[0], row[4]))  # no sampled value is written

    # every TODO is its own problem, naming the file and the marker's line; nothing else is wrong
    todo_lines = [n for n, line in enumerate(text.splitlines(), 1) if re.search(r": (TODO|\[TODO\])|element: TODO", line)]
    with pytest.raises(ConfigError) as info:
        load_config(hr_lake)
    problems = info.value.problems
    assert [int(p.removeprefix(f"{path}:").split(":")[0]) for p in problems] == todo_lines, problems
    assert all("still TODO — " in p for p in problems)
    assert any(re.search(r": sharing\.type: still TODO — decide 无条件共享/有条件共享/不予共享 \(STANDARDS\.md", p)
               for p in problems)
    assert any(re.search(r": columns\.\d\.element: still TODO — choose a data element", p) for p in problems)
    assert not any("unknown data element" in p or "Input should be" in p for p in problems)  # the marker's own words

    path.write_text(_fill(text), encoding="utf-8")
    contract = load_config(hr_lake)[2]["staff"]
    assert [c.source for c in contract.columns] == ["sfzh", "xm", "xb", "csrq", "lxdh", "ssqx", "gxsj"]
    assert contract.classification.grade == 4 and contract.sharing.type == "有条件共享"
    # the suggested 顺序码 is the provider's next free one: population's department already has person's 1
    assert contract.catalog.sequence == 2 and contract.resource_code == f"203001/{contract.owner}-0002"
    assert contract.catalog_path == "主题信息资源/社会保障/社会保险" and contract.overrides == []


def test_refuses_to_overwrite_and_names_what_to_load_first(hr_lake: Settings) -> None:
    path, first = draft_contract(hr_lake, "hr", "staff")
    path.write_text(first + "# edited by a person\n", encoding="utf-8")
    with pytest.raises(CitylakeError, match=rf"{re.escape(str(path))} already exists .*--force"):
        draft_contract(hr_lake, "hr", "staff")
    assert path.read_text(encoding="utf-8").endswith("# edited by a person\n")
    assert draft_contract(hr_lake, "hr", "staff", force=True)[1] == first  # redrafted on request
    with pytest.raises(CitylakeError, match=r"raw\.hr__leave is not in the lake yet: .*`citylake ingest hr --table leave`"):
        draft_contract(hr_lake, "hr", "leave")
    # loaded but empty: a draft from the schema and the names alone
    ingest_table(get_system(hr_lake.registry_dir, "hr"), "leave", settings=hr_lake, batch_id="b2")
    empty = draft(hr_lake, "hr", "leave", write=False)
    assert not empty.path.exists() and "first 0 live rows" in empty.text and "抽样中全为空值" in empty.text
    assert yaml.safe_load(empty.text)["primary_key"] == ["id"]
    with pytest.raises(ConfigError, match=r"system hr has no table 'nosuch' .*`citylake ingest hr --table nosuch`"):
        draft_contract(hr_lake, "hr", "nosuch")
    # a table code another system's contract already uses: the dataset is <system>_<table>
    datasets = hr_lake.root / "schemas" / "datasets"
    assert _target(datasets, "hr", "person") == ("hr_person", datasets / "hr_person.yml")
    assert _target(datasets, "population", "person") == ("person", datasets / "person.yml")  # its own contract


def test_cli_prints_the_path_and_the_todos_and_errors_in_one_line(hr_lake: Settings) -> None:
    cli = [sys.executable, "-m", "pipelines.cli", "contract", "new"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*cli, *args], capture_output=True, text=True, env=dict(os.environ), timeout=120)

    printed = run("hr", "staff", "--print")
    assert printed.returncode == 0, printed.stderr
    assert yaml.safe_load(printed.stdout)["dataset"] == "staff"
    target = hr_lake.root / "schemas" / "datasets" / "staff.yml"
    assert not target.exists()  # --print writes nothing
    done = run("hr", "staff")
    assert done.returncode == 0, done.stderr
    assert f"wrote {target}" in done.stdout.replace("\n", "")
    assert re.search(r"\d+ TODO to decide", done.stdout) and "sharing.type: still TODO" in done.stdout
    assert "data elements proposed for 6 of 9 columns" in done.stdout
    again = run("hr", "staff")
    assert again.returncode == 1 and len(again.stderr.strip().splitlines()) == 1 and "--force" in again.stderr
    for args, words in ((("nosuch", "t"), ["'nosuch'", "citylake ingest nosuch"]),
                        (("hr", "leave"), ["raw.hr__leave", "citylake ingest hr --table leave"])):
        bad = run(*args)
        assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert all(w in bad.stderr for w in words), bad.stderr


def test_names_the_system_or_table_prefix_completes() -> None:
    """Source systems drop their own prefix: `line_id` of bus_ridership is bus_line_id; nothing is guessed when
    the prefix does not name the system or table."""
    standards = load_standards(PROJECT_ROOT / "schemas" / "standards")
    columns = ["line_id", "stop_id", "date", "name", "status", "remark"]
    sample = pa.table({c: pa.array(["x"], pa.string()) for c in columns})

    def proposed(context: set[str]) -> dict[str, str | None]:
        guesses = [Guess(c, None, "string", 1) for c in columns]
        _name_matches(guesses, standards, sample, context)
        return {g.column: g.element for g in guesses}

    assert proposed({"bus", "ridership"}) == {"line_id": "bus_line_id", "stop_id": "bus_stop_id", "date": "ridership_date",
                                              "name": None, "status": None, "remark": None}
    assert proposed({"enterprise"}) == {"line_id": None, "stop_id": None, "date": None, "name": "enterprise_name",
                                        "status": "enterprise_status", "remark": None}


def test_never_writes_over_another_tables_contract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both names a draft may take (<table>.yml, <system>_<table>.yml) belong to other files: refused with
    --force too, naming whose file it is; nothing is read from the lake or written."""
    settings = _hr_root(tmp_path, monkeypatch)
    root = settings.root
    datasets = root / "schemas" / "datasets"
    (datasets / "leave.yml").write_text("dataset: leave\nsource: {system: population, table: leave}\n", encoding="utf-8")
    other = datasets / "hr_leave.yml"
    other.write_text("dataset: hr_leave\nsource: {system: enterprise, table: leave}\n", encoding="utf-8")
    for force in (False, True):
        with pytest.raises(CitylakeError, match=rf"{re.escape(str(other))} is not the contract of raw\.hr__leave: it is "
                                                r"the contract of dataset hr_leave, built from raw\.enterprise__leave\. "
                                                r".*--force never overwrites another table's contract"):
            draft_contract(settings, "hr", "leave", force=force)
    other.write_text("dataset: [unclosed\n", encoding="utf-8")
    with pytest.raises(CitylakeError, match=r"hr_leave\.yml is not the contract of raw\.hr__leave: it cannot be read as YAML"):
        draft_contract(settings, "hr", "leave", force=True)
    assert other.read_text(encoding="utf-8") == "dataset: [unclosed\n"
    # this table's own contract, even one still holding TODOs, is the one redrafted
    other.write_text("dataset: hr_leave\nname: TODO\nsource: {system: hr, table: leave}\n", encoding="utf-8")
    assert _target(datasets, "hr", "leave") == ("hr_leave", other)
