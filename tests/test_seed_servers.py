"""``citylake platform seed-sources``: the synthetic city's SQL systems on PostgreSQL and MariaDB, one database
per system, read by ``ingest`` through ``CITYLAKE_CONN_*`` exactly as from the seed's SQLite files."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from pipelines.cli import app
from pipelines.ingest import ingest_table
from pipelines.lake.catalog import get_catalog
from pipelines.registry import get_system
from pipelines.seed.servers import MYSQL_SYSTEMS, server_of
from pipelines.settings import PROJECT_ROOT, TZ, Settings

SCALE = "0.01"  # 200 residents, 40 firms: the minimum each table keeps
SYSTEMS = ("population", "social_insurance", "housing_fund", "enterprise", "credit", "poi")
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
MYSQL_ADMIN = "mysql+pymysql://root@127.0.0.1:3306/?charset=utf8mb4"


@pytest.fixture
def servers(pg_url: str, mysql_url: str) -> Iterator[tuple[str, str]]:
    """A database-name prefix and a read-only account on both servers; the seeded databases and the account
    are dropped afterwards (``pg_url``/``mysql_url`` only to require both servers)."""
    tag = uuid.uuid4().hex[:8]
    prefix, reader = f"citylake_t{tag}_", f"citylake_reader_{tag}"
    pg = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    my = sa.create_engine(MYSQL_ADMIN, isolation_level="AUTOCOMMIT")
    with pg.connect() as conn:
        conn.exec_driver_sql(f'CREATE ROLE "{reader}" LOGIN')
    with my.connect() as conn:
        conn.exec_driver_sql(f"CREATE USER '{reader}'@'%%'")
    try:
        yield prefix, reader
    finally:
        with pg.connect() as conn:
            for system in SYSTEMS:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{prefix}{system}" WITH (FORCE)')
            conn.exec_driver_sql(f'DROP ROLE IF EXISTS "{reader}"')
        with my.connect() as conn:
            for system in SYSTEMS:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{prefix}{system}`")
            conn.exec_driver_sql(f"DROP USER IF EXISTS '{reader}'@'%%'")
        pg.dispose()
        my.dispose()


def _source_rows(settings: Settings, identifier: str) -> pa.Table:
    """The source's columns of a raw table, in key order (the lake's own ``_`` columns left out)."""
    table = get_catalog(settings).load_table(identifier).scan().to_arrow()
    return table.select([n for n in table.column_names if not n.startswith("_")])


def test_seed_sources_then_ingest_reads_what_sqlite_holds(servers: tuple[str, str], lake_settings: Settings,
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    prefix, reader = servers
    data_dir = tmp_path / "city"
    monkeypatch.setenv("CITYLAKE_SEED_POSTGRES_URL", PG_ADMIN)
    monkeypatch.setenv("CITYLAKE_SEED_MYSQL_URL", MYSQL_ADMIN)
    args = ["platform", "seed-sources", "--scale", SCALE, "--prefix", prefix, "--reader", reader,
            "--data-dir", str(data_dir)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for system in SYSTEMS:
        assert f"{system}: " in result.output
    assert f"{server_of('population')}" == "postgres" and "enterprise" in MYSQL_SYSTEMS

    # the same system from the server (read-only account) and from the seed's SQLite file: same rows, same types
    registry = PROJECT_ROOT / "schemas" / "sources"
    at = datetime(2026, 11, 20, 12, tzinfo=TZ)
    server_lake = dataclasses.replace(lake_settings, data_dir=data_dir)
    sqlite_lake = dataclasses.replace(lake_settings, data_dir=data_dir, lake_dir=tmp_path / "lake_sqlite",
                                      catalog_uri=f"sqlite:///{tmp_path / 'sqlite_catalog.db'}",
                                      warehouse=f"file://{tmp_path / 'sqlite_warehouse'}")
    checked = {"population": ("person", "resident_id", "postgresql+psycopg://{r}@127.0.0.1:5432/{db}"),
               "enterprise": ("enterprise", "uscc", "mysql+pymysql://{r}@127.0.0.1:3306/{db}?charset=utf8mb4"),
               "poi": ("poi", "poi_id", "mysql+pymysql://{r}@127.0.0.1:3306/{db}?charset=utf8mb4")}  # Chinese names
    for system_code, (table, key, url) in checked.items():
        system = get_system(registry, system_code)
        env = f"CITYLAKE_CONN_{system.connection.upper()}"
        monkeypatch.delenv(env, raising=False)
        from_sqlite = ingest_table(system, table, settings=sqlite_lake, batch_id="b1", extracted_at=at)
        monkeypatch.setenv(env, url.format(r=reader, db=prefix + system_code))
        from_server = ingest_table(system, table, settings=server_lake, batch_id="b1", extracted_at=at)
        assert from_server.rows_written == from_sqlite.rows_written > 0, system_code
        a = _source_rows(server_lake, system.raw_table(table))
        b = _source_rows(sqlite_lake, system.raw_table(table))
        assert a.schema == b.schema, (system_code, a.schema, b.schema)
        order = [(key, "ascending"), ("updated_at", "ascending")]
        assert a.sort_by(order).to_pylist() == b.sort_by(order).to_pylist(), system_code

    # a second run with --keep-existing leaves every seeded system as it is
    again = CliRunner().invoke(app, [*args, "--keep-existing"])
    assert again.exit_code == 0, again.output
    assert again.output.count("kept (already present)") == len(SYSTEMS), again.output


def test_seed_sources_unreachable_server_is_one_line_without_password(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [
        "platform", "seed-sources", "--scale", SCALE, "--data-dir", str(tmp_path / "city"),
        "--postgres", "postgresql+psycopg://seed:s3cret-pw@127.0.0.1:1/postgres",
        "--mysql", "mysql+pymysql://root:s3cret-pw@127.0.0.1:1/"])
    assert result.exit_code == 1
    assert "s3cret-pw" not in result.output
    assert "error: platform seed-sources: system " in result.output


def _small_sqlite(path: Path) -> None:
    """Two tables (3 and 2 rows), as seed_city writes a system's file."""
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE person (resident_id TEXT, name TEXT, updated_at DATETIME)")
        conn.exec_driver_sql("CREATE TABLE household (household_id TEXT, size INTEGER)")
        conn.exec_driver_sql("INSERT INTO person VALUES ('p1', '张三', '2026-11-01 08:00:00'), "
                             "('p2', '李四', '2026-11-02 08:00:00'), ('p3', '王五', '2026-11-03 08:00:00')")
        conn.exec_driver_sql("INSERT INTO household VALUES ('h1', 2), ('h2', 3)")
    engine.dispose()


@pytest.mark.parametrize("server", ["mysql", "postgres"])
def test_keep_existing_redoes_a_partial_seed(server: str, tmp_path: Path, request: pytest.FixtureRequest,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A seeder killed mid-copy must not leave a system that the next start keeps as "already present": on
    MariaDB each CREATE TABLE commits at once, so the tables of a half-done copy stay behind, empty or partial.
    Only the marker written last (_citylake_seed, the tables' row counts) makes a system complete."""
    from pipelines.seed import servers as seeding

    url = request.getfixturevalue("mysql_url" if server == "mysql" else "pg_url")
    sqlite_path = tmp_path / "population.db"
    _small_sqlite(sqlite_path)
    want = {"person": 3, "household": 2}
    target = sa.create_engine(url)

    # 1. the seeder dies while copying the second table: no marker, so --keep-existing copies again
    real_rows = seeding._rows

    def dying_rows(source: sa.Engine, table: sa.Table) -> Iterator[list[dict]]:
        if table.name == sorted(want)[1]:
            raise sa.exc.OperationalError("INSERT", {}, Exception("server has gone away"))
        yield from real_rows(source, table)

    monkeypatch.setattr(seeding, "_rows", dying_rows)
    with pytest.raises(sa.exc.OperationalError):
        seeding.copy_sqlite(sqlite_path, url)
    monkeypatch.setattr(seeding, "_rows", real_rows)
    present = set(sa.inspect(target).get_table_names())
    if server == "mysql":  # what the finding is about: the half-done copy's tables are there
        assert set(want) <= present, present
    assert seeding.MARKER not in present and seeding.seeded_counts(target) is None
    assert seeding.copy_sqlite(sqlite_path, url, keep_existing=True) == want  # redone, not kept
    assert seeding.seeded_counts(target) == want

    # 2. complete: kept as it is
    assert seeding.copy_sqlite(sqlite_path, url, keep_existing=True) is None

    # 3. tables emptied since (or a marker from another city): the marker no longer matches, copied again
    with target.begin() as conn:
        conn.execute(sa.text("DELETE FROM household"))
    assert seeding.copy_sqlite(sqlite_path, url, keep_existing=True) == want
    with target.connect() as conn:
        assert conn.execute(sa.text("SELECT COUNT(*) FROM household")).scalar_one() == 2
    # 4. a city of another size in the SQLite file: redone as well
    extra = sa.create_engine(f"sqlite:///{sqlite_path}")
    with extra.begin() as conn:
        conn.exec_driver_sql("INSERT INTO household VALUES ('h3', 1)")
    extra.dispose()
    assert seeding.copy_sqlite(sqlite_path, url, keep_existing=True) == {"person": 3, "household": 3}
    target.dispose()


def test_seed_sources_malformed_url_is_one_line_without_password(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [
        "platform", "seed-sources", "--scale", SCALE, "--data-dir", str(tmp_path / "city"),
        "--postgres", "postgresql+psycopg://seed:s3cret-pw@127.0.0.1:notaport/postgres",
        "--mysql", "mysql+pymysql://root:s3cret-pw@127.0.0.1:1/"])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "s3cret-pw" not in result.output and "Traceback" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "--postgres server URL (postgresql+psycopg://***) is not a valid SQLAlchemy URL" \
        in error[0], result.output
