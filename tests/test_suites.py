"""GX suites: committed = generated, loadable by GX, same verdicts as plain GX, bad suites named."""

from __future__ import annotations

import json
import shutil
import sqlite3
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.contracts import load_contracts
from pipelines.errors import ConfigError
from pipelines.quality.rules import evaluate
from pipelines.quality.standardize import standardize
from pipelines.quality.suites import load_suite, suite_dict
from pipelines.registry import load_registry
from pipelines.seed import seed_city
from pipelines.settings import PROJECT_ROOT
from pipelines.standards import load_standards

SCHEMAS, SUITES, REF = PROJECT_ROOT / "schemas", PROJECT_ROOT / "expectations", date(2026, 11, 20)


def _config():  # noqa: ANN202
    standards = load_standards(SCHEMAS / "standards")
    systems, _ = load_registry(SCHEMAS / "sources")
    return standards, load_contracts(SCHEMAS / "datasets", standards, systems)


def test_committed_suites_are_the_generated_ones() -> None:
    standards, contracts = _config()
    for name, contract in contracts.items():
        committed = json.loads((SUITES / f"{name}.json").read_text(encoding="utf-8"))
        assert committed == json.loads(json.dumps(suite_dict(contract, standards))), \
            f"{name}.json is stale: run `citylake quality suites`"


def test_plain_gx_agrees_with_the_vectorised_engine(tmp_path: Path) -> None:
    import great_expectations as gx
    from great_expectations.core import ExpectationSuite

    import pipelines.quality.gx_expectations  # noqa: F401 - registers the custom types

    standards, contracts = _config()
    seed_city(tmp_path, scale=0.05)
    con = sqlite3.connect(tmp_path / "sources" / "population.db")
    # One row for each warning rule the clean city never trips, so both engines must find them.
    con.execute("UPDATE person SET name = '王' WHERE rowid = 1")
    con.execute("UPDATE person SET name = '王 Li' WHERE rowid = 2")
    con.execute("UPDATE person SET address = '上海市黄浦区人民路1号' WHERE rowid = 3")
    con.execute("UPDATE person SET birth_date = '1899-12-31' WHERE rowid = 4")
    con.execute("UPDATE person SET birth_date = '1990-01-01' WHERE rowid = 5")
    cur = con.execute("SELECT * FROM person")
    names = [d[0] for d in cur.description]
    rows = cur.fetchall()
    raw = pa.table({n: pa.array([r[i] for r in rows]) for i, n in enumerate(names)})
    std, _ = standardize(raw, contracts["person"], standards)
    ours = {r.rule.id: r.failed for r in evaluate(std, load_suite(SUITES, contracts["person"], standards, REF))}

    context = gx.get_context(mode="ephemeral")
    suite_json = json.loads((SUITES / "person.json").read_text(encoding="utf-8"))
    suite = context.suites.add(ExpectationSuite(**suite_json))
    batch = context.data_sources.add_pandas("p").add_dataframe_asset("person") \
        .add_batch_definition_whole_dataframe("all").get_batch(batch_parameters={"dataframe": std.to_pandas()})
    result = batch.validate(suite, expectation_parameters={"reference_date": REF.isoformat()},
                            result_format={"result_format": "SUMMARY"})
    assert result.results and all(not r.exception_info.get("raised_exception") for r in result.results)
    theirs = {r.expectation_config.meta["rule_id"]: r.result.get("unexpected_count", 0) for r in result.results}
    assert theirs == ours and ours["person.resident_id.check_digit"] > 0
    assert ours["person.person_name.length"] == 1 and ours["person.person_name.format"] == 1
    assert ours["person.residence_address.format"] == 1 and ours["person.birth_date.range"] == 1
    assert ours["person.birth_date.agrees_with_id"] >= 2 and len(ours) == 20
    assert ours["person.residence_district_code.known_division"] > 0  # the custom division-table expectation


def test_a_suite_with_an_unknown_column_names_file_and_rule(tmp_path: Path) -> None:
    standards, contracts = _config()
    d = tmp_path / "expectations"
    shutil.copytree(SUITES, d)
    (d / "person.custom.json").write_text(json.dumps({"expectations": [{
        "type": "expect_column_values_to_not_be_null", "kwargs": {"column": "nickname"},
        "meta": {"rule_id": "person.nickname.required", "element": "person_name"}}]}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"person\.custom\.json: rule person\.nickname\.required: unknown column"):
        load_suite(d, contracts["person"], standards, REF)
    (d / "person.custom.json").write_text(json.dumps({"expectations": [{
        "type": "expect_column_values_to_not_be_null", "kwargs": {"column": "person_name"},
        "meta": {"rule_id": "person.x", "element": "nickname"}}]}), encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown data element 'nickname'"):
        load_suite(d, contracts["person"], standards, REF)
