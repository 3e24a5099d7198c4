"""The PostgreSQL fast path: exact types, NULL vs empty string, Chinese names, ranges, clear errors."""

from __future__ import annotations

import shutil
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest

from pipelines.errors import SourceError
from pipelines.extract import postgres_fast
from pipelines.extract.postgres_fast import iter_pg_batches, pg_arrow_schema


@pytest.fixture
def pg(pg_url: str) -> str:
    url = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute('CREATE TABLE "人口" ("证件号码" varchar(18), "姓名" text, amount numeric(18,2), big numeric, '
                     'n smallint, f float8, ok bool, birth date, at timestamp, atz timestamptz, doc jsonb)')
        conn.execute("INSERT INTO \"人口\" VALUES ('340104199001011234', '张三', 12345.67, 1.000000001, 7, 0.5, true, "
                     "'1990-01-01', '2026-11-01 08:00:00', '2026-11-01 08:00:00+08', '{\"a\": 1}'), "
                     "('340104199001011235', '', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)")
        conn.execute("INSERT INTO \"人口\" SELECT lpad(g::text, 18, '0'), '李' || g, g * 0.25, g, 1, g, false, "
                     "date '2000-01-01' + g % 1000, timestamp '2026-01-01' + g * interval '1 minute', now(), NULL "
                     "FROM generate_series(1, 60000) g")
        conn.execute('ANALYZE "人口"')
    return url


def _all(url: str, **kw) -> pa.Table:  # noqa: ANN003
    cols = ["证件号码", "姓名", "amount", "big", "n", "f", "ok", "birth", "at", "atz", "doc"]
    return pa.Table.from_batches(list(iter_pg_batches(url, None, "人口", cols, **kw)))


def test_exact_types_and_values(pg: str) -> None:
    schema = pg_arrow_schema(pg, None, "人口")
    assert str(schema.field("amount").type) == "decimal128(18, 2)"
    assert str(schema.field("big").type) == "decimal128(38, 10)"
    assert schema.field("birth").type == pa.date32() and schema.field("n").type == pa.int16()
    assert schema.field("at").type == pa.timestamp("us") and schema.field("atz").type == pa.timestamp("us", tz="UTC")
    rows = {r["证件号码"]: r for r in _all(pg, where="\"姓名\" IN ('张三', '')").to_pylist()}
    first, second = rows["340104199001011234"], rows["340104199001011235"]
    assert first["amount"] == Decimal("12345.67") and first["big"] == Decimal("1.000000001")
    assert first["birth"] == date(1990, 1, 1) and first["at"] == datetime(2026, 11, 1, 8)
    assert first["atz"] == datetime(2026, 11, 1, 0, tzinfo=UTC) and first["doc"] == '{"a": 1}'
    assert second["姓名"] == "" and second["amount"] is None and second["ok"] is None  # '' is not NULL


def test_numerics_are_exact(pg: str) -> None:
    """numeric(p, s) travels in binary and becomes decimal128(p, s) here: every value, sign, extreme and null
    equal to what the server holds, across sliced batches."""
    with psycopg.connect(pg, autocommit=True) as conn:
        conn.execute("CREATE TABLE nums (id int, a numeric(18,2), b numeric(5,0), c numeric(4,4), d numeric(19,2), "
                     "e numeric)")
        conn.execute("INSERT INTO nums VALUES (1, 9999999999999999.99, 99999, 0.9999, 99999999999999999.99, "
                     "1234567890123456789012345678.1234567891), (2, -9999999999999999.99, -99999, -0.0001, -1, "
                     "-0.0000000001), (3, NULL, NULL, NULL, NULL, NULL), (4, 0, 0, 0, 0, 0)")
        conn.execute("INSERT INTO nums SELECT g, g * -1.01, g % 99999, (g % 10000) / 10000.0, g * 3.33, g / 8.0 "
                     "FROM generate_series(5, 20000) g")
        want = {r[0]: r[1:] for r in conn.execute("SELECT id, a, b, c, d, e FROM nums").fetchall()}
    schema = pg_arrow_schema(pg, None, "nums")
    assert [str(schema.field(c).type) for c in "abcde"] == ["decimal128(18, 2)", "decimal128(5, 0)",
                                                           "decimal128(4, 4)", "decimal128(19, 2)",
                                                           "decimal128(38, 10)"]
    got = pa.Table.from_batches(list(iter_pg_batches(pg, None, "nums", ["id", *"abcd", "e"], batch_rows=1000)))
    assert {r["id"]: (r["a"], r["b"], r["c"], r["d"], r["e"]) for r in got.to_pylist()} == want
    assert postgres_fast._select("a", "numeric") == '"a"'  # in binary: the server only copies its digits
    assert postgres_fast._select("r", "int4range") == '"r"::text AS "r"'


def test_parallel_ranges_equal_one_stream(pg: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres_fast, "_MIN_PAGES_TO_SPLIT", 1)
    one, two = _all(pg, parallel=1), _all(pg, parallel=2, batch_rows=5000)
    assert one.num_rows == two.num_rows == 60002
    key = "证件号码"
    assert sorted(one.column(key).to_pylist()) == sorted(two.column(key).to_pylist())
    assert max(b.num_rows for b in iter_pg_batches(pg, None, "人口", [key], parallel=2, batch_rows=5000)) <= 5000


def test_where_params_are_literals(pg: str) -> None:
    got = _all(pg, where='"at" >= %(since)s AND "姓名" <> %(name)s',
               params={"since": datetime(2026, 1, 1, 0, 59), "name": "it's"})
    assert got.num_rows == (60000 - 58) + 1  # g >= 59, plus 张三 (2026-11-01)


def test_missing_table_and_column(pg: str) -> None:
    with pytest.raises(SourceError, match="不存在"):
        list(iter_pg_batches(pg, None, "不存在", ["x"]))
    with pytest.raises(SourceError, match="nope"):
        list(iter_pg_batches(pg, None, "人口", ["nope"]))


def test_read_driver_default_and_environment(pg: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Ranges decode with the installed READ_DRIVER by default, with the package's library under "package", and
    with any library CITYLAKE_ADBC_POSTGRESQL_DRIVER names; all three read the same rows."""
    import adbc_driver_manager
    from adbc_driver_postgresql import _driver_path

    # make install puts it there (requirements-read-driver.txt); without it every load decodes at ~2.8x the CPU
    assert postgres_fast.READ_DRIVER.is_file(), f"{postgres_fast.READ_DRIVER} missing: run make install"
    library = tmp_path / "libadbc_driver_postgresql.so"  # a copy elsewhere: the package's own path proves nothing
    shutil.copy(_driver_path(), library)

    loaded: list[str] = []
    real = adbc_driver_manager.AdbcDatabase

    def spy(**kw):  # noqa: ANN003, ANN202
        loaded.append(kw["driver"])
        return real(**kw)

    monkeypatch.setattr(postgres_fast, "_MIN_PAGES_TO_SPLIT", 1)
    monkeypatch.setenv(postgres_fast.DRIVER_ENV, "package")
    expected = _all(pg, parallel=2).sort_by("证件号码")
    monkeypatch.setattr(adbc_driver_manager, "AdbcDatabase", spy)
    monkeypatch.delenv(postgres_fast.DRIVER_ENV)
    assert _all(pg, parallel=2).sort_by("证件号码").equals(expected)
    assert loaded == [str(postgres_fast.READ_DRIVER)] * 2  # both ranges' connections
    loaded.clear()
    monkeypatch.setenv(postgres_fast.DRIVER_ENV, str(library))
    assert _all(pg, parallel=2).sort_by("证件号码").equals(expected)
    assert loaded == [str(library)] * 2
    monkeypatch.setenv(postgres_fast.DRIVER_ENV, "/nonexistent/libadbc_driver_postgresql.so")
    with pytest.raises(SourceError, match=postgres_fast.DRIVER_ENV):
        _all(pg)


def test_a_whole_read_carries_the_servers_row_estimate(pg: str) -> None:
    """``estimated_rows`` (pg_class.reltuples after ANALYZE) lets a load size its writing before rows arrive; a
    filtered read has none (the table's count says nothing about the rows that match)."""
    whole = postgres_fast.PgRead(pg, None, "人口", ["姓名"])
    some = postgres_fast.PgRead(pg, None, "人口", ["姓名"], where="n = 7")
    try:
        assert whole.estimated_rows == 60_002 and some.estimated_rows is None
    finally:
        whole.close()
        some.close()
    with psycopg.connect(pg, autocommit=True) as conn:
        conn.execute("CREATE TABLE fresh AS SELECT 1 AS id")  # never analyzed: reltuples is -1 on PostgreSQL 14+
    fresh = postgres_fast.PgRead(pg, None, "fresh", ["id"])
    try:
        assert fresh.estimated_rows is None
    finally:
        fresh.close()
