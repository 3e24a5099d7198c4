"""Looking into the lake (issue 13): `citylake sql` over lake tables by name, masked in the views it reads;
`lake show --where`; `lake ls` and other listings never cut a table name."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from datetime import date
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from pipelines.lake.catalog import get_catalog
from pipelines.lake.query import QueryError, parse_query
from pipelines.lake.tables import append
from pipelines.settings import Settings


def _rid(body: str) -> str:
    """A valid resident ID from its first 17 digits (GB 11643 check character)."""
    from stdnum.cn import ric

    return body + ric.calc_check_digit(body)


ROOT = Path(__file__).resolve().parent.parent
IDS = [_rid(f"34010419900101{i:03d}") for i in range(6)] + [_rid("32010219850505123")]
NAMES = ["张伟", "王芳", "李娜", "刘洋", "陈静", "杨磊", "赵敏"]
LONG = "raw.air_quality__hourly_observation_station_readings"


@pytest.fixture
def lake(lake_settings: Settings) -> Settings:
    """std.person (7 people, one outside Hefei), std.housing_fund_account (4 of them), a raw table with a
    long name; std.person is written twice (the second adds 赵敏) for --as-of. The project's registry, so
    the contracts' declarations decide the masks (an empty one fails closed)."""
    for source in (ROOT / "schemas" / "sources").glob("*.yml"):
        shutil.copy(source, lake_settings.registry_dir / source.name)
    return _tables(lake_settings)


def _tables(lake_settings: Settings) -> Settings:
    catalog = get_catalog(lake_settings)
    person = pa.table({
        "resident_id": IDS[:6], "person_name": NAMES[:6], "sex_code": ["1", "2", "2", "1", "2", "1"],
        "birth_date": [date(1990, 1, 1 + i) for i in range(6)],
        "residence_district_code": ["340104", "340104", "340102", "340103", "340102", "340104"],
        "mobile_phone": [f"1380000{i:04d}" for i in range(6)],
    })
    append(catalog, "std.person", person)
    append(catalog, "std.person", pa.table({
        "resident_id": IDS[6:], "person_name": NAMES[6:], "sex_code": ["2"], "birth_date": [date(1985, 5, 5)],
        "residence_district_code": ["320102"], "mobile_phone": ["13900001111"]}))
    append(catalog, "std.housing_fund_account", pa.table({
        "resident_id": IDS[:4], "housing_fund_account": [f"HF{i:06d}" for i in range(4)],
        "uscc": ["91340100MA2N0000X1"] * 4, "months": [10, 20, 30, 40]}))
    append(catalog, LONG, pa.table({"station": ["s1", "s2"], "pm25": [12.5, 30.0]}))
    return lake_settings


def _sql(*args: str) -> tuple[int, str, str]:
    from pipelines.cli import app

    res = CliRunner().invoke(app, ["sql", *args])
    return res.exit_code, res.stdout, res.stderr


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def test_join_aggregate_and_output_formats(lake: Settings) -> None:
    code, out, errs = _sql("SELECT p.sex_code, count(*) AS n, sum(h.months) AS months FROM std.person p "
                           "JOIN std.housing_fund_account h USING (resident_id) GROUP BY 1 ORDER BY 1",
                           "--format", "csv")
    assert code == 0, errs
    assert _csv(out) == [{"sex_code": "1", "n": "2", "months": "50"}, {"sex_code": "2", "n": "2", "months": "50"}]
    code, out, errs = _sql('WITH hf AS (SELECT * FROM "std"."housing_fund_account") '
                           "SELECT residence_district_code AS d, count(*) AS n, avg(months) AS m FROM STD.PERSON "
                           "LEFT JOIN hf ON hf.resident_id = person.resident_id GROUP BY d ORDER BY d",
                           "--format", "json")
    assert code == 0, errs
    rows = json.loads(out)  # stdout is only JSON, numbers stay numbers
    assert rows[0] == {"d": "320102", "n": 1, "m": None} and rows[-1] == {"d": "340104", "n": 3, "m": 15.0}
    code, out, _ = _sql(f"SELECT station, pm25 FROM {LONG} ORDER BY 1", "--format", "table")
    assert code == 0 and "s2" in out and "30.0" in out
    code, out, errs = _sql("SELECT resident_id FROM std.person ORDER BY 1", "--format", "table", "--limit", "3")
    assert code == 0 and len([line for line in out.splitlines() if "*" in line]) == 3
    assert "only the first 3 rows" in errs
    code, out, _ = _sql("SELECT count(*) AS n, CAST(1.5 AS DECIMAL(4,2)) AS d FROM std.person", "--format", "json")
    assert json.loads(out) == [{"n": 7, "d": str(Decimal("1.50"))}]


def test_masked_in_the_view_unless_unmasked(lake: Settings) -> None:
    code, out, errs = _sql("SELECT resident_id, person_name, mobile_phone, birth_date, sex_code FROM std.person "
                           "WHERE resident_id LIKE '3401%' ORDER BY resident_id", "--format", "csv")
    assert code == 0, errs
    rows = _csv(out)
    assert len(rows) == 6 and all(r["resident_id"].startswith("340104********") for r in rows)
    assert rows[0]["person_name"] == "张*" and rows[0]["mobile_phone"] == "138****0000"
    assert rows[0]["birth_date"] == "1990-**-**" and rows[0]["sex_code"] == "1"  # a code value stays clear
    assert not any(i in out for i in IDS) and "张伟" not in out
    # the hidden digits cannot be tested: every comparison runs on the masked text
    for probe in ("substr(resident_id, 7, 8) = '19900101'", "resident_id LIKE '34010419900101%'",
                  f"resident_id = '{IDS[0]}'", "person_name = '张伟'", "mobile_phone LIKE '1380000000%'",
                  "length(person_name) = 2 AND person_name LIKE '%伟'"):
        code, out, errs = _sql(f"SELECT count(*) AS n FROM std.person WHERE {probe}", "--format", "csv")
        assert code == 0, errs
        assert _csv(out) == [{"n": "0"}], probe
    code, out, _ = _sql("SELECT substr(resident_id, 1, 18) AS r, upper(person_name) AS n FROM std.person "
                        "WHERE person_name = '张*'", "--format", "json")
    assert json.loads(out) == [{"r": IDS[0][:6] + "*" * 8 + IDS[0][-4:], "n": "张*"}]
    code, out, errs = _sql("SELECT resident_id, person_name FROM std.person WHERE person_name = '张伟'",
                           "--unmasked", "--format", "csv")
    assert code == 0 and _csv(out) == [{"resident_id": IDS[0], "person_name": "张伟"}]
    assert "unmasked" in errs and "clear" in errs


def test_config_unreadable_fails_closed(lake_settings: Settings) -> None:
    """No registry: the declarations cannot load, masking fails closed (as `lake show`) and says so."""
    _tables(lake_settings)
    code, out, errs = _sql("SELECT resident_id, person_name, birth_date FROM std.person WHERE person_name LIKE '张%'",
                           "--format", "csv")
    assert code == 0 and "config unreadable" in errs
    rows = _csv(out)
    assert rows[0]["resident_id"] == IDS[0][:6] + "*" * 8 + IDS[0][-4:] and rows[0]["person_name"] == "张*"
    assert rows[0]["birth_date"] == "1990-**-**"


@pytest.mark.parametrize(("query", "said"), [
    ("CREATE TABLE std.x AS SELECT 1", "only a read-only query"),
    ("INSERT INTO std.person SELECT * FROM std.person", "only a read-only query"),
    ("DELETE FROM std.person", "only a read-only query"),
    ("COPY (SELECT * FROM std.person) TO '/tmp/leak.csv'", "only a read-only query"),
    ("ATTACH '/tmp/other.db'", "only a read-only query"),
    ("INSTALL httpfs", "only a read-only query"),
    ("LOAD json", "only a read-only query"),
    ("PRAGMA version", "only a read-only query"),
    ("SET enable_external_access = true", "only a read-only query"),
    ("SELECT 1; DROP TABLE std.person", "one query only"),
    ("SELECT * FROM read_csv('/etc/passwd')", "table function"),
    ("SELECT * FROM read_parquet('/tmp/x.parquet')", "table function"),
    ("SELECT * FROM '/etc/passwd'", "unknown table '/etc/passwd'"),
    ("SELECT * FROM std.nosuch", "unknown table std.nosuch"),
    ("SELECT * FROM person", "unknown table 'person'"),
    ("SELECT * FROM memory.std.person", "lake tables are named"),
])
def test_refused_with_one_line(lake: Settings, query: str, said: str) -> None:
    code, out, errs = _sql(query)
    assert code == 1 and out == ""
    assert len(errs.strip().splitlines()) == 1 and said in errs, errs


def test_duckdb_is_sealed_even_past_the_parser(lake: Settings) -> None:
    """Defence in depth: what the parser lets through still cannot reach a file, a Python variable or a
    setting (external access off, replacement scans off, configuration locked)."""
    from pipelines.lake.query import LakeStream, connect

    table = get_catalog(lake).load_table("std.person")
    con = connect({"std.person": LakeStream(table, "std.person", None, None, unmasked=False)})
    secret = pa.table({"x": [IDS[0]]})  # noqa: F841 - a local a replacement scan would find
    for stmt in ("SELECT * FROM read_text('/etc/hostname')", "SELECT * FROM secret",
                 "COPY (SELECT 1) TO '/tmp/citylake-leak.csv'", "SET enable_external_access = true",
                 "SELECT * FROM glob('/etc/*')"):
        with pytest.raises(Exception):  # noqa: B017, PT011 - DuckDB's error classes differ per statement
            con.sql(stmt).fetchall()
    assert con.sql("SELECT count(*) FROM std.person").fetchall() == [(7,)]
    assert not os.path.exists("/tmp/citylake-leak.csv")


def test_parser_scopes_ctes_and_projects_columns() -> None:
    parsed = parse_query("WITH person AS (SELECT resident_id FROM std.person) SELECT p.resident_id, "
                         "count(*) FROM person p JOIN raw.population__person r ON r.resident_id = p.resident_id "
                         "GROUP BY 1")
    assert set(parsed.tables) == {"std.person", "raw.population__person"}
    assert "resident_id" in (parsed.tables["std.person"] or set())
    assert parse_query("SELECT * FROM std.person").tables == {"std.person": None}
    assert parse_query("SELECT p FROM std.person p").tables == {"std.person": None}  # whole-row struct
    assert parse_query("SELECT COLUMNS('res.*') FROM std.person").tables == {"std.person": None}
    with pytest.raises(QueryError, match="unknown table 'q'"):
        parse_query("WITH x AS (SELECT 1) SELECT * FROM (WITH q AS (SELECT 2) SELECT * FROM q), q")


def test_self_join_scans_twice_and_limit_streams(lake: Settings) -> None:
    code, out, errs = _sql("SELECT count(*) AS n FROM std.person a JOIN std.person b "
                           "ON a.sex_code = b.sex_code", "--format", "csv")
    assert code == 0, errs
    assert _csv(out) == [{"n": str(3 * 3 + 4 * 4)}]


def test_lake_show_where(lake: Settings) -> None:
    from pipelines.cli import app
    from pipelines.lake.inspect import history

    runner = CliRunner()
    res = runner.invoke(app, ["lake", "show", "std.person", "--where",
                              "sex_code = '2' AND residence_district_code LIKE '3401%'"])
    assert res.exit_code == 0, res.output
    assert res.stdout.count("340104********") + res.stdout.count("340102********") == 3
    assert "王*" in res.stdout and "王芳" not in res.stdout and "赵" not in res.stdout
    assert "warning" not in res.stderr  # names no masked column
    res = runner.invoke(app, ["lake", "show", "std.person", "--where", "birth_date >= '1990-01-01'"])
    assert res.exit_code == 0 and "张*" not in res.stdout  # 1990-**-** sorts before 1990-01-01
    assert "masked values of birth_date" in res.stderr
    first = history("std.person", lake)[0]["snapshot_id"]
    res = runner.invoke(app, ["lake", "show", "std.person", "--where", "sex_code = '2'", "--as-of", str(first)])
    assert res.exit_code == 0 and "赵*" not in res.stdout and "李*" in res.stdout
    res = runner.invoke(app, ["lake", "show", "std.person", "--where", "sex_code = '2'"])
    assert res.exit_code == 0 and "赵*" in res.stdout
    # masked values are what the condition sees: the clear name matches nothing
    res = runner.invoke(app, ["lake", "show", "std.person", "--where", "person_name = '王芳'"])
    assert res.exit_code == 0 and "王" not in res.stdout
    res = runner.invoke(app, ["lake", "show", "std.person", "--where", "person_name = '王芳'", "--unmasked"])
    assert res.exit_code == 0 and "王芳" in res.stdout and IDS[1] in res.stdout
    res = runner.invoke(app, ["lake", "show", "std.person", "--where", "resident_id LIKE '3201%'", "--unmasked",
                              "--as-of", str(first)])
    assert res.exit_code == 0 and "赵敏" not in res.stdout  # pushed down, and still as of the first snapshot
    for bad, said in (("nosuch = 1", "nosuch"), ("1=1) OR (1=1", "not"), ("pg_sleep(1) = 1", "pg_sleep"),
                      ("sex_code IN (SELECT 1)", "subquery")):
        res = runner.invoke(app, ["lake", "show", "std.person", "--where", bad])
        assert res.exit_code == 1 and len(res.stderr.strip().splitlines()) == 1 and said in res.stderr, res.stderr


def test_lake_ls_never_cuts_names(lake: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Piped through a pipe with COLUMNS=40 (a real process), and on a 40-column terminal (the console
    forced narrow): the whole name, no ellipsis."""
    env = {**os.environ, "COLUMNS": "40"}
    piped = subprocess.run([sys.executable, "-m", "pipelines.cli", "lake", "ls"], capture_output=True, text=True,
                           env=env, timeout=120)
    assert piped.returncode == 0, piped.stderr
    assert LONG in piped.stdout and "…" not in piped.stdout
    line = next(line for line in piped.stdout.splitlines() if LONG in line)
    assert "2" in line  # the row is one line: name and row count together

    import pipelines.console as console

    narrow = console.TableConsole(file=io.StringIO(), width=40, force_terminal=True, color_system=None)
    monkeypatch.setattr(console, "out", narrow)
    monkeypatch.setattr("pipelines.cli.out", narrow)
    from pipelines.cli import app

    assert CliRunner().invoke(app, ["lake", "ls"]).exit_code == 0
    text = narrow.file.getvalue()  # type: ignore[attr-defined]
    assert "…" not in text
    cells = "".join(line.split("│")[1].strip() for line in text.splitlines() if line.startswith("│"))
    assert LONG in cells  # folded over lines in its cell, every character kept


def test_limit_does_not_read_the_whole_table(lake_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """DuckDB pulls the stream batch by batch: LIMIT 1 over an 8-file table opens only the first files (the
    masking decision reads the first 1,000 rows once, the query's scan what DuckDB pulls)."""
    import pipelines.lake.raw as raw
    from pipelines.lake.query import run_sql

    catalog = get_catalog(lake_settings)
    for i in range(8):
        append(catalog, "meta.many", pa.table({"k": list(range(i * 1500, i * 1500 + 1500))}))
    opened: list[int] = []
    real = raw.file_batches
    monkeypatch.setattr(raw, "file_batches", lambda *a, **k: (opened.append(1), real(*a, **k))[1])
    with run_sql("SELECT k FROM meta.many LIMIT 1", lake_settings) as result:
        assert sum(b.num_rows for b in result.batches()) == 1
    assert 1 <= len(opened) <= 4, opened
