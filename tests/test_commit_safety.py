"""A commit that may have happened is never undone, and two writers on one table both land (issue 8, items 1
and 8): an unknown commit outcome keeps the files; a conflicting commit re-reads and merges the state."""

from __future__ import annotations

import json
import multiprocessing
import os
import sys
import threading
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest
from pyiceberg.catalog.sql import SqlCatalog

from pipelines.errors import CommitStateUnknown
from pipelines.ingest import ingest_table
from pipelines.lake.catalog import get_catalog
from pipelines.lake.raw import TableState
from pipelines.settings import TZ, Settings, load_settings
from tests.test_ingest_drops import _system as _drop_system
from tests.test_ingest_drops import _write as _write_drop
from tests.test_ingest_semantics import _exec, _system

AT = datetime(2026, 11, 20, 2, tzinfo=TZ)


def _rows(settings: Settings, identifier: str = "raw.hr__staff") -> Any:
    # A fresh catalog object: reads every data file the current snapshot references (a deleted one raises).
    return get_catalog(settings).load_table(identifier).scan().to_arrow()


def _staff(db: Path, start: int, stop: int, day: int) -> None:
    _exec(db, "CREATE TABLE IF NOT EXISTS staff (id INTEGER, name TEXT, salary NUMERIC(10,2), updated_at DATETIME)",
          *[f"INSERT INTO staff VALUES ({i}, '员工{i}', {1000 + i}.50, '2026-11-{day:02d} 08:00:00')"
            for i in range(start, stop)])


def adds_snapshot(updates: Any) -> bool:
    """Whether a catalog commit's updates land rows (not the properties-only load-sequence commit)."""
    return any(getattr(u, "action", None) == "add-snapshot" for u in updates)


def _response_lost(monkeypatch: pytest.MonkeyPatch, *, then_unreachable: bool) -> None:
    """The catalog commits, then the connection is lost before the answer arrives (and, optionally, the
    catalog stays unreachable, so the writer cannot look its commit up)."""
    real_commit, real_load = SqlCatalog.commit_table, SqlCatalog.load_table
    down = {"now": False}

    def commit_table(self: SqlCatalog, *args: Any, **kwargs: Any) -> Any:
        if not adds_snapshot(args[2]):  # the load-sequence commit at extract start goes through
            return real_commit(self, *args, **kwargs)
        real_commit(self, *args, **kwargs)
        down["now"] = then_unreachable
        raise ConnectionResetError("server closed the connection unexpectedly")

    def load_table(self: SqlCatalog, *args: Any, **kwargs: Any) -> Any:
        if down["now"]:
            raise ConnectionRefusedError("catalog unreachable")
        return real_load(self, *args, **kwargs)

    monkeypatch.setattr(SqlCatalog, "commit_table", commit_table)
    monkeypatch.setattr(SqlCatalog, "load_table", load_table)


def test_lost_commit_response_is_found_and_the_load_succeeds(tmp_path: Path, lake_settings: Settings,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "hr.db"
    _staff(db, 0, 30, 1)
    system = _system(db)
    ingest_table(system, "staff", settings=lake_settings, batch_id="b1", extracted_at=AT)
    _staff(db, 30, 50, 2)
    with monkeypatch.context() as m:
        _response_lost(m, then_unreachable=False)
        res = ingest_table(system, "staff", settings=lake_settings, batch_id="b2", extracted_at=AT + timedelta(1))
    table = get_catalog(lake_settings).load_table("raw.hr__staff")
    assert res.snapshot_id == table.current_snapshot().snapshot_id
    assert table.current_snapshot().summary["citylake.batch-id"] == "b2"
    assert _rows(lake_settings).num_rows == 50  # every data file of the snapshot is still there


def test_unknown_commit_outcome_keeps_the_files_and_the_rerun_replaces(tmp_path: Path, lake_settings: Settings,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "hr.db"
    _staff(db, 0, 30, 1)
    system = _system(db)
    ingest_table(system, "staff", settings=lake_settings, batch_id="b1", extracted_at=AT)
    _staff(db, 30, 50, 2)
    with monkeypatch.context() as m:
        _response_lost(m, then_unreachable=True)
        with pytest.raises(CommitStateUnknown, match=r"raw\.hr__staff.*batch b2.*unknown outcome"):
            ingest_table(system, "staff", settings=lake_settings, batch_id="b2", extracted_at=AT + timedelta(1))
    assert _rows(lake_settings).num_rows == 50  # it had landed: the table is intact, nothing deleted
    # The retry of the same interval (same batch id) replaces the batch: nothing doubled.
    ingest_table(system, "staff", settings=lake_settings, batch_id="b2", extracted_at=AT + timedelta(1))
    ids = _rows(lake_settings).column("id")
    assert len(ids) == 50 and pc.count_distinct(ids).as_py() == 50


def test_unknown_commit_outcome_of_a_drop_load_keeps_its_files(tmp_path: Path, lake_settings: Settings,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    system = _drop_system(drop)
    _write_drop(drop / "aq_0.csv", [f"S{s:03d},2026-11-20 00:00:00,{s}.5" for s in range(40)], encoding="gb18030")
    ingest_table(system, "hourly", settings=lake_settings, batch_id="b1", extracted_at=AT)
    _write_drop(drop / "aq_1.csv", [f"S{s:03d},2026-11-20 01:00:00,{s}.5" for s in range(40)], encoding="gb18030")
    with monkeypatch.context() as m:
        _response_lost(m, then_unreachable=True)
        with pytest.raises(CommitStateUnknown, match=r"raw\.air__hourly"):
            ingest_table(system, "hourly", settings=lake_settings, batch_id="b2", extracted_at=AT + timedelta(1))
    assert _rows(lake_settings, "raw.air__hourly").num_rows == 80
    ingest_table(system, "hourly", settings=lake_settings, batch_id="b2", extracted_at=AT + timedelta(1))
    data = _rows(lake_settings, "raw.air__hourly")
    assert data.num_rows == 80 and set(data["_batch_id"].to_pylist()) == {"b1", "b2"}


# --- two writers, two processes, PostgreSQL catalog ----------------------------------------------


def _writer(env: dict[str, str], barrier: Any, run: Any, every_commit: bool = False) -> None:
    """A child process: load as told, committing only when the other child is about to commit too (its
    first commit, or each one with ``every_commit``)."""
    os.environ.update(env)
    from pyiceberg.exceptions import CommitFailedException
    from pyiceberg.table import Table

    real, real_commit = Table.transaction, SqlCatalog.commit_table
    waited = []

    def transaction(self: Table, *args: Any, **kwargs: Any) -> Any:
        if (sys._getframe(1).f_code.co_name == "take_load_seq") != ("TEST_SYNC_LOAD_SEQ" in env):
            return real(self, *args, **kwargs)  # the load-sequence commit at extract start, or only it
        if not waited or every_commit:  # both children have read the same table state
            try:
                waited.append(barrier.wait(timeout=10 if every_commit else 60))
            except threading.BrokenBarrierError:
                if not every_commit:
                    raise  # with every_commit, a child's redone write leaves the other one commit ahead
        return real(self, *args, **kwargs)

    def commit_table(self: SqlCatalog, *args: Any, **kwargs: Any) -> Any:
        try:
            return real_commit(self, *args, **kwargs)
        except CommitFailedException:  # the test must see that the commits really conflicted
            with open(env["TEST_CONFLICTS"], "a") as f:
                f.write("refused\n")
            raise

    Table.transaction = transaction  # type: ignore[method-assign]
    SqlCatalog.commit_table = commit_table  # type: ignore[method-assign]
    run()
    if every_commit:
        barrier.abort()  # the other child's remaining commits need not wait for this one's


def _two_processes(*runs: Any, envs: list[dict[str, str]], tmp: Path, every_commit: bool = False) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(runs))
    conflicts = tmp / "conflicts.txt"
    procs = [ctx.Process(target=_writer, args=({**env, "TEST_CONFLICTS": str(conflicts)}, barrier, run, every_commit))
             for env, run in zip(envs, runs, strict=True)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    assert conflicts.exists(), "the two commits did not conflict"


def _load_drop(batch: str) -> None:
    settings = load_settings()
    system = _drop_system(Path(os.environ["TEST_DROP"]))
    res = ingest_table(system, "hourly", settings=settings, batch_id=batch, extracted_at=AT)
    if "TEST_RESULTS" in os.environ:
        Path(os.environ["TEST_RESULTS"], batch).write_text(json.dumps(res.to_dict(), default=str))


def _load_sql(batch: str, until: datetime | None = None) -> None:
    system = _system(Path(os.environ["TEST_DB"]))
    at = AT + timedelta(hours=int(batch.removeprefix("b")))
    res = ingest_table(system, "staff", settings=load_settings(), batch_id=batch, extracted_at=at, until=until)
    Path(os.environ["TEST_RESULTS"], batch).write_text(json.dumps(res.to_dict(), default=str))


@pytest.fixture
def pg_lake(lake_settings: Settings, pg_url: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("CITYLAKE_CATALOG_URI", pg_url)
    return load_settings()


def _env(settings: Settings, **extra: str) -> dict[str, str]:
    return {"CITYLAKE_LAKE_DIR": str(settings.lake_dir), "CITYLAKE_CATALOG_URI": settings.catalog_uri, **extra}


def test_two_drop_loads_commit_at_once_both_land_with_both_ledgers(tmp_path: Path, pg_lake: Settings) -> None:
    first, one, two = tmp_path / "d0", tmp_path / "d1", tmp_path / "d2"
    for folder, hour in ((first, 0), (one, 1), (two, 2)):
        folder.mkdir()
        _write_drop(folder / f"aq_{hour}.csv", [f"S{s:03d},2026-11-20 {hour:02d}:00:00,{s}.5" for s in range(40)],
                    encoding="gb18030")
    ingest_table(_drop_system(first), "hourly", settings=pg_lake, batch_id="b0", extracted_at=AT)

    from functools import partial

    _two_processes(partial(_load_drop, "b1"), partial(_load_drop, "b2"),
                   envs=[_env(pg_lake, TEST_DROP=str(one)), _env(pg_lake, TEST_DROP=str(two))], tmp=tmp_path)

    table = get_catalog(pg_lake).load_table("raw.air__hourly")
    data = table.scan().to_arrow()
    assert data.num_rows == 120
    assert len(set(zip(data["station_id"].to_pylist(), data["observed_at"].to_pylist(), strict=True))) == 120
    ledger = TableState.of(table).ledger
    assert {name: entry["batch"] for name, entry in ledger.items()} == {"aq_0.csv": "b0", "aq_1.csv": "b1",
                                                                          "aq_2.csv": "b2"}


def test_two_drop_loads_of_one_file_land_it_once_and_the_ledger_says_so(tmp_path: Path, pg_lake: Settings) -> None:
    first, one, two, results = tmp_path / "d0", tmp_path / "d1", tmp_path / "d2", tmp_path / "results"
    for folder in (first, one, two, results):
        folder.mkdir()
    _write_drop(first / "aq_0.csv", [f"S{s:03d},2026-11-20 00:00:00,{s}.5" for s in range(40)], encoding="gb18030")
    ingest_table(_drop_system(first), "hourly", settings=pg_lake, batch_id="b0", extracted_at=AT)
    for folder, own in ((one, 2), (two, 3)):  # the same file in both drops, beside one of each's own
        _write_drop(folder / "aq_1.csv", [f"S{s:03d},2026-11-20 01:00:00,{s}.5" for s in range(40)],
                    encoding="gb18030")
        _write_drop(folder / f"aq_{own}.csv", [f"S{s:03d},2026-11-20 {own:02d}:00:00,{s}.5" for s in range(10)],
                    encoding="gb18030")

    from functools import partial

    _two_processes(partial(_load_drop, "b1"), partial(_load_drop, "b2"), tmp=tmp_path,
                   envs=[_env(pg_lake, TEST_DROP=str(d), TEST_RESULTS=str(results)) for d in (one, two)])

    table = get_catalog(pg_lake).load_table("raw.air__hourly")
    data = table.scan().to_arrow()
    assert data.num_rows == 40 + 40 + 10 + 10  # aq_1.csv once, whichever load landed it first
    landed = Counter(zip(data["_source_file"].to_pylist(), data["_batch_id"].to_pylist(), strict=True))
    ledger = TableState.of(table).ledger
    # Each file's entry says what its batch landed of it: the later load dropped aq_1.csv's rows at commit.
    assert {name: e["written"] for name, e in ledger.items()} == {
        name: landed[name, e["batch"]] for name, e in ledger.items()}
    res = [json.loads((results / b).read_text()) for b in ("b1", "b2")]
    assert all(r["rows_written"] + r["rows_unchanged"] == r["rows_extracted"] == 50 for r in res)
    assert sum(r["rows_written"] for r in res) == 60


@pytest.mark.parametrize("until", [None, datetime(2026, 11, 2, 12)], ids=["same_window", "different_watermarks"])
def test_two_sql_loads_of_one_window_land_it_once_with_both_windows(until: datetime | None, tmp_path: Path,
                                                                    pg_lake: Settings) -> None:
    db = tmp_path / "hr.db"
    _staff(db, 0, 30, 1)
    ingest_table(_system(db), "staff", settings=pg_lake, batch_id="b0", extracted_at=AT)
    _staff(db, 30, 60, 2)
    _exec(db, "UPDATE staff SET name = '改名', updated_at = '2026-11-03 08:00:00' WHERE id < 5")
    results = tmp_path / "results"
    results.mkdir()

    from functools import partial

    # With ``until`` the first load stops before the changed rows: its watermark is day 2, the other's day 3.
    _two_processes(partial(_load_sql, "b1", until), partial(_load_sql, "b2"),
                   envs=[_env(pg_lake, TEST_DB=str(db), TEST_RESULTS=str(results))] * 2, tmp=tmp_path)

    table = get_catalog(pg_lake).load_table("raw.hr__staff")
    data = table.scan().to_arrow()
    # 30 first versions, 30 new keys, 5 changed keys: once each, whichever load landed them
    assert data.num_rows == 65
    assert len(set(zip(data["id"].to_pylist(), data["name"].to_pylist(), strict=True))) == 65
    assert all(task.file.record_count for task in table.scan().plan_files())  # the later load added no empty file
    state = TableState.of(table)
    assert set(state.windows) == {"b0", "b1", "b2"}
    assert state.watermark is not None and state.watermark.startswith("2026-11-03T08:00:00")  # the larger one
    assert str(state.windows["b1"][1]).startswith("2026-11-02T08:00:00" if until else "2026-11-03T08:00:00")
    # Each load took its own load sequence at extract start (a compare-and-swap commit), not the same one.
    assert state.load_seq == 3
    seqs = {b: set(s) for b in ("b0", "b1", "b2")
            if (s := data.filter(pc.equal(data["_batch_id"], b))["_load_seq"].to_pylist())}
    assert seqs["b0"] == {1} and all(len(s) == 1 for s in seqs.values())
    assert len({next(iter(s)) for s in seqs.values()}) == len(seqs)
    # Counts add up after the commit dropped what the other load landed first: each row once.
    res = {b: json.loads((results / b).read_text()) for b in ("b1", "b2")}
    for r in res.values():
        assert r["rows_written"] + r["rows_unchanged"] == r["rows_extracted"] and r["rows_deleted"] == 0
    assert sum(r["rows_written"] for r in res.values()) == 35
    landed = Counter(data["_batch_id"].to_pylist())
    assert landed == {"b0": 30, **{b: r["rows_written"] for b, r in res.items() if r["rows_written"]}}


def _take_load_seqs(writer: int) -> None:
    from pipelines.lake.raw import take_load_seq

    catalog = get_catalog(load_settings())
    seqs = [take_load_seq(catalog, "raw.hr__staff").load_seq for _ in range(3)]
    Path(os.environ["TEST_RESULTS"], str(writer)).write_text(json.dumps(seqs))


def test_two_processes_taking_load_sequences_at_once_get_distinct_ones(tmp_path: Path, pg_lake: Settings) -> None:
    db = tmp_path / "hr.db"
    _staff(db, 0, 3, 1)
    ingest_table(_system(db), "staff", settings=pg_lake, batch_id="b0", extracted_at=AT)  # load sequence 1
    results = tmp_path / "results"
    results.mkdir()

    from functools import partial

    # Both read the same state before each compare-and-swap: one is refused, re-reads and takes the next.
    _two_processes(partial(_take_load_seqs, 1), partial(_take_load_seqs, 2), tmp=tmp_path, every_commit=True,
                   envs=[_env(pg_lake, TEST_RESULTS=str(results), TEST_SYNC_LOAD_SEQ="1")] * 2)
    taken = [n for w in (1, 2) for n in json.loads((results / str(w)).read_text())]
    assert sorted(taken) == list(range(2, 8))
    assert TableState.of(get_catalog(pg_lake).load_table("raw.hr__staff")).load_seq == 7


def _append_events(writer: int) -> None:
    import pyarrow as pa

    from pipelines.lake.tables import append

    catalog = get_catalog(load_settings())
    for n in range(4):  # the first creates the table (both at once), the others append at the same moment
        append(catalog, "meta.events", pa.table({"writer": [writer], "n": [n]}))


def test_two_processes_appending_to_one_meta_table_both_land(tmp_path: Path, pg_lake: Settings) -> None:
    from functools import partial

    _two_processes(partial(_append_events, 1), partial(_append_events, 2), envs=[_env(pg_lake)] * 2, tmp=tmp_path,
                   every_commit=True)
    rows = get_catalog(pg_lake).load_table("meta.events").scan().to_arrow().to_pylist()
    assert sorted((r["writer"], r["n"]) for r in rows) == [(w, n) for w in (1, 2) for n in range(4)]


def test_a_catalog_that_cannot_check_the_state_requirement_is_refused_clearly() -> None:
    from pipelines.errors import CitylakeError
    from pipelines.lake.raw import commit_state, take_load_seq

    class RestLike:  # any catalog but pyiceberg's SQL one, which validates the custom requirement itself
        pass

    with pytest.raises(CitylakeError, match=r"raw\.hr__staff: catalog RestLike cannot check the citylake\.state"):
        take_load_seq(RestLike(), "raw.hr__staff")  # type: ignore[arg-type]
    with pytest.raises(CitylakeError, match=r"raw\.hr__staff: catalog RestLike"):
        commit_state(RestLike(), "raw.hr__staff", TableState())  # type: ignore[arg-type]
