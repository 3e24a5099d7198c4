"""The synthetic city: deterministic, real national formats, every defect real and recorded."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from datetime import date
from pathlib import Path

import pytest
from stdnum.cn import ric, uscc

from pipelines.registry import load_registry
from pipelines.seed import REFERENCE_DATE, seed_city
from pipelines.seed.ids import DEV_ZONES, HEFEI_DISTRICTS
from pipelines.settings import PROJECT_ROOT

KNOWN = set(HEFEI_DISTRICTS) | set(DEV_ZONES)


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("city")
    seed_city(data, scale=0.05)
    return data


def _digest(data: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(data.rglob("*")):
        if p.is_file() and p.suffix != ".xlsx":  # xlsx zips carry a timestamp
            h.update(p.name.encode())
            if p.suffix == ".db":
                con = sqlite3.connect(p)
                for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type='table'"):
                    h.update(repr(con.execute(f'SELECT * FROM "{t}"').fetchall()).encode())
                con.close()
            else:
                h.update(p.read_bytes())
    return h.hexdigest()


def _rows(data: Path, system: str, table: str) -> list[sqlite3.Row]:
    con = sqlite3.connect(data / "sources" / f"{system}.db")
    con.row_factory = sqlite3.Row
    return con.execute(f'SELECT * FROM "{table}"').fetchall()


def _manifest(data: Path) -> dict:
    return json.loads((data / "seed_manifest.json").read_text(encoding="utf-8"))


def test_deterministic(city: Path, tmp_path: Path) -> None:
    seed_city(tmp_path, scale=0.05)
    assert _digest(tmp_path) == _digest(city)
    assert _manifest(tmp_path) == _manifest(city)


def test_every_defect_type_present_and_real(city: Path) -> None:
    m = _manifest(city)
    assert m["reference_date"] == REFERENCE_DATE.isoformat()
    by_type = {d["defect"] for d in m["defects"]}
    assert by_type == {"resident_id_check_digit", "uscc_check_digit", "unknown_district_code", "null_required",
                       "duplicate_key", "source_conflict", "future_date", "malformed_file"}
    people = _rows(city, "population", "person")
    ids = [r["resident_id"] for r in people]
    firms = {r["uscc"]: r for r in _rows(city, "enterprise", "enterprise")}
    for d in m["defects"]:
        assert d["keys"], d
        if d["defect"] == "resident_id_check_digit":
            assert all(k in ids and ric.calc_check_digit(k) != k[17] for k in d["keys"])
        elif d["defect"] == "uscc_check_digit":
            assert all(k in firms and not uscc.is_valid(k) for k in d["keys"])
        elif d["defect"] == "unknown_district_code":
            rows = people if d["system"] == "population" else list(firms.values())
            key = "resident_id" if d["system"] == "population" else "uscc"
            assert all(r["district_code"] not in KNOWN for r in rows if r[key] in set(d["keys"]))
        elif d["defect"] == "duplicate_key":
            assert all(ids.count(k) == 2 for k in d["keys"]) and len(d["extra"]) == len(d["keys"])
        elif d["defect"] == "future_date":
            recs = {r["record_id"]: r for r in _rows(city, "credit", "credit_record")}
            assert all(date.fromisoformat(recs[k]["decided_on"]) > REFERENCE_DATE for k in d["keys"])
        elif d["defect"] == "malformed_file":
            assert all((city / "drops" / "air_quality" / k).exists() for k in d["keys"])


def test_clean_rows_are_valid(city: Path) -> None:
    m = _manifest(city)
    flagged = {k for d in m["defects"] if d["system"] == "population" for k in d["keys"]}
    for r in _rows(city, "population", "person"):
        if r["resident_id"] in flagged:
            continue
        rid = r["resident_id"]
        assert ric.calc_check_digit(rid) == rid[17]  # not is_valid(): it rejects pre-1983 births in 340104
        assert rid[:6] in KNOWN and r["district_code"] in KNOWN
        assert (int(rid[16]) % 2 == 1) == (r["sex"] == "男")
        assert date.fromisoformat(r["birth_date"]) <= REFERENCE_DATE
    bad = {k for d in m["defects"] if d["system"] == "enterprise" for k in d["keys"]}
    assert all(uscc.is_valid(c) for c in (r["uscc"] for r in _rows(city, "enterprise", "enterprise")) if c not in bad)


def test_conflicts_disagree_and_benign_variants_only_differ_in_form(city: Path) -> None:
    m = _manifest(city)
    names = {r["resident_id"]: r["name"] for r in _rows(city, "population", "person")}
    insured = {(r["resident_id"], r["insurance_type"]): r for r in _rows(city, "social_insurance", "insured")}
    conflict = next(d for d in m["defects"] if d["defect"] == "source_conflict" and d["system"] == "social_insurance")
    assert all(insured[tuple(k)]["name"] != names[k[0]] for k in conflict["keys"])
    spaces = next(d for d in m["benign"] if d["defect"] == "whitespace")
    assert all(insured[tuple(k)]["name"].strip() == names[k[0]] for k in spaces["keys"])
    lower = next(d for d in m["benign"] if d["defect"] == "lowercase_x")
    assert all(k[0].upper() in names for k in lower["keys"])


def test_registry_matches_the_seeded_sources(city: Path) -> None:
    systems, errors = load_registry(PROJECT_ROOT / "schemas" / "sources")
    assert errors == {}
    assert set(systems) == {"population", "enterprise", "social_insurance", "housing_fund", "credit", "poi",
                            "air_quality", "bus_ridership"}
    for s in systems.values():
        for t in s.tables:
            con = sqlite3.connect(city / "sources" / f"{s.system}.db")
            cols = [c[1] for c in con.execute(f'PRAGMA table_info("{t.source}")')]
            assert cols, f"{s.system}.{t.source} missing"
            codes = [t.column_code(c) for c in cols]
            assert set(t.primary_key) <= set(codes) and (t.cursor is None or t.cursor in codes)


def test_gbk_and_gb18030_drops(city: Path) -> None:
    files = sorted((city / "drops" / "air_quality").glob("aq_*.csv"))
    assert any("䶮".encode("gb18030") in f.read_bytes() for f in files)
    plain = files[0].read_bytes()
    plain.decode("gbk")
    with pytest.raises(UnicodeDecodeError):
        plain.decode("utf-8")
