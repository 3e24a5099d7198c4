"""What a departmental delivery sends: std's changes since a snapshot (from snapshot metadata checked against
``meta.batches``) and the keys those publishes deleted at the source (``meta.deleted_keys``)."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta

import pyarrow as pa
import pytest
from pyiceberg.expressions import EqualTo, In

from pipelines.ingest import ingest_table
from pipelines.lake.catalog import get_catalog
from pipelines.lake.changes import deleted_keys, key_json, std_changes
from pipelines.lake.meta import replace_run
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
    table = get_catalog(settings).load_table("meta.deleted_keys")
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
    assert (changes.snapshot_id, changes.batches, changes.full, changes.reason) == \
        (std.current_snapshot().snapshot_id, [B2], False, "增量: 1 个批次")

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


def test_an_unrecorded_publish_is_not_delivered_through_and_its_rerun_replaces_its_deletions(
        person: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.quality.gate as gate

    catalog = get_catalog(person)
    first = catalog.load_table("std.person").current_snapshot().snapshot_id
    _updated, gone = _second_load(person)

    def crash(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("worker lost after the std commit")

    monkeypatch.setattr(gate, "_record_batches", crash)
    with pytest.raises(RuntimeError):
        gate.run_quality("person", settings=person, reference_date=AT.date(), run_id="r2")
    monkeypatch.undo()
    crashed = catalog.load_table("std.person").current_snapshot().snapshot_id
    assert crashed != first and len(_deleted_rows(person)) == 1  # std committed, deletions recorded
    # B2 is in std but not in meta.batches: no delivery goes through it yet
    held_back = std_changes(catalog, "person", first)
    assert (held_back.snapshot_id, held_back.batches, held_back.full) == (first, [], False)
    initial = std_changes(catalog, "person", None)
    assert (initial.snapshot_id, initial.batches) == (first, [B1])

    # the run's retry publishes B2 again and records it; its deletions replace the earlier attempt's
    again = gate.run_quality("person", settings=person, reference_date=AT.date(), run_id="r2")
    assert again.status == "published" and again.batches == [B2]
    rows = _deleted_rows(person)
    assert [(r["run_id"], r["std_snapshot_id"], json.loads(r["key"])) for r in rows] == \
        [("r2", again.std_snapshot, [gone])]
    changes = std_changes(catalog, "person", first)
    assert changes.snapshot_id == again.std_snapshot and changes.batches == [B2]
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
