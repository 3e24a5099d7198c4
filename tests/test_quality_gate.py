"""Write-audit-publish on the seeded city: exact quarantine, accounting, a held batch, conflicts, score."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from pipelines.errors import CitylakeError
from pipelines.ingest import ingest_table
from pipelines.lake.catalog import get_catalog
from pipelines.privacy import mask
from pipelines.quality.consistency import run_consistency
from pipelines.quality.gate import QualityGateError, load_config, run_quality
from pipelines.quality.rules import Rule, evaluate
from pipelines.quality.score import score
from pipelines.registry import load_registry
from pipelines.seed import corrupt_enterprise_uscc, seed_city
from pipelines.settings import PROJECT_ROOT, TZ, Settings

REF = date(2026, 11, 20)


@pytest.fixture
def city(lake_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("CITYLAKE_REGISTRY_DIR", str(PROJECT_ROOT / "schemas" / "sources"))
    from pipelines.settings import load_settings

    settings = load_settings()
    seed_city(settings.data_dir, scale=0.05)
    systems, _ = load_registry(settings.registry_dir)
    for s in systems.values():
        for t in s.all_tables:
            ingest_table(s, t.code, settings=settings, batch_id="seed", extracted_at=datetime(2026, 11, 20, 2, tzinfo=TZ))
    return settings


@pytest.mark.parametrize("chunk_rows", [None, 97])
def test_city_publishes_quarantines_exactly_and_scores_perfectly(city: Settings, chunk_rows: int | None,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    if chunk_rows:  # many chunks: duplicate keys and rule counts must still be found across chunk borders
        monkeypatch.setattr("pipelines.quality.gate.CHUNK_ROWS", chunk_rows)
    _standards, _systems, contracts = load_config(city)
    for name in contracts:
        r = run_quality(name, settings=city, reference_date=REF)
        assert r.status == "published" and r.extracted == r.published + r.quarantined + r.held
    run_consistency(settings=city)
    result = score(city)
    assert all(d["recall"] == 1.0 and d["precision"] == 1.0 for d in result["defects"]), result["defects"]
    assert result["benign_flagged"] == []
    catalog = get_catalog(city)
    std = catalog.load_table("std.person").scan().to_arrow()
    assert std.num_rows == len(set(std["resident_id"].to_pylist()))  # current state by key
    assert set(std["sex_code"].to_pylist()) <= {"1", "2"}
    batches = catalog.load_table("meta.batches").scan().to_arrow().to_pylist()
    assert {b["dataset"] for b in batches} == set(contracts) and all(b["status"] == "published" for b in batches)
    again = run_quality("person", settings=city, reference_date=REF)
    assert again.status == "nothing_new"
    conflicts = catalog.load_table("meta.conflicts").scan().to_arrow().to_pylist()
    assert conflicts and all("*" in c["authoritative_value"] for c in conflicts if c["element"] == "person_name")


def _bad_enterprise_batch(city: Settings) -> None:
    assert corrupt_enterprise_uscc(city.data_dir, "2026-11-20 01:00:00") > 100
    systems, _ = load_registry(city.registry_dir)
    ingest_table(systems["enterprise"], "enterprise", settings=city, batch_id="bad",
                 extracted_at=datetime(2026, 11, 20, 3, tzinfo=TZ))


def test_mostly_bad_batch_is_held_and_std_unchanged(city: Settings) -> None:
    run_quality("enterprise", settings=city, reference_date=REF)
    catalog = get_catalog(city)
    before = catalog.load_table("std.enterprise").current_snapshot().snapshot_id
    _bad_enterprise_batch(city)
    with pytest.raises(QualityGateError) as info:
        run_quality("enterprise", settings=city, reference_date=REF)
    message = str(info.value)
    assert "enterprise.uscc.check_digit" in message and "e.g. [" in message and "held" in message
    # the same verdict as fields, for the alert (pipelines.alerts builds from these, not from the text)
    assert info.value.dataset == "enterprise" and info.value.rule == "enterprise.uscc.check_digit"
    assert info.value.count == info.value.failures[0]["failed"] > 100 and info.value.held > 0
    assert catalog.load_table("std.enterprise").current_snapshot().snapshot_id == before
    held = [b for b in catalog.load_table("meta.batches").scan().to_arrow().to_pylist() if b["raw_batch_id"] == "bad"]
    assert held[0]["status"] == "held" and held[0]["held"] == held[0]["extracted"] > 0


def test_held_batch_is_parked_rerun_by_its_run_and_released_with_a_reason(city: Settings) -> None:
    from pipelines.quality.gate import batch_status
    from pipelines.quality.validators import uscc_valid

    run_quality("enterprise", settings=city, reference_date=REF, run_id="night1")
    _bad_enterprise_batch(city)
    with pytest.raises(QualityGateError):
        run_quality("enterprise", settings=city, reference_date=REF, run_id="night2")
    catalog = get_catalog(city)
    # Parked: the next night does not trip over it; rerunning the night that held it validates it again.
    assert run_quality("enterprise", settings=city, reference_date=REF, run_id="night3").status == "nothing_new"
    with pytest.raises(QualityGateError):
        run_quality("enterprise", settings=city, reference_date=REF, run_id="night2")
    with pytest.raises(CitylakeError, match="give a reason"):
        run_quality("enterprise", settings=city, reference_date=REF, release=" ")
    before = catalog.load_table("std.enterprise").scan().to_arrow().num_rows
    cli = [sys.executable, "-m", "pipelines.cli", "quality"]
    listed = subprocess.run([*cli, "held"], capture_output=True, text=True, check=True)
    assert "enterprise" in listed.stdout and "bad" in listed.stdout and "enterprise.uscc.check_digit" in listed.stdout
    released = subprocess.run([*cli, "release", "enterprise", "--reason", "工商局确认: 校验位批量错误已知",
                               "--reference-date", REF.isoformat()], capture_output=True, text=True)
    assert released.returncode == 0, released.stderr
    assert "released 1 batch(es) of enterprise" in released.stdout
    r = next(b for b in catalog.load_table("meta.batches").scan().to_arrow().to_pylist() if b["status"] == "released")
    assert r["quarantined"] >= 100 and r["extracted"] == r["published"] + r["quarantined"]
    std = catalog.load_table("std.enterprise").scan().to_arrow()
    assert std.num_rows == before  # same keys, upserted; no failing row made it in
    assert all(uscc_valid(pa.array(std["uscc"].to_pylist())).to_pylist())
    status = batch_status(catalog, "enterprise")["bad"]
    assert status["status"] == "released" and status["reason"].startswith("工商局确认")
    # scores count the batch once: the run that held it was replaced by the release the same day
    from pipelines.quality import scorecard

    kept = scorecard.current(scorecard.read_results(catalog), scorecard.read_events(catalog))
    runs = {run for d, run in zip(kept["dataset"].to_pylist(), kept["run_id"].to_pylist(), strict=True) if d == "enterprise"}
    assert runs == {"night1", r["run_id"]}
    with pytest.raises(CitylakeError, match="no held batch"):
        run_quality("enterprise", settings=city, reference_date=REF, release="again")


def test_a_raising_validator_fails_rows_not_the_batch() -> None:
    def boom(_t: pa.Table) -> pa.Array:
        raise ValueError("cannot judge")

    rule = Rule("x.y.z", "x", "y", "y", "准确性", "critical", "t", "d", boom)
    (result,) = evaluate(pa.table({"y": [1, 2, 3]}), [rule])
    assert result.failed == 3 and "cannot judge" in result.error

    def picky(t: pa.Table) -> pa.Array:  # raises on one value, judges the others
        values = t.column("y").to_pylist()
        if 14 in values:
            raise ValueError("14 cannot be judged")
        return pa.array([v % 2 == 0 for v in values])

    rule = Rule("x.y.even", "x", "y", "y", "准确性", "critical", "t", "d", picky)
    (result,) = evaluate(pa.table({"y": list(range(10, 10_010))}), [rule])
    failed = pa.table({"y": list(range(10, 10_010))}).filter(result.failed_mask)["y"].to_pylist()
    assert 14 in failed and "14 cannot be judged" in result.error  # the row it raised on fails, and the odd
    assert result.failed == 5_000 + 1 and all(v % 2 or v == 14 for v in failed)  # ones; no other even one


def test_masks() -> None:
    from pipelines.standards import load_standards

    s = load_standards(PROJECT_ROOT / "schemas" / "standards")
    assert mask("张三丰", s.element("person_name")) == "张**"
    assert mask("34010419900101123X", s.element("resident_id")) == "340104********123X"
    assert mask("合肥ABC科技有限公司", s.element("enterprise_name")) == "合肥ABC科技有限公司"
    from pipelines.privacy import mask_identifiers

    assert mask_identifiers("340102197003210109|410") == "340102********0109|410"
    assert mask_identifiers("13812345678") == "138****5678" and mask_identifiers(None) is None
    assert mask_identifiers("91340100MA2N00000X|HF123456789012") == "91340100MA2N00000X|HF123456789012"


def test_gx_result_json_lists_every_failing_key_masked(city: Settings) -> None:
    import json

    run_quality("person", settings=city, reference_date=REF, run_id="manual__2026-11-20T02:00:00+08:00__person")
    (path,) = (city.lake_dir / "gx" / "validations" / "person").glob("*.json")
    assert ":" not in path.name
    doc = json.loads(path.read_text(encoding="utf-8"))
    check = next(r for r in doc["results"] if r["expectation_config"]["meta"]["rule_id"] == "person.resident_id.check_digit")
    assert check["result"]["unexpected_count"] == len(check["result"]["unexpected_index_list"]) > 0
    assert all("********" in k["resident_id"] for k in check["result"]["unexpected_index_list"])
    assert check["expectation_config"]["type"] == "expect_column_values_to_have_valid_resident_id_check_digit"
    assert doc["success"] is False and doc["statistics"]["evaluated_expectations"] == len(doc["results"])

    from pipelines.quality.docs import build_data_docs

    built = build_data_docs(city)
    # every generated suite, std and curated (issue 10), is rendered; custom rule files are part of their suite
    suites = [f for f in (PROJECT_ROOT / "expectations").glob("*.json") if not f.name.endswith(".custom.json")]
    assert built.suites == len(suites) >= 16 and built.new_results == built.total_results == 1
    pages = [p.read_text(encoding="utf-8") for p in built.index.parent.rglob("*.html")]
    validation = next(p for p in pages if "valid GB 11643 check character" in p and "Unexpected" in p)
    first = check["result"]["unexpected_index_list"][0]["resident_id"]
    assert first in validation  # the failing keys are listed, masked
    raw = get_catalog(city).load_table("raw.population__person").scan(selected_fields=("resident_id",)).to_arrow()
    shown = {m for page in pages for m in re.findall(r"\d{17}[\dXx]", page)}
    assert not shown & set(raw["resident_id"].to_pylist())
    # the index's Batch ID is the raw batch validated (city fixture: "seed"), to trace a page to meta.batches
    assert any(p.name == "seed.html" for p in (built.index.parent / "validations" / "person").rglob("*.html"))
    # the page names the std table and the run time (GX shows __none__ without them)
    assert re.search(r"Validations / person / std\.person / manual__2026-11-20T02:00:00\+08:00__person / \d{4}-", validation)

    # Nothing loads from another host (the bureau's network has no internet; GX's logo is a beacon) and
    # every script and stylesheet a page names exists in the site.
    from pipelines.quality.docs_assets import external_references

    assert built.vendored
    for page in built.index.parent.rglob("*.html"):
        html = page.read_text(encoding="utf-8")
        assert external_references(html) == [], page
        local = re.findall(r'<(?:script|link)\b[^>]*\b(?:src|href)="([^"]+)"', html)
        assert any("static/vendor/jquery-3.7.1/dist/jquery.min.js" in x for x in local)
        assert all((page.parent / x).resolve().is_file() for x in local), page
    assert build_data_docs(city).new_results == 0  # incremental: already in the GX store


def test_data_docs_index_renders_in_a_browser_without_internet(city: Settings) -> None:
    """The index's tables are drawn by bootstrap-table from the vendored scripts: with GX's CDN links and
    no internet they stay empty. Headless Chromium, network off for other hosts, must draw the run's row."""
    from conftest import require_binary

    from pipelines.quality.docs import build_data_docs

    chromium = require_binary("chromium")
    run_quality("person", settings=city, reference_date=REF, run_id="manual__2026-11-20T02:00:00+08:00__person")
    built = build_data_docs(city)
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--virtual-time-budget=5000", "--dump-dom", built.index.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert 'data-index="0"' in dom, dom[-2000:]  # rows drawn by bootstrap-table, i.e. its script ran
    assert "manual__2026-11-20T02:00:00+08:00__person" in dom and "std.person" in dom


def test_data_docs_assets_are_checked_against_their_pinned_hash(tmp_path: Path) -> None:
    import io
    import tarfile

    from pipelines.quality.docs_assets import fetch_assets, localize_page

    # A mirror that serves a tampered jquery: refused, and nothing half-written is left behind.
    tgz = tmp_path / "registry" / "jquery" / "-" / "jquery-3.7.1.tgz"
    tgz.parent.mkdir(parents=True)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"alert('not jquery')"
        info = tarfile.TarInfo("package/dist/jquery.min.js")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    tgz.write_bytes(buf.getvalue())
    with pytest.raises(CitylakeError, match="jquery-3.7.1.tgz does not match its pinned sha512"):
        fetch_assets(tmp_path / "assets", registry=(tmp_path / "registry").as_uri())
    assert not (tmp_path / "assets").exists()

    # Without vendored copies the pages keep GX's CDN links but still drop the logo beacon.
    site = tmp_path / "site"
    page = site / "validations" / "person" / "run" / "time" / "std.person.html"
    page.parent.mkdir(parents=True)
    page.write_text('<img src="https://great-expectations-web-assets.s3.us-east-2.amazonaws.com/logo-long.png'
                    '?d=20261126T012021Z&dataContextId=122d11c9"><script src="https://code.jquery.com/jquery-3.7.1.min.js"'
                    ' integrity="sha384-x" crossorigin="anonymous"></script>', encoding="utf-8")
    assert localize_page(page, site, vendored=False)
    assert page.read_text(encoding="utf-8").startswith('<img src="../../../../static/images/logo-long.png">')
    assert localize_page(page, site, vendored=True)
    assert page.read_text(encoding="utf-8").endswith(
        '<script src="../../../../static/vendor/jquery-3.7.1/dist/jquery.min.js"></script>')


def test_lake_show_masks_personal_values_unless_asked(city: Settings) -> None:
    run_quality("person", settings=city, reference_date=REF)
    shown = subprocess.run([sys.executable, "-m", "pipelines.cli", "lake", "show", "std.person", "--limit", "5"],
                           capture_output=True, text=True, check=True).stdout
    assert "********" in shown and "-**-**" in shown
    clear = subprocess.run([sys.executable, "-m", "pipelines.cli", "lake", "show", "std.person", "--limit", "5",
                            "--unmasked"], capture_output=True, text=True, check=True).stdout
    assert "********" not in clear
    run_quality("insured", settings=city, reference_date=REF)
    run_consistency(settings=city)
    conflicts = subprocess.run([sys.executable, "-m", "pipelines.cli", "lake", "show", "meta.conflicts"],
                               capture_output=True, text=True, check=True).stdout
    assert re.search(r"\d{6}\*{8}\d{3}[\dX]\|", conflicts) and not re.search(r"\d{17}[\dX]", conflicts)


def test_publish_replaces_keys_copy_on_write_and_drops_source_deletions(lake_settings: Settings,
                                                                        tmp_path: Path) -> None:
    """std holds the current state by key: composite keys updated in place, deletions dropped, untouched
    data files kept as they are."""
    from types import SimpleNamespace

    from pyiceberg.expressions import EqualTo

    from pipelines.quality.gate import _publish

    catalog = get_catalog(lake_settings)
    catalog.create_namespace_if_not_exists("std")
    contract = SimpleNamespace(std_table="std.t", columns=[SimpleNamespace(name="line", source="线路"),
                                                          SimpleNamespace(name="hour", source="小时"),
                                                          SimpleNamespace(name="riders", source="人数")])
    keys = ["line", "hour"]

    at = pa.timestamp("us", tz="UTC")

    def rows(*values: tuple[Any, ...], day: int = 1) -> Path:  # the gate stages passing rows as Parquet
        import pyarrow.parquet as pq

        path = tmp_path / f"good-{len(list(tmp_path.glob('good-*')))}.parquet"
        pq.write_table(pa.table({"line": [v[0] for v in values], "hour": pa.array([v[1] for v in values], pa.int32()),
                                 "riders": pa.array([v[2] for v in values], pa.int64()),
                                 "_extracted_at": pa.array([datetime(2026, 11, v[3] if len(v) > 3 else day)
                                                            for v in values], at)}), path)
        return path

    def deleted(*values: tuple[str, int], day: int) -> pa.Table:  # tombstones: standardized key + extraction
        return pa.table({"line": [v[0] for v in values], "hour": pa.array([v[1] for v in values], pa.int64()),
                         "_extracted_at": pa.array([datetime(2026, 11, day)] * len(values), at)})

    nothing = deleted(day=1)
    _publish(catalog, contract, rows(("L1", 7, 10), ("L1", 8, 20), ("L2", 7, 30)), nothing, keys, "r1")
    _publish(catalog, contract, rows(("L9", 7, 1)), nothing, keys, "r2")  # a second file, never touched
    std = catalog.load_table("std.t")
    untouched = {f.file.file_path for f in std.scan(row_filter=EqualTo("line", "L9")).plan_files()}

    gone = deleted(("L2", 7), day=2)  # types differ from std's
    snap, _ = _publish(catalog, contract, rows(("L1", 8, 25), ("L3", 7, 5), day=2), gone, keys, "r3")
    std = catalog.load_table("std.t")
    assert std.current_snapshot().snapshot_id == snap
    got = sorted(tuple(r.values())[:3] for r in std.scan().to_arrow().to_pylist())
    assert got == [("L1", 7, 10), ("L1", 8, 25), ("L3", 7, 5), ("L9", 7, 1)]
    assert untouched <= {f.file.file_path for f in std.scan().plan_files()}
    # r3 rewrote the file holding its keys (overwrite) and appended its rows, in one transaction
    ops = {s.summary.operation.value for s in std.snapshots() if s.summary.get("citylake.run-id") == "r3"}
    assert ops == {"overwrite", "append"}

    # One run, several batches: the latest event per key wins. L1/8 updated on the 3rd and deleted on the
    # 4th stays deleted; L3/7 deleted on the 3rd and back on the 4th stays.
    _publish(catalog, contract, rows(("L3", 7, 7, 4), ("L1", 8, 26, 3)),
             pa.concat_tables([deleted(("L3", 7), day=3), deleted(("L1", 8), day=4)]), keys, "r4")
    got = sorted(tuple(r.values())[:3] for r in catalog.load_table("std.t").scan().to_arrow().to_pylist())
    assert got == [("L1", 7, 10), ("L3", 7, 7), ("L9", 7, 1)]


def test_rows_deleted_at_the_source_leave_std_and_count_as_published(city: Settings) -> None:
    import sqlite3

    first = run_quality("person", settings=city, reference_date=REF)
    std = get_catalog(city).load_table("std.person")
    published = set(std.scan(selected_fields=("resident_id",)).to_arrow()["resident_id"].to_pylist())
    con = sqlite3.connect(city.data_dir / "sources" / "population.db")
    gone = [r for (r,) in con.execute("SELECT resident_id FROM person ORDER BY rowid LIMIT 400")
            if r in published][:2]
    # a key the source writes in lower case: std holds it as 3401…X, the tombstone must still find it
    lower = next(r for r in published if r.endswith("X") and r not in gone)
    con.execute("UPDATE person SET resident_id = ? WHERE resident_id = ?", (lower.lower(), lower))
    con.commit()
    systems, _ = load_registry(city.registry_dir)
    ingest_table(systems["population"], "person", settings=city, mode="full", batch_id="lower",
                 extracted_at=datetime(2026, 11, 20, 3, tzinfo=TZ))
    assert run_quality("person", settings=city, reference_date=REF).status == "published"
    gone.append(lower)
    con.executemany("DELETE FROM person WHERE resident_id = ?", [(g,) for g in gone[:2]] + [(lower.lower(),)])
    con.execute("UPDATE person SET address = '安徽省合肥市蜀山区新地址1号' WHERE resident_id = ?",
                (next(iter(published - set(gone))),))
    con.commit()
    con.close()
    ingest_table(systems["population"], "person", settings=city, mode="full", batch_id="refresh",
                 extracted_at=datetime(2026, 11, 20, 4, tzinfo=TZ))
    r = run_quality("person", settings=city, reference_date=REF)
    assert r.status == "published" and r.deleted == 3 and r.extracted == r.published + r.quarantined
    after = get_catalog(city).load_table("std.person").scan().to_arrow()
    keys = after["resident_id"].to_pylist()
    assert len(keys) == len(set(keys)) == first.published - 3 and not set(gone) & set(keys)
    assert "安徽省合肥市蜀山区新地址1号" in after["residence_address"].to_pylist()
