"""The parallel PostgreSQL extract reads one snapshot, and a killed source connection commits nothing.

The table really splits (more pages than ``_MIN_PAGES_TO_SPLIT``, ANALYZEd) and rows really move between
ranges while it is read: an indexed column is updated (no HOT update), fillfactor is 100 and the only
free space is in the first pages, so each updated row of the table's tail gets a new version in the
first range's pages. The second range's COPY is made slow to start (after its snapshot import), as on a
busy server, so updates commit between the two ranges' COPYs.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import TEST_DEPARTMENT

from pipelines.errors import SourceError
from pipelines.extract import postgres_fast
from pipelines.ingest import ingest_table
from pipelines.lake.catalog import get_catalog
from pipelines.registry import SourceSystem
from pipelines.settings import TZ, Settings

ROWS = 80_000


def _fill(url: str, rows: int = ROWS) -> set[int]:
    """A table past the split threshold whose only free space is in its first pages; its live ids."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE moving (id int PRIMARY KEY, v int NOT NULL, pad text) WITH (fillfactor = 100)")
        conn.execute("CREATE INDEX ON moving (v)")  # updating v is never a HOT update
        conn.execute(f"INSERT INTO moving SELECT g, 0, repeat('x', 200) FROM generate_series(1, {rows}) g")
        conn.execute(f"DELETE FROM moving WHERE id <= {rows // 10} AND id % 2 = 0")
        conn.execute("VACUUM ANALYZE moving")  # free space map: only the first pages have room
        return {r[0] for r in conn.execute("SELECT id FROM moving")}


class Mover:
    """Non-HOT updates until stopped, alternating: a chunk of the tail (its new versions go to the free
    space of the first pages: from the second range into the first) and a chunk of the first range's
    full middle pages (once that free space is used up, new versions go to the end: into the second)."""

    def __init__(self, url: str, rows: int = ROWS) -> None:
        self.url, self.rows = url, rows
        self.go, self.stop = threading.Event(), threading.Event()
        self.updated, self.pid = 0, 0
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.go.wait(30)
            with psycopg.connect(self.url, autocommit=True) as conn:
                self.pid = conn.info.backend_pid
                hi, lo = self.rows, self.rows // 10
                while not self.stop.is_set() and lo + 20 < self.rows // 3:
                    conn.execute("UPDATE moving SET v = v + 1 WHERE id > %s AND id <= %s", (hi - 20, hi))
                    conn.execute("UPDATE moving SET v = v + 1 WHERE id > %s AND id <= %s", (lo, lo + 20))
                    self.updated += 40
                    hi, lo = hi - 20, lo + 20
        except BaseException as exc:  # noqa: BLE001 - reported by finish()
            self.error = exc

    def finish(self) -> int:
        self.stop.set()
        self.go.set()
        self.thread.join(30)
        assert self.error is None, self.error
        return self.updated


@pytest.fixture
def pg(pg_url: str) -> str:
    return pg_url.replace("postgresql+psycopg://", "postgresql://")


class Movers(list[Mover]):
    sessions: list[int]  # sessions on the database (movers aside) once each extract's ranges are open


class _Cursor:
    """An ADBC cursor whose range query first calls ``before_copy(range_start_page)``."""

    def __init__(self, real: Any, before_copy: Callable[[int], None]) -> None:
        self._real, self._before_copy = real, before_copy

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def execute(self, query: str, *args: Any, **kwargs: Any) -> Any:
        if " FROM " in query:  # a range's COPY, not a snapshot or SET statement
            start = re.search(r"ctid >= '\((\d+),0\)'", query)
            self._before_copy(int(start.group(1)) if start else 0)
        return self._real.execute(query, *args, **kwargs)


class _Conn:
    def __init__(self, real: Any, before_copy: Callable[[int], None]) -> None:
        self._real, self._before_copy = real, before_copy

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def cursor(self) -> _Cursor:
        return _Cursor(self._real.cursor(), self._before_copy)

    def __enter__(self) -> _Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self._real.close()


def hook_copies(monkeypatch: pytest.MonkeyPatch, before_copy: Callable[[int], None],
                on_connect: Callable[[str, int], None] = lambda url, n: None) -> list[int]:
    """Call ``before_copy(start page)`` in each range's thread just before its COPY (all ranges have
    imported the snapshot by then) and ``on_connect(url, n)`` after the n-th connection opens."""
    real = postgres_fast._connect
    opened = [0]

    def connect(url: str) -> Any:
        conn = real(url)
        opened[0] += 1
        on_connect(url, opened[0])
        return _Conn(conn, before_copy)

    monkeypatch.setattr(postgres_fast, "_connect", connect)
    return opened


@pytest.fixture
def slow_second_connection(monkeypatch: pytest.MonkeyPatch) -> Iterator[Movers]:
    """Each two-range extract's first connection starts the movers; its second range's COPY starts 0.4 s
    after the first's, so the movers' updates commit between the two COPYs (only the shared snapshot
    keeps the second range from seeing them)."""
    movers = Movers()
    movers.sessions = []

    def on_connect(url: str, n: int) -> None:
        if n % 2:
            for m in movers:
                m.go.set()
        else:  # every range connection is open, no COPY has started
            movers.sessions.append(_other_sessions(url, *(m.pid for m in movers)))

    def before_copy(start_page: int) -> None:
        if start_page:
            time.sleep(0.4)

    opened = hook_copies(monkeypatch, before_copy, on_connect)
    yield movers
    for m in movers:
        m.finish()
    assert opened[0] >= 2, "the extract did not open two range connections"


def test_plan_really_splits(pg: str) -> None:
    _fill(pg)
    _, pages, _, _ = postgres_fast._catalog(pg, None, "moving")
    assert pages >= postgres_fast._MIN_PAGES_TO_SPLIT
    assert len(postgres_fast._ranges(pages, 2)) == 2


def test_ranges_read_one_snapshot_while_rows_move(pg: str, slow_second_connection: Movers) -> None:
    live = _fill(pg)
    mover = Mover(pg)
    slow_second_connection.append(mover)
    ids: list[int] = []
    for batch in postgres_fast.iter_pg_batches(pg, None, "moving", ["id", "v"], parallel=2, batch_rows=5000):
        ids.extend(batch.column("id").to_pylist())
        time.sleep(0.005)  # a slow consumer: updates keep committing while the ranges stream
    assert mover.finish() > 0
    twice = [k for k, n in Counter(ids).items() if n > 1]
    missing = live - set(ids)
    assert not twice and not missing, f"{len(twice)} keys read twice, {len(missing)} live keys not read"
    assert len(ids) == len(live)  # the count at the snapshot: updates neither add nor remove rows


def _system(code: str = "moving_src", **table: Any) -> SourceSystem:
    return SourceSystem.model_validate({
        "system": code, "name": "移动表", "department": TEST_DEPARTMENT, "connection": f"src_{code}",
        "tables": [{"code": "moving", "source": "moving", "primary_key": ["id"], "batch_rows": 5000, **table}],
    })


def test_full_refresh_writes_no_deletion_row_for_a_live_key(
        pg: str, lake_settings: Settings, monkeypatch: pytest.MonkeyPatch, slow_second_connection: Movers) -> None:
    live = _fill(pg)
    monkeypatch.setenv("CITYLAKE_CONN_SRC_MOVING_SRC", pg)
    system = _system()
    first = ingest_table(system, "moving", settings=lake_settings, batch_id="b1",
                         extracted_at=datetime(2026, 11, 1, tzinfo=TZ))
    assert first.rows_written == len(live)
    mover = Mover(pg)
    slow_second_connection.append(mover)
    second = ingest_table(system, "moving", settings=lake_settings, mode="full", batch_id="b2",
                          extracted_at=datetime(2026, 11, 2, tzinfo=TZ))
    assert mover.finish() > 0
    raw = get_catalog(lake_settings).load_table("raw.moving_src__moving").scan().to_arrow()
    gone = raw.filter(pc.fill_null(raw["_deleted"], False))
    assert gone.num_rows == 0 and second.rows_deleted == 0, f"{gone.num_rows} live keys got a deletion row"
    b2 = raw.filter(pc.equal(raw["_batch_id"], "b2"))["id"].to_pylist()
    assert len(b2) == len(set(b2)), "a key was read twice"
    assert second.rows_extracted == len(live)
    # While the ranges stream, the load holds its two range connections and nothing else (no idle
    # reflection connection): max_connections is a real cap.
    assert slow_second_connection.sessions[-1] == system.connections_per_load == 2


def _other_sessions(url: str, *besides: int) -> int:
    with psycopg.connect(url) as conn:
        got = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND backend_type = 'client backend' AND pid <> pg_backend_pid() AND NOT pid = ANY(%s)",
                           (list(besides),)).fetchone()
    return int(got[0]) if got else 0


# --- fault: the source connection is killed mid-extract -----------------------------------------


def _terminate_extract(url: str) -> int:
    """pg_terminate_backend every other session on the scratch database (the extract's COPYs)."""
    with psycopg.connect(url, autocommit=True) as conn:
        killed = conn.execute("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                              "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                              "AND query ILIKE 'COPY%'").fetchone()
    return int(killed[0]) if killed else 0


def test_source_killed_mid_extract_commits_nothing_and_rerun_completes(
        pg: str, lake_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    rows = 200_000  # twice what the range threads and their queue can read ahead of the consumer (~24 MB)
    _fill(pg, rows)
    monkeypatch.setenv("CITYLAKE_CONN_SRC_MOVING_SRC", pg)
    system = _system()
    catalog = get_catalog(lake_settings)
    real_conform = postgres_fast._conform

    def killed_load(batch_id: str, day: int) -> str:
        killed: list[int] = []

        def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
            if not killed:  # the first batch reached the consumer: the COPYs are still streaming
                killed.append(_terminate_extract(pg))
            return real_conform(batch, schema)

        monkeypatch.setattr(postgres_fast, "_conform", conform)
        try:
            with pytest.raises(SourceError) as info:
                ingest_table(system, "moving", settings=lake_settings, mode="full", batch_id=batch_id,
                             extracted_at=datetime(2026, 11, day, tzinfo=TZ))
        finally:
            monkeypatch.setattr(postgres_fast, "_conform", real_conform)
        assert killed and killed[0] >= 1
        message = str(info.value)
        assert "\n" not in message and message.startswith("system moving_src ("), message
        assert message.count("table 'moving'") == 1, message
        assert "terminating connection" in message or "closed the connection" in message, message
        return message

    killed_load("b1", 1)  # a first load killed: no snapshot, no rows
    first = catalog.load_table("raw.moving_src__moving") if catalog.table_exists("raw.moving_src__moving") else None
    assert first is None or first.current_snapshot() is None
    ingest_table(system, "moving", settings=lake_settings, batch_id="b1", extracted_at=datetime(2026, 11, 1, tzinfo=TZ))
    with psycopg.connect(pg, autocommit=True) as conn:
        conn.execute("UPDATE moving SET v = 7 WHERE id % 1000 = 1")
        conn.execute(f"INSERT INTO moving SELECT g, 1, 'new' FROM generate_series({rows + 1}, {rows + 500}) g")
    before = catalog.load_table("raw.moving_src__moving").current_snapshot().snapshot_id

    killed_load("b2", 2)
    table = catalog.load_table("raw.moving_src__moving")
    assert table.current_snapshot().snapshot_id == before  # nothing committed, no partial batch
    assert table.scan().to_arrow().num_rows == rows - rows // 20
    rerun = ingest_table(system, "moving", settings=lake_settings, mode="full", batch_id="b2",
                         extracted_at=datetime(2026, 11, 2, tzinfo=TZ))
    assert rerun.rows_deleted == 0
    raw = catalog.load_table("raw.moving_src__moving").scan().to_arrow()
    b2 = raw.filter(pc.equal(raw["_batch_id"], "b2"))["id"].to_pylist()
    assert len(b2) == len(set(b2)) == rerun.rows_written
    with psycopg.connect(pg) as conn:
        source = dict(conn.execute("SELECT id, v FROM moving").fetchall())
    latest: dict[int, int] = {}
    for batch in ("b1", "b2"):  # b2's versions win
        part = raw.filter(pc.equal(raw["_batch_id"], batch))
        latest.update(zip(part["id"].to_pylist(), part["v"].to_pylist(), strict=True))
    assert latest == source  # lake = source: nothing lost, nothing doubled


def test_one_connection_system_reads_with_one_connection(pg: str, lake_settings: Settings,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    live = _fill(pg)
    monkeypatch.setenv("CITYLAKE_CONN_SRC_MOVING_SRC", pg)
    spec = _system().model_dump()
    system = SourceSystem.model_validate({**spec, "max_connections": 1})
    assert system.connections_per_load == 1
    real, opened = postgres_fast._connect, []
    monkeypatch.setattr(postgres_fast, "_connect", lambda url: opened.append(url) or real(url))
    got = ingest_table(system, "moving", settings=lake_settings, batch_id="b1",
                       extracted_at=datetime(2026, 11, 1, tzinfo=TZ))
    assert got.rows_written == len(live) and len(opened) == 1  # no split, no snapshot export: one COPY


# --- fault: one range fails while another waits on a lock ---------------------------------------


def _in_thread(run: Callable[[], Any], release: Callable[[], None]) -> BaseException | None:
    """What ``run`` raised in a thread; a run still going after 60 s is a hang: ``release`` frees it
    (so the test can clean up) and the test fails."""
    raised: list[BaseException | None] = []

    def target() -> None:
        try:
            run()
            raised.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            raised.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(60)
    if thread.is_alive():
        release()
        thread.join(30)
        pytest.fail("the extract hung on a range waiting for a lock")
    return raised[0]


def test_failed_range_cancels_a_range_waiting_on_a_lock(pg: str, lake_settings: Settings,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The first range fails (a bad cast on id 1, in its pages only); the second range's COPY queues behind
    an ACCESS EXCLUSIVE lock (as behind VACUUM FULL) taken after the snapshot export. The load fails at
    once with the first range's error and leaves no session open, though the lock is never released."""
    _fill(pg)
    monkeypatch.setenv("CITYLAKE_CONN_SRC_MOVING_SRC", pg)
    monkeypatch.setenv(postgres_fast.LOCK_TIMEOUT_ENV, "3600")  # the cancel ends the wait, not lock_timeout
    system = _system(filter="CAST(CASE WHEN id = 1 THEN pad ELSE '1' END AS int) > 0")
    locker = psycopg.connect(pg)
    locker_pid = locker.info.backend_pid
    locked = threading.Event()

    def before_copy(start_page: int) -> None:
        if not start_page:
            return
        # The first range has failed and closed when it is the only other session left; then the lock is
        # granted at once, and this range's COPY waits on it.
        for _ in range(600):
            if _other_sessions(pg, locker_pid) <= 1:
                break
            time.sleep(0.05)
        locker.execute("LOCK TABLE moving IN ACCESS EXCLUSIVE MODE")
        locked.set()

    opened = hook_copies(monkeypatch, before_copy)
    try:
        error = _in_thread(lambda: ingest_table(system, "moving", settings=lake_settings, batch_id="b1",
                                                extracted_at=datetime(2026, 11, 1, tzinfo=TZ)),
                           locker.rollback)
        assert opened[0] == 2 and locked.is_set()
        assert isinstance(error, SourceError), repr(error)
        message = str(error)
        assert "\n" not in message and message.startswith("system moving_src ("), message
        assert "invalid input syntax for type integer" in message, message  # the first error, not the cancel
        assert _other_sessions(pg, locker_pid) == 0  # both range connections closed, the lock still held
    finally:
        locker.close()


def test_range_waiting_on_a_lock_fails_after_lock_timeout(pg: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with psycopg.connect(pg, autocommit=True) as conn:
        conn.execute("CREATE TABLE locked AS SELECT g AS id FROM generate_series(1, 10) g")
    monkeypatch.setenv(postgres_fast.LOCK_TIMEOUT_ENV, "0.5")
    locker = psycopg.connect(pg)
    try:
        locker.execute("LOCK TABLE locked IN ACCESS EXCLUSIVE MODE")
        error = _in_thread(lambda: list(postgres_fast.iter_pg_batches(pg, None, "locked", ["id"])),
                           locker.rollback)
        assert isinstance(error, SourceError) and "lock timeout" in str(error), repr(error)
        assert _other_sessions(pg, locker.info.backend_pid) == 0
    finally:
        locker.close()


def test_lock_timeout_setting_must_be_seconds(pg: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(postgres_fast.LOCK_TIMEOUT_ENV, "10min")
    with psycopg.connect(pg, autocommit=True) as conn:
        conn.execute("CREATE TABLE t AS SELECT 1 AS id")
    with pytest.raises(SourceError, match=postgres_fast.LOCK_TIMEOUT_ENV):
        list(postgres_fast.iter_pg_batches(pg, None, "t", ["id"]))
