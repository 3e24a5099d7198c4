"""The MySQL fast path's memory bound and its failures (issue 14), on a real MariaDB.

ConnectorX decodes a statement ahead of the consumer into an unbounded queue, so a read from which no deletion
row comes is split into ``ORDER BY key LIMIT n`` chunks read in rounds, one statement per key range at a time:
these tests check the rounds never overlap (every row of a round has been delivered before the next round's
statements start), every chunk fits the byte budget whatever the keys' spread, every row comes once, and a
statement stopped halfway raises instead of ending the read early. A connection killed mid-read must not
print or raise the password, whatever ConnectorX writes to stderr itself.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pytest

from pipelines.extract import mysql_fast
from pipelines.extract.mysql import read_plan

ROOT = Path(__file__).resolve().parent.parent


def test_chunk_size_fits_the_budget_in_whole_batches() -> None:
    # 220 bytes a row, a 32 MiB share: three 50,000-row batches
    assert mysql_fast.chunk_size(100_000, 22_000_000, 50_000, 32 << 20) == (50_000, 150_000)
    # 1 MiB rows: 32 rows in a batch of 32, not a 50,000-row batch of 50 GB
    assert mysql_fast.chunk_size(10, 10 << 20, 50_000, 32 << 20) == (32, 32)
    # rows wider than the share: one row at a time
    assert mysql_fast.chunk_size(1, 64 << 20, 50_000, 32 << 20) == (1, 1)


def test_ranges_are_open_ended() -> None:
    assert mysql_fast.split_keys(2, 1, 1000) == [500]
    assert mysql_fast.split_keys(2, 1, 1) == []  # fewer keys than ranges: one
    assert mysql_fast.range_bounds("id", [500]) == [["`id` < 500"], ["`id` >= 500"]]
    assert mysql_fast.range_bounds("id", [10, 20]) == [["`id` < 10"], ["`id` >= 10", "`id` < 20"], ["`id` >= 20"]]
    assert mysql_fast.range_bounds("id", []) == [[]]
    q = mysql_fast.chunk_query("`id` AS `c0`", "`t`", ["(x = 1)", "`id` < 500"], "id", 41, 300)
    assert q == "SELECT `id` AS `c0` FROM `t` WHERE (x = 1) AND `id` < 500 AND `id` > 41 ORDER BY `id` LIMIT 300"


@pytest.fixture
def skewed(mysql_url: str) -> Iterator[tuple[str, Any]]:
    """A table whose keys crowd one end of their range: 2,900 keys from 1, 100 near 10^12."""
    import pymysql
    import sqlalchemy as sa

    name = mysql_url.rsplit("/", 1)[1].split("?")[0]
    conn = pymysql.connect(host="127.0.0.1", user="root", database=name, charset="utf8mb4", autocommit=True)
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE t (id BIGINT PRIMARY KEY, txt VARCHAR(40), day DATE)")
        cur.execute("INSERT INTO t SELECT seq, CONCAT('行', seq), DATE '2020-01-01' + INTERVAL seq % 300 DAY "
                    "FROM seq_1_to_2900")
        cur.execute("INSERT INTO t SELECT 1000000000000 + seq, 'far', NULL FROM seq_1_to_100")
    engine = sa.create_engine(mysql_url, poolclass=sa.pool.NullPool)
    try:
        yield mysql_url, engine
    finally:
        engine.dispose()
        conn.close()


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Every ``cx.read_sql``: its statements, batch size, rows and bytes delivered per key range (0: below the
    split key, 1: from it), and — when it started — what every earlier call had delivered per range."""
    import connectorx

    real = connectorx.read_sql
    calls: list[dict[str, Any]] = []

    def spy(url: str, query: Any, **kw: Any) -> Iterator[pa.RecordBatch]:
        queries = query if isinstance(query, list) else [query]
        cut = next((int(m.group(1)) for c in [*calls, {"queries": queries}] for q in c["queries"]
                    if (m := re.search(r"`id` >= (\d+)", q))), None)
        rec = {"queries": queries, "batch": kw["batch_size"], "rows": [0, 0], "nbytes": 0, "cut": cut,
               "before": [list(c["rows"]) for c in calls]}
        calls.append(rec)
        reader = real(url, query, **kw)

        def counted() -> Iterator[pa.RecordBatch]:
            for b in reader:
                if b.num_rows:
                    side = int(rec["cut"] is not None and b.column(0)[0].as_py() >= rec["cut"])
                    rec["rows"][side] += b.num_rows
                    rec["nbytes"] += b.nbytes
                yield b

        return counted()

    monkeypatch.setattr(connectorx, "read_sql", spy)
    return calls


def _side(query: str) -> set[int]:
    """The key ranges a statement reads (0: below the split key, 1: from it; both when not split)."""
    return {0} if "`id` < " in query else {1} if "`id` >= " in query else {0, 1}


def test_chunked_reads_hold_one_chunk_per_range_and_fit_the_budget(skewed: tuple[str, Any],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _, engine = skewed
    monkeypatch.setattr(mysql_fast, "_MIN_ROWS_TO_SPLIT", 0)
    monkeypatch.setattr(mysql_fast, "_FIRST_ROWS", 100)
    monkeypatch.setattr(mysql_fast, "_IN_FLIGHT_BYTES", 12_000)
    calls = _spy(monkeypatch)
    with engine.connect() as conn:
        plan = read_plan(conn, None, "t", zone="Asia/Shanghai", table_encoding=None, column_encodings={})
    got = pa.Table.from_batches(list(mysql_fast.iter_mysql_batches(engine, plan, "`t`", [], 2, 1000,
                                                                   consistent=False)))
    keys = sorted(got.column("c0").to_pylist())
    assert keys == [*range(1, 2901), *range(1_000_000_000_001, 1_000_000_000_101)]  # each row once

    width = sum(c["nbytes"] for c in calls) / sum(sum(c["rows"]) for c in calls)
    assert len(calls) > 5  # many chunks, not one statement per range
    assert len(calls[0]["queries"]) == 2  # the first chunk of both ranges in one call
    for i, call in enumerate(calls):
        sides = set().union(*(_side(q) for q in call["queries"]))
        # a range's statement starts once every row of its previous statement has been delivered: at most one
        # chunk per range is decoded and waiting, and one connection per range reads
        for j, earlier in enumerate(calls[:i]):
            for side in sides & set().union(*(_side(q) for q in earlier["queries"])):
                assert call["before"][j][side] == earlier["rows"][side], (i, j, side)
        limits = [int(re.fullmatch(r".* ORDER BY `id` LIMIT (\d+)", q).group(1))  # type: ignore[union-attr]
                  for q in call["queries"]]
        assert i == 0 or sum(limits) * width <= 1.5 * mysql_fast._IN_FLIGHT_BYTES  # the first: 100 rows a range
        assert call["batch"] <= 1000
    # the dense range (keys from 1) took many chunks although its key span is a sliver of the other's
    assert sum("`id` < " in q for c in calls for q in c["queries"]) > 5


def test_a_consistent_read_is_one_statement(skewed: tuple[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    _, engine = skewed
    monkeypatch.setattr(mysql_fast, "_MIN_ROWS_TO_SPLIT", 0)
    calls = _spy(monkeypatch)
    with engine.connect() as conn:
        plan = read_plan(conn, None, "t", zone="Asia/Shanghai", table_encoding=None, column_encodings={})
    rows = sum(b.num_rows for b in mysql_fast.iter_mysql_batches(engine, plan, "`t`", [], 2, 1000, consistent=True))
    assert rows == 3000
    assert [c["queries"] for c in calls] == [["SELECT " + plan.select_list() + " FROM `t`"]]


# A child process (ConnectorX's panics print to its stderr, which a test cannot capture in-process) reads the
# table through MySqlSource as an account with a password, each row slowed on the server so the statement is
# still running when this process KILLs its connection (not a thread of the child: ConnectorX holds the GIL
# while it waits for a batch). It prints what the read raised.
CHILD = r"""
import sys
from pipelines.extract import mysql_fast
from pipelines.extract.mysql import MySqlSource
from pipelines.registry import SqlTable

url, how = sys.argv[1], sys.argv[2]
mysql_fast._MIN_ROWS_TO_SPLIT = 0
mysql_fast._FIRST_ROWS = 5000
real_where = MySqlSource.where
MySqlSource.where = lambda self, *a, **k: [*real_where(self, *a, **k), "SLEEP(0.002) = 0"]
source = MySqlSource("leak", url, max_connections=2)
spec = SqlTable.model_validate({"code": "t", "source": "t", "primary_key": ["id"]})
rows = 0
try:
    for b in source.batches(spec, consistent=(how == "one")):
        rows += b.num_rows
    print("READ", rows)
except BaseException as exc:
    print("RAISED", type(exc).__name__, exc)
"""


def _kill_reads(root: Any, user: str, child: subprocess.Popen[str]) -> list[int]:
    """KILL the child's slowed statements (once one runs); the ids killed."""
    deadline = time.monotonic() + 60
    while child.poll() is None and time.monotonic() < deadline:
        with root.cursor() as cur:
            cur.execute("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = %s AND ID <> CONNECTION_ID() "
                        "AND INFO LIKE '%%SLEEP(0.002)%%'", (user,))
            ids = [r[0] for r in cur.fetchall()]
            for i in ids:
                cur.execute(f"KILL {int(i)}")
        if ids:
            return ids
        time.sleep(0.05)
    return []


@pytest.mark.parametrize("how", ["chunked", "one"])
def test_a_killed_read_raises_and_never_shows_the_password(skewed: tuple[str, Any], how: str) -> None:
    import pymysql

    mysql_url, _ = skewed
    name = mysql_url.rsplit("/", 1)[1].split("?")[0]
    user = f"cl_{uuid.uuid4().hex[:10]}"
    secret = f"Pw#{uuid.uuid4().hex[:12]}@/x"
    root = pymysql.connect(host="127.0.0.1", user="root", autocommit=True)
    try:
        with root.cursor() as cur:
            for host in ("%", "localhost"):  # ConnectorX moves to the server's socket on 127.0.0.1
                cur.execute(f"CREATE USER '{user}'@'{host.replace('%', '%%')}' IDENTIFIED BY %s", (secret,))
                cur.execute(f"GRANT SELECT ON `{name}`.* TO '{user}'@'{host}'")
        url = f"mysql+pymysql://{user}:{quote(secret, safe='')}@127.0.0.1:3306/{name}"
        env = {**os.environ, "RUST_BACKTRACE": "1", "RUST_LOG": "debug", "PYTHONPATH": str(ROOT)}
        child = subprocess.Popen([sys.executable, "-c", CHILD, url, how], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
        try:
            killed = _kill_reads(root, user, child)
            stdout, stderr = child.communicate(timeout=120)
        finally:
            child.kill()
    finally:
        with root.cursor() as cur:
            for host in ("%", "localhost"):
                cur.execute(f"DROP USER IF EXISTS '{user}'@'{host}'")
        root.close()
    out = stdout + stderr
    assert killed, out[-3000:]
    assert "RAISED" in stdout and "READ" not in stdout, out[-3000:]  # never a read cut short as if complete
    for form in (secret, quote(secret, safe=""), secret[3:15]):
        assert form not in out
