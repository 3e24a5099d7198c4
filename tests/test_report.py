"""The governance site without a browser: pages exist, Chinese, nothing loaded from the network, personal
values masked, "—" for a dimension with no rules, a 0-compared copy is a warning, an empty lake renders."""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from conftest import scoped_env

from pipelines.settings import PROJECT_ROOT, TZ, Settings

REF = date(2026, 11, 20)
TODAY = date(2026, 11, 21)
HAN = re.compile(r"[\u4e00-\u9fff]")
# A resource the browser would load from another host: src/href/url()/@import of an absolute or
# protocol-relative URL. Plain text that merely mentions a web address is not a request.
LOADED = re.compile(r"""(?:\bsrc|\bhref|\baction|\bposter|\bdata)\s*=\s*["']?\s*(?:https?:)?//|url\(\s*["']?\s*(?:https?:)?//|@import""",
                    re.IGNORECASE)


def _pages(root: Path) -> list[Path]:
    return sorted(root.rglob("*.html"))


def _env(base: Path) -> dict[str, str]:
    return {"CITYLAKE_LAKE_DIR": str(base / "lake"), "CITYLAKE_DATA_DIR": str(base / "data"),
            "CITYLAKE_REGISTRY_DIR": str(PROJECT_ROOT / "schemas" / "sources"), "CITYLAKE_ROOT": str(PROJECT_ROOT)}


@pytest.fixture(scope="module")
def city_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, Path]]:
    """The seeded city through the gate (quarantined rows, conflicts, a held enterprise batch), then the site."""
    base = tmp_path_factory.mktemp("report")
    with scoped_env(_env(base)):
        from pipelines.ingest import ingest_table
        from pipelines.quality.consistency import run_consistency
        from pipelines.quality.gate import QualityGateError, load_config, run_quality
        from pipelines.registry import load_registry
        from pipelines.report import build_site
        from pipelines.seed import corrupt_enterprise_uscc, seed_city
        from pipelines.settings import load_settings

        settings = load_settings()
        seed_city(settings.data_dir, scale=0.05)
        systems, _ = load_registry(settings.registry_dir)
        for system in systems.values():
            for table in system.all_tables:
                ingest_table(system, table.code, settings=settings, batch_id="seed",
                             extracted_at=datetime(2026, 11, 20, 2, tzinfo=TZ))
        _standards, _systems, contracts = load_config(settings)
        for name in contracts:
            run_quality(name, settings=settings, reference_date=REF)
        run_consistency(settings=settings)
        assert corrupt_enterprise_uscc(settings.data_dir, "2026-11-20 01:00:00") > 100
        ingest_table(systems["enterprise"], "enterprise", settings=settings, batch_id="bad",
                     extracted_at=datetime(2026, 11, 20, 3, tzinfo=TZ))
        with pytest.raises(QualityGateError):
            run_quality("enterprise", settings=settings, reference_date=REF)
        index = build_site(settings, out_dir=base / "report")
        assert index == base / "report" / "index.html"
        yield settings, index.parent


def test_every_page_exists_in_chinese_with_the_cjk_font_stack(city_site: tuple[Settings, Path]) -> None:
    from pipelines.config import load_config, load_departments
    from pipelines.report.pages import page_name

    settings, root = city_site
    _standards, _systems, contracts = load_config(settings)
    expected = {"index.html", "conflicts.html", "catalog.html", "catalog.json", "catalog.csv",
                "assets/site.css", "assets/site.js", "assets/vendor/chartjs/chart.umd.js"}
    expected |= {f"datasets/{name}.html" for name in contracts}
    expected |= {f"departments/{page_name(c.owner)}.html" for c in contracts.values()}
    expected |= {f"departments/{page_name(code)}.html" for code in load_departments(settings)}
    catalog = json.loads((root / "catalog.json").read_text(encoding="utf-8"))
    entries = catalog if isinstance(catalog, list) else catalog.get("entries", catalog.get("resources", []))
    assert entries, "catalog.json lists nothing"
    expected |= {f"catalog/{page_name(e['identifier'])}.html" for e in entries}
    missing = sorted(p for p in expected if not (root / p).is_file())
    assert not missing, missing
    for page in _pages(root):
        html = page.read_text(encoding="utf-8")
        assert '<html lang="zh-CN">' in html, page
        assert len(HAN.findall(html)) > 20, page
        assert "assets/site.css" in html, page
    css = (root / "assets" / "site.css").read_text(encoding="utf-8")
    assert '"Microsoft YaHei", "PingFang SC", "Noto Sans CJK SC", "Source Han Sans SC", sans-serif' in css
    assert (root / "catalog.csv").read_bytes().startswith(b"\xef\xbb\xbf")  # opens in Excel with Chinese intact


def test_nothing_is_loaded_from_the_network(city_site: tuple[Settings, Path]) -> None:
    _settings, root = city_site
    offending = []
    for path in [*_pages(root), *root.rglob("*.css")]:
        text = path.read_text(encoding="utf-8")
        offending += [f"{path.relative_to(root)}: {m.group(0)}" for m in LOADED.finditer(text)]
    assert not offending, offending
    assert "http" not in (root / "assets" / "site.js").read_text(encoding="utf-8")
    # The vendored library is the npm file (minus its source-map line), unchanged otherwise.
    vendor = root / "assets" / "vendor" / "chartjs"
    manifest = json.loads((vendor / "MANIFEST.json").read_text(encoding="utf-8"))
    lib = (vendor / "chart.umd.js").read_bytes()
    assert hashlib.sha256(lib).hexdigest() == manifest["shipped_sha256"]
    assert b"sourceMappingURL" not in lib and manifest["version"].startswith("4.")
    assert (vendor / "LICENSE.md").is_file()
    for page in _pages(root):  # relative links only: the site opens from file:// and any server path
        for link in re.findall(r'(?:href|src)="([^"]+)"', page.read_text(encoding="utf-8")):
            assert not link.startswith(("/", "file:", "http:", "https:")), (page, link)


def test_failing_row_examples_and_conflict_keys_are_masked(city_site: tuple[Settings, Path]) -> None:
    from pipelines.lake.catalog import get_catalog

    settings, root = city_site
    catalog = get_catalog(settings)
    quarantined = [r["resident_id"] for r in catalog.load_table("quarantine.person").scan(
        selected_fields=("resident_id",)).to_arrow().to_pylist() if r["resident_id"] and len(r["resident_id"]) >= 15]
    assert quarantined, "the seeded city quarantines person rows"
    ids = set(quarantined) | set(catalog.load_table("std.person").scan(selected_fields=("resident_id",))
                                 .to_arrow().column("resident_id").to_pylist())
    for page in _pages(root):
        html = page.read_text(encoding="utf-8")
        leaked = [i for i in ids if i and i in html]
        assert not leaked, (page.name, leaked[:3])
    person = (root / "datasets" / "person.html").read_text(encoding="utf-8")
    assert re.search(r"\d{6}\*{8}[\dX]{4}", person), "the person page shows masked failing-row examples"
    conflicts = (root / "conflicts.html").read_text(encoding="utf-8")
    assert re.search(r"\d{6}\*{8}", conflicts) and "*" in conflicts


def test_dimension_without_rules_is_a_dash_and_held_batches_say_what_to_run(city_site: tuple[Settings, Path]) -> None:
    _settings, root = city_site
    for page in [root / "index.html", root / "datasets" / "enterprise.html"]:
        html = page.read_text(encoding="utf-8")
        row = re.search(r'<tr data-dimension="可访问性">(.*?)</tr>', html, re.S)
        assert row, page
        assert "—" in row.group(1) and "%" not in row.group(1), row.group(1)
        assert "平均" in html  # the page says the overall score is the mean of the dimensions present
    enterprise = (root / "datasets" / "enterprise.html").read_text(encoding="utf-8")
    assert "citylake quality run enterprise --retry-held" in enterprise
    assert 'citylake quality release enterprise --reason "…"' in enterprise
    assert "enterprise.uscc.check_digit" in enterprise
    assert "../../lake/gx" not in enterprise or "GX Data Docs" in enterprise
    index = (root / "index.html").read_text(encoding="utf-8")
    held = re.search(r'id="batches-held">(\d+)<', index)
    assert held and int(held.group(1)) >= 1
    # published / partly quarantined / held / released are told apart
    for label in ("已发布批次（无隔离）", "发布但部分隔离的批次", "暂扣待处理批次", "人工放行批次", "被拒文件"):
        assert label in index
    worst = re.search(r'<table id="worst-datasets">(.*?)</table>', index, re.S)
    assert worst and "enterprise" in worst.group(1) and "--retry-held" in worst.group(1)


def test_a_department_without_data_says_so(city_site: tuple[Settings, Path]) -> None:
    from pipelines.config import load_config, load_departments
    from pipelines.report.pages import page_name

    settings, root = city_site
    _standards, systems, contracts = load_config(settings)
    busy = {c.owner for c in contracts.values()} | {s.department for s in systems.values()}
    idle = [code for code in load_departments(settings) if code not in busy]
    assert idle, "schemas/departments.yml lists a department with no system (市数据资源局)"
    for code in idle:
        html = (root / "departments" / f"{page_name(code)}.html").read_text(encoding="utf-8")
        assert "empty-state" in html and "暂无数据" in html


@pytest.fixture
def empty_lake(tmp_path: Path) -> Iterator[Settings]:
    with scoped_env(_env(tmp_path)):
        from pipelines.settings import load_settings

        yield load_settings()


def test_empty_lake_renders_empty_states(empty_lake: Settings, tmp_path: Path) -> None:
    from pipelines.report import build_site

    index = build_site(empty_lake, out_dir=tmp_path / "site", today=TODAY)
    html = index.read_text(encoding="utf-8")
    assert 'class="empty-state" id="overall-score"' in html and "暂无质量检查结果" in html
    person = (index.parent / "datasets" / "person.html").read_text(encoding="utf-8")
    assert "empty-state" in person and "—" in person
    assert "empty-state" in (index.parent / "conflicts.html").read_text(encoding="utf-8")
    assert (index.parent / "catalog.json").is_file()
    # rebuilt in place: the folder is a citylake report, swapped whole
    again = build_site(empty_lake, out_dir=tmp_path / "site", today=TODAY)
    assert again == index and not list(tmp_path.glob(".site.*"))


def test_a_folder_that_is_not_a_report_is_not_replaced(empty_lake: Settings, tmp_path: Path) -> None:
    from pipelines.errors import CitylakeError
    from pipelines.report import build_site

    mine = tmp_path / "documents"
    mine.mkdir()
    (mine / "thesis.docx").write_text("x", encoding="utf-8")
    with pytest.raises(CitylakeError, match="not a citylake report"):
        build_site(empty_lake, out_dir=mine, today=TODAY)
    assert (mine / "thesis.docx").exists() and not list(tmp_path.glob(".documents.*"))


def test_a_copy_with_nothing_compared_is_a_warning_not_zero_percent(empty_lake: Settings, tmp_path: Path) -> None:
    from pipelines.lake.catalog import get_catalog
    from pipelines.lake.meta import replace_run
    from pipelines.report import build_site

    row = {"run_id": "c1", "department": "x", "tag": "source_conflict", "dimension": "一致性", "severity": "warning",
           "error": None}
    replace_run(get_catalog(empty_lake), "meta.quality_results", "c1", [
        {**row, "dataset": "housing_fund.account", "rule": "person_name.consistency.housing_fund", "element": "person_name",
         "column": "person_name", "evaluated": 0, "failed": 0, "passed": True},
        {**row, "dataset": "social_insurance.insured", "rule": "person_name.consistency.social_insurance",
         "element": "person_name", "column": "person_name", "evaluated": 200, "failed": 0, "passed": True}],
        tag="source_conflict")
    index = build_site(empty_lake, out_dir=tmp_path / "site", today=datetime.now(UTC).astimezone(TZ).date())
    html = (index.parent / "conflicts.html").read_text(encoding="utf-8")
    rows = re.findall(r"<tr data-element=.*?</tr>", html, re.S)
    zero = next(r for r in rows if "housing_fund.account" in r)
    assert "警告" in zero and "0 条可比" in zero and "0.00%" not in zero
    other = next(r for r in rows if "social_insurance.insured" in r)
    assert "0.00%" in other and "警告" not in other


def test_rule_errors_and_batch_reasons_hide_quoted_names(empty_lake: Settings, tmp_path: Path) -> None:
    """A rule's error text and a release reason quote a cell: identifiers AND quoted names are masked
    (mask_message), not only identifiers (mask_text)."""
    from pipelines.lake.catalog import get_catalog
    from pipelines.lake.meta import append_events, replace_run
    from pipelines.report import build_site

    catalog = get_catalog(empty_lake)
    replace_run(catalog, "meta.quality_results", "r1", [
        {"run_id": "r1", "dataset": "person", "department": None, "rule": "person.person_name.not_null", "tag": None,
         "dimension": "完整性", "element": "person_name", "column": "person_name", "evaluated": 10, "failed": 1,
         "severity": "warning", "passed": False, "error": "ValueError: cannot parse '张三丰' (13812345678)"}])
    append_events(catalog, [{"dataset": "person", "raw_batch_id": "b1", "run_id": "r1", "status": "released",
                             "extracted": 10, "published": 10, "quarantined": 0, "held": 0, "std_snapshot_id": None,
                             "detail": None, "reason": "已核实 “王小明” 的户籍记录"}])
    index = build_site(empty_lake, out_dir=tmp_path / "site", today=datetime.now(UTC).astimezone(TZ).date())
    person = (index.parent / "datasets" / "person.html").read_text(encoding="utf-8")
    assert "执行出错" in person and "已核实" in person  # both texts are on the page
    for clear in ("张三丰", "王小明", "13812345678"):
        assert clear not in person, clear
    assert "张**" in person and "王**" in person and "138****5678" in person


def test_cli_prints_the_site_path(empty_lake: Settings, tmp_path: Path) -> None:
    out = tmp_path / "cli-site"
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "report", "--out", str(out), "--date", "2026-11-21"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(str(out / "index.html")) and (out / "index.html").is_file()
    bad = subprocess.run([sys.executable, "-m", "pipelines.cli", "report", "--date", "21.11.2026"],
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "--date" in bad.stderr and "Traceback" not in bad.stderr


def test_an_s3_lake_gets_the_site_beside_it(tmp_path: Path, moto_endpoint: str, aws_env: None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    from pipelines.report import build_site
    from pipelines.settings import load_settings

    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    bucket = "report-lake"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="warehouse/report/datasets/gone.html", Body=b"stale")
    for k, v in {**_env(tmp_path), "CITYLAKE_WAREHOUSE": f"s3://{bucket}/warehouse",
                 "CITYLAKE_S3_ENDPOINT": moto_endpoint}.items():
        monkeypatch.setenv(k, v)
    docs = tmp_path / "lake" / "gx" / "uncommitted" / "data_docs" / "local_site"
    (docs / "expectations").mkdir(parents=True)
    (docs / "index.html").write_text("<html>GX</html>", encoding="utf-8")
    (docs / "expectations" / "person.html").write_text("<html>person suite</html>", encoding="utf-8")
    index = build_site(load_settings(), today=TODAY)
    assert index == tmp_path / "lake" / "report" / "index.html"
    # GX Data Docs go beside it, where the pages' relative links lead
    link = re.search(r'href="([^"]*expectations/person\.html)"', (index.parent / "datasets" / "person.html").read_text(encoding="utf-8"))
    assert link, "the person page links to its GX suite page"
    target = posixpath.normpath(posixpath.join("warehouse/report/datasets", link.group(1)))
    assert s3.get_object(Bucket=bucket, Key=target)["Body"].read() == b"<html>person suite</html>"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="warehouse/report/")["Contents"]}
    local = {"warehouse/report/" + p.relative_to(index.parent).as_posix() for p in index.parent.rglob("*") if p.is_file()}
    assert keys == local and "warehouse/report/datasets/gone.html" not in keys  # a page no longer built is removed
    head = s3.head_object(Bucket=bucket, Key="warehouse/report/index.html")
    assert head["ContentType"] == "text/html; charset=utf-8"


def test_a_dataset_has_one_score_in_its_page_and_in_the_catalog(city_site: tuple[Settings, Path]) -> None:
    _settings, root = city_site
    catalog = json.loads((root / "catalog.json").read_text(encoding="utf-8"))
    entries = catalog if isinstance(catalog, list) else catalog.get("entries", catalog.get("resources", []))
    compared = 0
    for e in entries:
        if e["layer"] != "std" or not e.get("dataset"):
            continue
        page = (root / "datasets" / f"{e['dataset']}.html").read_text(encoding="utf-8")
        shown = re.search(r'id="overall-score" data-score="([^"]*)"', page).group(1)
        if e["quality_score"] is None:
            assert shown == "", e["dataset"]
        else:
            assert float(shown) == pytest.approx(e["quality_score"]), e["dataset"]
            compared += 1
    assert compared >= 5  # insured's 一致性 (recorded under social_insurance.insured) counts in both
