"""The synthetic city's SQL systems on real database servers: the compose platform's sample sources.

``seed_city`` writes each SQL system as a SQLite file (``<data>/sources/<system>.db``). Here each of those
files is copied into a database of its own on a PostgreSQL or MariaDB server, so a ``CITYLAKE_CONN_<ID>`` URL
names one database per system (``…/population``), exactly as a department's own server would be reached.
Column names and types are kept as the SQLite file declares them (TEXT, DATE, DATETIME, NUMERIC(p,s),
REAL → DOUBLE), so ``ingest`` reads the same Arrow types and rows from either.

Which server holds which system: the person-centred systems (公安, 人社, 公积金) on PostgreSQL, the
legal-person and map systems (市场监管, 信用, 自然资源) on MariaDB; a system in neither list goes to PostgreSQL.

A completed copy ends with a marker table, ``_citylake_seed`` (each table's name and row count), written
last. ``--keep-existing`` keeps a system only when its marker matches the SQLite file: a seeder killed
mid-copy (on MariaDB every CREATE/DROP commits at once, so a half-done copy stays) leaves no marker or a
stale one, and the next start copies that system again.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy import types as T
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import URL, Engine, make_url

from pipelines.connections import describe, scrub
from pipelines.errors import CitylakeError

Server = Literal["postgres", "mysql"]
MYSQL_SYSTEMS = ("enterprise", "credit", "poi")
"""Systems placed on MariaDB; every other SQL system of the seeded city goes to PostgreSQL."""
BATCH_ROWS = 5_000
MARKER = "_citylake_seed"
"""Table written last in each seeded database: (table_name, row_count) of every table copied."""
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def server_of(system: str) -> Server:
    return "mysql" if system in MYSQL_SYSTEMS else "postgres"


@dataclass
class SeededSystem:
    system: str
    server: Server
    url: str
    """SQLAlchemy URL of the system's database (with the seeding account's credentials: never print it)."""
    tables: dict[str, int] = field(default_factory=dict)
    skipped: bool = False


def _check_name(value: str, what: str) -> str:
    if not _NAME.match(value):
        raise CitylakeError(f"{what} {value!r}: expected lower-case letters, digits and _ (a database name)")
    return value


def _target_type(col: sa.Column) -> Any:
    """The server type of a column reflected from the seed's SQLite file, as ``arrow_type`` reads it back."""
    t = col.type
    if isinstance(t, T.Float):
        return sa.Double()  # SQLite REAL is 8 bytes: PostgreSQL REAL would round to 4
    if isinstance(t, T.Numeric):
        return sa.Numeric(t.precision, t.scale) if t.precision is not None else sa.Numeric()
    if isinstance(t, T.DateTime):
        return sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")  # keep microseconds
    if isinstance(t, T.Date):
        return sa.Date()
    if isinstance(t, T.Integer):
        return sa.BigInteger()  # SQLite INTEGER is 64-bit
    if isinstance(t, T.LargeBinary | T._Binary):
        return sa.LargeBinary()
    return sa.Text()


def _admin_engine(url: str) -> Engine:
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 10})


def _ensure_database(admin: Engine, name: str) -> None:
    quoted = admin.dialect.identifier_preparer.quote(name)
    with admin.connect() as conn:
        if admin.dialect.name == "postgresql":
            if conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first() is None:
                conn.execute(sa.text(f"CREATE DATABASE {quoted} ENCODING 'UTF8' TEMPLATE template0"))
        else:
            conn.execute(sa.text(f"CREATE DATABASE IF NOT EXISTS {quoted} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"))


def _rows(source: Engine, table: sa.Table) -> Iterator[list[dict[str, Any]]]:
    with source.connect() as conn:
        result = conn.execution_options(stream_results=True).execute(sa.select(table))
        for part in result.mappings().partitions(BATCH_ROWS):
            yield [dict(r) for r in part]


def _marker_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(MARKER, metadata, sa.Column("table_name", sa.String(64), primary_key=True),
                    sa.Column("row_count", sa.BigInteger, nullable=False))


def _counts(engine: Engine, tables: list[str]) -> dict[str, int]:
    prep = engine.dialect.identifier_preparer
    with engine.connect() as conn:
        return {t: int(conn.execute(sa.text(f"SELECT COUNT(*) FROM {prep.quote(t)}")).scalar_one()) for t in tables}


def seeded_counts(target: Engine) -> dict[str, int] | None:
    """What the marker of a completed copy records ({table: rows}), or None when there is no marker."""
    if MARKER not in sa.inspect(target).get_table_names():
        return None
    marker = _marker_table(sa.MetaData())
    with target.connect() as conn:
        return {r.table_name: int(r.row_count) for r in conn.execute(sa.select(marker))}


def _complete(target: Engine, expected: dict[str, int]) -> bool:
    """The marker says exactly ``expected`` and every table holds that many rows (nothing truncated since)."""
    if seeded_counts(target) != expected:
        return False
    present = set(sa.inspect(target).get_table_names())
    return set(expected) <= present and _counts(target, list(expected)) == expected


def copy_sqlite(sqlite_path: Path, target_url: str, *, keep_existing: bool = False) -> dict[str, int] | None:
    """Copy every table of a SQLite file into the database ``target_url`` names (which must exist): each
    table dropped and recreated with the same column names and types, rows inserted in batches, then the
    ``_citylake_seed`` marker written last. With ``keep_existing``, nothing is touched when the marker of a
    completed copy matches the file's tables and row counts (returns None)."""
    source = sa.create_engine(f"sqlite:///{sqlite_path}")
    target = sa.create_engine(target_url, connect_args={"connect_timeout": 10})
    try:
        reflected = sa.MetaData()
        reflected.reflect(source)
        if MARKER in reflected.tables:
            raise CitylakeError(f"{sqlite_path.name}: has a table named {MARKER}, the seed's own marker")
        if keep_existing and _complete(target, _counts(source, list(reflected.tables))):
            return None
        out = sa.MetaData()
        copies = {name: sa.Table(name, out, *(sa.Column(c.name, _target_type(c), nullable=True) for c in t.columns))
                  for name, t in reflected.tables.items()}
        marker = _marker_table(sa.MetaData())
        # the marker goes first, in a transaction of its own: from here until the end no marker says "done"
        with target.begin() as conn:
            marker.drop(conn, checkfirst=True)
        counts: dict[str, int] = {}
        with target.begin() as conn:  # one transaction on PostgreSQL; on MariaDB the DDL commits as it goes
            out.drop_all(conn, checkfirst=True)
            out.create_all(conn)
            for name, table in reflected.tables.items():
                counts[name] = 0
                for batch in _rows(source, table):
                    conn.execute(copies[name].insert(), batch)
                    counts[name] += len(batch)
        with target.begin() as conn:  # last: the copy above is complete
            marker.create(conn)
            conn.execute(marker.insert(), [{"table_name": t, "row_count": n} for t, n in counts.items()])
        return counts
    finally:
        source.dispose()
        target.dispose()


def _grant_reader(engine: Engine, database: str, reader: str) -> None:
    """Read-only access for the account the lake reads the source with (created by the server's init)."""
    prep = engine.dialect.identifier_preparer
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(sa.text(f"GRANT CONNECT ON DATABASE {prep.quote(database)} TO {prep.quote(reader)}"))
            conn.execute(sa.text(f"GRANT USAGE ON SCHEMA public TO {prep.quote(reader)}"))
            conn.execute(sa.text(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {prep.quote(reader)}"))
        else:
            conn.execute(sa.text(f"GRANT SELECT ON {prep.quote(database)}.* TO :r@'%'"), {"r": reader})


def _parse_url(url: str, kind: Server) -> URL:
    """The admin URL, parsed; an unparseable one is a one-line error naming only its scheme (a traceback or
    the parser's message could quote the password)."""
    try:
        return make_url(url)
    except (sa.exc.ArgumentError, ValueError) as exc:
        scheme = url.split("://", 1)[0] if "://" in url else "?"
        example = ("postgresql+psycopg://postgres:<password>@host:5432/postgres" if kind == "postgres"
                   else "mysql+pymysql://root:<password>@host:3306/?charset=utf8mb4")
        raise CitylakeError(f"the --{kind} server URL ({scheme}://***) is not a valid SQLAlchemy URL "
                            f"({type(exc).__name__}): expected e.g. {example}") from None


def seed_servers(sources_dir: Path, servers: dict[Server, str], *, prefix: str = "", reader: str | None = None,
                 keep_existing: bool = False, progress: Callable[[str], None] | None = None) -> list[SeededSystem]:
    """Copy each ``<system>.db`` of ``sources_dir`` into database ``<prefix><system>`` on its server
    (``server_of``); ``servers`` maps a server kind to an admin URL (any database of that server). The
    databases are created when missing; ``reader``, when given, gets SELECT on each."""
    say = progress or (lambda _m: None)
    if prefix:
        _check_name(prefix, "database prefix")
    if reader:
        _check_name(reader, "reader account")
    parsed = {kind: _parse_url(url, kind) for kind, url in servers.items()}  # every URL before any copy
    done: list[SeededSystem] = []
    for path in sorted(sources_dir.glob("*.db")):
        kind = server_of(path.stem)
        if kind not in servers:
            raise CitylakeError(f"system {path.stem}: no --{kind} server given")
        database = _check_name(prefix + path.stem, "database")
        admin_url = servers[kind]
        url = parsed[kind].set(database=database)
        target_url = url.render_as_string(hide_password=False)
        say(f"{path.stem} → {describe(target_url)}")
        admin = _admin_engine(admin_url)
        try:
            _ensure_database(admin, database)
            counts = copy_sqlite(path, target_url, keep_existing=keep_existing)
            if reader:  # PostgreSQL grants on tables from inside their database
                grantor = admin if kind == "mysql" else _admin_engine(target_url)
                try:
                    _grant_reader(grantor, database, reader)
                finally:
                    if grantor is not admin:
                        grantor.dispose()
        except sa.exc.SQLAlchemyError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CitylakeError(f"system {path.stem} ({describe(target_url)}): {scrub(first, target_url)}") from None
        finally:
            admin.dispose()
        done.append(SeededSystem(path.stem, kind, target_url, counts or {}, skipped=counts is None))
    return done
