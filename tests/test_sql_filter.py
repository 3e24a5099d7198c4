"""The registry's table ``filter`` is one checked boolean expression over the table's own columns."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from conftest import TEST_DEPARTMENT

from pipelines.errors import ConfigError
from pipelines.ingest import ingest_table
from pipelines.registry import SourceSystem, load_system
from pipelines.settings import TZ, Settings
from pipelines.sql_filter import render_filter

SYSTEM = """\
system: hr
name: 人事
department: """ + TEST_DEPARTMENT + """
connection: src_hr
tables:
  - code: staff
    source: staff
    primary_key: [id]
    filter: {filter}
"""

ACCEPTED = [
    "status = 'active'",
    "\"姓名\" LIKE '张%' AND note <> 'a:b;c'",  # ';' and ':' inside a string literal are data
    "salary BETWEEN 1000 AND 2000 OR dept IN ('a', 'b')",
    "NOT (deleted IS NOT NULL)",
    "lower(trim(status)) = 'active' AND coalesce(salary, 0) > 0",
    "updated_at >= current_date - interval '30 days'",
    "updated_at < now()",
    "cast(id AS int) > 3",
    "id::int > 3",
    "`id` > 3",
    "cast(salary AS numeric(10, 2)) > 0 AND hired::timestamptz < now() AND flag::boolean",
    "cast(code AS varchar(10)) = 'x' AND cast(born AS date) > '1990-01-01' AND cast(id AS bigint) > 0",
]

REJECTED = [
    ("1=1) OR (1=1", "not one SQL expression"),
    ("id IN (SELECT id FROM secrets)", "subquery"),
    ("id = (SELECT max(id) FROM staff)", "subquery"),
    ("EXISTS (SELECT 1 FROM pg_user)", "subquery"),
    ("pg_sleep(10) IS NULL", "function pg_sleep() is not allowed"),
    ("current_setting('is_superuser') = 'on'", "function current_setting() is not allowed"),
    ("x = 1; DROP TABLE t", "no ';'"),
    ("x = 1 -- and the rest", "comments"),
    ("x = 1 /* hidden */", "comments"),
    ("x = 1) --", "comments"),
    ("x = 1 UNION SELECT 1", "subquery"),
    ("DROP TABLE staff", "drop"),
    ("staff.id = 1", "unqualified"),
    ("id = %(since)s", "placeholder"),
    ("1 + 1", "at least one column"),
    ("1 = 1", "at least one column"),
    # Casts run the target type's input function: reg* types look up catalogs, domains and
    # user-defined types (and user-defined casts) run functions.
    ("CAST(id AS regclass) IS NOT NULL", "cast to regclass is not allowed"),
    ("id::regprocedure IS NULL", "cast to regprocedure is not allowed"),
    ("CAST(id AS \"pg_sleep\") IS NULL", "cast to pg_sleep is not allowed"),
    ("CAST(id AS my_domain) = 1", "cast to my_domain is not allowed"),
    ("CAST(id AS int[]) IS NULL", "cast to array is not allowed"),
    ("CAST(note AS json) IS NULL", "cast to json is not allowed"),
]


def _yaml(tmp_path: Path, filter_sql: str) -> Path:
    path = tmp_path / "hr.yml"
    path.write_text(SYSTEM.format(filter=_quoted(filter_sql)), encoding="utf-8")
    return path


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"  # a YAML single-quoted scalar


@pytest.mark.parametrize("filter_sql", ACCEPTED)
def test_accepted(tmp_path: Path, filter_sql: str) -> None:
    system = load_system(_yaml(tmp_path, filter_sql))
    assert system.tables[0].filter == filter_sql


@pytest.mark.parametrize(("filter_sql", "reason"), REJECTED)
def test_rejected_at_config_load_with_file_and_line(tmp_path: Path, filter_sql: str, reason: str) -> None:
    path = _yaml(tmp_path, filter_sql)
    with pytest.raises(ConfigError) as info:
        load_system(path)
    message = str(info.value)
    assert message.startswith(f"{path}:9: tables.0.filter: "), message  # the line of `filter:`
    assert reason in message, message


@pytest.mark.parametrize("filter_sql", ["id::regclass IS NOT NULL", "CAST(id AS regprocedure) IS NULL",
                                        "CAST(id AS \"pg_sleep\") IS NULL"])
def test_cast_to_other_types_refused_when_rendered_for_postgres(filter_sql: str) -> None:
    # PostgreSQL's dialect parses reg* types as named types, not as user-defined: refused all the same.
    with pytest.raises(ConfigError, match=r"^hr\.staff: cast to \S+ is not allowed"):
        render_filter(filter_sql, "postgres", ["id"], "hr.staff")


def test_rendered_for_the_dialect_with_source_spelling() -> None:
    sql = render_filter("NAME like 'a:b%' AND \"姓名\" <> '' AND id::int > 3", "postgres", ["name", "姓名", "id"], "w")
    assert sql == "\"name\" LIKE 'a:b%' AND \"姓名\" <> '' AND CAST(\"id\" AS INT) > 3"
    assert render_filter("`姓名` = 'x'", "mysql", ["姓名"], "w") == "`姓名` = 'x'"
    with pytest.raises(ConfigError, match="at least one column"):  # MySQL: "姓名" is a string, not a column
        render_filter("\"姓名\" = 'x'", "mysql", ["姓名"], "system s, table 't'")


def _sqlite_system(db: Path, filter_sql: str) -> SourceSystem:
    return SourceSystem.model_validate({
        "system": "hr", "name": "人事", "department": TEST_DEPARTMENT, "connection": "src_hr", "default_url": f"sqlite:///{db}",
        "tables": [{"code": "staff", "source": "staff", "primary_key": ["id"], "filter": filter_sql,
                    "columns": {"姓名": "name"}}],
    })


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "hr.db"
    con = sqlite3.connect(path)
    con.execute('CREATE TABLE staff (id INTEGER, "姓名" TEXT, note TEXT)')
    con.executemany("INSERT INTO staff VALUES (?, ?, ?)", [(i, f"张{i}" if i % 2 else f"李{i}", "a:b;c" if i < 4 else "")
                                                            for i in range(10)])
    con.commit()
    con.close()
    return path


def test_filter_applies_on_sqlite(db: Path, lake_settings: Settings) -> None:
    system = _sqlite_system(db, "\"姓名\" LIKE '张%' AND note <> 'a:b;c'")
    got = ingest_table(system, "staff", settings=lake_settings, batch_id="b1", extracted_at=datetime(2026, 11, 1, tzinfo=TZ))
    assert got.rows_written == 3  # ids 5, 7, 9


def test_unknown_column_at_ingest_is_one_line(db: Path, lake_settings: Settings) -> None:
    system = _sqlite_system(db, "\"姓 名\" = 'x' OR nope = 1")
    with pytest.raises(ConfigError) as info:
        ingest_table(system, "staff", settings=lake_settings, batch_id="b1")
    message = str(info.value)
    assert "\n" not in message and "system hr" in message and "'staff'" in message and "'姓 名'" in message, message


def test_postgres_fast_path_filter_and_unknown_column(pg_url: str, lake_settings: Settings,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute('CREATE TABLE staff (id int PRIMARY KEY, "姓名" text, note text)')
        conn.execute("INSERT INTO staff SELECT g, CASE WHEN g % 2 = 1 THEN '张' ELSE '李' END || g, "
                     "CASE WHEN g < 4 THEN 'a:b;c %(since)s' ELSE '' END FROM generate_series(0, 9) g")
    monkeypatch.setenv("CITYLAKE_CONN_SRC_PGHR", pg_url)

    def system(filter_sql: str) -> SourceSystem:
        return SourceSystem.model_validate({
            "system": "pghr", "name": "人事", "department": TEST_DEPARTMENT, "connection": "src_pghr",
            "tables": [{"code": "staff", "source": "staff", "primary_key": ["id"], "filter": filter_sql,
                        "columns": {"姓名": "name"}}],
        })

    got = ingest_table(system("\"姓名\" LIKE '张%' AND note <> 'a:b;c %(since)s'"), "staff", settings=lake_settings,
                       batch_id="b1", extracted_at=datetime(2026, 11, 1, tzinfo=TZ))
    assert got.rows_written == 3
    with pytest.raises(ConfigError, match=r"system pghr, table 'staff': filter column 'nope' is not at the source"):
        ingest_table(system("nope = 1"), "staff", settings=lake_settings, batch_id="b2")
