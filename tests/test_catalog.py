"""The resource catalog (一本账) over a real small lake: every raw and std table, 未编目 for a raw table without a
contract, registration (recorded, latest wins), catalog.csv for Excel, the CLI."""

from __future__ import annotations

import csv
import json
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from conftest import scoped_env
from typer.testing import CliRunner

from pipelines.catalog.build import CATALOGUED, UNCATALOGUED, build_catalog, find_entry
from pipelines.catalog.export import HEADERS, write_catalog
from pipelines.catalog.registration import RegistrationError, latest_registrations, register
from pipelines.config import load_config
from pipelines.formats import percent
from pipelines.ingest import ingest_table
from pipelines.lake.catalog import get_catalog
from pipelines.quality.gate import run_quality
from pipelines.registry import load_registry
from pipelines.seed import seed_city
from pipelines.settings import PROJECT_ROOT, TZ, Settings, load_settings

REF = date(2026, 11, 20)
PUBLISHED = ("person", "enterprise")


def _parking_system(registry: Path, data_dir: Path) -> None:
    """A tiny new source system with no contract: it stops at raw, as a new system does today."""
    (data_dir / "sources").mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(data_dir / "sources" / "parking.db") as conn:
        conn.execute("CREATE TABLE parking_lot (lot_id TEXT PRIMARY KEY, lot_name TEXT, spaces INTEGER)")
        conn.executemany("INSERT INTO parking_lot VALUES (?, ?, ?)",
                         [("P001", "天鹅湖停车场", 420), ("P002", "合肥南站停车场", 1800)])
    department = yaml.safe_load((registry / "population.yml").read_text(encoding="utf-8"))["department"]
    (registry / "parking.yml").write_text(yaml.safe_dump({
        "system": "parking", "name": "停车场管理系统", "department": department, "connection": "src_parking",
        "default_url": "sqlite:///{data_dir}/sources/parking.db",
        "tables": [{"code": "lot", "source": "parking_lot", "primary_key": ["lot_id"]}],
    }, allow_unicode=True), encoding="utf-8")


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """Seeded city (scale 0.05) + the parking system, every table ingested, person and enterprise published."""
    root = tmp_path_factory.mktemp("catalog")
    registry = root / "registry"
    shutil.copytree(PROJECT_ROOT / "schemas" / "sources", registry)
    env = {"CITYLAKE_LAKE_DIR": str(root / "lake"), "CITYLAKE_DATA_DIR": str(root / "data"),
           "CITYLAKE_REGISTRY_DIR": str(registry)}
    with scoped_env(env):
        settings = load_settings()
        seed_city(settings.data_dir, scale=0.05)
        _parking_system(registry, settings.data_dir)
        systems, errors = load_registry(settings.registry_dir)
        assert not errors and "parking" in systems
        for s in systems.values():
            for t in s.all_tables:
                ingest_table(s, t.code, settings=settings, batch_id="seed",
                             extracted_at=datetime(2026, 11, 20, 2, tzinfo=TZ))
        for name in PUBLISHED:
            assert run_quality(name, settings=settings, reference_date=REF).status == "published"
        yield settings


def test_catalog_lists_every_raw_and_std_table(lake: Settings) -> None:
    catalog = get_catalog(lake)
    entries = build_catalog(lake)
    by_id = {e.identifier: e for e in entries}
    in_lake = {".".join(i) for ns in ("raw", "std", "curated") for i in catalog.list_tables(ns)}
    assert in_lake <= set(by_id)
    assert not [i for i in by_id if i.split(".")[0] in ("meta", "quarantine")]
    assert any(i.startswith("meta.") for i in (".".join(t) for t in catalog.list_tables("meta")))  # there, not listed

    # a raw table without a contract: 未编目, with the command that drafts one
    parking = by_id["raw.parking__lot"]
    assert parking.status == UNCATALOGUED and parking.dataset is None and parking.rows == 2
    assert parking.fix is not None and parking.fix.startswith("citylake contract new parking lot")
    assert "分级" in parking.fix and "共享" in parking.fix  # what a person must then fill in

    # a raw table a contract is built from links to its dataset
    raw = by_id["raw.population__person"]
    assert raw.status == CATALOGUED and raw.dataset == "person" and raw.fix is None
    assert raw.system == "population" and raw.source_table == "person"

    # std: the contract's attributes, rows and time from the snapshot, score, lineage
    person = by_id["std.person"]
    table = catalog.load_table("std.person")
    snap = table.current_snapshot()
    assert person.rows == table.scan().to_arrow().num_rows > 0
    assert person.last_updated is not None and datetime.fromisoformat(person.last_updated).timestamp() == pytest.approx(
        snap.timestamp_ms / 1000)
    assert person.name == "人口基础信息" and person.sharing is not None and person.sharing["type"] == "无条件共享"
    assert person.grade == {"level": "一般数据", "grade": 4}
    contracts = load_config(lake)[2]
    owner = contracts["person"].owner  # a department code; the catalog names it from the registry
    assert person.provider == {"code": owner, "name": "合肥市公安局"} and person.department == person.provider
    assert person.resource_code == contracts["person"].resource_code and person.resource_code.endswith(f"/{owner}-0001")
    assert person.classification is not None and person.classification["path"] == "基础信息资源/人口/人口基本信息"
    assert person.overrides == []
    grade_override = by_id["std.enterprise"].overrides  # enterprise departs from its default grade, approved
    # its approved grade 1 moved open.type's default: listed too, under the same approval
    assert [o["attribute"] for o in grade_override] == ["classification.grade", "open.type"]
    assert grade_override[0]["approved_by"] and grade_override[1]["approved_by"] == grade_override[0]["approved_by"]
    assert {i["name"]: i["element_name"] for i in person.items}["resident_id"] == "公民身份号码"
    assert person.quality_score is not None and 0.0 < person.quality_score <= 1.0
    # The seeded city injects defects into population.person (seed_manifest.json): the score counts them.
    # Expected from the definition (STANDARDS.md / GB/T 36344), not from the scorecard's own code: per
    # dimension 1 - Σfailed/Σevaluated over its rules, overall = mean of the dimensions that have rules.
    manifest = json.loads((lake.data_dir / "seed_manifest.json").read_text(encoding="utf-8"))
    injected = sum(len(d["keys"]) for d in manifest["defects"]
                   if (d["system"], d["table"], d["expected"]) == ("population", "person", "quarantine"))
    results = [r for r in catalog.load_table("meta.quality_results").scan().to_arrow().to_pylist()
               if r["dataset"] == "person"]
    assert injected > 0 and sum(r["failed"] or 0 for r in results) >= injected  # every injected defect fails a rule
    by_dimension: dict[str, list[int]] = {}
    for r in results:
        if r["evaluated"]:
            totals = by_dimension.setdefault(r["dimension"], [0, 0])
            totals[0] += r["evaluated"]
            totals[1] += r["failed"] or 0
    expected = sum(1 - failed / evaluated for evaluated, failed in by_dimension.values()) / len(by_dimension)
    assert person.quality_score == pytest.approx(expected) and person.quality_score < 1.0
    assert person.registration is None and person.registration_status == "未登记"
    steps = [(s["step"], s["identifier"]) for s in person.lineage]
    # then the curated dataset built from it (golden_resident is 不予开放: no release after it)
    assert [s for s, _ in steps] == ["source", "raw", "std", "curated"] and steps[3][1] == "curated.golden_resident"
    source, raw_step, std_step, _ = person.lineage
    assert source["connection"] == "src_population" and source["system_name"] == "人口基础信息系统"
    assert "://" not in json.dumps(person.to_dict(), ensure_ascii=False)  # connection id, never a URL
    raw_snaps = {s.snapshot_id for s in catalog.load_table("raw.population__person").metadata.snapshots}
    assert raw_step["snapshot_id"] in raw_snaps and std_step["snapshot_id"] == snap.snapshot_id

    # a contracted dataset whose std table does not exist yet is listed, without rows
    poi = by_id["std.poi"]
    assert "std.poi" not in in_lake and poi.status == CATALOGUED and poi.rows is None and poi.quality_score is None
    assert poi.lineage[1]["snapshot_id"] is not None and poi.lineage[2]["snapshot_id"] is None

    assert find_entry(entries, "person") is person and find_entry(entries, "raw.parking__lot") is parking
    json.dumps([e.to_dict() for e in entries], ensure_ascii=False)  # JSON-safe


def test_registration_is_recorded_and_the_latest_wins(lake: Settings) -> None:
    register(lake, "enterprise", "GJDJ-2026-000123", "2026-11-01", recorded_by="治理科")
    register(lake, "enterprise", "GJDJ-2026-000124", date(2026, 11, 2))  # a corrected code
    latest = latest_registrations(get_catalog(lake))["enterprise"]
    assert (latest.code, latest.registered_on) == ("GJDJ-2026-000124", date(2026, 11, 2))
    entry = find_entry(build_catalog(lake), "enterprise")
    assert entry is not None and entry.registration == {"code": "GJDJ-2026-000124", "date": "2026-11-02"}
    assert entry.registration_status == "已登记"
    rows = get_catalog(lake).load_table("meta.registrations").scan().to_arrow().to_pylist()
    assert len([r for r in rows if r["dataset"] == "enterprise"]) == 2  # append-only: history kept

    tomorrow = datetime.now(TZ).date() + timedelta(days=1)
    bad = [("nosuch", "GJDJ-1", "2026-11-01", "no contract"), ("enterprise", "  ", "2026-11-01", "empty"),
           ("enterprise", "TODO-CODE", "2026-11-01", "no digit"), ("enterprise", "GJDJ 2026 1", "2026-11-01", "not a code"),
           ("enterprise", "登记编号2026001", "2026-11-01", "not a code"), ("enterprise", "GJDJ-2026-1", "2026/11/01", "ISO"),
           ("enterprise", "GJDJ-2026-1", tomorrow.isoformat(), "future")]
    for dataset, code, on, why in bad:
        with pytest.raises(RegistrationError, match=why):
            register(lake, dataset, code, on)
    assert latest_registrations(get_catalog(lake))["enterprise"].code == "GJDJ-2026-000124"


def test_a_registration_row_without_recorded_at_neither_crashes_nor_sticks(lake: Settings, tmp_path: Path) -> None:
    """An old or hand-written meta.registrations row has no recorded_at: it counts as older than any
    timestamped row, in whatever order the scan returns them (it used to raise TypeError, or win for good)."""
    from pipelines.catalog.registration import latest_of
    from pipelines.lake.meta import REGISTRATIONS
    from pipelines.lake.tables import append

    old = {"dataset": "person", "registration_code": "OLD-2025-01", "registered_on": date(2025, 1, 2),
           "recorded_by": None, "recorded_at": None}
    new = {**old, "registration_code": "GJDJ-2026-9", "registered_on": date(2026, 11, 1),
           "recorded_at": datetime(2026, 11, 2, 1, tzinfo=TZ)}
    alone = {**old, "dataset": "poi"}
    for rows in ([old, new, alone], [new, old, alone], [alone, old, new]):
        latest = latest_of(rows)
        assert latest["person"].code == "GJDJ-2026-9", rows  # the null never sticks
        assert latest["poi"].code == "OLD-2025-01" and latest["poi"].recorded_at is None  # nothing else: used

    settings = replace(lake, catalog_uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}/wh")
    catalog = get_catalog(settings)
    append(catalog, "meta.registrations", pa.Table.from_pylist([new, old, alone], schema=REGISTRATIONS))
    stored = latest_registrations(catalog)  # through the lake: no TypeError comparing None with a time
    assert {k: v.code for k, v in stored.items()} == {"person": "GJDJ-2026-9", "poi": "OLD-2025-01"}


def test_catalog_files_open_in_excel_with_chinese(lake: Settings, tmp_path: Path) -> None:
    entries = build_catalog(lake, config=load_config(lake))  # the caller's config, loaded once
    json_path, csv_path = write_catalog(entries, tmp_path / "out")
    assert csv_path.read_bytes().startswith(b"\xef\xbb\xbf")  # the BOM Excel needs to read UTF-8
    with csv_path.open(encoding="utf-8-sig", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == HEADERS
    for header in ("信息资源名称", "信息资源代码", "提供方", "提供方代码", "信息资源分类", "格式", "共享类型", "共享条件",
                   "共享方式", "开放属性", "开放条件", "更新周期", "分级", "行数", "最近更新（北京时间）", "质量得分",
                   "登记状态", "编目状态"):
        assert header in rows[0]
    body = [dict(zip(rows[0], r, strict=True)) for r in rows[1:]]
    assert [r["标识"] for r in body] == [e.identifier for e in entries]
    person = next(r for r in body if r["标识"] == "std.person")
    assert person["信息资源名称"] == "人口基础信息" and person["编目状态"] == "已编目" and person["共享类型"] == "无条件共享"
    assert person["信息资源代码"] == find_entry(entries, "person").resource_code  # type: ignore[union-attr]
    assert person["信息资源分类"] == "基础信息资源/人口/人口基本信息" and person["提供方"] == "合肥市公安局"
    digits = [r for r in body if r["提供方代码"].strip('="').isdigit()]  # an all-digit 统一社会信用代码
    assert digits and all(r["提供方代码"].startswith('="') for r in digits)  # text in Excel, no 1.13401E+17
    enterprise = next(r for r in body if r["标识"] == "std.enterprise")
    assert enterprise["例外审批"].startswith("classification.grade: 1（默认 3；")
    assert next(r for r in body if r["标识"] == "raw.parking__lot")["编目状态"] == "未编目"
    # registration belongs to the dataset: a raw table shows "—", not 未登记
    assert {r["登记状态"] for r in body if r["层"] == "raw"} == {"—"}
    assert {r["登记状态"] for r in body if r["层"] == "std"} <= {"已登记", "未登记"}
    # times as the site shows them: Beijing, the header says so (catalog.json keeps ISO UTC)
    entry = find_entry(entries, "person")
    assert entry is not None and entry.last_updated is not None and entry.last_updated.endswith("Z")
    utc = datetime.fromisoformat(entry.last_updated.replace("Z", "+00:00"))
    assert person["最近更新（北京时间）"] == f"{utc.astimezone(TZ):%Y-%m-%d %H:%M}"
    assert entry.quality_score is not None and entry.quality_score < 1
    assert person["质量得分"] == percent(entry.quality_score) != "100.00%"  # the site's format, rounded down
    assert next(r for r in body if r["标识"] == "std.poi")["质量得分"] == "—"  # no results: no score, not 100 %
    data = json.loads(json_path.read_text(encoding="utf-8"))
    assert [d["identifier"] for d in data] == [e.identifier for e in entries]
    assert "人口基础信息" in json_path.read_text(encoding="utf-8")  # ensure_ascii=False


def test_cli_ls_show_register(lake: Settings) -> None:
    from pipelines.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["catalog", "ls", "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert {d["identifier"] for d in listed} >= {"raw.parking__lot", "raw.social_insurance__insured", "std.person"}

    table = runner.invoke(app, ["catalog", "ls"])
    assert table.exit_code == 0
    assert "raw.social_insurance__insured" in table.stdout  # piped: full identifiers, not cut to 80 columns
    assert "citylake contract new parking lot" in table.stdout

    shown = runner.invoke(app, ["catalog", "show", "raw.parking__lot", "--json"])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["status"] == "未编目"
    assert "血缘" in runner.invoke(app, ["catalog", "show", "person"]).stdout

    unknown = runner.invoke(app, ["catalog", "show", "nosuch"])
    assert unknown.exit_code != 0
    assert unknown.stderr.strip().count("\n") == 0 and "nosuch" in unknown.stderr

    bad = runner.invoke(app, ["catalog", "register", "person", "--code", "GJDJ-2026-7", "--date", "20261301"])
    assert bad.exit_code != 0 and bad.stderr.strip().count("\n") == 0 and "ISO date" in bad.stderr
    ok = runner.invoke(app, ["catalog", "register", "person", "--code", "GJDJ-2026-7", "--date", "2026-11-03"])
    assert ok.exit_code == 0, ok.output
    assert find_entry(build_catalog(lake), "person").registration == {"code": "GJDJ-2026-7", "date": "2026-11-03"}  # type: ignore[union-attr]


def test_a_hundred_tables_build_in_well_under_a_second_each(lake: Settings, tmp_path: Path) -> None:
    """Metadata only: 120 raw tables (a snapshot each) in a scratch catalog build fast."""
    settings = replace(lake, catalog_uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}/wh")
    catalog = get_catalog(settings)
    data = pa.table({"id": pa.array(["a", "b"]), "v": pa.array([1, 2])})
    for i in range(120):
        catalog.create_table(f"raw.bench__t{i:03d}", schema=data.schema).append(data)
    started = time.perf_counter()
    entries = build_catalog(settings, catalog)
    elapsed = time.perf_counter() - started
    assert len([e for e in entries if e.identifier.startswith("raw.bench__")]) == 120
    assert all(e.rows == 2 for e in entries if e.identifier.startswith("raw.bench__"))
    assert elapsed < 3.0, elapsed


def test_lineage_continues_to_curated_and_exports_from_contract_inputs() -> None:
    """The extension point for later stages: a contract whose ``inputs`` name a std table adds its curated
    table (and its exports) to that std table's lineage."""
    from types import SimpleNamespace

    from pipelines.catalog.build import downstream_steps

    contracts = {"person_profile": SimpleNamespace(dataset="person_profile", inputs=["std.person"],
                                                   exports=["open/person_profile.csv"]),
                 "poi": SimpleNamespace(dataset="poi")}
    steps = downstream_steps(contracts, "std.person", {})
    assert [(s["step"], s["identifier"]) for s in steps] == [("curated", "curated.person_profile"),
                                                             ("export", "open/person_profile.csv")]
    assert downstream_steps(contracts, "std.poi", {}) == []


def test_a_std_tables_last_update_is_its_last_publish_not_a_maintenance_commit() -> None:
    """最近更新 of a std entry is the latest snapshot a quality run committed (``lake.raw.last_publish``, as
    the dataset page's freshness), not a later compaction or expiry commit."""
    from types import SimpleNamespace

    from pipelines.catalog.build import _lake_table

    def snap(sid: int, ms: int, **props: str) -> SimpleNamespace:
        return SimpleNamespace(snapshot_id=sid, timestamp_ms=ms,
                               summary=SimpleNamespace(additional_properties={"total-records": "5", **props}))

    published = snap(1, 1_700_000_000_000, **{"citylake.run-id": "r1", "citylake.batches": '["b"]'})
    maintenance = snap(2, 1_700_000_600_000)  # a compaction: same rows, no run
    table = SimpleNamespace(current_snapshot=lambda: maintenance, schema=lambda: SimpleNamespace(fields=[]),
                            metadata=SimpleNamespace(snapshots=[published, maintenance]))
    here = _lake_table(None, "std.person", {"std.person": table})
    assert (here.snapshot_id, here.at, here.rows) == (1, "2023-11-14T22:13:20Z", 5)
    raw = _lake_table(None, "raw.population__person", {"raw.population__person": table})
    assert raw.snapshot_id == 2  # a raw table's version is its current snapshot


def test_curated_datasets_are_entries_with_grades_deid_lineage_and_their_release(lake: Settings, tmp_path: Path) -> None:
    """Every curated contract is an entry (built or not): catalog fields, each column's grade from its
    element's sensitivity and what the open release does to it; a built and released one has rows, lineage
    from its input at the snapshot the build read to the release folder latest.json names, and the std
    table's lineage continues through it."""
    from pipelines.catalog.requests import add_request
    from pipelines.config import load_all
    from pipelines.curate.runner import build_curated
    from pipelines.publish.release import release_open_data

    curated = load_all(lake).curated
    entries = build_catalog(lake)
    by_id = {e.identifier: e for e in entries}
    assert {f"curated.{d}" for d in curated} <= set(by_id)
    legal = by_id["curated.golden_legal_person"]
    contract = curated["golden_legal_person"]
    assert (legal.layer, legal.status, legal.dataset, legal.rows) == ("curated", CATALOGUED, "golden_legal_person", None)
    assert legal.resource_code == contract.resource_code and legal.provider == {"code": contract.owner, "name": "合肥市市场监督管理局"}
    assert legal.grade == {"level": contract.classification.level, "grade": contract.classification.grade}
    assert legal.open is not None and legal.open["type"] == "有条件开放" and legal.open["met_by"] and legal.open["k"] >= 5
    items = {i["name"]: i for i in legal.items}
    assert [i["name"] for i in legal.items] == [c.name for c in contract.columns]
    assert (items["legal_representative"]["grade"], items["legal_representative"]["deid"],
            items["legal_representative"]["opened"]) == (3, "drop", False)
    assert (items["uscc"]["grade"], items["uscc"]["opened"], items["uscc"]["deid_label"]) == (1, True, "原样开放")
    assert [(s["step"], s["identifier"]) for s in legal.lineage] == [
        ("std", "std.enterprise"), ("std", "std.credit_record"), ("curated", "curated.golden_legal_person")]
    resident = by_id["curated.golden_resident"]
    assert resident.open["type"] == "不予开放" and not any(i["opened"] for i in resident.items)  # type: ignore[index]
    assert max(i["grade"] for i in resident.items) == 4 == resident.grade["grade"]  # type: ignore[index]

    built = build_curated("enterprise_registrations_monthly", settings=lake, reference_date=REF)
    assert built.status == "published" and built.rows > 0
    released = release_open_data(lake, release_date=date(2026, 11, 21), datasets=["enterprise_registrations_monthly"])
    assert [o.status for o in released.outcomes] == ["released"]
    add_request(lake, title="企业登记月度统计", requester="李娜", purpose="创业分析", contact="13800138000",
                dataset="enterprise_registrations_monthly")
    entries = build_catalog(lake)
    monthly = find_entry(entries, "enterprise_registrations_monthly")
    assert monthly is not None and monthly.layer == "curated" and monthly.rows == built.rows
    table = get_catalog(lake).load_table("curated.enterprise_registrations_monthly")
    assert monthly.last_updated is not None and monthly.quality_score is not None
    folder = "open/2026-11-21/enterprise_registrations_monthly/"
    assert monthly.release is not None and monthly.release["path"] == folder
    steps = [(s["step"], s["identifier"], s["snapshot_id"]) for s in monthly.lineage]
    assert steps == [("std", "std.enterprise", built.inputs["std.enterprise"]),
                     ("curated", "curated.enterprise_registrations_monthly", table.current_snapshot().snapshot_id),
                     ("export", folder, None)]
    assert monthly.lineage[0]["at"] is not None  # the input snapshot's time
    assert [(q["contact"], q["requester"]) for q in monthly.requests] == [("138****8000", "李*")]
    enterprise = find_entry(entries, "enterprise")
    assert enterprise is not None
    downstream = [s["identifier"] for s in enterprise.lineage if s["step"] in ("curated", "export")]
    at = downstream.index("curated.enterprise_registrations_monthly")
    assert downstream[at + 1] == folder and "curated.golden_legal_person" in downstream  # std → curated → release
    json_path, csv_path = write_catalog(entries, tmp_path / "out")
    assert "13800138000" not in json_path.read_text(encoding="utf-8") and "李娜" not in json_path.read_text(encoding="utf-8")
    with csv_path.open(encoding="utf-8-sig", newline="") as f:
        body = {r["标识"]: r for r in csv.DictReader(f)}
    assert body["curated.enterprise_registrations_monthly"]["当前开放版本"] == folder
    assert body["curated.enterprise_registrations_monthly"]["开放需求"].endswith("（已受理）")

    from pipelines.cli import app

    shown = CliRunner().invoke(app, ["catalog", "show", "enterprise_registrations_monthly"])
    assert shown.exit_code == 0, shown.output
    assert folder in shown.stdout and "138****8000" in shown.stdout and "13800138000" not in shown.stdout
    assert "小数抑制" in shown.stdout  # registrations: deid suppress


def test_the_release_pointer_is_read_from_s3_and_a_broken_one_is_no_release(tmp_path: Path, moto_endpoint: str,
                                                                            aws_env: None) -> None:
    """``read_latest`` reads ``<exports>/open/latest.json`` locally or from an S3 prefix; a missing or broken
    pointer is "no release" (the catalog and the report never fail on it)."""
    import boto3

    from pipelines.catalog.build import read_latest

    pointer = {"updated_at": "2026-11-21T06:31:00+08:00", "datasets": {
        "poi_wgs84": {"release_date": "2026-11-21", "path": "open/2026-11-21/poi_wgs84/", "manifest": "abc"}}}
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket="portal")
    settings = replace(load_settings(), exports_dir="s3://portal/city/exports", s3_endpoint=moto_endpoint)
    assert read_latest(settings) == {}  # nothing released yet
    s3.put_object(Bucket="portal", Key="city/exports/open/latest.json", Body=json.dumps(pointer).encode())
    assert read_latest(settings) == pointer["datasets"]
    local = replace(load_settings(), exports_dir=str(tmp_path))
    (tmp_path / "open").mkdir()
    (tmp_path / "open" / "latest.json").write_text("{not json", encoding="utf-8")
    assert read_latest(local) == {}
