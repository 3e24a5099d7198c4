"""一标准 / 一源 as data: the real files load and every broken rule is named with file and line."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from pipelines.errors import ConfigError
from pipelines.quality.validators import division_codes
from pipelines.registry import load_registry
from pipelines.seed import seed_city
from pipelines.settings import PROJECT_ROOT
from pipelines.standards import build_division_csv, load_standards

STANDARDS = PROJECT_ROOT / "schemas" / "standards"


def test_real_standards_load_with_one_authority_each() -> None:
    s = load_standards(STANDARDS)
    assert len(s.elements) >= 40
    # 一数一源: one authoritative source column, or (an item the lake computes) the curated column deriving it
    assert all((len(e.authoritative) == 1) != (e.derived_by is not None) for e in s.elements.values())
    assert s.aliases("sex")["男"] == "1" and s.aliases("sex")["女"] == "2"
    assert s.element_at("social_insurance", "insured", "name").code == "person_name"
    assert s.authoritative_for("enterprise", "enterprise", "name").code == "enterprise_name"
    hefei = {"340102", "340103", "340104", "340111", "340121", "340122", "340123", "340124", "340181",
             "340171", "340172", "340173"}
    assert hefei <= set(s.code_list("division"))
    assert {c for c in division_codes() if c.startswith("34")} <= set(s.code_list("division"))


def test_every_reference_exists_in_the_registry_and_the_seeded_city(tmp_path: Path) -> None:
    seed_city(tmp_path, scale=0.02)
    systems, _ = load_registry(PROJECT_ROOT / "schemas" / "sources")
    for e in load_standards(STANDARDS).elements.values():
        for ref in [*e.authoritative, *e.copies]:
            table = systems[ref.system].table(ref.table)
            if hasattr(table, "source"):
                con = sqlite3.connect(tmp_path / "sources" / f"{ref.system}.db")
                cols = [table.column_code(c[1]) for c in con.execute(f'PRAGMA table_info("{table.source}")')]
                assert ref.column in cols, (e.code, str(ref))


def test_division_csv_is_reproducible(tmp_path: Path) -> None:
    n = build_division_csv(tmp_path / "division.csv")
    assert (tmp_path / "division.csv").read_text(encoding="utf-8") == \
        (STANDARDS / "code_lists" / "division.csv").read_text(encoding="utf-8")
    assert n > 200


def _copy(tmp_path: Path) -> Path:
    target = tmp_path / "standards"
    shutil.copytree(STANDARDS, target)
    return target


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


def test_two_authorities_or_none(tmp_path: Path) -> None:
    d = _copy(tmp_path)
    _edit(d / "elements.yml", "    - {system: population, table: person, column: name}\n",
          "    - {system: population, table: person, column: name}\n"
          "    - {system: social_insurance, table: insured, column: name}\n")
    with pytest.raises(ConfigError, match=r"elements\.yml:\d+: element person_name \(姓名\): needs exactly one"):
        load_standards(d)
    d2 = _copy(tmp_path / "b")
    _edit(d2 / "elements.yml", "    - {system: enterprise, table: enterprise, column: name}\n",
          "    - {system: population, table: person, column: name}\n")
    with pytest.raises(ConfigError, match="already the authority of element person_name"):
        load_standards(d2)


def test_duplicate_codes_and_unknown_list(tmp_path: Path) -> None:
    d = _copy(tmp_path)
    with (d / "code_lists" / "sex.csv").open("a", encoding="utf-8") as fh:
        fh.write("1,重复,,,,,\n")
    with pytest.raises(ConfigError, match=r"sex\.csv:6: code 1 repeats line 3"):
        load_standards(d)
    d2 = _copy(tmp_path / "b")
    _edit(d2 / "elements.yml", "code_list: sex", "code_list: gender")
    with pytest.raises(ConfigError, match=r"elements\.yml:\d+: elements\.2\.code_list: element sex_code .*unknown code list 'gender'"):
        load_standards(d2)
