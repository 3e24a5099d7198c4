"""Real servers: PostgreSQL and MariaDB sources, the Iceberg catalog on PostgreSQL, unreachable hosts."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa
from conftest import TEST_DEPARTMENT

from pipelines.errors import SourceError
from pipelines.ingest import ingest_table
from pipelines.lake.catalog import get_catalog
from pipelines.registry import SourceSystem
from pipelines.settings import TZ, Settings, load_settings

DDL = {
    "postgresql": 'CREATE TABLE "居民" ("证件号码" varchar(18) primary key, "姓名" text, amount numeric(18,2), '
                  'birth date, n integer, updated_at timestamp)',
    "mysql": "CREATE TABLE `居民` (`证件号码` varchar(18) primary key, `姓名` text, amount decimal(18,2), "
             "birth date, n int, updated_at datetime) DEFAULT CHARSET=utf8mb4",
}


def _system(code: str) -> SourceSystem:
    return SourceSystem.model_validate({
        "system": code, "name": "居民库", "department": TEST_DEPARTMENT, "connection": f"src_{code}", "lookback_hours": 1,
        "tables": [{"code": "person", "source": "居民", "primary_key": ["resident_id"], "cursor": "updated_at",
                    "columns": {"证件号码": "resident_id", "姓名": "name"}}],
    })


def _fill(url: str, rows: int = 300) -> sa.Engine:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql(DDL[engine.dialect.name])
        conn.execute(sa.text('INSERT INTO 居民 VALUES (:a, :b, :c, :d, :e, :f)'.replace("居民", _q(engine, "居民"))),
                     [{"a": f"34010419900101{i:04d}", "b": f"张{i}", "c": Decimal(i) / 4, "d": date(1990, 1, 1 + i % 28),
                       "e": i, "f": datetime(2026, 11, 1 + i % 10, 8, 0, 0)} for i in range(rows)])
    return engine


def _q(engine: sa.Engine, name: str) -> str:
    return engine.dialect.identifier_preparer.quote(name)


@pytest.fixture(params=["postgresql", "mysql"])
def source_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("pg_url" if request.param == "postgresql" else "mysql_url")


def test_load_types_and_incremental(source_url: str, lake_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = _fill(source_url)
    code = "srv_" + engine.dialect.name
    monkeypatch.setenv(f"CITYLAKE_CONN_SRC_{code.upper()}", source_url)
    system = _system(code)
    first = ingest_table(system, "person", settings=lake_settings, batch_id="b1",
                         extracted_at=datetime(2026, 11, 11, tzinfo=TZ))
    assert first.rows_written == 300 and first.watermark == "2026-11-10T08:00:00+08:00"
    table = get_catalog(lake_settings).load_table(f"raw.{code}__person")
    data = table.scan().to_arrow().sort_by("resident_id")
    assert str(data.schema.field("amount").type) == "decimal128(18, 2)"
    assert str(data.schema.field("birth").type) == "date32[day]"
    row = data.slice(5, 1).to_pylist()[0]
    assert row["name"] == "张5" and row["amount"] == Decimal("1.25") and row["birth"] == date(1990, 1, 6)
    # naive source DATETIME is Asia/Shanghai: 2026-11-06 08:00 +08:00 == 00:00 UTC
    assert row["updated_at"] == datetime(2026, 11, 6, 0, 0, tzinfo=UTC)

    with engine.begin() as conn:
        person = _q(engine, "居民")
        conn.exec_driver_sql(f"UPDATE {person} SET amount = 99.99, updated_at = '2026-11-10 09:00:00' "
                             f"WHERE n IN (1, 2)")
        conn.exec_driver_sql(f"INSERT INTO {person} VALUES ('340104199001019999', '新', 1.00, '1990-01-01', 999, "
                             f"'2026-11-10 08:00:00')")  # equal to the watermark
    second = ingest_table(system, "person", settings=lake_settings, batch_id="b2",
                          extracted_at=datetime(2026, 11, 11, 1, tzinfo=TZ))
    assert second.rows_written == 3
    assert get_catalog(lake_settings).load_table(f"raw.{code}__person").scan().to_arrow().num_rows == 303
    engine.dispose()


def test_catalog_on_postgresql(pg_url: str, lake_settings: Settings, monkeypatch: pytest.MonkeyPatch,
                               tmp_path) -> None:  # noqa: ANN001
    import sqlite3

    src = tmp_path / "src.db"
    con = sqlite3.connect(src)
    con.execute("CREATE TABLE t (id INTEGER, v TEXT)")
    con.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"值{i}") for i in range(50)])
    con.commit()
    monkeypatch.setenv("CITYLAKE_CATALOG_URI", pg_url)
    settings = load_settings()
    system = SourceSystem.model_validate({
        "system": "cat", "name": "目录测试", "department": TEST_DEPARTMENT, "connection": "src_cat",
        "default_url": f"sqlite:///{src}", "tables": [{"code": "t", "source": "t", "primary_key": ["id"]}],
    })
    res = ingest_table(system, "t", settings=settings, batch_id="b1", extracted_at=datetime(2026, 11, 1, tzinfo=TZ))
    assert res.rows_written == 50
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        names = {r[0] for r in conn.exec_driver_sql("SELECT table_name FROM iceberg_tables")}
    engine.dispose()
    assert "cat__t" in names
    assert get_catalog(settings).load_table("raw.cat__t").scan().to_arrow().num_rows == 50


def test_unreachable_source_names_system_and_host_never_the_password(
        lake_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = f"s3cret{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("CITYLAKE_CONN_SRC_DOWN", f"postgresql://citylake:{secret}@127.0.0.1:1/nowhere")
    system = SourceSystem.model_validate({
        "system": "down", "name": "不可达", "department": TEST_DEPARTMENT, "connection": "src_down",
        "tables": [{"code": "t", "source": "t", "primary_key": ["id"]}],
    })
    with pytest.raises(SourceError) as info:
        ingest_table(system, "t", settings=lake_settings, batch_id="b1", extracted_at=datetime(2026, 11, 1, tzinfo=TZ))
    message = str(info.value)
    assert "down" in message and "127.0.0.1:1" in message
    assert secret not in message and "\n" not in message
