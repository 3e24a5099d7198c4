"""MySQL-family sources (MySQL, MariaDB, TiDB, OceanBase's MySQL mode, GoldenDB): exact values, Arrow-native.

Every column gets a read plan from ``information_schema.COLUMNS``: the SQL expression selected, the Arrow type
both readers deliver it as (``read``), and the type it lands as (``target``). Types a reader could get wrong
are rewritten on the server into integers, text or bytes that carry the value exactly: DATE, DATETIME and
TIMESTAMP as integers of their stored parts (checked and built in numpy, so zero and invalid dates become null
and are counted instead of failing the load or panicking the reader), BIGINT UNSIGNED, a DECIMAL wider than
ConnectorX's decimal(38,10) holds, TIME and JSON as text, spatial values as WKB. A value that is no value of
its lake type lands as null and is counted (``invalid_values``, reasons in ``INVALID_REASONS``): zero and
invalid dates, the zero YEAR, a TIME outside a day, a TINYINT(1) other than 0/1, a DATETIME wall time the
declared zone skipped (a DST gap: no instant had it, and tools disagree on which to invent). A wall time a DST
overlap repeats is the earlier instant (the first time clocks showed it), as Python's ``fold=0`` and the
lake's naive times. The session always reads ``utf8mb4`` with ``time_zone = '+00:00'``, so a TIMESTAMP's parts
are UTC whatever the server's zone.

Two readers produce the same ``read`` batches: ConnectorX (``mysql_fast``: the binary protocol decoded into
Arrow in Rust, off the GIL, several primary-key ranges in parallel) and SQLAlchemy streaming (pymysql, the
fallback when ConnectorX is not installed or ``CITYLAKE_MYSQL_FAST=0``). ``finish`` turns either into the
target types, so the two cannot drift apart.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa

from pipelines.errors import SourceError
from pipelines.extract.sql import SourceColumns, SqlSource
from pipelines.registry import EXTRACT_RANGES, SqlTable
from pipelines.settings import TZ

log = logging.getLogger(__name__)

FAST_ENV = "CITYLAKE_MYSQL_FAST"
SESSION = ("SET NAMES utf8mb4", "SET time_zone = '+00:00'",
           "SET SESSION sql_mode = REPLACE(@@SESSION.sql_mode, 'NO_BACKSLASH_ESCAPES', '')",
           "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
"""Run first on every connection that reads rows: the text and TIMESTAMP values are then the same on every
server, whatever its defaults (a server on Asia/Shanghai would otherwise return TIMESTAMPs as local time).
Cursor literals are escaped with backslashes (pymysql's ``escape_item``): under a server's
NO_BACKSLASH_ESCAPES a value ending in a backslash would end the literal early, so the session drops it. A
server set to READ UNCOMMITTED would let one statement see rows of a transaction that then rolls back."""

_SHANGHAI = "Asia/Shanghai"
_CX_DECIMAL_SCALE, _CX_DECIMAL_DIGITS = 10, 28
"""ConnectorX delivers a MySQL DECIMAL as decimal128(38, 10) through rust_decimal (28 significant digits): a
column whose values keep every digit at scale 10 within 28 digits is read as the server sends it."""
_INT_TARGET = {  # (signed, unsigned): the narrowest Iceberg-able type that holds every value
    "tinyint": (pa.int16(), pa.int16()), "smallint": (pa.int16(), pa.int32()),
    "mediumint": (pa.int32(), pa.int32()), "int": (pa.int32(), pa.int64()), "integer": (pa.int32(), pa.int64()),
    "bigint": (pa.int64(), None),  # BIGINT UNSIGNED: decimal(20,0), Iceberg has no unsigned 64-bit
}
_TEXT = {"char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set"}
_BINARY = {"binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob", "bit"}
_SPATIAL = {"geometry", "point", "linestring", "polygon", "multipoint", "multilinestring", "multipolygon",
            "geometrycollection", "geomcollection"}
_BOOL_RE = re.compile(r"^tinyint\(1\)( unsigned)?( zerofill)?$")
_ZERO_ONE = pa.array([0, 1], pa.int64())
_NO_DST_SINCE = pa.scalar(datetime(1991, 9, 16), pa.timestamp("us"))  # Asia/Shanghai's last transition: 1991-09-15

INVALID_REASONS = {
    "bool": "源值非法（TINYINT(1) 布尔列中 0、1 以外的值）→ 空值；存数值的列请在登记的 integer_columns 中声明",
    "date": "源值非法（零日期或无效日期）→ 空值",
    "datetime": "源值非法（零日期、无效日期，或系统时区中不存在的本地时间：夏令时拨快跳过的时段）→ 空值",
    "timestamp": "源值非法（零时间戳 0000-00-00 00:00:00）→ 空值",
    "time": "源值非法（超出一天的时间：负值或不小于 24 小时）→ 空值",
    "year": "源值非法（零年份 0000）→ 空值",
}
"""The ``meta.standardization_log`` transformation of each plan kind whose invalid values land as null."""


@dataclass(frozen=True)
class PlannedColumn:
    """How one source column is selected, delivered and landed."""

    name: str
    """Source column name."""
    data_type: str
    """``information_schema.COLUMNS.DATA_TYPE`` (lower case)."""
    select: str
    """The SQL expression selected (the column quoted, or a server-side rewrite of it)."""
    read: pa.DataType
    """The Arrow type both readers deliver (before ``finish``)."""
    target: pa.DataType
    """The Arrow type it lands as."""
    kind: str
    """The conversion from ``read`` to ``target``: same, bool, decimal, date, datetime, timestamp, time, year, decode."""
    encoding: str | None = None
    """The declared encoding of a column read as bytes (``decode``)."""
    also: str | None = None
    """A second expression read beside ``select`` (as int64): a DATETIME's or TIMESTAMP's day-to-microsecond
    part, ``select`` holding its year and month."""


def quote_name(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _declared_bool(data_type: str, column_type: str) -> bool:
    """``TINYINT(1)`` (MySQL's ``BOOL``): read as a boolean unless the table's ``integer_columns`` names it."""
    return data_type.lower() == "tinyint" and bool(_BOOL_RE.match(column_type.lower()))


def plan_column(name: str, data_type: str, column_type: str, precision: int | None, scale: int | None,
                charset: str | None, *, zone: str = _SHANGHAI, encoding: str | None = None,
                integer: bool = False) -> PlannedColumn:
    """The read plan of one column (``encoding``: its declared source encoding, if any; ``integer``: a
    ``TINYINT(1)`` declared to hold numbers, not booleans)."""
    q = quote_name(name)
    dt, ct = data_type.lower(), column_type.lower()
    unsigned = " unsigned" in ct

    def col(select: str, read: pa.DataType, target: pa.DataType, kind: str = "same") -> PlannedColumn:
        return PlannedColumn(name, dt, select, read, target, kind)

    if encoding is not None and (dt in _TEXT or dt in _BINARY - {"bit"}):
        return PlannedColumn(name, dt, f"CAST({q} AS BINARY)", pa.binary(), pa.string(), "decode", encoding)
    if _declared_bool(dt, ct) and not integer:
        return col(q, pa.int64(), pa.bool_(), "bool")
    if dt in _INT_TARGET:
        signed_t, unsigned_t = _INT_TARGET[dt]
        if unsigned and unsigned_t is None:
            return col(f"CAST({q} AS CHAR)", pa.string(), pa.decimal128(20, 0), "decimal")
        return col(q, pa.int64(), unsigned_t if unsigned else signed_t)
    if dt in ("decimal", "numeric", "dec", "fixed"):
        p, s = int(precision or 10), int(scale or 0)
        if p > 38:  # Iceberg's decimal stops at 38 digits: the exact text rather than a rounded number
            return col(f"CAST({q} AS CHAR)", pa.string(), pa.string())
        if s <= _CX_DECIMAL_SCALE and p - s + _CX_DECIMAL_SCALE <= _CX_DECIMAL_DIGITS:
            # as the server sends it: ConnectorX's decimal(38,10) holds it exactly (a server-side CAST cost
            # ~0.7 s of server CPU per 5 M values)
            return col(q, pa.decimal128(38, _CX_DECIMAL_SCALE), pa.decimal128(p, s), "decimal")
        return col(f"CAST({q} AS CHAR)", pa.string(), pa.decimal128(p, s), "decimal")
    if dt == "float":
        return col(q, pa.float32(), pa.float32())
    if dt in ("double", "real", "double precision"):
        return col(q, pa.float64(), pa.float64())
    # Dates and times as integers of their stored parts, unchecked by the server (zero and invalid dates
    # included: ``finish`` checks them); a CAST to text cost ~0.9 s (DATE) and ~1.5 s (DATETIME) of server CPU
    # per 5 M values, these ~0.2 s.
    if dt == "date":
        return col(f"{q} + 0", pa.int64(), pa.date32(), "date")  # YYYYMMDD
    if dt in ("datetime", "timestamp"):  # TIMESTAMP's parts in the session zone, UTC
        target = (pa.timestamp("us", tz="UTC") if dt == "timestamp" or zone != _SHANGHAI else pa.timestamp("us"))
        return PlannedColumn(name, dt, f"EXTRACT(YEAR_MONTH FROM {q})", pa.int64(), target, dt,
                             also=f"EXTRACT(DAY_MICROSECOND FROM {q})")  # YYYYMM, DDhhmmssffffff
    if dt == "time":
        return col(f"CAST({q} AS CHAR)", pa.string(), pa.time64("us"), "time")
    if dt == "year":
        return col(q, pa.int64(), pa.int16(), "year")
    if dt in _BINARY:
        return col(q, pa.binary(), pa.binary())
    if dt in _SPATIAL:
        return col(f"ST_AsBinary({q})", pa.binary(), pa.binary())
    if dt in _TEXT:
        return col(q, pa.string(), pa.string())
    # JSON (MySQL's binary JSON; MariaDB's JSON is LONGTEXT), UUID, INET6, vectors and anything newer: the
    # server's own text of the value, in utf8mb4
    return col(f"CAST({q} AS CHAR)", pa.string(), pa.string())


@dataclass(frozen=True)
class ReadPlan:
    columns: list[PlannedColumn]
    key: str | None
    """The single integer primary-key column the fast path splits into ranges (None: not splittable)."""
    rows: int
    """The server's row estimate (``information_schema.TABLES.TABLE_ROWS``)."""

    @property
    def read_schema(self) -> pa.Schema:
        """What both readers deliver: ``c<i>`` per column, then ``c<i>b`` for a column read in two parts."""
        return pa.schema([f for i, c in enumerate(self.columns)
                          for f in [pa.field(f"c{i}", c.read), *([pa.field(f"c{i}b", pa.int64())] if c.also else [])]])

    def select_list(self) -> str:
        return ", ".join(f"{c.select} AS `c{i}`" + (f", {c.also} AS `c{i}b`" if c.also else "")
                         for i, c in enumerate(self.columns))

    def read_index(self, name: str) -> int:
        """The position of source column ``name`` in ``read_schema``."""
        return self.read_schema.get_field_index(f"c{[c.name for c in self.columns].index(name)}")


_INTEGER_TYPES = {"tinyint", "smallint", "mediumint", "int", "integer", "bigint"}


def read_plan(conn: Any, schema: str | None, table: str, *, zone: str, table_encoding: str | None,
              column_encodings: dict[str, str], integer_columns: Collection[str] = ()) -> ReadPlan:
    """The read plan of a table from ``information_schema`` (``conn``: a SQLAlchemy connection)."""
    where = "TABLE_SCHEMA = %s" if schema else "TABLE_SCHEMA = DATABASE()"
    args: tuple[Any, ...] = ((schema,) if schema else ()) + (table,)
    rows = conn.exec_driver_sql(
        "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, NUMERIC_PRECISION, NUMERIC_SCALE, CHARACTER_SET_NAME, "
        f"COLUMN_KEY FROM information_schema.COLUMNS WHERE {where} AND TABLE_NAME = %s ORDER BY ORDINAL_POSITION",
        args).fetchall()
    if not rows:
        raise SourceError(f"table {table!r} does not exist at the source")
    for setting, named in (("column_encodings", column_encodings), ("integer_columns", integer_columns)):
        missing = sorted(set(named) - {r[0] for r in rows})
        if missing:
            raise SourceError(f"table {table!r}: {setting} names column(s) {missing} the source does not have")
    not_bool = sorted(n for n, dt, ct, *_ in rows if n in integer_columns and not _declared_bool(str(dt), str(ct)))
    if not_bool:
        raise SourceError(f"table {table!r}: integer_columns names column(s) {not_bool} that are not TINYINT(1)")
    columns = []
    for name, dt, ct, prec, scale, charset, _ in rows:
        enc = column_encodings.get(name) or (table_encoding if (charset or "").lower() == "latin1" else None)
        columns.append(plan_column(name, str(dt), str(ct), prec, scale, charset, zone=zone, encoding=enc,
                                   integer=name in integer_columns))
    pk = [r for r in rows if r[6] == "PRI"]
    key = pk[0][0] if len(pk) == 1 and str(pk[0][1]).lower() in _INTEGER_TYPES else None
    est = conn.exec_driver_sql(
        f"SELECT TABLE_ROWS FROM information_schema.TABLES WHERE {where} AND TABLE_NAME = %s", args).scalar()
    return ReadPlan(columns, key, int(est or 0))


# --- from read batches to landed ones -------------------------------------------------------------


def _parse_each(values: pa.Array, parse: Any, target: pa.DataType) -> tuple[pa.Array, int]:
    """Per-value parse of the rare batch Arrow's vectorised cast rejects: invalid values become null, counted."""
    out: list[Any] = []
    bad = 0
    for v in values.to_pylist():
        if v is None:
            out.append(None)
            continue
        try:
            out.append(parse(v))
        except ValueError:
            out.append(None)
            bad += 1
    return pa.array(out, type=target), bad


_DAYS_IN_MONTH = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


def _civil_days(y: np.ndarray, m: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of valid proleptic Gregorian dates, year ≥ 1 (H. Hinnant's days_from_civil)."""
    y = y - (m <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + np.where(m > 2, -3, 9)) + 2) // 5 + d - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def _from_parts(kind: str, first: pa.Array, second: pa.Array | None) -> tuple[pa.Array, int]:
    """A date (``first``: YYYYMMDD) or a date and time (``first``: YYYYMM, ``second``: DDhhmmssffffff) from
    the integers the server read of its stored parts, as date32 or naive timestamp[us]; a zero or invalid date
    (0000-00-00, 2023-02-30, a year 0) null, counted. Checked here: the server returns stored parts as they are."""
    valid = first.is_valid().to_numpy(zero_copy_only=False)
    v = first.fill_null(0).to_numpy()
    if second is None:
        ymd, clock = v, np.zeros_like(v)
    else:
        dm = second.fill_null(0).to_numpy()
        ymd, clock = v * 100 + dm // 10**12, dm % 10**12  # clock: hhmmssffffff
    y, m, d = ymd // 10000, ymd // 100 % 100, ymd % 100
    hh, mi, ss, us = clock // 10**10, clock // 10**8 % 100, clock // 10**6 % 100, clock % 10**6
    month = np.clip(m, 1, 12)
    leap = (y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0))
    ok = ((y >= 1) & (m >= 1) & (m <= 12) & (d >= 1) & (d <= _DAYS_IN_MONTH[month - 1] + ((month == 2) & leap))
          & (hh <= 23) & (mi <= 59) & (ss <= 59))
    days = _civil_days(np.where(ok, y, 1970), np.where(ok, m, 1), np.where(ok, d, 1))
    bad = int(np.count_nonzero(valid & ~ok))
    mask = ~(valid & ok)
    if kind == "date":
        return pa.array(days.astype(np.int32), type=pa.date32(), mask=mask), bad
    micros = days * 86_400_000_000 + ((hh * 60 + mi) * 60 + ss) * 1_000_000 + us
    return pa.array(micros, type=pa.timestamp("us"), mask=mask), bad


def _time(text: str) -> Any:
    """MySQL TIME text (``-838:59:59.000000`` … ``838:59:59.000000``) as a time of day; ValueError outside
    00:00:00–23:59:59.999999 (an interval, not a time of day: null and counted, as an invalid date is)."""
    from datetime import time

    m = re.fullmatch(r"(-?)(\d+):(\d\d):(\d\d)(?:\.(\d{1,6}))?", text)
    if not m or m.group(1) or int(m.group(2)) > 23:
        raise ValueError(text)
    return time(int(m.group(2)), int(m.group(3)), int(m.group(4)), int((m.group(5) or "0").ljust(6, "0")))


def _wall_times(naive: pa.Array, zone: str, target: pa.DataType) -> tuple[pa.Array, int]:
    """DATETIME wall times of ``zone`` as ``target`` (naive: Asia/Shanghai, the lake's own naive times; else the
    UTC instant), those in a DST gap (never on a clock there) null, and their count. A repeated wall time (DST
    overlap) is the earlier instant. Asia/Shanghai is looked up only for a batch reaching before 1991-09-16."""
    if zone == _SHANGHAI:
        low = pc.min(naive)
        if not low.is_valid or not pc.less(low, _NO_DST_SINCE).as_py():
            return naive, 0
    bad = 0
    try:
        local = pc.assume_timezone(naive, zone, ambiguous="earliest", nonexistent="raise")
    except pa.ArrowInvalid:  # values in a gap: those whose earliest and latest readings differ
        gap = pc.fill_null(pc.not_equal(
            pc.assume_timezone(naive, zone, ambiguous="earliest", nonexistent="earliest"),
            pc.assume_timezone(naive, zone, ambiguous="earliest", nonexistent="latest")), False)
        bad = int(pc.sum(gap).as_py() or 0)
        naive = pc.if_else(gap, pa.scalar(None, naive.type), naive)
        local = pc.assume_timezone(naive, zone, ambiguous="earliest", nonexistent="raise")
    return (naive if target.tz is None else local.cast(target)), bad


def finish(batch: pa.RecordBatch, plan: list[PlannedColumn], schema: pa.Schema, zone: str,
           invalid: dict[str, int], where: str) -> pa.RecordBatch:
    """Read arrays (any reader) → landed arrays of ``schema``; nulls made of invalid values add to ``invalid``
    (by column code)."""
    arrays = []
    read = iter(batch.columns)
    for c, field in zip(plan, schema, strict=True):
        array = next(read)
        second = next(read) if c.also else None
        if array.type != c.read:
            array = array.cast(c.read)
        bad = 0
        if c.kind == "same":
            out = array if array.type == c.target else array.cast(c.target)
        elif c.kind == "bool":
            # TINYINT(1) holds -128..127 whatever it declares: a value other than 0/1 is no boolean (a legacy
            # status code, say), so it is not made true — null, counted
            other = pc.and_(pc.is_valid(array), pc.invert(pc.is_in(array, value_set=_ZERO_ONE)))
            bad = int(pc.sum(other).as_py() or 0)
            out = pc.equal(array, 1)
            if bad:
                out = pc.if_else(other, pa.scalar(None, pa.bool_()), out)
        elif c.kind == "decimal":
            out = array.cast(c.target)
        elif c.kind in ("date", "datetime", "timestamp"):
            out, bad = _from_parts(c.kind, array, None if second is None else second.cast(pa.int64()))
            if c.kind == "timestamp":
                out = out.cast(pa.timestamp("us", tz="UTC"))  # read with time_zone '+00:00': the values are UTC
            elif c.kind == "datetime":
                out, gap = _wall_times(out, zone, c.target)
                bad += gap
        elif c.kind == "time":
            out, bad = _parse_each(array, _time, c.target)
        elif c.kind == "year":
            zero = pc.equal(array, 0)  # YEAR 0000: MySQL's zero year, what it stores for an invalid year
            bad = pc.sum(zero).as_py() or 0
            out = pc.if_else(zero, pa.scalar(None, c.read), array).cast(c.target)
        elif c.kind == "decode":
            try:
                out = pa.array([None if v is None else v.decode(c.encoding) for v in array.to_pylist()], pa.string())
            except UnicodeDecodeError:
                raise SourceError(f"{where}: column {c.name!r}: bytes that are not valid {c.encoding} (its "
                                  "declared source encoding)") from None
        else:  # pragma: no cover - every kind is handled above
            raise AssertionError(c.kind)
        if bad:
            invalid[field.name] = invalid.get(field.name, 0) + bad
        arrays.append(out)
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


# --- the source -----------------------------------------------------------------------------------


class MySqlSource(SqlSource):
    """A MySQL-family source system: exact types through a read plan, ConnectorX when installed.

    ``invalid_values`` holds, after ``batches`` has run, how many values of each column (by code) landed as
    null because the server held no value of its lake type (zero dates, invalid dates, the zero YEAR, TIME outside
    a day, a TINYINT(1) other than 0/1, a DATETIME wall time the declared zone skipped); ``invalid_reasons`` the
    ``meta.standardization_log`` transformation of each column that can hold one.
    Reflection connections are closed after use (no pool): while a table streams, the load holds exactly the
    connections its ranges use.
    """

    pooled = False
    mysql_settings = True
    connect_args = {"charset": "utf8mb4"}

    def __init__(self, system_code: str, url: str, max_connections: int = 2, time_zone: str = _SHANGHAI):
        super().__init__(system_code, url, max_connections)
        self.zone = time_zone
        self.invalid_values: dict[str, int] = {}
        self.invalid_reasons: dict[str, str] = {}
        self._plans: dict[tuple[str | None, str], ReadPlan] = {}

    def plan(self, table: SqlTable) -> ReadPlan:
        key = (table.source_schema, table.source)
        if key not in self._plans:
            try:
                with self.engine.connect() as conn:
                    self._plans[key] = read_plan(conn, table.source_schema, table.source, zone=self.zone,
                                                 table_encoding=table.source_encoding,
                                                 column_encodings=table.column_encodings,
                                                 integer_columns=table.integer_columns)
            except SourceError as exc:
                raise self._fail(table, SourceError(str(exc).removeprefix(f"table {table.source!r}: "))) from None
            except sa.exc.SQLAlchemyError as exc:
                raise self._fail(table, exc) from None
        return self._plans[key]

    def columns(self, table: SqlTable, reflected: sa.Table | None = None) -> SourceColumns:
        plan = self.plan(table)
        names = [c.name for c in plan.columns]
        return SourceColumns(names, pa.schema([pa.field(table.column_code(c.name), c.target) for c in plan.columns]))

    def _literal(self, value: Any, c: PlannedColumn) -> str:
        """A cursor bound as a MySQL literal, in the zone the column's values are compared in."""
        import pymysql.converters

        if isinstance(value, datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=TZ)  # the lake's naive times are Asia/Shanghai
            zone = UTC if c.kind == "timestamp" else ZoneInfo(self.zone) if c.kind == "datetime" else TZ
            value = value.astimezone(zone).replace(tzinfo=None)
        return str(pymysql.converters.escape_item(value, "utf8mb4"))

    def where(self, table: SqlTable, t: sa.Table | None, since: Any = None, until: Any = None) -> list[str]:
        plan = self.plan(table)
        clauses = []
        if table.filter:
            reflected = t if t is not None else self.reflect(table)
            clauses.append(f"({self.filter_sql(table, reflected)})")
        if table.cursor and (since is not None or until is not None):
            cols = self.columns(table)
            c = plan.columns[cols.schema.names.index(table.cursor)]
            for op, value in ((">=", since), ("<", until)):
                if value is not None:
                    clauses.append(f"{quote_name(c.name)} {op} {self._literal(value, c)}")
        return clauses

    def batches(self, table: SqlTable, *, since: Any = None, until: Any = None,
                reflected: sa.Table | None = None, only: list[str] | None = None,
                consistent: bool | None = None) -> Iterator[pa.RecordBatch]:
        """Stream the table (or its cursor window) as record batches named by column code.

        ``consistent``: whether the caller derives deletions from what the read did not return, so the read must
        be one snapshot. None (the default) takes every whole-table read (a full refresh, the key-only deletion
        check, a first load) as such: one statement on one connection, so a key it misses is really gone. A
        cursor window, or a read the caller says is not compared for deletions (``consistent=False``: a first
        load into an empty table), is split into primary-key ranges read in parallel, each in ``ORDER BY key
        LIMIT n`` chunks (``mysql_fast``: what waits in memory is bounded): ranges and chunks read at slightly
        different moments cost nothing when no deletion row comes of them."""
        plan = self.plan(table)
        cols = self.columns(table)
        picked = cols.select(only)
        at = [cols.schema.names.index(n) for n in picked.schema.names]
        sub = ReadPlan([plan.columns[i] for i in at], plan.key, plan.rows)
        clauses = self.where(table, reflected, since, until)
        one_snapshot = (since is None and until is None) if consistent is None else consistent
        parallel = 1 if one_snapshot or sub.key is None else min(EXTRACT_RANGES, self.max_connections)
        where = f"system {self.system}, table {table.source!r}"
        self.invalid_values = {}
        self.invalid_reasons = {f.name: INVALID_REASONS[c.kind] for c, f in zip(sub.columns, picked.schema, strict=True)
                                if c.kind in INVALID_REASONS}
        relation = (quote_name(table.source_schema) + "." if table.source_schema else "") + quote_name(table.source)
        try:
            for raw in self._read(sub, relation, clauses, parallel, table.batch_rows, one_snapshot):
                if raw.num_rows:
                    yield finish(raw, sub.columns, picked.schema, self.zone, self.invalid_values, where)
        except (SourceError, GeneratorExit, KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # ConnectorX reports a value it cannot convert as a Rust panic (BaseException)
            raise self._fail(table, exc) from None
        finally:
            for code, n in self.invalid_values.items():
                log.warning("%s: column %s: %d zero or invalid value(s) landed as null (%s)", where, code, n,
                            self.invalid_reasons.get(code, ""))

    def _read(self, plan: ReadPlan, relation: str, clauses: list[str], parallel: int,
              batch_rows: int, consistent: bool = True) -> Iterator[pa.RecordBatch]:
        if fast_enabled() and fast_url_ok(self.engine.url, self.system):
            from pipelines.extract.mysql_fast import iter_mysql_batches

            yield from iter_mysql_batches(self.engine, plan, relation, clauses, parallel, batch_rows,
                                          consistent=consistent)
            return
        yield from self._read_sqlalchemy(plan, relation, clauses, batch_rows)

    def _read_sqlalchemy(self, plan: ReadPlan, relation: str, clauses: list[str],
                         batch_rows: int) -> Iterator[pa.RecordBatch]:
        """The fallback reader: pymysql's unbuffered cursor, converted to Arrow one partition at a time."""
        query = f"SELECT {plan.select_list()} FROM {relation}"
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        schema = plan.read_schema
        with session(self.engine) as conn:
            # no_parameters: pymysql would otherwise apply "%" formatting to the query (a LIKE '%园区%' filter)
            result = conn.execution_options(stream_results=True, yield_per=batch_rows,
                                            no_parameters=True).exec_driver_sql(query)
            for rows in result.partitions(batch_rows):
                columns = list(zip(*rows, strict=True))
                yield pa.RecordBatch.from_arrays([pa.array(v, type=f.type) for v, f in zip(columns, schema, strict=True)],
                                                 schema=schema)


_FAST_URL_OPTIONS = {"charset"}  # set by the session statements anyway


def fast_url_ok(url: Any, system: str) -> bool:
    """Whether ConnectorX would connect as the URL says: it takes host, port, user, password and database
    only, so a URL with TLS (``ssl_*``), a socket or an ``init_command`` is read by the fallback instead of
    silently connecting in plaintext or without its settings."""
    extra = sorted(set(url.query) - _FAST_URL_OPTIONS)
    if extra:
        log.info("system %s: URL options %s are not carried by the fast path: reading through pymysql", system,
                 ", ".join(extra))
    return not extra


@contextmanager
def session(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A connection of ``engine`` with the reading session set (``SESSION``)."""
    with engine.connect() as conn:
        for statement in SESSION:
            conn.exec_driver_sql(statement)
        yield conn


def fast_enabled() -> bool:
    """ConnectorX reads unless ``CITYLAKE_MYSQL_FAST=0`` or it is not installed."""
    if os.environ.get(FAST_ENV, "1").strip() in ("0", "false", "no"):
        return False
    try:
        import connectorx  # noqa: F401
    except ImportError:
        return False
    return True
