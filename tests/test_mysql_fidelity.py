"""MySQL-family sources on a real MariaDB (issue 14): every type lands as the server holds it, through the
ConnectorX fast path and the SQLAlchemy fallback alike, and the load semantics match PostgreSQL's.

Each landed value is compared with what the server itself returns for it (HEX of the bytes, the decimal
text, UNIX_TIMESTAMP of an instant, the wall-clock text of a DATETIME), not with a copy of the inserted
literals, so a value the server changed on insert cannot hide a reading bug.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest
from conftest import TEST_DEPARTMENT

import pipelines.extract.sources as sources
from pipelines.errors import SourceError
from pipelines.extract import mysql_fast
from pipelines.extract.mysql import INVALID_REASONS
from pipelines.ingest import ingest_table
from pipelines.lake.catalog import get_catalog
from pipelines.registry import SourceSystem
from pipelines.settings import TZ, Settings

AT = datetime(2026, 11, 20, 2, tzinfo=TZ)

FIDELITY_DDL = """CREATE TABLE fid (
 id INT PRIMARY KEY,
 tags SET('高新','专精特新','外资'), kind ENUM('甲','乙','丙'), flag TINYINT(1), flag2 BOOL, tiny TINYINT,
 tiny_u TINYINT UNSIGNED, small_u SMALLINT UNSIGNED, medium MEDIUMINT, int_u INT UNSIGNED, big BIGINT,
 big_u BIGINT UNSIGNED, f FLOAT, d DOUBLE, amount DECIMAL(20,4), wide DECIMAL(65,30), doc JSON,
 bits BIT(12), bit1 BIT(1), bin BINARY(4), varbin VARBINARY(10), blob_ BLOB, yr YEAR, tm TIME(6),
 day DATE, wall DATETIME(6), instant TIMESTAMP(3) NULL DEFAULT NULL, txt VARCHAR(40), long_txt LONGTEXT,
 edge DECIMAL(28,10), edge19 DECIMAL(19,0), wall0 DATETIME
) CHARACTER SET utf8mb4"""

FIDELITY_ROWS = [
    # every type at an edge: extremes, supplementary characters, a DST-free zone offset
    "(1, '高新,专精特新', '甲', 1, 1, -128, 255, 65535, -8388608, 4294967295, -9223372036854775808, "
    "18446744073709551615, 1.5, 3.141592653589793, 1234567890123456.7891, "
    "12345678901234567890123456789012345.123456789012345678901234567890, '{\"名\": \"𠮷😀\", \"n\": [1, 2.5]}', "
    "b'101001011111', b'1', 'ab', x'00ff', x'deadbeef', 2024, '23:59:59.999999', '2024-02-29', "
    "'2024-01-01 00:30:00.123456', '2024-01-01 00:30:00.123', '𠮷野家😀', REPEAT('长文本', 1000), "
    "999999999999999999.9999999999, 9999999999999999999, '9999-12-31 23:59:59')",
    # empty set, unsigned just above 2^63, zero dates (permissive sql_mode), TIME out of a day, zero year
    "(2, '', '乙', 0, 0, 0, 0, 0, 0, 0, 0, 9223372036854775808, -0.25, -1e-300, -0.0001, 0, '[]', b'0', b'0', "
    "'', x'', x'', 0, '-01:00:00', '0000-00-00', '0000-00-00 00:00:00', '0000-00-00 00:00:00', '', '', "
    "-999999999999999999.9999999999, -9999999999999999999, '0000-00-00 00:00:00')",
    # invalid dates (ALLOW_INVALID_DATES), TIME over 24 h, a BOOL column holding 2
    "(3, '外资', '丙', 2, NULL, 127, NULL, NULL, 8388607, NULL, 9223372036854775807, 9223372036854775807, NULL, "
    "NULL, 9999999999999999.9999, NULL, 'null', NULL, NULL, NULL, NULL, NULL, 1901, '838:59:59', "
    "'2023-02-30', '2023-04-31 10:00:00', NULL, NULL, NULL, 0.0000000001, 0, '2024-02-30 00:00:00')",
    # all null
    "(4" + ", NULL" * 31 + ")",
    # a time of day with a fraction, a date before 1970, a wall time in the early hours, a BOOL column holding -1
    "(5, '高新,外资', '甲', 0, -1, 1, 1, 1, 1, 1, 1, 1, 0.1, 0.1, 0.0001, 0.000000000000000000000000000001, "
    "'{\"a\": \"\\\\u00e9\"}', b'111111111111', b'0', 'abcd', x'41', x'00', 2155, '00:00:00.5', '1900-01-01', "
    "'1969-12-31 23:59:59.999999', '1970-01-01 08:00:01.000', 'x', NULL, -0.0000000001, 1, "
    "'1000-01-01 00:00:00')",  # the first TIMESTAMP (at +08:00), DATETIME's documented minimum
]


@pytest.fixture
def server(mysql_url: str) -> Iterator[tuple[str, Any]]:
    """The scratch database's URL and a pymysql connection to it."""
    import pymysql

    name = mysql_url.rsplit("/", 1)[1].split("?")[0]
    conn = pymysql.connect(host="127.0.0.1", user="root", password="", database=name, charset="utf8mb4",
                           autocommit=True)
    try:
        yield mysql_url, conn
    finally:
        conn.close()


def _exec(conn: Any, *sql: str) -> None:
    with conn.cursor() as cur:
        for s in sql:
            cur.execute(s)


def _rows(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(sql)
        return list(cur.fetchall())


def _system(url: str, tables: list[dict[str, Any]], **kw: Any) -> SourceSystem:
    return SourceSystem.model_validate({"system": "fid", "name": "保真", "department": TEST_DEPARTMENT,
                                        "connection": "src_fid", "lookback_hours": 0, "tables": tables, **kw})


@pytest.fixture(params=["fast", "fallback"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CITYLAKE_MYSQL_FAST", "1" if request.param == "fast" else "0")
    if request.param == "fast":  # a tiny table is split into key ranges as a big one is
        monkeypatch.setattr(mysql_fast, "_MIN_ROWS_TO_SPLIT", 0)
    return str(request.param)


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The source objects ingest opened (to read their ``invalid_values``)."""
    seen: list[Any] = []
    real = sources.open_source

    def spy(system: SourceSystem, url: str) -> Any:
        seen.append(real(system, url))
        return seen[-1]

    monkeypatch.setattr(sources, "open_source", spy)
    return seen


def _lake(settings: Settings, code: str) -> tuple[dict[int, dict[str, Any]], pa.Schema]:
    data = get_catalog(settings).load_table(f"raw.fid__{code}").scan().to_arrow()
    return {r["id"]: r for r in data.to_pylist()}, data.schema


def _valid(parse: Any, text: str | None) -> Any:
    try:
        return None if text is None else parse(text)
    except ValueError:
        return None


def test_every_type_lands_as_the_server_holds_it(server: tuple[str, Any], path: str, lake_settings: Settings,
                                                 monkeypatch: pytest.MonkeyPatch, opened: list[Any]) -> None:
    url, conn = server
    _exec(conn, "SET SESSION sql_mode = 'ALLOW_INVALID_DATES'", "SET time_zone = '+08:00'", FIDELITY_DDL,
          *(f"INSERT INTO fid VALUES {r}" for r in FIDELITY_ROWS))
    # the fallback's connection defaults say another zone: its session must be set to UTC regardless (an
    # init_command would send the fast path to the fallback too: ConnectorX cannot carry one)
    fast_reads: list[Any] = []
    if path == "fast":
        import connectorx

        real = connectorx.read_sql
        monkeypatch.setattr(connectorx, "read_sql", lambda *a, **k: fast_reads.append(a) or real(*a, **k))
        monkeypatch.setenv("CITYLAKE_CONN_SRC_FID", url)
    else:
        monkeypatch.setenv("CITYLAKE_CONN_SRC_FID", url + "&init_command=SET+time_zone%3D%27-05%3A00%27")
    system = _system(url, [{"code": "fid", "source": "fid", "primary_key": ["id"], "columns": {"blob_": "blob"}}])
    res = ingest_table(system, "fid", settings=lake_settings, batch_id="b1", extracted_at=AT)
    assert bool(fast_reads) == (path == "fast")  # the path under test really read the rows
    assert res.rows_written == 5
    lake, schema = _lake(lake_settings, "fid")
    types = {f.name: str(f.type) for f in schema}
    expected = {
        "id": "int32", "tags": "string", "kind": "string", "flag": "bool", "flag2": "bool",
        "tiny": "int32", "tiny_u": "int32", "small_u": "int32", "medium": "int32", "int_u": "int64",
        "big": "int64", "big_u": "decimal128(20, 0)", "f": "float", "d": "double", "amount": "decimal128(20, 4)",
        "wide": "string", "doc": "string", "bits": "binary", "bin": "binary",
        "blob": "binary", "yr": "int32", "tm": "time64[us]", "day": "date32[day]",
        "wall": "timestamp[us, tz=UTC]", "instant": "timestamp[us, tz=UTC]", "txt": "string",
        "edge": "decimal128(28, 10)", "edge19": "decimal128(19, 0)", "wall0": "timestamp[us, tz=UTC]"}
    assert {k: types[k] for k in expected} == expected

    q = ("SELECT id, CAST(tags AS CHAR), CAST(kind AS CHAR), flag, flag2, tiny, tiny_u, small_u, medium, int_u, big, "
         "CAST(big_u AS CHAR), f, d, CAST(amount AS CHAR), CAST(wide AS CHAR), doc, bits + 0, bit1 + 0, "
         "HEX(bin), HEX(varbin), HEX(blob_), yr + 0, TIME_TO_SEC(tm), MICROSECOND(tm), "
         "CAST(day AS CHAR), DATE_FORMAT(wall, '%Y-%m-%d %H:%i:%s.%f'), "
         "IF(instant = 0, NULL, UNIX_TIMESTAMP(instant)), HEX(CONVERT(txt USING utf8mb4)), "
         "HEX(CONVERT(long_txt USING utf8mb4)), CAST(edge AS CHAR), CAST(edge19 AS CHAR), "
         "DATE_FORMAT(wall0, '%Y-%m-%d %H:%i:%s') FROM fid ORDER BY id")
    for s in _rows(conn, q):
        got = lake[s[0]]
        assert got["tags"] == s[1] and got["kind"] == s[2]  # SET as MySQL's text: '' for the empty set
        # TINYINT(1): 0/1 as booleans; any other value (2, -1) is no boolean: null, counted (never made true)
        for col, number in (("flag", s[3]), ("flag2", s[4])):
            assert got[col] == (None if number not in (0, 1) else number == 1), col
        assert [got[c] for c in ("tiny", "tiny_u", "small_u", "medium", "int_u", "big")] == list(s[5:11])
        assert got["big_u"] == (None if s[11] is None else Decimal(s[11]))
        if s[12] is not None:  # FLOAT is single precision: the server's value is the nearest float32
            assert got["f"] == pa.scalar(s[12], pa.float32()).as_py()
        assert got["d"] == s[13]
        assert got["amount"] == (None if s[14] is None else Decimal(s[14])) and got["wide"] == s[15]
        assert (got["doc"] is None) == (s[16] is None) and (s[16] is None or json.loads(got["doc"]) == json.loads(s[16]))
        for col, number in zip(("bits", "bit1"), s[17:19], strict=True):
            assert (None if got[col] is None else int.from_bytes(got[col], "big")) == number, col
        for col, hexed in zip(("bin", "varbin", "blob"), s[19:22], strict=True):
            assert (None if got[col] is None else got[col].hex().upper()) == hexed, col
        assert got["yr"] == (None if not s[22] else s[22])  # YEAR 0000 (the zero year) → null
        if s[23] is None or not 0 <= s[23] < 86400:
            assert got["tm"] is None  # NULL, or an interval outside a day: null, counted
        else:
            whole = int(s[23])
            assert got["tm"] == time(whole // 3600, whole // 60 % 60, whole % 60, s[24])
        # zero (0000-00-00) and invalid (2023-02-30) dates: what the server returns is no date, so null
        assert got["day"] == _valid(date.fromisoformat, s[25])
        # DATETIME: Asia/Shanghai wall time (the system's default zone), stored as that instant
        wall = _valid(datetime.fromisoformat, s[26])
        assert got["wall"] == (None if wall is None else wall.replace(tzinfo=TZ))
        # TIMESTAMP: the instant the server holds, whatever the session zones of writer and reader
        assert got["instant"] == (None if s[27] is None else datetime.fromtimestamp(0, UTC) + timedelta(
            microseconds=int(Decimal(s[27]) * 1_000_000)))
        assert (None if got["txt"] is None else got["txt"].encode("utf-8").hex().upper()) == s[28]
        assert (None if got["long_txt"] is None else got["long_txt"].encode("utf-8").hex().upper()) == s[29]
        # decimals at the edge of what ConnectorX's decimal(38,10) holds exactly, and one past it (read as text)
        assert [got["edge"], got["edge19"]] == [None if x is None else Decimal(x) for x in s[30:32]]
        wall0 = _valid(datetime.fromisoformat, s[32])
        assert got["wall0"] == (None if wall0 is None else wall0.replace(tzinfo=TZ))

    assert lake[1]["txt"] == "𠮷野家😀" and lake[1]["big_u"] == Decimal("18446744073709551615")
    assert lake[2]["big_u"] == Decimal(2**63) and lake[2]["tags"] == ""
    assert lake[1]["instant"] == datetime(2023, 12, 31, 16, 30, 0, 123000, tzinfo=UTC)  # written at +08:00
    # zero and invalid values: null, and counted per column
    counts = {"day": 2, "wall": 2, "instant": 1, "yr": 1, "tm": 2, "flag": 1, "flag2": 1, "wall0": 2}
    assert opened[-1].invalid_values == counts and res.invalid_values == counts
    # ... and in the standardization log under the raw table's name, replaced (not repeated) by a rerun
    ingest_table(system, "fid", settings=lake_settings, batch_id="b1", extracted_at=AT)
    log = get_catalog(lake_settings).load_table("meta.standardization_log").scan().to_arrow().to_pylist()
    mine = [r for r in log if r["dataset"] == "raw.fid__fid"]
    assert {r["column"]: r["rows_changed"] for r in mine} == counts and len(mine) == len(counts)
    assert {r["run_id"] for r in mine} == {"b1"} and all("空值" in r["transformation"] for r in mine)
    kinds = {"day": "date", "wall": "datetime", "instant": "timestamp", "yr": "year", "tm": "time", "flag": "bool",
             "flag2": "bool", "wall0": "datetime"}
    assert {r["column"]: r["transformation"] for r in mine} == {c: INVALID_REASONS[k] for c, k in kinds.items()}


def test_gbk_tables_and_gbk_bytes_under_latin1(server: tuple[str, Any], path: str, lake_settings: Settings,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    url, conn = server
    names = ["堃", "喆", "啟", "张三丰", ""]
    _exec(conn,
          "CREATE TABLE gbk_t (id INT PRIMARY KEY, name VARCHAR(20), note TEXT) CHARACTER SET gbk",
          "CREATE TABLE legacy (id INT PRIMARY KEY, name VARCHAR(20) CHARACTER SET latin1, "
          "addr VARCHAR(40) CHARACTER SET latin1, code VARBINARY(20), plain VARCHAR(20) CHARACTER SET utf8mb4)")
    with conn.cursor() as cur:
        for i, n in enumerate(names):
            cur.execute("INSERT INTO gbk_t VALUES (%s, %s, %s)", (i, n, n * 3))
            # what a legacy application did: GBK bytes written through a latin1 connection into latin1 columns
            cur.execute("INSERT INTO legacy VALUES (%s, CONVERT(%s USING binary), CONVERT(%s USING binary), %s, %s)",
                        (i, n.encode("gbk"), ("合肥市" + n).encode("gbk"), n.encode("gb18030"), n))
    monkeypatch.setenv("CITYLAKE_CONN_SRC_FID", url)
    system = _system(url, [
        {"code": "gbk_t", "source": "gbk_t", "primary_key": ["id"]},
        {"code": "legacy", "source": "legacy", "primary_key": ["id"], "source_encoding": "gbk",
         "column_encodings": {"code": "gb18030"}},
    ])
    for code in ("gbk_t", "legacy"):
        ingest_table(system, code, settings=lake_settings, batch_id="b1", extracted_at=AT)
    gbk, _ = _lake(lake_settings, "gbk_t")
    legacy, schema = _lake(lake_settings, "legacy")
    server_gbk = {r[0]: r[1:] for r in _rows(conn, "SELECT id, HEX(CONVERT(name USING utf8mb4)), "
                                                   "HEX(CONVERT(note USING utf8mb4)) FROM gbk_t")}
    server_legacy = {r[0]: r[1:] for r in _rows(conn, "SELECT id, HEX(name), HEX(addr), HEX(code) FROM legacy")}
    for i, n in enumerate(names):
        assert (gbk[i]["name"].encode().hex().upper(), gbk[i]["note"].encode().hex().upper()) == server_gbk[i]
        assert gbk[i]["name"] == n
        # the stored bytes, decoded as declared: GBK for the table's latin1 columns, GB18030 for ``code``
        assert legacy[i]["name"].encode("gbk").hex().upper() == server_legacy[i][0] and legacy[i]["name"] == n
        assert legacy[i]["addr"].encode("gbk").hex().upper() == server_legacy[i][1]
        assert legacy[i]["code"] == n and legacy[i]["plain"] == n  # utf8mb4 columns are left alone
    assert str(schema.field("code").type) == "string"


def test_bad_bytes_for_the_declared_encoding_fail_in_one_line(server: tuple[str, Any], path: str,
                                                               lake_settings: Settings,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    url, conn = server
    _exec(conn, "CREATE TABLE legacy (id INT PRIMARY KEY, name VARCHAR(20) CHARACTER SET latin1)",
          "INSERT INTO legacy VALUES (1, CONVERT(x'81' USING binary))")  # a GBK lead byte with no trail byte
    monkeypatch.setenv("CITYLAKE_CONN_SRC_FID", url)
    system = _system(url, [{"code": "legacy", "source": "legacy", "primary_key": ["id"], "source_encoding": "gbk"}])
    with pytest.raises(SourceError) as info:
        ingest_table(system, "legacy", settings=lake_settings, batch_id="b1", extracted_at=AT)
    message = str(info.value)
    assert "\n" not in message and "fid" in message and "'legacy'" in message and "'name'" in message
    assert "gbk" in message

    bad = _system(url, [{"code": "legacy", "source": "legacy", "primary_key": ["id"],
                         "column_encodings": {"no_such": "gbk"}}])
    with pytest.raises(SourceError, match="no_such"):
        ingest_table(bad, "legacy", settings=lake_settings, batch_id="b1", extracted_at=AT)


def test_datetime_in_a_declared_zone_lands_as_the_instant(server: tuple[str, Any], path: str,
                                                          lake_settings: Settings,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    url, conn = server
    _exec(conn, "CREATE TABLE ev (id INT PRIMARY KEY, at DATETIME(3), updated_at DATETIME)",
          "INSERT INTO ev VALUES (1, '2026-03-08 01:30:00.250', '2026-11-01 08:00:00'), "
          "(2, '2026-07-01 12:00:00', '2026-11-02 08:00:00')")
    monkeypatch.setenv("CITYLAKE_CONN_SRC_FID", url)
    system = _system(url, [{"code": "ev", "source": "ev", "primary_key": ["id"], "cursor": "updated_at"}],
                     time_zone="America/New_York")
    first = ingest_table(system, "ev", settings=lake_settings, batch_id="b1", extracted_at=AT)
    lake, _ = _lake(lake_settings, "ev")
    assert lake[1]["at"] == datetime(2026, 3, 8, 6, 30, 0, 250000, tzinfo=UTC)  # EST, UTC-5
    assert lake[2]["at"] == datetime(2026, 7, 1, 16, 0, tzinfo=UTC)  # EDT, UTC-4
    assert first.watermark == "2026-11-02T21:00:00+08:00"  # 08:00 EST
    # the watermark is bound back as New York wall time: the row equal to it is read again, nothing else
    _exec(conn, "INSERT INTO ev VALUES (3, NULL, '2026-11-02 07:59:59')")  # before the watermark: not read
    again = ingest_table(system, "ev", settings=lake_settings, batch_id="b2", extracted_at=AT + timedelta(hours=1))
    assert again.rows_extracted == 1 and again.rows_written == 0


@pytest.fixture
def fast_reads(path: str, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """ConnectorX's reads: the fast variant asserts it really read through it (none on the fallback)."""
    import connectorx

    reads: list[Any] = []
    real = connectorx.read_sql
    monkeypatch.setattr(connectorx, "read_sql", lambda *a, **k: reads.append(a) or real(*a, **k))
    return reads


def _log_rows(settings: Settings, code: str) -> dict[str, tuple[int, str]]:
    log = get_catalog(settings).load_table("meta.standardization_log").scan().to_arrow().to_pylist()
    return {r["column"]: (r["rows_changed"], r["transformation"]) for r in log if r["dataset"] == f"raw.fid__{code}"}


# Asia/Shanghai kept summer time 1986–1991 (tzdata: 1988 from Sun Apr 17 02:00 to Sun Sep 11 02:00 CDT).
DST_CASES = {
    "Asia/Shanghai": [
        ("1988-04-17 01:59:59.999999", datetime(1988, 4, 16, 17, 59, 59, 999999, tzinfo=UTC)),  # CST, +08
        ("1988-04-17 02:00:00", None),  # the gap: clocks went 01:59:59 → 03:00:00, no instant had these
        ("1988-04-17 02:30:00", None),
        ("1988-04-17 03:00:00", datetime(1988, 4, 16, 18, tzinfo=UTC)),  # CDT, +09
        ("1988-04-10 02:30:00", datetime(1988, 4, 9, 18, 30, tzinfo=UTC)),  # a week before: it existed
        ("1988-09-11 00:59:59", datetime(1988, 9, 10, 15, 59, 59, tzinfo=UTC)),
        ("1988-09-11 01:30:00", datetime(1988, 9, 10, 16, 30, tzinfo=UTC)),  # repeated: the earlier (CDT) instant
        ("1988-09-11 02:00:00", datetime(1988, 9, 10, 18, tzinfo=UTC)),  # CST again
        ("2024-05-01 02:30:00", datetime(2024, 4, 30, 18, 30, tzinfo=UTC)),  # no summer time since 1991
    ],
    "America/New_York": [
        ("2026-03-08 01:59:59", datetime(2026, 3, 8, 6, 59, 59, tzinfo=UTC)),  # EST, −05
        ("2026-03-08 02:30:00", None),  # the gap
        ("2026-03-08 03:00:00", datetime(2026, 3, 8, 7, tzinfo=UTC)),  # EDT, −04
        ("2026-11-01 01:30:00", datetime(2026, 11, 1, 5, 30, tzinfo=UTC)),  # repeated: the earlier (EDT) instant
        ("2026-11-01 02:00:00", datetime(2026, 11, 1, 7, tzinfo=UTC)),
    ],
}


@pytest.mark.parametrize("zone", sorted(DST_CASES))
def test_datetime_wall_times_across_dst(server: tuple[str, Any], path: str, zone: str, lake_settings: Settings,
                                        monkeypatch: pytest.MonkeyPatch, fast_reads: list[Any]) -> None:
    """A DATETIME wall time the declared zone skipped (DST gap) was never on a clock there: no instant is the right
    one (PostgreSQL and Java read 02:30 as 03:30 summer time, MySQL as 03:00, Arrow's "earliest" as 01:59:59.999999),
    so it lands null and is counted, not moved. A wall time DST repeats is the earlier instant, deterministically."""
    url, conn = server
    cases = DST_CASES[zone]
    _exec(conn, "CREATE TABLE dst (id INT PRIMARY KEY, at DATETIME(6))",
          "INSERT INTO dst VALUES " + ", ".join(f"({i}, '{text}')" for i, (text, _) in enumerate(cases)) +
          f", ({len(cases)}, NULL)")
    monkeypatch.setenv("CITYLAKE_CONN_SRC_FID", url)
    system = _system(url, [{"code": "dst", "source": "dst", "primary_key": ["id"]}], time_zone=zone)
    res = ingest_table(system, "dst", settings=lake_settings, batch_id="b1", extracted_at=AT)
    assert bool(fast_reads) == (path == "fast")
    lake, _ = _lake(lake_settings, "dst")
    assert [lake[i]["at"] for i in range(len(cases) + 1)] == [want for _, want in cases] + [None]
    gaps = sum(want is None for _, want in cases)
    assert res.invalid_values == {"at": gaps}
    assert _log_rows(lake_settings, "dst") == {"at": (gaps, INVALID_REASONS["datetime"])}
    assert "夏令时" in INVALID_REASONS["datetime"]


def test_bool_and_time_values_outside_their_type(server: tuple[str, Any], path: str, lake_settings: Settings,
                                                 monkeypatch: pytest.MonkeyPatch, fast_reads: list[Any]) -> None:
    """TINYINT(1) holds -128..127 (UNSIGNED 0..255) whatever it declares: only 0 and 1 are booleans, anything else
    lands null and counted, never silently true. TIME spans −838:59:59..838:59:59: only a time of day lands."""
    url, conn = server
    rows = [(0, "0", "0", "'00:00:00'"), (1, "1", "1", "'23:59:59.999999'"), (2, "2", "255", "'24:00:00'"),
            (3, "-1", "NULL", "'-00:00:01'"), (4, "127", "0", "'-838:59:59'"), (5, "-128", "1", "'838:59:59'"),
            (6, "NULL", "NULL", "'100:00:00.5'"), (7, "1", "2", "'12:00:00.000001'"), (8, "0", "0", "NULL")]
    _exec(conn, "CREATE TABLE odd (id INT PRIMARY KEY, b TINYINT(1), bu TINYINT(1) UNSIGNED, t TIME(6))",
          "INSERT INTO odd VALUES " + ", ".join(f"({i}, {b}, {bu}, {t})" for i, b, bu, t in rows))
    monkeypatch.setenv("CITYLAKE_CONN_SRC_FID", url)
    system = _system(url, [{"code": "odd", "source": "odd", "primary_key": ["id"]}])
    res = ingest_table(system, "odd", settings=lake_settings, batch_id="b1", extracted_at=AT)
    assert bool(fast_reads) == (path == "fast")
    lake, schema = _lake(lake_settings, "odd")
    assert str(schema.field("b").type) == "bool" and str(schema.field("t").type) == "time64[us]"
    assert [lake[i]["b"] for i in range(9)] == [False, True, None, None, None, None, None, True, False]
    assert [lake[i]["bu"] for i in range(9)] == [False, True, None, None, False, True, None, None, False]
    assert [lake[i]["t"] for i in range(9)] == [time(0), time(23, 59, 59, 999999), None, None, None, None, None,
                                                time(12, 0, 0, 1), None]
    # what the server holds really is out of range (not a reading artefact)
    assert [r[0] for r in _rows(conn, "SELECT TIME_TO_SEC(t) FROM odd WHERE id BETWEEN 2 AND 6 ORDER BY id")] == [
        86400, -1, -3020399, 3020399, Decimal("360000.5")]
    counts = {"b": 4, "bu": 2, "t": 5}
    assert res.invalid_values == counts
    assert _log_rows(lake_settings, "odd") == {"b": (4, INVALID_REASONS["bool"]), "bu": (2, INVALID_REASONS["bool"]),
                                               "t": (5, INVALID_REASONS["time"])}
    # declared to hold numbers (a legacy status), the same columns land every value as a small integer
    system = _system(url, [{"code": "odd_int", "source": "odd", "primary_key": ["id"], "integer_columns": ["b", "bu"]}])
    res = ingest_table(system, "odd_int", settings=lake_settings, batch_id="b1", extracted_at=AT)
    lake, schema = _lake(lake_settings, "odd_int")
    assert str(schema.field("b").type) == "int32" and str(schema.field("bu").type) == "int32"  # Iceberg int
    assert [lake[i]["b"] for i in range(9)] == [0, 1, 2, -1, 127, -128, None, 1, 0]
    assert [lake[i]["bu"] for i in range(9)] == [0, 1, 255, None, 0, 1, None, 2, 0]
    assert res.invalid_values == {"t": 5}
    with pytest.raises(SourceError, match=r"integer_columns names column\(s\) \['t'\] that are not TINYINT\(1\)"):
        ingest_table(_system(url, [{"code": "odd_t", "source": "odd", "primary_key": ["id"], "integer_columns": ["t"]}]),
                     "odd_t", settings=lake_settings, batch_id="b1", extracted_at=AT)


# The connection default the zone test gives its own account: MariaDB runs init_connect for accounts without
# CONNECTION ADMIN only (root, which every other test connects as, skips it), and this one names the test's
# accounts, so no other connection is touched. (SET GLOBAL time_zone would move every new connection of the test
# files pytest -n 2 runs beside this one, and the server has no named zones: CONVERT_TZ(…, 'Asia/Shanghai') is NULL.)
ZONE_INIT = "SET time_zone = IF(USER() LIKE 'citylake\\_tz\\_%', '+08:00', @@time_zone)"


@pytest.fixture
def east8_url(server: tuple[str, Any]) -> Iterator[str]:
    """A URL of the scratch database for an account whose connections start at time_zone '+08:00' — set by the
    server, so ConnectorX's connections too (a URL init_command would send the fast path to pymysql)."""
    import uuid

    url, conn = server
    db = url.rsplit("/", 1)[1].split("?")[0]
    user, password = f"citylake_tz_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    prev = str(_rows(conn, "SELECT @@GLOBAL.init_connect")[0][0] or "")
    ours = ZONE_INIT not in prev  # a concurrent run of this test may have set it already: leave it to that run
    with conn.cursor() as cur:
        cur.execute("CREATE USER %s@'%%' IDENTIFIED BY %s", (user, password))
        cur.execute(f"GRANT ALL ON `{db}`.* TO %s@'%%'", (user,))
        if ours:
            cur.execute("SET GLOBAL init_connect = %s", (f"{prev};{ZONE_INIT}" if prev else ZONE_INIT,))
    try:
        yield f"mysql+pymysql://{user}:{password}@127.0.0.1:3306/{db}?charset=utf8mb4"
    finally:
        with conn.cursor() as cur:
            if ours:
                cur.execute("SET GLOBAL init_connect = %s", (prev,))
            cur.execute("DROP USER IF EXISTS %s@'%%'", (user,))


def test_timestamp_instants_whatever_the_connection_default_zone(
        server: tuple[str, Any], east8_url: str, path: str, lake_settings: Settings,
        monkeypatch: pytest.MonkeyPatch, fast_reads: list[Any]) -> None:
    """Both readers set time_zone '+00:00' on every connection: on an account whose connections start at +08:00,
    TIMESTAMP instants still land right and a TIMESTAMP cursor's window still starts at the watermark. (On this
    UTC server a reader that forgot the statement passes every other test; this one fails, by 8 hours.)"""
    import pymysql
    from sqlalchemy.engine import make_url

    url, conn = server
    _exec(conn, "CREATE TABLE tsz (id INT PRIMARY KEY, at TIMESTAMP(6) NULL, wall DATETIME(6))",
          "SET time_zone = '+00:00'",
          "INSERT INTO tsz VALUES (1, '2024-01-01 00:30:00.5', '2024-01-01 00:30:00.5'), "
          "(2, '1970-01-01 00:00:01', '1970-01-01 00:00:01'), (3, '2024-06-01 12:00:00', '2024-06-01 12:00:00'), "
          "(4, NULL, NULL)")
    u = make_url(east8_url)
    east8 = pymysql.connect(host="127.0.0.1", user=u.username, password=u.password, database=u.database)
    try:  # the account really starts at +08:00, where TIMESTAMP text is 8 hours ahead of UTC
        assert _rows(east8, "SELECT @@SESSION.time_zone, CAST(at AS CHAR) FROM tsz WHERE id = 3") == [
            ("+08:00", "2024-06-01 20:00:00.000000")]
    finally:
        east8.close()
    monkeypatch.setenv("CITYLAKE_CONN_SRC_FID", east8_url)
    system = _system(east8_url, [{"code": "tsz", "source": "tsz", "primary_key": ["id"], "cursor": "at"}])
    first = ingest_table(system, "tsz", settings=lake_settings, batch_id="b1", extracted_at=AT)
    assert bool(fast_reads) == (path == "fast")
    lake, _ = _lake(lake_settings, "tsz")
    held = dict(_rows(conn, "SELECT id, UNIX_TIMESTAMP(at) FROM tsz"))
    for i in (1, 2, 3):
        assert lake[i]["at"] == datetime.fromtimestamp(0, UTC) + timedelta(microseconds=int(held[i] * 1_000_000))
    assert lake[1]["at"] == datetime(2024, 1, 1, 0, 30, 0, 500000, tzinfo=UTC) and lake[4]["at"] is None
    assert lake[1]["wall"] == datetime(2024, 1, 1, 0, 30, 0, 500000, tzinfo=TZ)  # wall time: no session zone
    assert first.watermark == "2024-06-01T20:00:00+08:00"  # 12:00 UTC
    # the watermark is bound as UTC text: under a +08:00 session it would reach back 8 h and read row 5 too
    _exec(conn, "SET time_zone = '+00:00'",
          "INSERT INTO tsz VALUES (5, '2024-06-01 11:59:59', NULL), (6, '2024-06-01 12:00:01', NULL)")
    again = ingest_table(system, "tsz", settings=lake_settings, batch_id="b2", extracted_at=AT + timedelta(hours=1))
    assert again.rows_extracted == 2 and again.rows_written == 1  # the watermark's row again, and row 6


# --- load semantics, as on PostgreSQL (tests/test_sources_servers.py, tests/test_ingest_semantics.py) -----

STAFF = ("CREATE TABLE staff (id BIGINT PRIMARY KEY, name VARCHAR(20), salary DECIMAL(10,2), "
         "updated_at DATETIME, changed TIMESTAMP(6) NULL) CHARACTER SET utf8mb4")


@pytest.fixture
def staff(server: tuple[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[str, Any]:
    url, conn = server
    _exec(conn, STAFF, "SET time_zone = '+00:00'", "INSERT INTO staff VALUES " + ", ".join(
        f"({i}, '员工{i}', {1000 + i}.50, '2026-11-0{1 + i % 3} 08:00:00', '2026-11-0{1 + i % 3} 00:00:00')"
        for i in range(1, 301)))
    monkeypatch.setenv("CITYLAKE_CONN_SRC_FID", url)
    return url, conn


def _staff(url: str, cursor: str | None = "updated_at", **kw: Any) -> SourceSystem:
    return _system(url, [{"code": "staff", "source": "staff", "primary_key": ["id"], "cursor": cursor, **kw}])


def _load(system: SourceSystem, settings: Settings, batch: str, **kw: Any) -> Any:
    at = AT + timedelta(hours=int(batch.removeprefix("b")))
    return ingest_table(system, "staff", settings=settings, batch_id=batch, extracted_at=at, **kw)


def _live(settings: Settings) -> pa.Table:
    return get_catalog(settings).load_table("raw.fid__staff").scan().to_arrow()


@pytest.mark.parametrize("cursor", ["updated_at", "changed"])
def test_incremental_equal_to_watermark_and_late_rows(staff: tuple[str, Any], path: str, cursor: str,
                                                      lake_settings: Settings) -> None:
    url, conn = staff
    system = _staff(url, cursor)
    first = _load(system, lake_settings, "b1")
    assert first.rows_written == 300
    # DATETIME is Shanghai wall time; TIMESTAMP (written here in UTC) is the instant
    assert first.watermark == "2026-11-03T08:00:00+08:00"  # Shanghai wall time; the UTC instant 00:00
    _exec(conn, "SET time_zone = '+00:00'",
          "INSERT INTO staff VALUES (1000, '新人', 1.00, '2026-11-03 08:00:00', '2026-11-03 00:00:00')",  # == wm
          "UPDATE staff SET salary = 1, updated_at = '2026-11-04 08:00:00', changed = '2026-11-04 00:00:00' "
          "WHERE id IN (5, 250)")
    second = _load(system, lake_settings, "b2")
    assert second.rows_written == 3 and second.rows_unchanged == second.rows_extracted - 3
    assert _load(system, lake_settings, "b3").rows_written == 0
    data = _live(lake_settings)
    assert data.num_rows == 303 and sorted(set(data["id"].to_pylist())) == [*range(1, 301), 1000]


def test_rerun_of_a_batch_replaces_it(staff: tuple[str, Any], path: str, lake_settings: Settings) -> None:
    url, conn = staff
    system = _staff(url)
    _load(system, lake_settings, "b1")
    _exec(conn, "UPDATE staff SET salary = 9999, updated_at = '2026-11-05 08:00:00' WHERE id = 1")
    _load(system, lake_settings, "b2")
    _exec(conn, "UPDATE staff SET salary = 8888, updated_at = '2026-11-06 08:00:00' WHERE id = 2")
    _load(system, lake_settings, "b3")
    rows = _live(lake_settings).num_rows
    again = _load(system, lake_settings, "b2")
    data = _live(lake_settings)
    assert data.num_rows == rows and again.watermark == "2026-11-06T08:00:00+08:00"


def test_full_refresh_records_deletes_and_skips_unchanged(staff: tuple[str, Any], path: str,
                                                          lake_settings: Settings) -> None:
    url, conn = staff
    system = _staff(url, cursor=None)
    _load(system, lake_settings, "b1")
    _exec(conn, "DELETE FROM staff WHERE id IN (3, 299)", "UPDATE staff SET name = '改名' WHERE id = 150")
    res = _load(system, lake_settings, "b2")
    assert (res.rows_deleted, res.rows_unchanged, res.rows_written) == (2, 297, 3)
    data = _live(lake_settings)
    gone = data.filter(data["_deleted"])
    assert sorted(gone["id"].to_pylist()) == [3, 299]
    assert _load(system, lake_settings, "b3").rows_written == 0


def test_key_only_deletion_check(staff: tuple[str, Any], path: str, lake_settings: Settings) -> None:
    url, conn = staff
    system = _staff(url, deletions={"schedule": "0 3 * * 0"})
    _load(system, lake_settings, "b1")
    _exec(conn, "DELETE FROM staff WHERE id IN (7, 200)")
    res = _load(system, lake_settings, "b2", mode="deletions")
    assert res.rows_deleted == 2 and res.rows_extracted == 298
    gone = _live(lake_settings).filter(_live(lake_settings)["_deleted"])
    assert sorted(gone["id"].to_pylist()) == [7, 200]


def test_whole_table_reads_use_one_connection_windows_split(staff: tuple[str, Any], lake_settings: Settings,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A full refresh of a table with rows writes deletion rows, so it must read one snapshot: one statement on
    one connection. A first load into an empty table and a cursor window (no deletions) are split into key ranges
    read in parallel."""
    import connectorx

    url, conn = staff
    monkeypatch.setenv("CITYLAKE_MYSQL_FAST", "1")
    monkeypatch.setattr(mysql_fast, "_MIN_ROWS_TO_SPLIT", 0)
    calls: list[Any] = []
    real = connectorx.read_sql

    def spy(conn_url: str, query: Any, **kw: Any) -> Any:
        calls.append(query)
        return real(conn_url, query, **kw)

    monkeypatch.setattr(connectorx, "read_sql", spy)
    system = _staff(url)
    _load(system, lake_settings, "b0", mode="full")  # the first load: nothing to delete, so split
    assert isinstance(calls[-1], list) and len(calls[-1]) == 2
    _load(system, lake_settings, "b1", mode="full")
    assert isinstance(calls[-1], str)  # one query
    _load(system, lake_settings, "b2")  # incremental: the window from the watermark
    assert isinstance(calls[-1], list) and len(calls[-1]) == 2
    assert "`id` < " in calls[-1][0] and "`id` >= " in calls[-1][1]


def test_unreachable_or_refused_names_system_and_host_never_the_password(
        path: str, lake_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import require_service

    require_service("MariaDB", "127.0.0.1", 3306)
    secret = "s3cret-Pw_9x"
    monkeypatch.setenv("CITYLAKE_CONN_SRC_FID", f"mysql+pymysql://nobody:{secret}@127.0.0.1:3306/mysql")
    system = _system("", [{"code": "t", "source": "user", "primary_key": ["id"]}])
    with pytest.raises(SourceError) as info:
        ingest_table(system, "t", settings=lake_settings, batch_id="b1", extracted_at=AT)
    message = str(info.value)
    assert "fid" in message and "127.0.0.1:3306" in message
    assert secret not in message and "\n" not in message


def test_a_read_not_compared_for_deletions_may_split(staff: tuple[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """``consistent=False`` (a first load into an empty table: no deletion rows can come of it) splits even a
    whole-table read; the rows are the same."""
    import connectorx

    from pipelines.extract.mysql import MySqlSource

    url, _ = staff
    monkeypatch.setenv("CITYLAKE_MYSQL_FAST", "1")
    monkeypatch.setattr(mysql_fast, "_MIN_ROWS_TO_SPLIT", 0)
    calls: list[Any] = []
    real = connectorx.read_sql
    monkeypatch.setattr(connectorx, "read_sql", lambda u, q, **kw: calls.append(q) or real(u, q, **kw))
    source = MySqlSource("fid", url, max_connections=2)
    spec = _staff(url).tables[0]
    one = pa.Table.from_batches(list(source.batches(spec)))
    split = pa.Table.from_batches(list(source.batches(spec, consistent=False)))
    source.dispose()
    assert isinstance(calls[0], str) and isinstance(calls[1], list) and len(calls[1]) == 2
    assert split.sort_by("id").equals(one.sort_by("id")) and one.num_rows == 300


def test_unsigned_bigint_cursor_and_a_percent_in_the_filter(server: tuple[str, Any], path: str,
                                                            lake_settings: Settings,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A BIGINT UNSIGNED cursor (decimal(20,0) in the lake) comes back from its watermark as a number, above 2^63
    too, on every later run; a filter with LIKE '%…%' reaches the server as written on both paths."""
    url, conn = server
    monkeypatch.setenv("CITYLAKE_CONN_SRC_FID", url)
    big = 2**63 + 10
    _exec(conn, "CREATE TABLE seqs (id BIGINT UNSIGNED PRIMARY KEY, name VARCHAR(20)) CHARACTER SET utf8mb4",
          "INSERT INTO seqs VALUES " + ", ".join(f"({big + i}, '{'园区' if i % 2 else '街道'}{i}')" for i in range(6)))
    system = _system(url, [{"code": "seqs", "source": "seqs", "primary_key": ["id"], "cursor": "id",
                            "filter": "name LIKE '%园区%'"}])
    first = ingest_table(system, "seqs", settings=lake_settings, batch_id="b1", extracted_at=AT)
    assert first.rows_written == 3 and first.watermark == str(big + 5)
    _exec(conn, f"INSERT INTO seqs VALUES ({big + 7}, '新园区'), ({big + 8}, '街道8')")
    second = ingest_table(system, "seqs", settings=lake_settings, batch_id="b2", extracted_at=AT + timedelta(hours=1))
    assert second.rows_extracted == 2 and second.rows_written == 1  # the watermark's row again, and the new one
    assert second.watermark == str(big + 7)
    ids = get_catalog(lake_settings).load_table("raw.fid__seqs").scan().to_arrow()["id"].to_pylist()
    assert sorted(ids) == [Decimal(big + i) for i in (1, 3, 5, 7)]


def test_url_options_the_fast_path_cannot_carry_fall_back(server: tuple[str, Any], lake_settings: Settings,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """ConnectorX takes host, user, password and database only: a URL with an init_command (or TLS, a socket)
    is read through pymysql rather than connecting without them."""
    import connectorx

    url, conn = server
    _exec(conn, "CREATE TABLE opt (id INT PRIMARY KEY, v VARCHAR(5))", "INSERT INTO opt VALUES (1, 'a'), (2, 'b')")
    monkeypatch.setenv("CITYLAKE_MYSQL_FAST", "1")
    calls: list[Any] = []
    monkeypatch.setattr(connectorx, "read_sql", lambda *a, **k: calls.append(a) or pytest.fail("fast path used"))
    monkeypatch.setenv("CITYLAKE_CONN_SRC_FID", url + ("&" if "?" in url else "?") + "init_command=SET+autocommit%3D1")
    system = _system(url, [{"code": "opt", "source": "opt", "primary_key": ["id"]}])
    assert ingest_table(system, "opt", settings=lake_settings, batch_id="b1", extracted_at=AT).rows_written == 2
    assert calls == []
