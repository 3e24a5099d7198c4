"""Deletions at the source reach std without a full refresh: the key-only check reads only the primary key
(SQLite and PostgreSQL), writes deletion rows for keys gone, and is scheduled from the registry."""

from __future__ import annotations

import sqlite3
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import pyarrow.compute as pc
import pytest
from conftest import TEST_DEPARTMENT

from pipelines.errors import ConfigError
from pipelines.ingest import ingest_table
from pipelines.lake.catalog import get_catalog
from pipelines.registry import SourceSystem, get_system, parse_yaml_model
from pipelines.settings import PROJECT_ROOT, TZ, Settings, load_settings

AT = datetime(2026, 11, 20, 2, tzinfo=TZ)


def _system(url: str) -> SourceSystem:
    return SourceSystem.model_validate({
        "system": "hr", "name": "人事", "department": TEST_DEPARTMENT, "connection": "src_hr_del", "default_url": url,
        "tables": [{"code": "staff", "source": "staff", "primary_key": ["id"], "cursor": "updated_at",
                    "deletions": {"check": "key_only", "schedule": "0 3 * * 0"}}]})


def _raw(settings: Settings):  # noqa: ANN202
    return get_catalog(settings).load_table("raw.hr__staff").scan().to_arrow()


def _check(system: SourceSystem, settings: Settings, batch: str, at: datetime):  # noqa: ANN202
    return ingest_table(system, "staff", settings=settings, mode="deletions", batch_id=batch, extracted_at=at)


def test_key_only_check_records_deletions_and_reads_only_the_key_sqlite(tmp_path: Path,
                                                                       lake_settings: Settings) -> None:
    db = tmp_path / "hr.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE staff (id INTEGER, name TEXT, salary INTEGER, updated_at DATETIME)")
    con.executemany("INSERT INTO staff VALUES (?, ?, ?, ?)",
                    [(i, f"员工{i}", 1000 + i, "2026-11-01 08:00:00") for i in range(20)])
    con.commit()
    system = _system(f"sqlite:///{db}")
    ingest_table(system, "staff", settings=lake_settings, batch_id="b1", extracted_at=AT)
    con.execute("DELETE FROM staff WHERE id IN (3, 4)")
    con.commit()
    incremental = ingest_table(system, "staff", settings=lake_settings, batch_id="b2",
                               extracted_at=AT + timedelta(hours=1))
    assert incremental.rows_deleted == 0  # a cursor table does not see deletions otherwise
    # A value no full read could convert: the check must not read this column at all.
    con.execute("UPDATE staff SET salary = 'not a number' WHERE id = 5")
    con.commit()
    res = _check(system, lake_settings, "d1", AT + timedelta(hours=2))
    assert (res.mode, res.rows_extracted, res.rows_deleted, res.rows_written) == ("deletions", 18, 2, 2)
    raw = _raw(lake_settings)
    gone = raw.filter(pc.fill_null(raw["_deleted"], False))
    assert sorted(gone["id"].to_pylist()) == [3, 4] and gone["name"].null_count == 2
    assert res.watermark == incremental.watermark  # the check moves no watermark
    again = _check(system, lake_settings, "d2", AT + timedelta(hours=3))
    assert again.rows_deleted == 0 and again.snapshot_id == res.snapshot_id  # nothing new: no snapshot


def test_key_only_check_postgresql_reads_only_the_key(pg_url: str, lake_settings: Settings) -> None:
    """Run as a role that may read only the key column: any other column read would be refused."""
    import psycopg

    plain = pg_url.replace("+psycopg", "")
    role = f"keyonly_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(plain, autocommit=True) as con:
        con.execute("CREATE TABLE staff (id bigint PRIMARY KEY, name text, updated_at timestamp)")
        con.execute("INSERT INTO staff SELECT g, '员工' || g, timestamp '2026-11-01 08:00' FROM generate_series(1, 5000) g")
        con.execute("ANALYZE staff")
    system = _system(pg_url)
    ingest_table(system, "staff", settings=lake_settings, batch_id="b1", extracted_at=AT)
    with psycopg.connect(plain, autocommit=True) as con:
        con.execute("DELETE FROM staff WHERE id % 1000 = 7")
        con.execute(f"CREATE ROLE {role} LOGIN")
        con.execute(f"GRANT SELECT (id) ON staff TO {role}")
    try:
        keys_only = SourceSystem.model_validate({**_system(pg_url).model_dump(),
                                                 "default_url": pg_url.replace("postgres@", f"{role}@")})
        res = _check(keys_only, lake_settings, "d1", AT + timedelta(hours=1))
        assert (res.rows_extracted, res.rows_deleted) == (4995, 5)
        raw = _raw(lake_settings)
        assert sorted(raw.filter(pc.fill_null(raw["_deleted"], False))["id"].to_pylist()) == [7, 1007, 2007, 3007, 4007]
    finally:
        with psycopg.connect(plain, autocommit=True) as con:
            con.execute(f"REVOKE ALL ON staff FROM {role}")
            con.execute(f"DROP ROLE {role}")


def test_deletions_reach_std_through_the_gate(lake_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.quality.gate import run_quality
    from pipelines.seed import seed_city

    monkeypatch.setenv("CITYLAKE_REGISTRY_DIR", str(PROJECT_ROOT / "schemas" / "sources"))
    settings = load_settings()
    seed_city(settings.data_dir, scale=0.01)
    system = get_system(settings.registry_dir, "population")
    ingest_table(system, "person", settings=settings, batch_id="b1", extracted_at=AT)
    run_quality("person", settings=settings, reference_date=AT.date())
    std = get_catalog(settings).load_table("std.person")
    published = std.scan(selected_fields=("resident_id",)).to_arrow()["resident_id"].to_pylist()
    con = sqlite3.connect(settings.data_dir / "sources" / "population.db")
    gone = [r for (r,) in con.execute("SELECT resident_id FROM person ORDER BY rowid") if r in set(published)][:3]
    con.executemany("DELETE FROM person WHERE resident_id = ?", [(g,) for g in gone])
    con.commit()
    res = ingest_table(system, "person", settings=settings, mode="deletions", batch_id="d1",
                       extracted_at=AT + timedelta(days=1))
    assert res.rows_deleted == 3
    raw = get_catalog(settings).load_table(res.identifier).scan(
        selected_fields=("resident_id", "_deleted", "_batch_id")).to_arrow()
    marked = raw.filter(pc.fill_null(raw["_deleted"], False))
    assert sorted(marked["resident_id"].to_pylist()) == sorted(gone)  # exactly the gone keys, each once
    live = {r for (r,) in con.execute("SELECT resident_id FROM person")}
    assert not live & set(marked["resident_id"].to_pylist())  # no key still at the source got one
    run_quality("person", settings=settings, reference_date=AT.date(), run_id="after_check")
    left = set(get_catalog(settings).load_table("std.person").scan(selected_fields=("resident_id",))
               .to_arrow()["resident_id"].to_pylist())
    assert not set(gone) & left and len(left) == len(set(published)) - len(gone)


def test_key_restored_with_identical_values_is_live_again(lake_settings: Settings,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A deleted key that comes back at the source unchanged (same cursor, inside the lookback) is a new
    version: its deletion row (null cursor) is newer than the old live row the window scan finds."""
    from pipelines.quality.gate import run_quality
    from pipelines.seed import seed_city

    monkeypatch.setenv("CITYLAKE_REGISTRY_DIR", str(PROJECT_ROOT / "schemas" / "sources"))
    settings = load_settings()
    seed_city(settings.data_dir, scale=0.01)
    system = get_system(settings.registry_dir, "population")
    ingest_table(system, "person", settings=settings, batch_id="b1", extracted_at=AT)
    run_quality("person", settings=settings, reference_date=AT.date(), run_id="first")

    def std_keys() -> set[str]:
        return set(get_catalog(settings).load_table("std.person").scan(selected_fields=("resident_id",))
                   .to_arrow()["resident_id"].to_pylist())

    published = std_keys()
    con = sqlite3.connect(settings.data_dir / "sources" / "population.db")
    names = [d[0] for d in con.execute("SELECT * FROM person LIMIT 0").description]
    # The newest published row: inside the incremental window's lookback.
    row = next(r for r in con.execute("SELECT * FROM person ORDER BY updated_at DESC, rowid")
               if r[names.index("resident_id")] in published)
    key = row[names.index("resident_id")]
    con.execute("DELETE FROM person WHERE resident_id = ?", (key,))
    con.commit()
    assert ingest_table(system, "person", settings=settings, mode="deletions", batch_id="d1",
                        extracted_at=AT + timedelta(hours=1)).rows_deleted == 1
    run_quality("person", settings=settings, reference_date=AT.date(), run_id="deleted")
    assert key not in std_keys()

    con.execute(f"INSERT INTO person VALUES ({', '.join('?' * len(names))})", row)
    con.commit()
    back = ingest_table(system, "person", settings=settings, batch_id="b2", extracted_at=AT + timedelta(hours=2))
    assert back.rows_written == 1  # only the restored key; every other row in the window is unchanged
    raw = get_catalog(settings).load_table(back.identifier).scan(
        selected_fields=("resident_id", "_batch_id")).to_arrow()
    assert raw.filter(pc.equal(raw["_batch_id"], "b2"))["resident_id"].to_pylist() == [key]
    run_quality("person", settings=settings, reference_date=AT.date(), run_id="restored")
    assert std_keys() == published


def test_registry_setting_is_validated_and_scheduled(tmp_path: Path) -> None:
    table = {"code": "t", "source": "t", "primary_key": ["id"]}
    base = {"system": "s", "name": "测试", "department": TEST_DEPARTMENT, "connection": "c"}
    path = tmp_path / "s.yml"
    import yaml

    path.write_text(yaml.safe_dump({**base, "tables": [{**table, "deletions": {"schedule": "0 3 * * 0"}}]},
                                   allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError, match="without a cursor"):  # it would silently never run
        parse_yaml_model(path, SourceSystem)
    path.write_text(yaml.safe_dump({**base, "tables": [{**table, "cursor": "u", "deletions": {"schedule": "weekly"}}]},
                                   allow_unicode=True), encoding="utf-8")
    with pytest.raises(ConfigError, match="cron"):
        parse_yaml_model(path, SourceSystem)
    check = _system("sqlite://").tables[0].deletions
    assert check is not None
    saturday, sunday = datetime(2026, 11, 28, 1, tzinfo=TZ), datetime(2026, 11, 29, 1, tzinfo=TZ)
    assert not check.due(saturday - timedelta(days=1), saturday)
    assert check.due(saturday, sunday + timedelta(days=1))  # the run whose interval holds Sunday 03:00


def test_cli_deletions_flag(tmp_path: Path, lake_settings: Settings) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app

    db = tmp_path / "hr.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE staff (id INTEGER, name TEXT, updated_at DATETIME)")
    con.executemany("INSERT INTO staff VALUES (?, ?, '2026-11-01 08:00:00')", [(i, f"员工{i}") for i in range(5)])
    con.commit()
    (lake_settings.registry_dir / "hr.yml").write_text(
        f"system: hr\nname: 人事\ndepartment: {TEST_DEPARTMENT}\nconnection: src_hr_cli\ndefault_url: sqlite:///{db}\n"
        "tables:\n  - code: staff\n    source: staff\n    primary_key: [id]\n    cursor: updated_at\n"
        "    deletions: {check: key_only, schedule: '0 3 * * 0'}\n", encoding="utf-8")
    runner = CliRunner()
    assert runner.invoke(app, ["ingest", "hr"]).exit_code == 0
    con.execute("DELETE FROM staff WHERE id = 2")
    con.commit()
    done = runner.invoke(app, ["ingest", "hr", "--deletions"])
    assert done.exit_code == 0, done.output
    raw = _raw(lake_settings)
    assert raw.filter(pc.fill_null(raw["_deleted"], False))["id"].to_pylist() == [2]
    assert runner.invoke(app, ["ingest", "hr", "--deletions", "--full-refresh"]).exit_code != 0


def test_dag_checks_deletions_after_the_loads_and_before_publish(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The factory adds a mapped ``check_deletions`` task for tables with the setting, in the source's pool,
    between the loads and the std publish (DAG id policy unchanged)."""
    import importlib.util

    reg = tmp_path / "registry"
    reg.mkdir()
    text = (PROJECT_ROOT / "schemas" / "sources" / "population.yml").read_text(encoding="utf-8")
    (reg / "population.yml").write_text(
        text + "    deletions: {check: key_only, schedule: \"0 3 * * 0\"}\n", encoding="utf-8")
    monkeypatch.setenv("CITYLAKE_REGISTRY_DIR", str(reg))
    spec = importlib.util.spec_from_file_location("ingest_factory_h7", PROJECT_ROOT / "dags" / "ingest_factory.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = module.ingest__population
    assert dag.dag_id == "ingest__population"
    check = dag.get_task("check_deletions")
    assert check.pool == "source__population" and check.retries == 3
    assert "load_table" in check.upstream_task_ids
    assert "check_deletions" in dag.get_task("publish_std").upstream_task_ids
