"""Relational sources through SQLAlchemy (PostgreSQL, MySQL/MariaDB, SQLite and their relatives).

Rows stream from a server-side cursor in partitions and become Arrow record batches of exact types
(numeric stays decimal, dates stay dates). PostgreSQL takes the Arrow-native fast path in
``postgres_fast`` instead of per-value Python conversion.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, ClassVar

import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy import types as T
from sqlalchemy.engine import Engine

from pipelines.connections import describe, scrub
from pipelines.errors import SourceError
from pipelines.privacy import mask_message, quote
from pipelines.registry import EXTRACT_RANGES, SqlTable
from pipelines.settings import TZ
from pipelines.sql_filter import dialect_of, render_filter


def arrow_type(satype: Any, dialect: str) -> pa.DataType:
    """The exact Arrow type of a reflected column type."""
    if isinstance(satype, T.Boolean):
        return pa.bool_()
    if isinstance(satype, T.BigInteger):
        return pa.int64()
    if isinstance(satype, T.SmallInteger):
        return pa.int16()
    if isinstance(satype, T.Integer):
        return pa.int64() if dialect == "sqlite" else pa.int32()  # SQLite INTEGER is 64-bit
    if isinstance(satype, T.Float):
        return pa.float64()
    if isinstance(satype, T.Numeric):
        if satype.precision is None:
            return pa.decimal128(38, 10)
        return pa.decimal128(satype.precision, satype.scale or 0)
    if isinstance(satype, T.DateTime):
        return pa.timestamp("us", tz="UTC") if getattr(satype, "timezone", False) else pa.timestamp("us")
    if isinstance(satype, T.Date):
        return pa.date32()
    if isinstance(satype, T.Time):
        return pa.time64("us")
    if isinstance(satype, T.LargeBinary | T._Binary):
        return pa.binary()
    return pa.string()


@dataclass(frozen=True)
class SourceColumns:
    source_names: list[str]
    schema: pa.Schema  # named by column code

    def code_of(self, source_name: str) -> str:
        return self.schema.names[self.source_names.index(source_name)]

    def select(self, codes: list[str] | None) -> SourceColumns:
        """Only these column codes, in the given order (None: all)."""
        if codes is None:
            return self
        at = [self.schema.names.index(c) for c in codes]
        return SourceColumns([self.source_names[i] for i in at], pa.schema([self.schema.field(i) for i in at]))


def _cursor_param(value: Any, sa_type: Any, dialect: str) -> Any:
    """Bind a watermark so equality with stored values holds (SQLite compares DATETIME as text)."""
    if isinstance(value, datetime):
        if value.tzinfo is not None and not getattr(sa_type, "timezone", False):
            value = value.astimezone(TZ).replace(tzinfo=None)  # naive source times are Asia/Shanghai
        if dialect == "sqlite":
            fmt = "%Y-%m-%d %H:%M:%S.%f" if value.microsecond else "%Y-%m-%d %H:%M:%S"
            return value.strftime(fmt)
    if isinstance(value, date) and dialect == "sqlite":
        return value.isoformat()
    return value


class SqlSource:
    """One relational source system: an engine with a pool capped at the system's connections."""

    pooled = True  # keep idle connections between uses (one table load uses one at a time)
    connect_args: ClassVar[dict[str, Any]] = {}  # the driver's options a subclass always sets
    mysql_settings = False  # whether the registry's MySQL-family settings (encodings, integer_columns) apply

    def __init__(self, system_code: str, url: str, max_connections: int = 2):
        self.system = system_code
        self.url = url
        self.max_connections = max_connections
        kw: dict[str, Any] = {}
        if not url.startswith("sqlite"):
            kw = {"pool_size": max_connections, "max_overflow": 0, "pool_pre_ping": True} if self.pooled else \
                {"poolclass": sa.pool.NullPool}
            kw["connect_args"] = {"connect_timeout": 10, **self.connect_args}
        self.engine: Engine = sa.create_engine(url, **kw)
        self.dialect = self.engine.dialect.name

    def _fail(self, table: SqlTable | None, exc: BaseException) -> SourceError:
        where = f"system {self.system} ({describe(self.url)})"
        if table is not None:
            where += f", table {table.source!r}"
        first = scrub(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__, self.url)
        first = mask_message(first) or ""  # a driver's message may quote a row's values
        return SourceError(f"{where}: {first}")

    def reflect(self, table: SqlTable) -> sa.Table:
        named = [k for k in ("source_encoding", "column_encodings", "integer_columns") if getattr(table, k)]
        if named and not self.mysql_settings:  # silently ignored, they would land the columns wrong
            raise SourceError(f"system {self.system} ({describe(self.url)}), table {table.source!r}: "
                              f"{', '.join(named)} apply to MySQL-family sources only")
        try:
            insp = sa.inspect(self.engine)
            if not insp.has_table(table.source, schema=table.source_schema):
                if not any(v == table.source for v in insp.get_view_names(schema=table.source_schema)):
                    raise SourceError(
                        f"system {self.system} ({describe(self.url)}): table {table.source!r} does not exist at the source"
                    )
            t = sa.Table(table.source, sa.MetaData(), schema=table.source_schema, autoload_with=self.engine)
            for c in t.columns:  # MySQL's FLOAT/DOUBLE reflect with asdecimal=True, which rounds the driver's
                if isinstance(c.type, T.Float) and c.type.asdecimal:  # float to a 10-digit Decimal: keep the float
                    c.type.asdecimal = False
            return t
        except SourceError:
            raise
        except Exception as exc:
            raise self._fail(table, exc) from None

    def columns(self, table: SqlTable, reflected: sa.Table | None = None) -> SourceColumns:
        t = reflected if reflected is not None else self.reflect(table)
        names = [c.name for c in t.columns]
        fields = [pa.field(table.column_code(c.name), arrow_type(c.type, self.dialect)) for c in t.columns]
        return SourceColumns(names, pa.schema(fields))

    def filter_sql(self, table: SqlTable, t: sa.Table) -> str | None:
        """The registry filter checked against the source's columns (a missing one is a one-line
        ConfigError naming system, table and column) and rendered by sqlglot for this source's dialect."""
        if not table.filter:
            return None
        return render_filter(table.filter, dialect_of(self.dialect), [c.name for c in t.columns],
                             f"system {self.system}, table {table.source!r}")

    def _filter_clause(self, table: SqlTable, t: sa.Table) -> Any:
        rendered = self.filter_sql(table, t)
        # text() would read ':name' inside a string literal as a bind parameter; '\:' is a literal colon.
        return None if rendered is None else sa.text("(" + rendered.replace(":", "\\:") + ")")

    def predicate(self, table: SqlTable, t: sa.Table, cols: SourceColumns,
                  since: Any = None, until: Any = None) -> list[Any]:
        clauses: list[Any] = []
        if table.filter:
            clauses.append(self._filter_clause(table, t))
        if table.cursor and (since is not None or until is not None):
            src = cols.source_names[cols.schema.names.index(table.cursor)]
            col = t.c[src]
            if since is not None:
                clauses.append(col >= self._bind(col, since))
            if until is not None:
                clauses.append(col < self._bind(col, until))
        return clauses

    def _bind(self, col: Any, value: Any) -> Any:
        v = _cursor_param(value, col.type, self.dialect)
        return sa.literal(v, type_=sa.String) if isinstance(v, str) else v

    def batches(self, table: SqlTable, *, since: Any = None, until: Any = None,
                reflected: sa.Table | None = None, only: list[str] | None = None,
                consistent: bool | None = None) -> Iterator[pa.RecordBatch]:
        """Stream the table (or its cursor window) as record batches named by column code; ``only``: just
        these column codes (the key-only deletion check reads the primary key alone). One statement on one
        connection reads one snapshot whatever ``consistent`` says (see ``MySqlSource.batches``)."""
        t = reflected if reflected is not None else self.reflect(table)
        cols = self.columns(table, t)
        picked = cols.select(only)
        stmt = sa.select(*[t.c[n] for n in picked.source_names])
        for clause in self.predicate(table, t, cols, since, until):
            stmt = stmt.where(clause)
        try:
            with self.engine.connect() as conn:
                result = conn.execution_options(stream_results=True, yield_per=table.batch_rows).execute(stmt)
                for rows in result.partitions(table.batch_rows):
                    yield _to_batch(rows, picked.schema, f"system {self.system}, table {table.source!r}")
        except (SourceError, GeneratorExit):
            raise
        except sa.exc.SQLAlchemyError as exc:
            raise self._fail(table, exc) from None

    def count(self, table: SqlTable) -> int:
        t = self.reflect(table)
        stmt = sa.select(sa.func.count()).select_from(t)
        if table.filter:
            stmt = stmt.where(self._filter_clause(table, t))
        with self.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def dispose(self) -> None:
        self.engine.dispose()


def _to_batch(rows: Sequence[Any], schema: pa.Schema, where: str) -> pa.RecordBatch:
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
    arrays = []
    for values, f in zip(columns, schema, strict=True):
        try:
            arrays.append(pa.array(values, type=f.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            arrays.append(_coerce(values, f, where))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _coerce(values: tuple[Any, ...], f: pa.Field, where: str) -> pa.Array:
    """Dynamic-typed sources (SQLite) may hold e.g. an int in a TEXT column: convert exactly or fail clearly."""
    if pa.types.is_string(f.type):
        return pa.array([None if v is None else str(v) for v in values], type=f.type)
    if pa.types.is_decimal(f.type):
        try:
            return pa.array([None if v is None else Decimal(str(v)) for v in values], type=f.type)
        except Exception:
            pass
    bad = next((v for v in values if v is not None and _bad(v, f.type)), None)
    raise SourceError(f"{where}: column {f.name}: value {quote(bad)} is not {f.type}")  # masked: logs, XCom


def _bad(value: Any, t: pa.DataType) -> bool:
    try:
        pa.array([value], type=t)
        return False
    except Exception:
        return True


class PostgresSource(SqlSource):
    """PostgreSQL (and openGauss/KingbaseES): the Arrow-native fast path of ``postgres_fast``.

    Reflection and error handling stay SQLAlchemy's; rows stream through parallel range scans
    decoded straight into Arrow, so numeric stays decimal and dates stay dates without per-value Python.
    Reflection connections are closed after use (no pool): while the ranges stream, the load holds exactly
    its ``connections_per_load`` connections, the pool slots its Airflow task took.
    """

    pooled = False

    def __init__(self, system_code: str, url: str, max_connections: int = 2) -> None:
        super().__init__(system_code, url, max_connections)
        self._columns: dict[str, SourceColumns] = {}

    def _libpq_url(self) -> str:
        return self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)

    def columns(self, table: SqlTable, reflected: sa.Table | None = None) -> SourceColumns:
        from pipelines.extract.postgres_fast import pg_arrow_schema

        # Asked again by the read: once per table and source object (one load), so no second catalog
        # connection opens while the ranges stream.
        if table.code in self._columns:
            return self._columns[table.code]
        t = reflected if reflected is not None else self.reflect(table)
        try:
            schema = pg_arrow_schema(self._libpq_url(), table.source_schema, table.source)
        except Exception as exc:
            raise self._fail(table, exc) from None
        names = [c.name for c in t.columns]
        by_name = {f.name: f.type for f in schema}
        fields = [pa.field(table.column_code(n), by_name[n]) for n in names]
        self._columns[table.code] = SourceColumns(names, pa.schema(fields))
        return self._columns[table.code]

    def start_read(self, table: SqlTable, reflected: sa.Table | None = None, *, since: Any = None,
                   until: Any = None, only: list[str] | None = None, read_ahead: int = 0) -> Any:
        """The table's read (``postgres_fast.PgRead``) started: its ranges connected and streaming."""
        from pipelines.extract.postgres_fast import PgRead

        t = reflected if reflected is not None else self.reflect(table)
        picked, where = self._plan(table, t, since, until, only)
        try:
            return PgRead(self._libpq_url(), table.source_schema, table.source, picked.source_names, where=where,
                          parallel=min(EXTRACT_RANGES, self.max_connections), batch_rows=table.batch_rows,
                          read_ahead=read_ahead)
        except SourceError as exc:  # already names the table
            raise self._fail(table, SourceError(str(exc).removeprefix(f"table {table.source!r}: "))) from None
        except Exception as exc:
            raise self._fail(table, exc) from None

    def _plan(self, table: SqlTable, t: sa.Table, since: Any, until: Any,
              only: list[str] | None) -> tuple[SourceColumns, str | None]:
        """The columns a read returns and its WHERE text (filter, cursor window as quoted literals)."""
        from pipelines.extract.postgres_fast import sql_literal

        cols = self.columns(table, t)
        rendered = self.filter_sql(table, t)
        clauses = [f"({rendered})"] if rendered else []
        if table.cursor and (since is not None or until is not None):
            src = cols.source_names[cols.schema.names.index(table.cursor)]
            quoted = '"' + src.replace('"', '""') + '"'
            for op, value in ((">=", since), ("<", until)):
                if value is not None:  # inlined here, so no placeholder is looked for inside the filter's text
                    clauses.append(f"{quoted} {op} {sql_literal(_cursor_param(value, t.c[src].type, self.dialect))}")
        return cols.select(only), " AND ".join(clauses) or None

    def batches(self, table: SqlTable, *, since: Any = None, until: Any = None,
                reflected: sa.Table | None = None, only: list[str] | None = None,
                consistent: bool | None = None, prefetched: Any = None) -> Iterator[pa.RecordBatch]:
        """As ``SqlSource.batches``; the parallel ranges always share one exported snapshot, so ``consistent``
        changes nothing here. ``prefetched``: a read ``start_read`` began ahead of the load (``read_ahead``);
        taken over when it reads exactly these columns with this filter, else closed (owned here either way)."""
        read = prefetched
        try:
            t = reflected if reflected is not None else self.reflect(table)
            picked, where = self._plan(table, t, since, until, only)
            if read is not None and (read.columns, read.where, read.batch_rows) != (
                    picked.source_names, where, table.batch_rows):
                read.close()
                read = None
            if read is None:
                read = self.start_read(table, t, since=since, until=until, only=only)
        except BaseException:
            if read is not None:
                read.close()
            raise
        try:
            for batch in read:
                yield pa.RecordBatch.from_arrays(batch.columns, schema=picked.schema)
        except GeneratorExit:
            raise
        except SourceError as exc:  # already names the table
            raise self._fail(table, SourceError(str(exc).removeprefix(f"table {table.source!r}: "))) from None
        except Exception as exc:
            raise self._fail(table, exc) from None
        finally:
            read.close()
