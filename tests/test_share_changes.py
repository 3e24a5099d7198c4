"""What a departmental delivery sends: std's changes since a snapshot (from snapshot metadata checked against
``meta.batches``) and the keys those publishes deleted at the source (``meta.deleted_keys``)."""

from __future__ import annotations

import json
import shlex
import sqlite3
from datetime import datetime, timedelta

import pyarrow as pa
import pytest
from pyiceberg.expressions import EqualTo, In
from typer.testing import CliRunner

from pipelines.ingest import ingest_table
from pipelines.lake.catalog import get_catalog
from pipelines.lake.changes import deleted_keys, key_json, std_changes
from pipelines.lake.meta import replace_run
from pipelines.lake.raw import open_table
from pipelines.registry import get_system
from pipelines.settings import PROJECT_ROOT, TZ, Settings, load_settings

AT = datetime(2026, 11, 20, 2, tzinfo=TZ)
KEY = pa.schema([("resident_id", pa.string())])
BATCH_BOUNDS = "write.metadata.metrics.column._batch_id"
# Real batch ids share long prefixes: beyond 16 characters Iceberg's default (truncated) bounds overlap.
B1, B2 = "population__person__20261120T020000", "population__person__20261120T030000"


@pytest.fixture
def person(lake_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A small seeded city with std.person published once (raw batch B1, run r1)."""
    from pipelines.quality.gate import run_quality
    from pipelines.seed import seed_city

    monkeypatch.setenv("CITYLAKE_REGISTRY_DIR", str(PROJECT_ROOT / "schemas" / "sources"))
    settings = load_settings()
    seed_city(settings.data_dir, scale=0.01)
    ingest_table(get_system(settings.registry_dir, "population"), "person", settings=settings, batch_id=B1,
                 extracted_at=AT)
    assert run_quality("person", settings=settings, reference_date=AT.date(), run_id="r1").status == "published"
    return settings


def _second_load(settings: Settings) -> tuple[set[str], str]:
    """Update two published people's address and delete a third at the source, then load it (batch B2)."""
    std = get_catalog(settings).load_table("std.person")
    published = set(std.scan(selected_fields=("resident_id",)).to_arrow()["resident_id"].to_pylist())
    con = sqlite3.connect(settings.data_dir / "sources" / "population.db")
    ids = [r for (r,) in con.execute("SELECT resident_id FROM person ORDER BY rowid LIMIT 200") if r in published]
    updated, gone = set(ids[:2]), ids[2]
    con.executemany("UPDATE person SET address = ? WHERE resident_id = ?",
                    [(f"安徽省合肥市蜀山区新地址{i}号", r) for i, r in enumerate(sorted(updated))])
    con.execute("DELETE FROM person WHERE resident_id = ?", (gone,))
    con.commit()
    con.close()
    ingest_table(get_system(settings.registry_dir, "population"), "person", settings=settings, mode="full",
                 batch_id=B2, extracted_at=AT + timedelta(hours=1))
    return updated, gone


def _deleted_rows(settings: Settings) -> list[dict[str, object]]:
    table = open_table(get_catalog(settings), "meta.deleted_keys")
    if table is None:
        return []
    return table.scan(row_filter=EqualTo("dataset", "person")).to_arrow().to_pylist()


def test_changes_since_a_snapshot_are_its_batches_and_deletions(person: Settings) -> None:
    from pipelines.quality.gate import run_quality

    catalog = get_catalog(person)
    first = catalog.load_table("std.person").current_snapshot().snapshot_id
    initial = std_changes(catalog, "person", None)
    assert (initial.snapshot_id, initial.batches, initial.full, initial.reason) == (first, [B1], True, "首次交付")
    assert std_changes(catalog, "person", first).batches == []  # nothing since: incremental, empty

    updated, gone = _second_load(person)
    result = run_quality("person", settings=person, reference_date=AT.date(), run_id="r2")
    assert result.status == "published" and result.deleted == 1
    std = catalog.load_table("std.person")
    changes = std_changes(catalog, "person", first)
    assert (changes.snapshot_id, changes.batches, changes.full, changes.reason, changes.blocked) == \
        (std.current_snapshot().snapshot_id, [B2], False, "增量: 1 个批次", None)

    scan = std.scan(row_filter=In("_batch_id", changes.batches), snapshot_id=changes.snapshot_id)
    assert set(scan.to_arrow()["resident_id"].to_pylist()) == updated  # only the changed rows
    # exact _batch_id bounds: the scan plans only files of B2's rows, not the rewritten files of B1's
    assert sum(t.file.record_count for t in scan.plan_files()) == len(updated)

    got = deleted_keys(catalog, "person", changes.batches, KEY)
    assert got.schema == KEY and got["resident_id"].to_pylist() == [gone]
    assert deleted_keys(catalog, "person", [B1], KEY).num_rows == 0
    rows = _deleted_rows(person)
    assert [(r["raw_batch_id"], r["run_id"], r["std_snapshot_id"], json.loads(r["key"])) for r in rows] == \
        [(B2, "r2", result.std_snapshot, [gone])]

    # a delivery from a snapshot expired from the history starts over
    lost = std_changes(catalog, "person", 12345)
    assert (lost.full, lost.reason, lost.batches) == (True, "上次交付的快照已不在表历史中", [B1, B2])


@pytest.mark.parametrize("crash_at", ["_record_batches", "_record_deletions"])
def test_an_unrecorded_publish_is_not_delivered_through_and_its_rerun_replaces_its_deletions(
        person: Settings, monkeypatch: pytest.MonkeyPatch, crash_at: str) -> None:
    """A run stops after its std commit (before or after recording its deletions): the rerun finds the
    deleted key already gone from std, and still records it (the run's own earlier commit removed it)."""
    import pipelines.quality.gate as gate

    catalog = get_catalog(person)
    first = catalog.load_table("std.person").current_snapshot().snapshot_id
    _updated, gone = _second_load(person)

    def crash(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("worker lost after the std commit")

    with monkeypatch.context() as patched, pytest.raises(RuntimeError):  # undo only this (the lake's env stays)
        patched.setattr(gate, crash_at, crash)
        gate.run_quality("person", settings=person, reference_date=AT.date(), run_id="r2")
    crashed = catalog.load_table("std.person").current_snapshot().snapshot_id
    assert crashed != first  # std committed
    assert len(_deleted_rows(person)) == (crash_at == "_record_batches")  # deletions recorded before the crash
    # B2 is in std but not in meta.batches: no delivery goes through it yet, and blocked says why
    held_back = std_changes(catalog, "person", first)
    assert (held_back.snapshot_id, held_back.batches, held_back.full) == (first, [], False)
    assert held_back.blocked == (
        f"批次 {B2} 已由运行 r2 发布到 std.person 但未记录到 meta.batches（该运行中断）："
        "重跑 `citylake quality run person --run-id r2` 后继续交付")
    initial = std_changes(catalog, "person", None)
    assert (initial.snapshot_id, initial.batches, initial.blocked) == (first, [B1], held_back.blocked)

    # the command blocked quotes, run as it is written: publishes B2 again and records it; its deletions
    # replace the earlier attempt's
    from pipelines.cli import app

    command = held_back.blocked.split("`")[1]
    assert command.startswith("citylake ")
    ran = CliRunner().invoke(app, shlex.split(command)[1:])
    assert ran.exit_code == 0, ran.output
    again = gate.batch_status(catalog, "person")[B2]
    assert (again["status"], again["run_id"]) == ("published", "r2")
    rows = _deleted_rows(person)
    assert [(r["run_id"], r["std_snapshot_id"], json.loads(r["key"])) for r in rows] == \
        [("r2", again["std_snapshot_id"], [gone])]
    changes = std_changes(catalog, "person", first)
    assert changes.snapshot_id == again["std_snapshot_id"] and changes.batches == [B2] and changes.blocked is None
    assert deleted_keys(catalog, "person", changes.batches, KEY)["resident_id"].to_pylist() == [gone]


def test_older_std_tables_get_exact_batch_bounds_when_next_written(person: Settings) -> None:
    from pipelines.quality.gate import run_quality

    catalog = get_catalog(person)
    std = catalog.load_table("std.person")
    assert std.properties[BATCH_BOUNDS] == "full"
    with std.transaction() as tx:  # a std table created before the property existed
        tx.remove_properties(BATCH_BOUNDS)
    assert BATCH_BOUNDS not in catalog.load_table("std.person").properties
    _second_load(person)
    run_quality("person", settings=person, reference_date=AT.date(), run_id="r2")
    assert catalog.load_table("std.person").properties[BATCH_BOUNDS] == "full"


def test_deleted_keys_come_back_typed_distinct_and_per_batch(lake_settings: Settings) -> None:
    """Composite, typed keys: the JSON text the gate records parses back to the key columns' types."""
    catalog = get_catalog(lake_settings)
    catalog.create_namespace_if_not_exists("meta")
    keys = pa.table({"line": ["L1", "L1", "L\"2", None], "hour": pa.array([7, 7, 8, 9], pa.int32())})
    texts = key_json(keys, ["line", "hour"], rows=3)  # two slices
    assert texts.to_pylist()[2] == '["L\\"2", "8"]' and json.loads(texts.to_pylist()[3]) == [None, "9"]
    rows = pa.table({"dataset": ["t"] * 4, "raw_batch_id": ["a", "b", "b", "c"], "run_id": ["r"] * 4,
                     "std_snapshot_id": pa.array([1] * 4, pa.int64()), "key": texts})
    replace_run(catalog, "meta.deleted_keys", "r", rows, datasets=["t"], raw_batches=["a", "b", "c"])
    schema = pa.schema([("line", pa.string()), ("hour", pa.int32())])
    got = deleted_keys(catalog, "t", ["a", "b"], schema).sort_by([("hour", "ascending")])
    assert got.schema == schema and got.to_pylist() == [{"line": "L1", "hour": 7}, {"line": "L\"2", "hour": 8}]
    assert deleted_keys(catalog, "other", ["a"], schema).num_rows == 0
    assert deleted_keys(catalog, "t", [], schema).num_rows == 0
    # a rerun of run r narrowed to batch c replaces c's rows only
    replace_run(catalog, "meta.deleted_keys", "r", rows.slice(0, 0), datasets=["t"], raw_batches=["c"])
    assert deleted_keys(catalog, "t", ["a", "b", "c"], schema).num_rows == 2


def test_only_keys_std_held_are_recorded_as_deleted(person: Settings) -> None:
    """A tombstone for a key whose rows were always quarantined (it never passed the gate) is not recorded:
    meta.deleted_keys goes to consumers, and would name a key std never had. A real deletion is."""
    from pipelines.quality.gate import run_quality

    catalog = get_catalog(person)
    published = set(catalog.load_table("std.person").scan(selected_fields=("resident_id",)).to_arrow()
                    ["resident_id"].to_pylist())
    con = sqlite3.connect(person.data_dir / "sources" / "population.db")
    ids = [r for (r,) in con.execute("SELECT resident_id FROM person WHERE resident_id IS NOT NULL ORDER BY rowid")]
    # a person whose only row failed a critical rule (its key is nowhere in std), and one std holds
    never = next(r for r in ids if r not in published and r.strip().upper() not in published and ids.count(r) == 1)
    real = next(r for r in ids if r in published)
    con.executemany("DELETE FROM person WHERE resident_id = ?", [(never,), (real,)])
    con.commit()
    con.close()
    quarantined = catalog.load_table("quarantine.person").scan(selected_fields=("resident_id",)).to_arrow()
    assert never.strip().upper() in quarantined["resident_id"].to_pylist()
    ingest_table(get_system(person.registry_dir, "population"), "person", settings=person, mode="full",
                 batch_id=B2, extracted_at=AT + timedelta(hours=1))
    result = run_quality("person", settings=person, reference_date=AT.date(), run_id="r2")
    assert result.status == "published" and result.deleted == 2  # both tombstones went through the gate
    assert [json.loads(r["key"]) for r in _deleted_rows(person)] == [[real]]
    assert deleted_keys(catalog, "person", [B2], KEY)["resident_id"].to_pylist() == [real]


def test_lake_show_masks_deleted_keys_by_the_datasets_primary_key(person: Settings) -> None:
    """meta.deleted_keys holds resident IDs in clear (pseudonyms are made from them per consumer): every
    rendering masks them by the dataset's key column, like meta.conflicts' keys."""
    from pipelines.cli import app
    from pipelines.privacy.policy import Declarations, deleted_key
    from pipelines.quality.gate import run_quality

    _updated, gone = _second_load(person)
    run_quality("person", settings=person, reference_date=AT.date(), run_id="r2")
    shown = CliRunner().invoke(app, ["lake", "show", "meta.deleted_keys"])
    assert shown.exit_code == 0, shown.output
    assert gone not in shown.stdout and f'["{gone[:6]}********{gone[-4:]}"]' in shown.stdout
    clear = CliRunner().invoke(app, ["lake", "show", "meta.deleted_keys", "--unmasked"])
    assert clear.exit_code == 0 and gone in clear.stdout

    from pipelines.config import load_all

    config = load_all(person)
    decl = Declarations(config.standards, config.contracts)
    name = "欧阳娜娜"
    # an unknown dataset, a key of another length, or text that is no JSON array: masked as undeclared
    for row in ({"dataset": "gone", "key": json.dumps([gone, name], ensure_ascii=False)},
                {"dataset": "person", "key": json.dumps([gone, name], ensure_ascii=False)},
                {"dataset": "person", "key": f"{gone}|{name}"}):
        masked = deleted_key(row, decl)
        assert gone not in masked and name not in masked, masked
    assert deleted_key({"dataset": "person", "key": None}, decl) is None
    assert gone not in deleted_key({"dataset": "person", "key": json.dumps([gone])}, None)  # config unreadable
