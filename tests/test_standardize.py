"""Standardization of the seeded city: every benign variant is normalised and counted, codes mapped."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.contracts import load_contracts
from pipelines.quality.standardize import standardize
from pipelines.registry import load_registry
from pipelines.seed import seed_city
from pipelines.settings import PROJECT_ROOT
from pipelines.standards import load_standards

SCHEMAS = PROJECT_ROOT / "schemas"


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("city")
    seed_city(data, scale=0.05)
    return data


def _raw(city: Path, system: str, table: str, mapping: dict[str, str] | None = None) -> pa.Table:
    con = sqlite3.connect(city / "sources" / f"{system}.db")
    cur = con.execute(f'SELECT * FROM "{table}"')
    names = [(mapping or {}).get(d[0], d[0]) for d in cur.description]
    rows = cur.fetchall()
    return pa.table({n: pa.array([r[i] for r in rows]) for i, n in enumerate(names)})


def _setup():  # noqa: ANN202
    standards = load_standards(SCHEMAS / "standards")
    systems, _ = load_registry(SCHEMAS / "sources")
    return standards, systems, load_contracts(SCHEMAS / "datasets", standards, systems)


def _changes(log, column: str) -> dict[str, int]:  # noqa: ANN001
    return {c.transformation: c.rows_changed for c in log if c.column == column}


def test_benign_variants_are_normalised_and_counted(city: Path) -> None:
    standards, systems, contracts = _setup()
    manifest = json.loads((city / "seed_manifest.json").read_text(encoding="utf-8"))
    benign = {(b["defect"], b["system"]): b["keys"] for b in manifest["benign"]}

    insured, log = standardize(_raw(city, "social_insurance", "insured"), contracts["insured"], standards)
    assert _changes(log, "person_name")["trim"] == len(benign[("whitespace", "social_insurance")])
    assert _changes(log, "resident_id")["uppercase_x"] == len(benign[("lowercase_x", "social_insurance")])
    assert not any(n.startswith(" ") or n.endswith(" ") for n in insured["person_name"].to_pylist() if n)

    accounts, log = standardize(_raw(city, "housing_fund", "account"), contracts["housing_fund_account"], standards)
    assert _changes(log, "resident_id")["fullwidth_to_halfwidth"] == len(benign[("fullwidth", "housing_fund")])
    assert all(i.isascii() for i in accounts["resident_id"].to_pylist())

    person, log = standardize(_raw(city, "population", "person"), contracts["person"], standards)
    assert set(person["sex_code"].to_pylist()) == {"1", "2"}
    assert _changes(log, "sex_code")["code_list_mapping"] == person.num_rows
    assert _changes(log, "mobile_phone")["strip_country_code"] == len(benign[("phone_prefix", "population")])
    assert person.schema.field("birth_date").type == pa.date32()


def test_coordinates_leave_gcj02(city: Path) -> None:
    standards, systems, contracts = _setup()
    table = systems["poi"].table("poi")
    raw = _raw(city, "poi", "兴趣点", dict(table.columns))
    std, log = standardize(raw, contracts["poi"], standards, crs=table.crs)
    shift = [abs(a - b) for a, b in zip(raw["lon"].to_pylist(), std["longitude"].to_pylist(), strict=True)]
    assert min(shift) > 0.002 and max(shift) < 0.01  # a few hundred metres, as GCJ-02 is
    assert _changes(log, "longitude")["crs_GCJ-02_to_CGCS2000"] == raw.num_rows
