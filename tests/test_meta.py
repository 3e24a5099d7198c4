"""meta.* tables: a rerun of a run id replaces its rows, runs are told apart, batches carry their own counts."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from collections import Counter
from datetime import datetime
from typing import Any

import pytest
from test_quality_gate import REF, _bad_enterprise_batch, city  # noqa: F401 - the seeded-city fixture

from pipelines.config import load_departments
from pipelines.departments import department_name
from pipelines.errors import CitylakeError
from pipelines.ingest import ingest_table
from pipelines.lake.catalog import get_catalog
from pipelines.lake.meta import new_run_id
from pipelines.quality.consistency import run_consistency
from pipelines.quality.gate import QualityGateError, load_config, run_quality
from pipelines.registry import load_registry
from pipelines.settings import TZ, Settings


def _rows(settings: Settings, table: str) -> list[dict[str, Any]]:
    return get_catalog(settings).load_table(table).scan().to_arrow().to_pylist()


def _per_run(settings: Settings, table: str) -> Counter[tuple[str, str]]:
    return Counter((r["run_id"], r.get("dataset") or r.get("other_system") or "") for r in _rows(settings, table))


def test_a_rerun_of_a_run_id_replaces_its_rows(city: Settings) -> None:  # noqa: F811
    """The run that held a batch runs again (a cleared Airflow task): its results, standardization log,
    batch event and Data Docs entry are replaced, not repeated; another dataset of the same run id stays."""
    from pipelines.quality.docs import build_data_docs

    run_quality("enterprise", settings=city, reference_date=REF, run_id="night1")
    _bad_enterprise_batch(city)
    with pytest.raises(QualityGateError):
        run_quality("enterprise", settings=city, reference_date=REF, run_id="night2")
    assert run_quality("person", settings=city, reference_date=REF, run_id="night2").status == "published"
    build_data_docs(city)
    before = {t: _per_run(city, t) for t in ("meta.quality_results", "meta.standardization_log")}
    batches = _rows(city, "meta.batches")
    assert before["meta.quality_results"][("night2", "enterprise")] > 0
    assert before["meta.quality_results"][("night2", "person")] > 0

    with pytest.raises(QualityGateError):
        run_quality("enterprise", settings=city, reference_date=REF, run_id="night2")
    for table, counts in before.items():
        assert _per_run(city, table) == counts, table
    again = _rows(city, "meta.batches")
    assert len(again) == len(batches)  # the same held event, replaced
    held = [b for b in again if b["raw_batch_id"] == "bad"]
    assert [b["status"] for b in held] == ["held"] and held[0]["recorded_at"] > max(
        b["recorded_at"] for b in batches if b["raw_batch_id"] == "bad")

    built = build_data_docs(city)
    assert built.total_results == 3 and built.new_results == 1  # night1, night2 × (enterprise, person)
    pages = [p for p in (built.index.parent / "validations" / "enterprise").rglob("*.html") if "night2" in str(p)]
    assert len(pages) == 1, pages
    assert built.index.read_text(encoding="utf-8").count("validations/enterprise/night2/") == 1

    # every meta row says when it was recorded; quality results carry the dataset's department CODE (the
    # contract's owner), which the registry turns into the name pages show
    _standards, _systems, contracts = load_config(city)
    for table in ("meta.quality_results", "meta.standardization_log", "meta.batches"):
        assert all(r["recorded_at"] is not None for r in _rows(city, table)), table
    results = _rows(city, "meta.quality_results")
    assert {(r["dataset"], r["department"]) for r in results} == {
        ("enterprise", "113401000030022204"), ("person", "11340100003001113F")}
    assert {(d, contracts[d].owner) for d in ("enterprise", "person")} == {
        (r["dataset"], r["department"]) for r in results}
    departments = load_departments(city)
    assert {department_name(departments, r["department"]) for r in results} == {"合肥市市场监督管理局", "合肥市公安局"}


def test_every_cli_invocation_has_its_own_run_and_reruns_do_not_double(city: Settings) -> None:  # noqa: F811
    assert new_run_id() != new_run_id()
    cli = [sys.executable, "-m", "pipelines.cli", "quality", "run", "all", "--reference-date", REF.isoformat()]
    runs = []
    for _ in range(2):
        done = subprocess.run(cli, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        runs.append(re.search(r"\(run (cli__\S+)\)", done.stdout.replace("\n", "")).group(1))  # type: ignore[union-attr]
    assert runs[0] != runs[1]
    conflicts = Counter(r["run_id"] for r in _rows(city, "meta.conflicts"))
    assert set(conflicts) == set(runs) and conflicts[runs[0]] == conflicts[runs[1]] > 0
    consistency = Counter(r["run_id"] for r in _rows(city, "meta.quality_results") if r["tag"] == "source_conflict")
    assert consistency[runs[0]] == consistency[runs[1]] > 0
    assert all(r["recorded_at"] is not None for r in _rows(city, "meta.conflicts"))

    # the same run again (a retry) replaces its conflicts and rates instead of appending them again
    run_consistency(settings=city, run_id=runs[0])
    assert Counter(r["run_id"] for r in _rows(city, "meta.conflicts")) == conflicts
    assert Counter(r["run_id"] for r in _rows(city, "meta.quality_results") if r["tag"] == "source_conflict") \
        == consistency


def test_batches_carry_their_own_counts_and_a_retry_does_not_double_quarantine(
        city: Settings, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Two raw batches of different sizes validated in one run: each ``meta.batches`` row has its batch's
    own counts. A run that failed after publishing (before recording its batches) is retried under its
    run id: quarantine and the meta tables hold the run once."""
    con = sqlite3.connect(city.data_dir / "sources" / "population.db")
    keys = [r for (r,) in con.execute("SELECT resident_id FROM person ORDER BY rowid LIMIT 5")]
    con.executemany("UPDATE person SET address = '安徽省合肥市蜀山区新地址' || rowid WHERE resident_id = ?",
                    [(k,) for k in keys[:3]])
    con.execute("DELETE FROM person WHERE resident_id = ?", (keys[4],))
    con.commit()
    con.close()
    systems, _ = load_registry(city.registry_dir)
    ingest_table(systems["population"], "person", settings=city, mode="full", batch_id="refresh",
                 extracted_at=datetime(2026, 11, 20, 3, tzinfo=TZ))

    def lost_connection(*_args: Any, **_kwargs: Any) -> None:
        raise CitylakeError("catalog connection lost")

    monkeypatch.setattr("pipelines.quality.gate._record_batches", lost_connection)
    with pytest.raises(CitylakeError, match="connection lost"):
        run_quality("person", settings=city, reference_date=REF, run_id="retried")
    quarantined = get_catalog(city).load_table("quarantine.person").scan().to_arrow().num_rows
    monkeypatch.undo()
    r = run_quality("person", settings=city, reference_date=REF, run_id="retried")
    assert r.status == "published" and sorted(r.batches) == ["refresh", "seed"]
    assert get_catalog(city).load_table("quarantine.person").scan().to_arrow().num_rows == quarantined == r.quarantined

    rows = {b["raw_batch_id"]: b for b in _rows(city, "meta.batches")}
    assert set(rows) == {"seed", "refresh"}
    assert rows["refresh"]["extracted"] == 4 and rows["seed"]["extracted"] > 1000  # 3 changed + 1 deletion row
    for field in ("extracted", "published", "quarantined", "held"):
        assert sum(b[field] for b in rows.values()) == getattr(r, field), field
    for b in rows.values():
        assert b["extracted"] == b["published"] + b["quarantined"] and b["recorded_at"] is not None
    results = Counter(x["run_id"] for x in _rows(city, "meta.quality_results"))
    assert results == {"retried": len({x["rule"] for x in _rows(city, "meta.quality_results")})}


def _publish_task(dataset: str) -> None:
    """One publish task's meta writes: three runs, then a retry of the first."""
    from pipelines.lake.meta import append_events, replace_run

    catalog = get_catalog()
    for run in ("run0", "run1", "run2", "run0"):
        replace_run(catalog, "meta.quality_results", run,
                    [{"run_id": run, "dataset": dataset, "rule": f"rule{i}"} for i in range(5)])
        append_events(catalog, [{"dataset": dataset, "raw_batch_id": f"b_{run}", "run_id": run, "status": "published"}])


def test_concurrent_tasks_replace_only_their_own_rows(lake_settings: Settings) -> None:
    """Two publish tasks of one dag run write the same meta tables at once (pyiceberg retries the losing
    commit): each (run, dataset) holds its rows once, no event is lost or repeated."""
    import multiprocessing

    _publish_task("seed")  # the tables exist before the race (creating them is the catalog's job)
    from pipelines.lake.catalog import _catalog

    _catalog.cache_clear()  # each forked task opens its own catalog connection, as separate workers do
    fork = multiprocessing.get_context("fork")
    tasks = [fork.Process(target=_publish_task, args=(d,)) for d in ("person", "enterprise")]
    for t in tasks:
        t.start()
    for t in tasks:
        t.join(120)
    assert [t.exitcode for t in tasks] == [0, 0]
    results = Counter((r["run_id"], r["dataset"]) for r in _rows(lake_settings, "meta.quality_results"))
    assert results == {(run, d): 5 for run in ("run0", "run1", "run2") for d in ("seed", "person", "enterprise")}
    events = Counter((r["dataset"], r["raw_batch_id"]) for r in _rows(lake_settings, "meta.batches"))
    assert events == {(d, f"b_{run}"): 1 for run in ("run0", "run1", "run2") for d in ("seed", "person", "enterprise")}


def test_an_older_lake_gains_the_new_columns(lake_settings: Settings) -> None:
    """meta.quality_results written before ``department``/``recorded_at`` existed: the next run evolves the
    table (older rows read null) and replaces by run id as usual."""
    import pyarrow as pa

    from pipelines.lake.meta import QUALITY_RESULTS, replace_run

    catalog = get_catalog(lake_settings)
    old = pa.schema([f for f in QUALITY_RESULTS if f.name not in ("department", "recorded_at")])
    catalog.create_table("meta.quality_results", schema=old, properties={"format-version": "2"}) \
        .append(pa.Table.from_pylist([{"run_id": "quality_person_2026-11-20", "dataset": "person", "rule": "r"}],
                                     schema=old))
    for _ in range(2):
        replace_run(catalog, "meta.quality_results", "night1",
                    [{"run_id": "night1", "dataset": "person", "department": "市公安局", "rule": "r"}])
    table = catalog.load_table("meta.quality_results")
    assert {"department", "recorded_at"} <= set(table.schema().column_names)
    assert table.properties["write.metadata.metrics.column.run_id"] == "full"
    rows = sorted(table.scan().to_arrow().to_pylist(), key=lambda r: r["run_id"])
    assert [(r["run_id"], r["department"], r["recorded_at"] is None) for r in rows] == [
        ("night1", "市公安局", False), ("quality_person_2026-11-20", None, True)]


def test_a_rerun_with_no_rows_still_replaces_the_run(lake_settings: Settings) -> None:
    """A consistency rerun that compared no pair erases what its earlier attempt recorded, and only its
    own tagged rows: the gate's results under the same CLI run id stay."""
    from pipelines.lake.meta import replace_run

    catalog = get_catalog(lake_settings)
    gate_row = {"run_id": "cli1", "dataset": "person", "rule": "r", "tag": "format"}
    replace_run(catalog, "meta.quality_results", "cli1", [gate_row])
    replace_run(catalog, "meta.quality_results", "cli1",
                [{"run_id": "cli1", "dataset": "hr.people", "rule": "c", "tag": "source_conflict"}],
                tag="source_conflict")
    replace_run(catalog, "meta.conflicts", "cli1", [{"run_id": "cli1", "key": "k"}])
    replace_run(catalog, "meta.quality_results", "cli1", [], tag="source_conflict")  # the rerun: nothing found
    replace_run(catalog, "meta.conflicts", "cli1", [])
    assert [(r["dataset"], r["rule"]) for r in _rows(lake_settings, "meta.quality_results")] == [("person", "r")]
    assert _rows(lake_settings, "meta.conflicts") == []
