"""The order of a key's versions follows the table's load sequence, not who ran the load (CLI wall clock
vs an Airflow data-interval end); new raw batches are found from metadata, also after snapshot expiry."""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import TEST_DEPARTMENT

from pipelines.ingest import ingest_table
from pipelines.lake.catalog import get_catalog
from pipelines.lake.raw import TableState
from pipelines.quality.gate import run_quality
from pipelines.registry import get_system
from pipelines.settings import PROJECT_ROOT, TZ, Settings, load_settings

POI_COLUMNS = '"编号" TEXT, "名称" TEXT, "类别" TEXT, "经度" {real}, "纬度" {real}, "区划代码" TEXT, "更新时间" {ts}'
POIS = [(f"POI{i:06d}", f"{street}街{kind}", kind, 117.2 + i / 100, 31.8 + i / 100, "340104", "2026-11-01 08:00:00")
        for i, (street, kind) in enumerate([("长江", "图书馆"), ("芜湖", "医院"), ("徽州", "公园"), ("宿州", "学校"),
                                            ("合作化", "体育场馆")])]


class Poi:
    """The poi source (no cursor: every run is a full refresh) in SQLite or PostgreSQL."""

    def __init__(self, kind: str, settings: Settings, pg_url: str | None) -> None:
        self.kind, self.pg_url = kind, pg_url
        self.db = settings.data_dir / "sources" / "poi.db"
        if kind == "sqlite":
            self.db.parent.mkdir(parents=True, exist_ok=True)
            self.run(f'CREATE TABLE "兴趣点" ({POI_COLUMNS.format(real="REAL", ts="DATETIME")})')
        else:
            self.run(f'CREATE TABLE "兴趣点" ({POI_COLUMNS.format(real="double precision", ts="timestamp")})')
        for row in POIS:
            self.run('INSERT INTO "兴趣点" VALUES (?, ?, ?, ?, ?, ?, ?)', row)

    def run(self, sql: str, params: tuple = ()) -> None:
        if self.kind == "sqlite":
            con = sqlite3.connect(self.db)
            con.execute(sql, params)
            con.commit()
            con.close()
            return
        import psycopg

        assert self.pg_url
        with psycopg.connect(self.pg_url.replace("+psycopg", ""), autocommit=True) as con:
            con.execute(sql.replace("?", "%s"), params)


@pytest.fixture(params=["sqlite", "postgresql"])
def poi(request: pytest.FixtureRequest, lake_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Poi:
    monkeypatch.setenv("CITYLAKE_REGISTRY_DIR", str(PROJECT_ROOT / "schemas" / "sources"))
    pg_url = None
    if request.param == "postgresql":
        pg_url = request.getfixturevalue("pg_url")
        monkeypatch.setenv("CITYLAKE_CONN_SRC_POI", pg_url)
    return Poi(request.param, load_settings(), pg_url)


_CLI_RUNS = iter(range(1_000_000))


def _load(at: datetime | None, batch: str | None = None, mode: str = "incremental") -> int:
    """``at=None`` is the CLI (wall clock); otherwise an Airflow run ending at ``at``. Two CLI runs in one
    second would share the default batch id (the second replacing the first), so each gets its own."""
    settings = load_settings()
    batch = batch or f"cli_{next(_CLI_RUNS)}"
    system = get_system(settings.registry_dir, "poi")
    return ingest_table(system, "poi", settings=settings, mode=mode,  # type: ignore[arg-type]
                        batch_id=batch, extracted_at=at).rows_written


def _std() -> dict[str, str]:
    rows = get_catalog(load_settings()).load_table("std.poi").scan().to_arrow().to_pylist()
    return {r["poi_id"]: r["poi_name"] for r in rows}


@pytest.mark.parametrize("order", ["cli_then_earlier_airflow", "later_airflow_then_cli"])
def test_latest_version_is_the_latest_load_whoever_ran_it(poi: Poi, order: str) -> None:
    now = datetime.now(TZ)
    earlier, later = now - timedelta(days=10), now + timedelta(days=1)
    first, second = ((None, (earlier, "scheduled__earlier__poi")) if order == "cli_then_earlier_airflow"
                     else ((later, "scheduled__later__poi"), None))
    assert (_load(None) if first is None else _load(*first)) == len(POIS)
    poi.run('UPDATE "兴趣点" SET "名称" = ? WHERE "编号" = ?', ("长江路图书馆(新馆)", "POI000000"))
    poi.run('DELETE FROM "兴趣点" WHERE "编号" = ?', ("POI000001",))
    # The second load's _extracted_at is older than the first's: only the load sequence says it is newer.
    assert (_load(None) if second is None else _load(*second)) == 2  # one changed row, one deletion row
    raw = get_catalog(load_settings()).load_table("raw.poi__poi")
    assert TableState.of(raw).load_seq == 2
    assert sorted(raw.scan().to_arrow()["_load_seq"].to_pylist()) == [1] * len(POIS) + [2, 2]

    result = run_quality("poi", reference_date=now.date())
    assert result.status == "published"
    std = _std()
    assert std["POI000000"] == "长江路图书馆(新馆)"   # the source's current value
    assert "POI000001" not in std                     # deleted by the later load
    assert _load(None, mode="full") == 0               # an unchanged source writes nothing
    assert _load(earlier - timedelta(days=5), "scheduled__earliest__poi") == 0


def test_rows_from_before_the_load_sequence_order_first(poi: Poi) -> None:
    """A raw table written before ``_load_seq`` existed: its rows read null and are older than any load."""
    from pyiceberg.expressions import AlwaysTrue

    _load(datetime.now(TZ) + timedelta(days=30), "old__poi")  # far in the future, as a stale clock might
    raw = get_catalog(load_settings()).load_table("raw.poi__poi")
    rows = raw.scan().to_arrow()
    # stand in for an old table: same rows, _load_seq null, state without a counter
    with raw.transaction() as tx:
        tx.delete(AlwaysTrue())
        tx.append(rows.set_column(rows.schema.get_field_index("_load_seq"), "_load_seq",
                                  __import__("pyarrow").nulls(rows.num_rows, "int64")))
        tx.set_properties({"citylake.state": '{"cursor":null,"watermark":null,"batch_id":"old__poi","windows":{}}'})
    poi.run('UPDATE "兴趣点" SET "名称" = ? WHERE "编号" = ?', ("新名称", "POI000003"))
    assert _load(None) == 1
    assert _load(None) == 0  # the new version is the latest even though the old rows look newer by clock
    assert _std_after_publish()["POI000003"] == "新名称"


def _std_after_publish() -> dict[str, str]:
    run_quality("poi", reference_date=datetime.now(TZ).date())
    return _std()


def test_new_batches_come_from_metadata_and_survive_snapshot_expiry(tmp_path: Path, lake_settings: Settings,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """raw_batch_ids reads snapshot summaries, and for files of expired snapshots their names: no data scan."""
    import pipelines.lake.changes as changes
    from pipelines.lake.changes import raw_batch_ids

    db = tmp_path / "src.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (id INTEGER, v TEXT, updated_at DATETIME)")
    con.commit()
    from pipelines.registry import SourceSystem

    system = SourceSystem.model_validate({
        "system": "s", "name": "测试", "department": TEST_DEPARTMENT, "connection": "src_s", "default_url": f"sqlite:///{db}",
        "tables": [{"code": "t", "source": "t", "primary_key": ["id"], "cursor": "updated_at"}]})
    for day in range(1, 5):
        con.execute("INSERT INTO t VALUES (?, 'x', ?)", (day, f"2026-11-0{day} 08:00:00"))
        con.commit()
        ingest_table(system, "t", settings=lake_settings, batch_id=f"scheduled__2026-11-0{day}T02:00:00+08:00__t",
                     extracted_at=datetime(2026, 11, day, 2, tzinfo=TZ))
    table = get_catalog(lake_settings).load_table("raw.s__t")
    expected = {f"scheduled__2026-11-0{d}T02_00_00_08_00__t" for d in range(1, 5)}

    def no_data_reads(*a: object, **k: object) -> None:
        raise AssertionError("raw_batch_ids read a data file")

    monkeypatch.setattr(changes.pq, "ParquetFile", no_data_reads)
    assert raw_batch_ids(table) == expected
    keep = table.current_snapshot().snapshot_id
    table.maintenance.expire_snapshots().by_ids(
        [s.snapshot_id for s in table.snapshots() if s.snapshot_id != keep]).commit()
    table = get_catalog(lake_settings).load_table("raw.s__t")
    assert len(table.snapshots()) == 1
    assert raw_batch_ids(table) == expected


def test_a_release_of_an_older_load_does_not_overwrite_a_newer_std_row(tmp_path: Path,
                                                                      lake_settings: Settings) -> None:
    """A held batch released after newer loads: its rows (and tombstones) lose to every key a later raw
    load wrote or deleted (raw's versions decide, deletion rows included: std has no row for a deleted key)."""
    from types import SimpleNamespace

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.quality.gate import _publish

    catalog = get_catalog(lake_settings)
    contract = SimpleNamespace(std_table="std.t")
    at = pa.timestamp("us", tz="UTC")
    raw: list[tuple[str, int]] = []  # every (key, load sequence) raw holds, deletion rows included
    reads: list[int] = []

    def later(after: int) -> list[pa.Table]:
        reads.append(after)
        return [pa.table({"k": [k for k, s in raw if s > after], "_load_seq": pa.array([s for _, s in raw if s > after],
                                                                                       pa.int64())})]

    def rows(*values: tuple[str, int, int]) -> Path:  # (key, value, load sequence)
        path = tmp_path / f"good-{len(list(tmp_path.glob('good-*')))}.parquet"
        pq.write_table(pa.table({"k": [v[0] for v in values], "v": pa.array([v[1] for v in values], pa.int64()),
                                 "_extracted_at": pa.array([datetime(2026, 11, 1)] * len(values), at),
                                 "_load_seq": pa.array([v[2] for v in values], pa.int64())}), path)
        raw.extend((v[0], v[2]) for v in values)
        return path

    def tombstones(*values: tuple[str, int]) -> pa.Table:
        raw.extend(values)
        return pa.table({"k": [v[0] for v in values], "_extracted_at": pa.array([datetime(2026, 11, 1)] * len(values), at),
                         "_load_seq": pa.array([v[1] for v in values], pa.int64())})

    def publish(good: Path, gone: pa.Table, run: str) -> None:
        _publish(catalog, contract, good, gone, ["k"], run, later=later)

    def std() -> dict[str, int]:
        return {r["k"]: r["v"] for r in catalog.load_table("std.t").scan().to_arrow().to_pylist()}

    publish(rows(("a", 1, 1), ("b", 1, 1), ("c", 1, 1), ("d", 1, 1)), tombstones(), "r1")
    held = rows(("a", 2, 2), ("b", 2, 2), ("d", 2, 2)), tombstones(("c", 2))  # loaded, then held
    publish(rows(("a", 3, 3)), tombstones(("c", 3), ("d", 3)), "r3")  # the newer load deletes d
    assert std() == {"a": 3, "b": 1}
    publish(*held, "r2")  # released late: b is newer here than raw's later loads, a, c and d are not
    assert std() == {"a": 3, "b": 2}  # d stays deleted
    assert reads[-1] == 2  # raw is read only after the released load's sequence
    publish(rows(("c", 9, 9)), tombstones(("a", 9)), "r9")  # a later load wins again
    assert std() == {"b": 2, "c": 9}


@pytest.mark.parametrize("rows_per_bucket", [7, 4_000_000])
def test_full_refresh_compare_is_exact_in_buckets(tmp_path: Path, lake_settings: Settings,
                                                  monkeypatch: pytest.MonkeyPatch, rows_per_bucket: int) -> None:
    """A big table is compared bucket by bucket (hash of the key); the result is the same as in one piece."""
    import pyarrow.compute as pc

    from pipelines.registry import SourceSystem

    monkeypatch.setattr("pipelines.lake.changes.ROWS_PER_BUCKET", rows_per_bucket)
    db = tmp_path / "src.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (id TEXT, v INTEGER)")
    con.executemany("INSERT INTO t VALUES (?, ?)", [(f"K{i:04d}", i) for i in range(100)])
    con.commit()
    system = SourceSystem.model_validate({
        "system": "s", "name": "测试", "department": TEST_DEPARTMENT, "connection": "src_s", "default_url": f"sqlite:///{db}",
        "tables": [{"code": "t", "source": "t", "primary_key": ["id"], "batch_rows": 1000}]})

    def load(batch: str):  # noqa: ANN202
        return ingest_table(system, "t", settings=lake_settings, batch_id=batch,
                            extracted_at=datetime(2026, 11, 20, tzinfo=TZ))

    assert load("b1").rows_written == 100
    con.execute("UPDATE t SET v = -v WHERE id IN ('K0003', 'K0050', 'K0099')")
    con.execute("DELETE FROM t WHERE id IN ('K0010', 'K0077')")
    con.execute("INSERT INTO t VALUES ('K9999', 1)")
    con.commit()
    second = load("b2")
    assert (second.rows_written, second.rows_deleted, second.rows_unchanged) == (6, 2, 95)
    raw = get_catalog(lake_settings).load_table("raw.s__t").scan().to_arrow()
    b2 = raw.filter(pc.equal(raw["_batch_id"], "b2"))
    assert sorted(b2["id"].to_pylist()) == ["K0003", "K0010", "K0050", "K0077", "K0099", "K9999"]
    assert load("b3").rows_written == 0


def _racing_publish(env: dict[str, str], barrier: object, run_id: str, out: str) -> None:
    """A child process: one quality run whose std commit starts from the same std state as the other's."""
    import json
    import os

    os.environ.update(env)
    from pipelines.quality import gate

    real = gate.table_for

    def table_for(*args: object, **kwargs: object) -> object:
        table = real(*args, **kwargs)  # type: ignore[arg-type]
        if not hasattr(table_for, "waited"):  # the first attempt only: both read the same std snapshot
            table_for.waited = barrier.wait(60)  # type: ignore[attr-defined]
        return table

    gate.table_for = table_for  # type: ignore[assignment]
    result = gate.run_quality("poi", run_id=run_id)
    Path(out, run_id).write_text(json.dumps({"status": result.status, "batches": result.batches}))


def test_two_publishes_at_once_append_new_keys_once(tmp_path: Path, poi: Poi, pg_url: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A CLI quality run beside publish_std (or a retry beside a zombie run), on a PostgreSQL catalog: both
    pick the same new batch; the std commit is one attempt, the loser decides again, finds the batch
    published and publishes nothing: new keys land once, meta.batches holds one published event."""
    import json
    import multiprocessing

    monkeypatch.setenv("CITYLAKE_CATALOG_URI", pg_url)
    assert _load(None, "b1") == len(POIS)
    assert run_quality("poi", run_id="first").status == "published"
    for i in range(5, 8):  # new keys only: the publish is a fast append, nothing to overwrite
        poi.run('INSERT INTO "兴趣点" VALUES (?, ?, ?, ?, ?, ?, ?)',
                (f"POI{i:06d}", f"新街{i}", "公园", 117.0, 31.0, "340104", "2026-11-02 08:00:00"))
    assert _load(None, "b2") == 3
    env = {k: v for k, v in os.environ.items() if k.startswith("CITYLAKE_")}
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    out = tmp_path / "results"
    out.mkdir()
    procs = [ctx.Process(target=_racing_publish, args=(env, barrier, run, str(out))) for run in ("cli", "airflow")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    results = sorted(json.loads((out / run).read_text())["status"] for run in ("cli", "airflow"))
    assert results == ["nothing_new", "published"]  # the loser's commit was refused, then found b2 published
    catalog = get_catalog(load_settings())
    ids = catalog.load_table("std.poi").scan().to_arrow()["poi_id"].to_pylist()
    assert sorted(ids) == sorted({*ids}) and len(ids) == len(POIS) + 3
    events = [(r["raw_batch_id"], r["status"]) for r in catalog.load_table("meta.batches").scan().to_arrow().to_pylist()]
    assert sorted(events) == [("b1", "published"), ("b2", "published")]
