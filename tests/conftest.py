"""Shared fixtures. A test whose service is unreachable skips locally and FAILS under CI=true."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from pathlib import Path
from typing import NoReturn

import pytest

from pipelines.settings import Settings, load_settings

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(message: str) -> NoReturn:
    """A service, program or font the test needs is missing: skip locally, fail under CI=true (never pass by skipping)."""
    if IN_CI:
        pytest.fail(f"CI=true and {message}")
    pytest.skip(message)


def require_service(name: str, host: str, port: int) -> None:
    """Skip (locally) or fail (CI=true) when a service the test needs is not listening."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError as exc:
        unavailable(f"{name} at {host}:{port} is unreachable ({exc})")


def require_binary(name: str) -> str:
    """The path of a program the test drives (Chromium): skip locally, fail under CI=true, when missing."""
    import shutil

    found = shutil.which(name)
    if found:
        return found
    unavailable(f"{name} is not installed (make test installs it from Debian's packages)")


def require_cjk_font() -> str:
    """The family of an installed font with Chinese glyphs (fontconfig's view, which Chromium uses): skip
    locally, fail under CI=true, when there is none, since every Chinese character would be an empty box."""
    import shutil
    import subprocess

    fc_list = shutil.which("fc-list")
    found = subprocess.run([fc_list, ":lang=zh", "family"], capture_output=True, text=True).stdout if fc_list else ""
    families = sorted(f.split(",")[0].strip() for f in found.splitlines() if f.strip())
    if families:
        return families[0]
    unavailable("no font with Chinese glyphs is installed (make test installs fonts-noto-cjk from Debian's packages)")


def apply_edits(path: Path, edits: tuple[tuple[str, str], ...]) -> list[int]:
    """Apply ``(old, new)`` text edits to one config file (each ``old`` must occur once); the line each starts on,
    so a test can require the loader's error to name it."""
    lines = []
    for old, new in edits:
        text = path.read_text(encoding="utf-8")
        assert text.count(old) == 1, old
        lines.append(text[: text.index(old)].count("\n") + 1)
        path.write_text(text.replace(old, new), encoding="utf-8")
    return lines


@contextmanager
def scoped_env(env: dict[str, str]) -> Iterator[None]:
    """Set environment variables for a module-scoped fixture and restore them afterwards."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session", autouse=True)
def _airflow_bound_to_a_migrated_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Airflow binds its metadata database when first imported in a process, for the rest of the session.
    Serially, test_alerts' fixture happened to import it first (migrated); under pytest-xdist each worker runs
    its own mix of files, and a module importing Airflow first with no home set bound an unmigrated database
    ("no such table: slot_pool"). So every worker binds one migrated database before any test, exactly as
    test_alerts did (environment restored afterwards; module fixtures still migrate and point at their own)."""
    from pipelines.demo import airflow_env, prepare_airflow
    from pipelines.settings import PROJECT_ROOT

    home = tmp_path_factory.mktemp("airflow_session")
    with scoped_env(airflow_env(PROJECT_ROOT, home)):
        prepare_airflow(PROJECT_ROOT, home)
        # logging is configured at the first import too: before any test's caplog starts
        import airflow.providers.http.notifications.http  # noqa: F401
        import airflow.providers.smtp.notifications.smtp  # noqa: F401
        import airflow.settings  # noqa: F401
    yield


@pytest.fixture
def s3_lake(tmp_path: Path, moto_endpoint: str, aws_env: None, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A lake whose warehouse and rejected area are in a fresh moto bucket (catalog: SQLite under tmp_path)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    bucket = f"lake-{tmp_path.name.lower().replace('_', '-')[-20:]}"
    s3.create_bucket(Bucket=bucket)
    monkeypatch.setenv("CITYLAKE_LAKE_DIR", str(tmp_path / "lake"))
    monkeypatch.setenv("CITYLAKE_WAREHOUSE", f"s3://{bucket}/warehouse")
    monkeypatch.setenv("CITYLAKE_REJECTED_DIR", f"s3://{bucket}/rejected")
    monkeypatch.setenv("CITYLAKE_S3_ENDPOINT", moto_endpoint)
    return load_settings()


@pytest.fixture
def lake_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings with a fresh local lake (SQLite catalog) and registry folder under tmp_path."""
    (tmp_path / "registry").mkdir()
    monkeypatch.setenv("CITYLAKE_LAKE_DIR", str(tmp_path / "lake"))
    monkeypatch.setenv("CITYLAKE_REGISTRY_DIR", str(tmp_path / "registry"))
    monkeypatch.setenv("CITYLAKE_DATA_DIR", str(tmp_path / "data"))
    return load_settings()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A scratch PostgreSQL database, dropped afterwards."""
    require_service("PostgreSQL", "127.0.0.1", 5432)
    import psycopg

    name = f"citylake_test_{uuid.uuid4().hex[:8]}"
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def mysql_url() -> Iterator[str]:
    """A scratch MariaDB database, dropped afterwards."""
    require_service("MariaDB", "127.0.0.1", 3306)
    import pymysql

    name = f"citylake_test_{uuid.uuid4().hex[:8]}"
    conn = pymysql.connect(host="127.0.0.1", user="root", password="", charset="utf8mb4", autocommit=True)
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield f"mysql+pymysql://root@127.0.0.1:3306/{name}?charset=utf8mb4"
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """An S3 endpoint served by moto's server mode over HTTP (boto3 and pyarrow both talk to it)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


TEST_DEPARTMENT = "11340100003009991Q"
"""合肥市数据资源局 in schemas/departments.yml: the department registry files and contracts written by tests name
(a real entry, so the production registry carries no test-only department into the report)."""


SITE_REF = date(2026, 11, 20)
"""The seeded city's reference date (the quality gate's ``reference_date``) in the report fixtures."""


@pytest.fixture(scope="session")
def seeded_city_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Path, dict[str, str]]:
    """Built once per session for test_report.py and test_report_browser.py (the slowest fixture of both):
    the seeded city (scale 0.05) through the gate (quarantined rows, conflicts between copies, a mostly-bad
    enterprise batch held), one registration recorded (enterprise), GX Data Docs built first as
    report__quality does, then the site. Returns (settings, site root, the environment it was built in);
    use ``city_site``, which sets that environment for the module using it (never for the whole session)."""
    from pipelines.settings import PROJECT_ROOT, TZ

    base = tmp_path_factory.mktemp("report")
    env = {"CITYLAKE_LAKE_DIR": str(base / "lake"), "CITYLAKE_DATA_DIR": str(base / "data"),
           "CITYLAKE_REGISTRY_DIR": str(PROJECT_ROOT / "schemas" / "sources"), "CITYLAKE_ROOT": str(PROJECT_ROOT)}
    with scoped_env(env):
        from pipelines.catalog.registration import register
        from pipelines.ingest import ingest_table
        from pipelines.quality.consistency import run_consistency
        from pipelines.quality.docs import build_data_docs
        from pipelines.quality.gate import QualityGateError, load_config, run_quality
        from pipelines.registry import load_registry
        from pipelines.report import build_site
        from pipelines.seed import corrupt_enterprise_uscc, seed_city

        settings = load_settings()
        seed_city(settings.data_dir, scale=0.05)
        systems, _ = load_registry(settings.registry_dir)
        for system in systems.values():
            for table in system.all_tables:
                ingest_table(system, table.code, settings=settings, batch_id="seed",
                             extracted_at=datetime(2026, 11, 20, 2, tzinfo=TZ))
        _standards, _systems, contracts = load_config(settings)
        for name in contracts:
            run_quality(name, settings=settings, reference_date=SITE_REF)
        run_consistency(settings=settings)
        assert corrupt_enterprise_uscc(settings.data_dir, "2026-11-20 01:00:00") > 100
        ingest_table(systems["enterprise"], "enterprise", settings=settings, batch_id="bad",
                     extracted_at=datetime(2026, 11, 20, 3, tzinfo=TZ))
        with pytest.raises(QualityGateError):
            run_quality("enterprise", settings=settings, reference_date=SITE_REF)
        register(settings, "enterprise", "GJDJ-2026-000123", "2026-11-01")  # the catalog shows 已登记 and 未登记
        build_data_docs(settings)  # as report__quality does first: the site links the engineers' pages
        index = build_site(settings, out_dir=base / "report")
        assert index == base / "report" / "index.html" and index.is_file()
    return settings, index.parent, env


@pytest.fixture(scope="module")
def city_site(seeded_city_report: tuple[Settings, Path, dict[str, str]]) -> Iterator[tuple[Settings, Path]]:
    """(settings, site root) of the seeded city's report, with its environment set for this module."""
    settings, root, env = seeded_city_report
    with scoped_env(env):
        yield settings, root
