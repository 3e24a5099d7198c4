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
from datetime import UTC, date, datetime, timedelta
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


def test_every_page_exists_in_chinese_with_the_cjk_font_stack(city_site: tuple[Settings, Path]) -> None:
    from pipelines.config import load_config, load_departments
    from pipelines.report.pages import page_name

    settings, root = city_site
    _standards, _systems, contracts = load_config(settings)
    expected = {"index.html", "conflicts.html", "catalog.html", "open.html", "share.html", "catalog.json", "catalog.csv",
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
        # the page's own Chinese, not the header and footer every page shares (base.html has 100+ Han)
        main = re.search(r"<main>(.*)</main>", html, re.S)
        assert main and len(HAN.findall(re.sub(r"<[^>]+>", "", main.group(1)))) > 10, page
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
    # names, mobiles and addresses too (std and quarantine, and the raw values before standardization)
    personal: set[str] = set()
    for table, columns in (("std.person", ("person_name", "mobile_phone", "residence_address")),
                           ("quarantine.person", ("person_name", "mobile_phone", "residence_address")),
                           ("raw.population__person", ("name", "phone", "address"))):
        data = catalog.load_table(table).scan(selected_fields=columns).to_arrow()
        for column in columns:
            for value in data.column(column).to_pylist():
                if not value or len(value) < 2:
                    continue
                personal.add(value)
                street = re.split(r"[区县]", value, maxsplit=1)
                if column in ("residence_address", "address") and len(street) == 2 and len(street[1]) >= 4:
                    personal.add(street[1])  # the part a masked address hides (安徽省合肥市蜀山区***)
    assert len(personal) > 100
    files = [*_pages(root), root / "catalog.json", root / "catalog.csv"]
    for page in files:
        text = page.read_text(encoding="utf-8-sig")
        leaked = [i for i in ids if i and i in text] + [v for v in personal if v in text]
        assert not leaked, (page.relative_to(root).as_posix(), sorted(leaked)[:5])
    person = (root / "datasets" / "person.html").read_text(encoding="utf-8")
    assert re.search(r"\d{6}\*{8}[\dX]{4}", person), "the person page shows masked failing-row examples"
    # a department's contact is its published work contact, and the page says so
    department = next(p for p in (root / "departments").glob("*.html") if 'id="governance-contact"' in p.read_text(encoding="utf-8"))
    assert "数据治理联络人（部门公务联系方式" in department.read_text(encoding="utf-8")
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
    # GX Data Docs were built (as report__quality does): the page links its suite page, and the file is there
    gx = re.search(r'<a href="([^"]+)">GX Data Docs（工程师）</a>', enterprise)
    assert gx and gx.group(1).endswith("expectations/enterprise.html"), "enterprise page links its GX suite page"
    assert ((root / "datasets") / gx.group(1)).resolve().is_file(), gx.group(1)
    assert "GX Data Docs 尚未生成" not in enterprise
    index = (root / "index.html").read_text(encoding="utf-8")
    held = re.search(r'id="batches-held">(\d+)<', index)
    assert held and int(held.group(1)) >= 1
    # published / partly quarantined / held / released are told apart
    for label in ("已发布批次（无隔离）", "发布但部分隔离的批次", "暂扣待处理批次（不限时间）", "人工放行批次", "被拒文件"):
        assert label in index
    # held counts every pending batch whatever its age, and the subtitle does not put it in the 7 days
    assert "暂扣待处理批次不限时间" in index and "报告日为当天时截至生成时" in index
    worst = re.search(r'<table id="worst-datasets">(.*?)</table>', index, re.S)
    assert worst and "enterprise" in worst.group(1)
    # the held batch's action speaks as the alert does: the rule by its description, the batch by its time,
    # the department fixes its data and governance staff re-check or release (commands on the dataset page)
    action = re.search(r'<a href="datasets/enterprise.html">.*?<td class="action">(.*?)</td>', worst.group(1), re.S)
    assert action and "--retry-held" not in action.group(1) and "__" not in action.group(1), action
    assert re.search(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} 的批次未通过「[^」]*[^\x00-\x7f][^」]*」", action.group(1)), action.group(1)
    assert "修正源数据" in action.group(1) and "治理人员重新校验" in action.group(1) and "放行" in action.group(1)


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
    assert "GX Data Docs 尚未生成" in person and "expectations/person.html" not in person  # no Data Docs: no link
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
    # each copy says when it was compared (the page is refreshed by the report DAG, an old one shows its age)
    assert "<th>比对时间</th>" in html and "时间见数据集页面" not in html
    at = re.search(r'<td class="compared-at">(.*?)</td>', other, re.S)
    assert at and re.search(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", at.group(1)), other


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
    # GX Data Docs as the Data Docs build (maybe on another worker) put them under the artifacts root, which
    # defaults to the S3 warehouse: the site links them there, not to this machine's lake folder
    s3.put_object(Bucket=bucket, Key="warehouse/gx/data_docs/index.html", Body=b"<html>GX</html>")
    s3.put_object(Bucket=bucket, Key="warehouse/gx/data_docs/expectations/person.html", Body=b"<html>person suite</html>")
    index = build_site(load_settings())  # the default build (today's report, default folder) publishes
    assert index == tmp_path / "lake" / "report" / "index.html"
    published = s3.get_object(Bucket=bucket, Key="warehouse/report/datasets/person.html")["Body"].read().decode()
    link = re.search(r'href="([^"]*expectations/person\.html)"', published)
    assert link, "the published person page links to its GX suite page"
    # the local copy links only this machine's Data Docs, and it has none
    assert "expectations/person.html" not in (index.parent / "datasets" / "person.html").read_text(encoding="utf-8")
    target = posixpath.normpath(posixpath.join("warehouse/report/datasets", link.group(1)))
    assert s3.get_object(Bucket=bucket, Key=target)["Body"].read() == b"<html>person suite</html>"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="warehouse/report/")["Contents"]}
    local = {"warehouse/report/" + p.relative_to(index.parent).as_posix() for p in index.parent.rglob("*") if p.is_file()}
    assert keys == local and "warehouse/report/datasets/gone.html" not in keys  # a page no longer built is removed
    head = s3.head_object(Bucket=bucket, Key="warehouse/report/index.html")
    assert head["ContentType"] == "text/html; charset=utf-8"

    # a preview (--out, a past --date) is built locally only: the production site on S3 is untouched
    s3.put_object(Bucket=bucket, Key="warehouse/report/keep.txt", Body=b"production")
    build_site(load_settings(), out_dir=tmp_path / "preview", today=TODAY)
    build_site(load_settings(), today=TODAY)
    assert s3.get_object(Bucket=bucket, Key="warehouse/report/keep.txt")["Body"].read() == b"production"
    assert s3.head_object(Bucket=bucket, Key="warehouse/report/index.html")["ETag"] == head["ETag"]
    # ... unless asked for (citylake report --publish): then it replaces the site, stale objects removed
    build_site(load_settings(), out_dir=tmp_path / "preview", today=TODAY, publish=True)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="warehouse/report/")["Contents"]}
    assert "warehouse/report/keep.txt" not in keys


def test_a_local_past_day_preview_does_not_replace_the_site(empty_lake: Settings) -> None:
    """<lake>/report is the site the DAG serves and the alerts link to: a past --date without --out is a
    preview in <lake>/report-<day>; the DAG (publish=True) rebuilds an earlier logical date in place."""
    from pipelines.report import build_site

    site = build_site(empty_lake)
    assert site == empty_lake.lake_dir / "report" / "index.html"
    before = site.read_text(encoding="utf-8")
    preview = build_site(empty_lake, today=TODAY)
    assert preview == empty_lake.lake_dir / f"report-{TODAY.isoformat()}" / "index.html" and preview.is_file()
    assert site.read_text(encoding="utf-8") == before
    assert build_site(empty_lake, today=TODAY, publish=True) == site
    assert re.search(r"报告日 2026-11-21\b", site.read_text(encoding="utf-8")), "the site is the 11-21 report now"


def test_s3_etag_of_single_and_multipart_uploads(tmp_path: Path) -> None:
    from pipelines.publish.store import s3_etag

    small = tmp_path / "small.html"
    small.write_bytes(b"abc")
    assert s3_etag(small) == hashlib.md5(b"abc").hexdigest()
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 10 + b"y" * 5)
    parts = [hashlib.md5(b"x" * 10).digest(), hashlib.md5(b"y" * 5).digest()]
    assert s3_etag(big, chunk=10) == f"{hashlib.md5(b''.join(parts)).hexdigest()}-2"


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


def _card(html: str, ident: str) -> int:
    found = re.search(rf'id="{ident}">([\d,]+)<', html)
    assert found, ident
    return int(found.group(1).replace(",", ""))


def test_overview_batch_counts_are_the_batches_of_the_window(city_site: tuple[Settings, Path]) -> None:
    """Numbers, not labels: the seed batch of every dataset published (partly quarantined where its
    quarantine holds rows), the corrupted enterprise batch held, none released."""
    from pipelines.config import load_config
    from pipelines.lake.catalog import get_catalog
    from pipelines.lake.raw import open_table, total_records

    settings, root = city_site
    _standards, _systems, contracts = load_config(settings)
    catalog = get_catalog(settings)
    partial = 0
    for name in contracts:
        q = open_table(catalog, f"quarantine.{name}")
        partial += bool(q is not None and total_records(q.current_snapshot()))
    index = (root / "index.html").read_text(encoding="utf-8")
    assert partial >= 1
    assert _card(index, "batches-partial") == partial
    assert _card(index, "batches-published") == len(contracts) - partial
    assert _card(index, "batches-held") == 1
    assert _card(index, "batches-released") == 0
    # every raw row landed this week, once (a row count, not a sum over snapshots)
    landed = sum(total_records(catalog.load_table(".".join(t)).current_snapshot()) or 0
                 for t in catalog.list_tables("raw"))
    assert _card(index, "rows-landed") == landed > 0


def test_a_past_report_day_counts_nothing_after_it(city_site: tuple[Settings, Path], tmp_path: Path) -> None:
    """Everything happened at the fixture's build time: a report day before it shows no batch, no row
    landed, no publish (never a negative age), and labels the state-of-now figures as such."""
    from pipelines.report import build_site

    settings, _root = city_site
    index = build_site(settings, out_dir=tmp_path / "past", today=REF - timedelta(days=3))
    html = index.read_text(encoding="utf-8")
    for ident in ("rows-landed", "batches-published", "batches-partial", "batches-held", "batches-released",
                  "files-rejected"):
        assert _card(html, ident) == 0, ident
    person = (index.parent / "datasets" / "person.html").read_text(encoding="utf-8")
    assert re.search(r'id="freshness">尚未发布<', person)
    assert "尚无一数一源比对结果" in (index.parent / "conflicts.html").read_text(encoding="utf-8")  # compared later
    assert "截至生成时" in person and "-" not in re.search(r'id="freshness">[^<]*<', person).group(0)


def test_rows_landed_and_rejected_files_count_in_their_window(empty_lake: Settings, tmp_path: Path) -> None:
    """A rerun batch lands its rows once; a rejected file counts in the week it was rejected and stays
    pending until re-sent; a report day before both counts neither (the pending list is as of the build)."""
    from pipelines.ingest import ingest_table
    from pipelines.registry import load_registry
    from pipelines.report import build_site

    drops = empty_lake.data_dir / "drops" / "bus_ridership"
    drops.mkdir(parents=True)
    rows = [{"line_id": "1路", "stop_id": f"1路-0{i}", "date": "2026-11-20", "hour": 8, "boardings": i} for i in range(1, 4)]
    (drops / "ridership_20261120.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                                                     encoding="utf-8")
    systems, _ = load_registry(empty_lake.registry_dir)
    bus = systems["bus_ridership"]
    for _ in range(2):  # the same batch run twice: it replaces its own rows
        assert ingest_table(bus, "ridership", settings=empty_lake, batch_id="b1").rows_written == 3
    # empty: rejected; people name drop files after the person, so the name carries personal values
    (drops / "ridership_20261121_张伟_合肥市蜀山区长江西路100号_340104199001011234.jsonl").write_bytes(b"")
    assert ingest_table(bus, "ridership", settings=empty_lake, batch_id="b2").files_rejected

    index = build_site(empty_lake, out_dir=tmp_path / "now")
    html = index.read_text(encoding="utf-8")
    for page in index.parent.rglob("*.html"):  # the rejected-files table shows the name masked, never in clear
        text = page.read_text(encoding="utf-8")
        assert not any(v in text for v in ("张伟", "长江西路", "199001011234")), page
    assert "张*_合肥市蜀山区***_340104********1234.jsonl" in html
    assert _card(html, "rows-landed") == 3
    assert _card(html, "files-rejected") == 1
    assert _card(html, "files-rejected-pending") == 1
    dept = (index.parent / "departments" / f"{bus.department}.html")
    assert _card(dept.read_text(encoding="utf-8"), "files-rejected") == 1

    past = build_site(empty_lake, out_dir=tmp_path / "past", today=date(2026, 11, 1)).read_text(encoding="utf-8")
    assert _card(past, "rows-landed") == 0 and _card(past, "files-rejected") == 0
    assert _card(past, "files-rejected-pending") == 1 and "截至生成时" in past

    # a fixed copy re-delivered under the same name loads: no longer pending, still rejected this week
    fixed = [{"line_id": "1路", "stop_id": "1路-01", "date": "2026-11-21", "hour": 8, "boardings": 5}]
    (drops / "ridership_20261121_张伟_合肥市蜀山区长江西路100号_340104199001011234.jsonl").write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in fixed), encoding="utf-8")
    assert ingest_table(bus, "ridership", settings=empty_lake, batch_id="b3").rows_written == 1
    later = build_site(empty_lake, out_dir=tmp_path / "later").read_text(encoding="utf-8")
    assert _card(later, "files-rejected") == 1 and _card(later, "files-rejected-pending") == 0


@pytest.mark.parametrize(("cycle", "age", "state"), [
    ("实时", timedelta(minutes=50), "fresh"), ("实时", timedelta(hours=3), "stale"),
    ("每小时", timedelta(minutes=90), "fresh"), ("每小时", timedelta(hours=5), "stale"),
    ("每日", timedelta(hours=30), "fresh"), ("每日", timedelta(hours=50), "stale"),
    ("每周", timedelta(days=7), "fresh"), ("每周", timedelta(days=9), "stale"),
    ("每月", timedelta(days=31), "fresh"), ("每月", timedelta(days=40), "stale"),
    ("每季度", timedelta(days=92), "fresh"), ("每季度", timedelta(days=94), "stale"),
    ("每半年", timedelta(days=183), "fresh"), ("每年", timedelta(days=400), "stale"),
])
def test_freshness_is_judged_in_hours_per_update_cycle(cycle: str, age: timedelta, state: str) -> None:
    from pipelines.report.data import freshness

    until = datetime(2026, 11, 21, 12, tzinfo=TZ)
    got = freshness(until - age, cycle, until)
    assert got["state"] == state, got
    if state == "stale":
        assert got["label"].startswith("已逾期 ")


def test_freshness_never_negative_and_cycles_match_the_contract() -> None:
    import typing

    from pipelines.contracts import UPDATE_CYCLE_LAG, UpdateCycle
    from pipelines.report.data import freshness

    assert set(typing.get_args(UpdateCycle)) == set(UPDATE_CYCLE_LAG)  # one table beside the Literal
    until = datetime(2026, 11, 21, 12, tzinfo=TZ)
    later = freshness(until + timedelta(hours=5), "每日", until)
    assert later["state"] == "fresh" and later["age"] == "0 小时"
    assert freshness(None, "每日", until)["state"] == "none"


def test_scores_count_each_check_once_and_the_trend_ends_at_the_headline(empty_lake: Settings, tmp_path: Path) -> None:
    """Synthetic meta history: a held batch released the same day, consistency run twice, an older weekly
    result, a row without recorded_at, a retired dataset whose old row names its department."""
    import html as htmllib

    import pyarrow as pa

    from pipelines.lake.catalog import get_catalog
    from pipelines.lake.meta import BATCHES, QUALITY_RESULTS
    from pipelines.lake.tables import append
    from pipelines.report import build_site

    def at(day: int, hour: int) -> datetime:
        return datetime(2026, 11, day, hour, tzinfo=UTC)

    base = {"tag": "", "element": "", "column": "", "severity": "critical", "error": None, "department": None}
    check = {"dataset": "enterprise", "rule": "enterprise.uscc.check_digit", "dimension": "准确性", "evaluated": 120, "failed": 120}
    conflict = {"dataset": "social_insurance.insured", "rule": "person_name.consistency.social_insurance",
                "tag": "source_conflict", "dimension": "一致性", "severity": "warning", "evaluated": 200}
    rows = [
        {**check, "run_id": "hold", "recorded_at": at(21, 1)},
        {**check, "run_id": "release", "recorded_at": at(21, 3)},
        {**conflict, "run_id": "c1", "failed": 20, "recorded_at": at(21, 2)},
        {**conflict, "run_id": "c2", "failed": 4, "recorded_at": at(21, 4)},
        {"dataset": "person", "run_id": "p1", "rule": "person.name.not_null", "dimension": "完整性", "evaluated": 100,
         "failed": 10, "recorded_at": at(15, 2)},
        {"dataset": "person", "run_id": "p1", "rule": "person.mobile.warn", "dimension": "完整性", "severity": "warning",
         "evaluated": 10, "failed": 1, "recorded_at": at(15, 2)},  # same 90 %: the scores below stand
        {**check, "run_id": "release", "rule": "enterprise.note.info", "severity": "info", "evaluated": 10, "failed": 10,
         "recorded_at": at(21, 3)},  # 准确性 stays 0 %
        {"dataset": "person", "run_id": "old", "rule": "person.name.not_null", "dimension": "完整性", "evaluated": 100,
         "failed": 100, "recorded_at": None},
        {"dataset": "old_licences", "run_id": "o1", "department": "合肥市市场监督管理局", "rule": "x", "dimension": "规范性",
         "evaluated": 10, "failed": 10, "recorded_at": at(20, 2)}]
    catalog = get_catalog(empty_lake)
    append(catalog, "meta.quality_results", pa.Table.from_pylist(
        [{**base, **r, "passed": r["failed"] == 0} for r in rows], schema=QUALITY_RESULTS))
    event = {"dataset": "enterprise", "raw_batch_id": "bad", "extracted": 120, "std_snapshot_id": None, "detail": "[]"}
    append(catalog, "meta.batches", pa.Table.from_pylist([
        {**event, "run_id": "hold", "status": "held", "published": 0, "quarantined": 0, "held": 120, "reason": None,
         "recorded_at": at(21, 1)},
        {**event, "run_id": "release", "status": "released", "published": 0, "quarantined": 120, "held": 0,
         "reason": "核实", "recorded_at": at(21, 3)},
        {**event, "dataset": "person", "raw_batch_id": "p-b", "run_id": "p1", "status": "held", "published": 0,
         "quarantined": 0, "held": 100, "reason": None, "recorded_at": at(15, 2)}], schema=BATCHES))

    root = build_site(empty_lake, out_dir=tmp_path / "site", today=TODAY).parent

    def rule_row(page: str, rule: str) -> str:
        text = (root / "datasets" / page).read_text(encoding="utf-8")
        found = re.search(rf"<tr><td><code>{re.escape(rule)}</code>.*?</tr>", text, re.S)
        assert found, (page, rule)
        return found.group(0)

    held_then_released = rule_row("enterprise.html", "enterprise.uscc.check_digit")
    assert re.findall(r'<td class="num">([\d,]+)</td>', held_then_released)[:2] == ["120", "120"]  # not 240 / 240
    twice = rule_row("insured.html", "person_name.consistency.social_insurance")
    assert re.findall(r'<td class="num">([\d,]+)</td>', twice)[:2] == ["200", "4"]  # the later run of the day
    # the person result comes from a batch still held: no quarantine rows, the page says why
    assert "暂扣的行不进入隔离区" in rule_row("person.html", "person.name.not_null")
    # a non-blocking rule of a still-held batch: its rows are held too, not published
    warned = rule_row("person.html", "person.mobile.warn")
    assert "暂扣的行不进入隔离区" in warned and "已发布" not in warned
    info = rule_row("enterprise.html", "enterprise.note.info")
    assert "提示性规则" in info and "标准层 _warnings 列" not in info

    index = (root / "index.html").read_text(encoding="utf-8")
    uncontracted = re.search(r'<p class="note" id="uncontracted">(.*?)</p>', index, re.S)
    assert uncontracted and "old_licences" in uncontracted.group(1)
    assert not list((root / "departments").glob("x-*.html"))  # the old name is 113401000030022204, no second page
    headline = float(re.search(r'id="overall-score" data-score="([^"]+)"', index).group(1))
    # enterprise 0 %, insured 98 %, person 90 % (its week-old result still stands); old_licences left out
    assert headline == pytest.approx((0.0 + 0.98 + 0.9) / 3)
    chart = json.loads(htmllib.unescape(re.search(r'<canvas class="chart"[^>]*data-chart="([^"]*)"', index).group(1)))
    assert len(chart["labels"]) == 30 and chart["labels"][-1] == f"{TODAY:%m-%d}"
    # the chart's point is rounded down as the headline's text is, never a step above it
    from pipelines.formats import percent

    assert f'{chart["series"]["总体"][-1]:.2f}%' == percent(headline)
    assert chart["series"]["总体"][-7] == pytest.approx(90.0)  # the 15th: person only
    assert chart["series"]["总体"][-8] is None  # before any result
    worst = re.search(r'<table id="worst-datasets">(.*?)</table>', index, re.S).group(1)
    assert "person" in worst and "已暂停发布" in worst and "--retry-held" not in worst  # held first
    assert "尚未发布" in worst  # datasets never published nor checked are listed too, with what to do


def test_catalog_page_shows_registration_status_and_every_override(city_site: tuple[Settings, Path]) -> None:
    from pipelines.config import load_config

    settings, root = city_site
    html = (root / "catalog.html").read_text(encoding="utf-8")
    rows = {m.group(1): m.group(0) for m in re.finditer(r'<tr data-layer="[^"]*".*?<code>([^<]+)</code>.*?</tr>', html, re.S)}
    assert 'data-registration="已登记"' in rows["std.enterprise"] and "GJDJ-2026-000123" in rows["std.enterprise"]
    assert 'data-registration="未登记"' in rows["std.person"] and "未登记" in rows["std.person"]
    assert 'data-registration="—"' in rows["raw.population__person"]  # registration belongs to the dataset
    for key, label in (("registration", "公共数据登记"), ("department", "提供方")):
        assert f'id="filter-{key}"' in html and f"{label} <select" in html, key
    # 编目状态: a filter whenever it narrows (the seeded city has no 未编目 table; the catalog test's lake has)
    assert ('id="filter-status"' in html) == (len(set(re.findall(r'data-status="([^"]+)"', html))) > 1)
    from pipelines.report.site import _facets

    facets = _facets([{"layer": "raw", "status": "未编目", "registration_status": "—"},
                      {"layer": "std", "status": "已编目", "registration_status": "未登记"}])
    assert facets["status"] == ["已编目", "未编目"] and facets["registration"] == ["未登记"]  # 未登记 alone narrows
    registration = re.search(r'id="filter-registration">(.*?)</select>', html, re.S)
    assert registration and "已登记" in registration.group(1) and "—" not in registration.group(1)
    # every approved override of every contract, in one table
    contracts = load_config(settings)[2]
    expected = {(f"std.{c.dataset}", o["attribute"]) for c in contracts.values() for o in c.overrides}
    assert expected, "the project's contracts carry approved overrides (enterprise's grade)"
    table = re.search(r'<table id="overrides-table">(.*?)</table>', html, re.S)
    assert table
    shown = set(re.findall(r"<code>(std\.[^<]+)</code></td>\s*<td>[^<]*<code>([^<]+)</code>", table.group(1)))
    assert shown == expected
    # 提供方 is the contract's provider (合肥市公安局 for person), not the source system's department
    assert 'data-department="合肥市公安局"' in rows["std.person"]


def test_open_page_shows_each_release_status_and_a_blocked_datasets_masked_hits(empty_lake: Settings, tmp_path: Path) -> None:
    """meta.releases rows as the release writes them (one older release, then one of every status), the
    pointer file, a request: open.html shows each curated dataset's latest event, the blocked dataset's hits
    masked even when the writer left a value in clear, the overview an alert and the block first among the
    five to act on; a report for the earlier day shows that day's release only."""
    import pyarrow as pa

    from pipelines.catalog.requests import add_request
    from pipelines.lake.catalog import get_catalog
    from pipelines.lake.meta import RELEASES
    from pipelines.lake.tables import append
    from pipelines.report import build_site

    resident_id, mobile = "340104199003071234", "13912345678"
    hits = [{"file": "golden_legal_person.csv", "column": "enterprise_name", "row": 7, "kind": "resident_id",
             "value": resident_id},  # in clear: the page masks it whatever the writer did
            {"file": "golden_legal_person.jsonl", "column": "enterprise_name", "row": 7, "kind": "mobile",
             "value": "139****5678"}]

    def event(day: int, dataset: str, status: str, **extra: object) -> dict[str, object]:
        return {"release_date": f"2026-11-{day}", "dataset": dataset, "status": status, "folder": None, "rows": None,
                "build_id": None, "reason": None, "leak_hits": None, "run_id": f"open-{day}",
                "recorded_at": datetime(2026, 11, day, 6, 30, tzinfo=TZ), **extra}

    rows = [event(20, "air_quality_daily", "released", folder="open/2026-11-20/air_quality_daily/", rows=300),
            event(21, "air_quality_daily", "unchanged", folder="open/2026-11-20/air_quality_daily/", rows=300),
            event(21, "enterprise_registrations_monthly", "released", rows=40,
                  folder="open/2026-11-21/enterprise_registrations_monthly/"),
            event(21, "golden_legal_person", "blocked", rows=50, reason="泄露检查命中 2 处", leak_hits=json.dumps(hits)),
            event(21, "bus_ridership_daily", "failed", reason="上传校验失败：'张伟' 13912345678"),
            event(21, "golden_resident", "not_open", reason="不予开放"),
            event(21, "poi_wgs84", "not_passed", reason="最近一次构建被暂扣")]
    catalog = get_catalog(empty_lake)
    append(catalog, "meta.releases", pa.Table.from_pylist(rows, schema=RELEASES))
    pointer = Path(empty_lake.exports) / "open" / "latest.json"
    pointer.parent.mkdir(parents=True)
    pointer.write_text(json.dumps({"updated_at": "2026-11-21T06:31:00+08:00", "datasets": {
        "air_quality_daily": {"release_date": "2026-11-20", "path": "open/2026-11-20/air_quality_daily/", "manifest": "a"},
        "enterprise_registrations_monthly": {"release_date": "2026-11-21", "manifest": "b",
                                             "path": "open/2026-11-21/enterprise_registrations_monthly/"}}}),
                       encoding="utf-8")
    add_request(empty_lake, title="空气质量日数据", requester="张伟", purpose="研究", contact=mobile,
                dataset="air_quality_daily", received_at="2026-11-19")

    root = build_site(empty_lake, out_dir=tmp_path / "site").parent  # today: the request was recorded now
    html = (root / "open.html").read_text(encoding="utf-8")
    status = dict(re.findall(r'<tr data-dataset="([^"]+)" data-status="([^"]+)">', html))
    assert status == {"air_quality_daily": "unchanged", "enterprise_registrations_monthly": "released",
                      "golden_legal_person": "blocked", "bus_ridership_daily": "failed", "golden_resident": "not_open",
                      "poi_wgs84": "not_passed", "air_quality_district_daily": "none"}
    row = {d: re.search(rf'<tr data-dataset="{d}".*?</tr>', html, re.S).group(0) for d in status}  # type: ignore[union-attr]
    assert "未变化" in row["air_quality_daily"] and "open/2026-11-20/air_quality_daily/" in row["air_quality_daily"]
    assert "已拦截" in row["golden_legal_person"] and "失败" in row["bus_ridership_daily"]
    assert "未通过质量检查" in row["poi_wgs84"] and "不开放" in row["golden_resident"]
    assert "尚未发布" in row["air_quality_district_daily"]
    assert "open/2026-11-21/enterprise_registrations_monthly/" in row["enterprise_registrations_monthly"]
    assert _card(html, "open-count-released") == 1 and _card(html, "open-count-blocked") == 1
    table = re.search(r'<table class="leak-hits" data-dataset="golden_legal_person">(.*?)</table>', html, re.S)
    assert table, "the blocked dataset's hits are listed"
    hit_rows = re.findall(r"<tr><td><code>([^<]+)</code></td><td><code>([^<]+)</code></td><td class=\"num\">(\d+)</td>"
                          r"<td>([^<]+)</td><td><code>([^<]+)</code></td></tr>", table.group(1))
    assert hit_rows == [("golden_legal_person.csv", "enterprise_name", "7", "公民身份号码", "340104********1234"),
                        ("golden_legal_person.jsonl", "enterprise_name", "7", "手机号码", "139****5678")]
    assert "REQ-20261119-" in html and "139****5678" in html
    for page in [*root.rglob("*.html"), root / "catalog.json"]:
        text = page.read_text(encoding="utf-8")
        for personal in (resident_id, mobile, "张伟"):
            assert personal not in text, (page.name, personal)

    index = (root / "index.html").read_text(encoding="utf-8")
    alert = re.search(r'<div class="alert" id="leak-alert">(.*?)</div>', index, re.S)
    assert alert and "法人单位综合信息" in alert.group(1) and 'href="open.html"' in alert.group(1)
    assert "2 处个人信息" in alert.group(1) and "公民身份号码" in alert.group(1)
    worst = re.search(r'<table id="worst-datasets">.*?<tbody>\s*<tr>(.*?)</tr>', index, re.S)
    assert worst and "golden_legal_person" in worst.group(1) and "泄露检查拦截" in worst.group(1)
    assert 'href="open.html"' in re.search(r'<p id="open-summary">(.*?)</p>', index, re.S).group(1)  # type: ignore[union-attr]
    page = (root / "datasets" / "golden_legal_person.html").read_text(encoding="utf-8")
    assert 'id="leak-hits"' in page and "340104********1234" in page and 'id="release-status">已拦截<' in page
    grades = re.search(r'<table id="column-grades">(.*?)</table>', page, re.S)
    assert grades and re.search(r"<code>legal_representative</code>.*?<td>个人信息</td>\s*<td class=\"num\">3</td>"
                                r"<td>不开放（删除）</td>", grades.group(1), re.S)
    resident = (root / "datasets" / "golden_resident.html").read_text(encoding="utf-8")
    assert "不开放（删除）" not in resident and "原样开放" not in resident  # 不予开放: no column is opened

    earlier = build_site(empty_lake, out_dir=tmp_path / "earlier", today=date(2026, 11, 20)).parent
    before = (earlier / "open.html").read_text(encoding="utf-8")
    assert dict(re.findall(r'<tr data-dataset="([^"]+)" data-status="([^"]+)">', before))["air_quality_daily"] == "released"
    assert 'id="leak-alert"' not in before and "REQ-20261119-" not in before  # the request was recorded later


def test_the_seeded_city_has_the_open_page_and_a_page_per_curated_dataset(city_site: tuple[Settings, Path]) -> None:
    """Before any build or release: every curated contract is on open.html (尚未发布, or 不开放 for 不予开放)
    and has its dataset page with the per-column grade table; nothing is blocked."""
    from pipelines.config import load_all

    settings, root = city_site
    curated = load_all(settings).curated
    html = (root / "open.html").read_text(encoding="utf-8")
    status = dict(re.findall(r'<tr data-dataset="([^"]+)" data-status="([^"]+)">', html))
    assert status == {d: "not_open" if c.open.type == "不予开放" else "none" for d, c in curated.items()}
    assert 'id="leak-alert"' not in html and "尚无开放需求" in html
    for name, contract in curated.items():
        page = (root / "datasets" / f"{name}.html").read_text(encoding="utf-8")
        grades = re.search(r'<table id="column-grades">(.*?)</table>', page, re.S)
        assert grades and grades.group(1).count("<tr><td>") == len(contract.columns), name
        assert "citylake curate " + name in page and "主题层行数" in page
    index = (root / "index.html").read_text(encoding="utf-8")
    assert 'href="open.html"' in index and 'id="leak-alert"' not in index
    assert 'data-layer="curated"' in index  # the overview's dataset table lists them, marked 主题层


def test_every_leak_kind_has_its_chinese_label() -> None:
    """The open page names each leak-gate hit by the detector's kind; a kind without a label shows its code."""
    from pipelines.privacy import detect
    from pipelines.report.data import HIT_KINDS

    assert set(HIT_KINDS) == set(detect.LEAK_KINDS)


def test_share_page_lists_deliveries_refusals_department_counts_and_requests(empty_lake: Settings, tmp_path: Path) -> None:
    """meta.sharing_audit rows as the delivery writes them (two deliveries of one grant, refusals, a failure)
    and a sharing request: share.html shows the grant's latest delivery, each refusal with its reason in
    Chinese and its detail masked, per-department counts over the whole audit, the request masked; the
    overview a one-line summary linking the page. A lake from before sharing (no audit table) shows an
    empty state, not an error."""
    from pipelines.catalog.requests import add_request
    from pipelines.config import load_all, load_departments
    from pipelines.lake.catalog import get_catalog
    from pipelines.lake.meta import append_log
    from pipelines.report import build_site

    before = build_site(empty_lake, out_dir=tmp_path / "before").parent
    html = (before / "share.html").read_text(encoding="utf-8")
    assert 'id="share-empty"' in html and "尚无共享审计记录" in html
    assert "尚无共享记录" in (before / "index.html").read_text(encoding="utf-8")
    assert 'href="share.html">数据共享</a>' in (before / "conflicts.html").read_text(encoding="utf-8")  # in the nav

    departments = load_departments(empty_lake)
    market, police = (next(c for c, d in departments.items() if d.name == n) for n in ("合肥市市场监督管理局", "合肥市公安局"))
    person = load_all(empty_lake).contracts["person"]
    resident_id, mobile = "340104199003071234", "13912345678"
    checksum = hashlib.sha256(b"manifest").hexdigest()

    def audit(grant: str, consumer: str, outcome: str, **extra: object) -> dict[str, object]:
        return {"audit_id": f"{grant}-{outcome}-{extra.get('rows')}", "run_id": "share-1", "delivery_date": "2026-11-21",
                "consumer": consumer, "dataset": "person", "grant_id": grant, "grant_file": "schemas/grants/x.yml",
                "outcome": outcome, "reason": None, "detail": None, "mode": None, "columns": None, "rows": None,
                "deleted": None, "std_snapshot_id": None, "batches": None, "method": "file", "target": None,
                "checksum": None, **extra}

    delivered = {"columns": json.dumps({"resident_id": "pseudonym", "person_name": "mask", "gender": "keep"}),
                 "method": "file", "std_snapshot_id": 7}
    catalog = get_catalog(empty_lake)
    append_log(catalog, "meta.sharing_audit", [audit("scjg-person", market, "delivered", mode="full", rows=100, deleted=0,
                                                     target="exports/share/x/person/2026-11-20/", checksum="0" * 64,
                                                     batches=json.dumps(["b1"]), **delivered)])
    append_log(catalog, "meta.sharing_audit", [
        audit("scjg-person", market, "delivered", mode="incremental", rows=5, deleted=2, checksum=checksum,
              target=f"exports/share/{market}/person/2026-11-21/", batches=json.dumps(["b2", "b3"]), **delivered),
        audit("ga-person-old", police, "refused", reason="expired",
              detail=f"授权 ga-person-old（x.yml:3，{police}）已于 2026-01-01 过期：联系人 '张伟' {mobile}，证件 {resident_id}"),
        audit("ga-secret", police, "refused", reason="not_shared", detail="数据集为不予共享"),
        audit("ga-person", police, "failed", reason="missing_key", detail="共享主密钥未配置"),
        audit("ghost", "UNKNOWN-DEPT", "refused", reason="unknown_department", detail="未知部门 UNKNOWN-DEPT")])
    add_request(empty_lake, kind="share", title="人口基础信息共享", requester="李娜", purpose="企业登记核验",
                requester_department=market, dataset="person", contact=mobile, received_at="2026-11-19")

    root = build_site(empty_lake, out_dir=tmp_path / "site").parent
    html = (root / "share.html").read_text(encoding="utf-8")
    assert 'id="share-empty"' not in html
    table = re.search(r'<table id="share-deliveries">(.*?)</table>', html, re.S)
    assert table
    rows = re.findall(r'<tr data-grant="([^"]+)" data-mode="([^"]+)">(.*?)</tr>', table.group(1), re.S)
    assert [(g, m) for g, m, _ in rows] == [("scjg-person", "incremental")]  # the grant's latest delivery only
    row = rows[0][2]
    assert "合肥市市场监督管理局" in row and person.name in row and person.sharing.type in row and "增量" in row
    assert '<td class="num">5</td>' in row and '<td class="num">2</td>' in row and "2026-11-21" in row
    # a registered department's code stays readable in the target (a credit code is shaped like an ID)
    assert f'title="{checksum}">{checksum[:12]}<' in row and f"exports/share/{market}/person/2026-11-21/" in row
    assert "（假名）" in row and "（掩码）" in row

    refusals = re.search(r'<table id="share-refusals">(.*?)</table>', html, re.S)
    assert refusals
    reasons = dict(re.findall(r'<tr data-grant="([^"]+)" data-reason="([^"]+)">', refusals.group(1)))
    assert reasons == {"ga-person-old": "expired", "ga-secret": "not_shared", "ghost": "unknown_department"}
    expired = re.search(r'<tr data-grant="ga-person-old".*?</tr>', refusals.group(1), re.S).group(0)  # type: ignore[union-attr]
    assert "授权已过期" in expired and "合肥市公安局" in expired and "2026-01-01 过期" in expired
    assert "张*" in expired and "139****5678" in expired and "340104********1234" in expired and police in expired
    assert "不予共享" in refusals.group(1) and "未知部门" in refusals.group(1) and "UNKNOWN-DEPT" in refusals.group(1)
    failures = re.search(r'<table id="share-failures">(.*?)</table>', html, re.S)
    assert failures and "ga-person" in failures.group(1) and "共享密钥未配置" in failures.group(1)

    counts = re.search(r'<table id="share-department-counts">(.*?)</table>', html, re.S)
    assert counts
    cells = {c: re.findall(r'<td class="num">([^<]+)</td>', r) for c, r in
             re.findall(r'<tr data-consumer="([^"]*)">(.*?)</tr>', counts.group(1), re.S)}
    # deliveries, rows, deleted keys, refusals, failures
    assert cells[market] == ["2", "105", "2", "0", "0"] and cells[police] == ["0", "0", "0", "2", "1"]
    assert cells[""] == ["0", "0", "0", "1", "0"]  # an unknown consumer is counted, not dropped

    requests = re.search(r'<table id="share-requests">(.*?)</table>', html, re.S)
    assert requests and "REQ-20261119-" in requests.group(1) and "人口基础信息共享" in requests.group(1)
    assert "合肥市市场监督管理局" in requests.group(1) and "139****5678" in requests.group(1)
    assert _card(html, "share-today-delivered") == 2 and _card(html, "share-today-refused") == 3
    for page in root.rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        for personal in (resident_id, mobile, "张伟", "李娜"):
            assert personal not in text, (page.name, personal)

    summary = re.search(r'<p id="share-summary">(.*?)</p>', (root / "index.html").read_text(encoding="utf-8"), re.S)
    assert summary and "报告日交付 2 次，拒绝 3 次，失败 1 次" in summary.group(1) and 'href="share.html"' in summary.group(1)
    assert "待答复的共享申请 1 项" in summary.group(1)


def test_every_sharing_reason_has_its_chinese_label() -> None:
    """share.html names each refusal and failure by its code in Chinese; a code without a label shows raw."""
    from pipelines.report.data import SHARE_REASONS
    from pipelines.share.policy import REFUSAL_CODES

    assert set(SHARE_REASONS) == {*REFUSAL_CODES, "missing_key", "target_failed", "error"}
    assert all(HAN.search(v) for v in SHARE_REASONS.values())
