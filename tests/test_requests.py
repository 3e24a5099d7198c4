"""开放需求受理反馈 (meta.requests): the CLI round trip (latest row wins, history kept), the YAML/CSV inbox (UTF-8
with BOM, Chinese or English headers), a bad file rejected whole with file:line, an idempotent re-import, and
the requester's contact masked in `request ls`, catalog.json and the report's pages."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import scoped_env
from typer.testing import CliRunner

from pipelines.catalog.requests import (
    RequestError,
    add_request,
    answer_request,
    history,
    import_inbox,
    inbox_dir,
    list_requests,
    mask_contact,
    mask_free,
    mask_person,
    read_rows,
)
from pipelines.lake.catalog import get_catalog
from pipelines.settings import PROJECT_ROOT, TZ, Settings, load_settings

MOBILE, EMAIL, LANDLINE = "13912345678", "wangfang@example.cn", "0551-62901234"
PERSON = "张伟"


@pytest.fixture
def lake(tmp_path: Path) -> Iterator[Settings]:
    """An empty lake of its own (requests need no data), the project's schemas and registry."""
    env = {"CITYLAKE_LAKE_DIR": str(tmp_path / "lake"), "CITYLAKE_DATA_DIR": str(tmp_path / "data"),
           "CITYLAKE_REGISTRY_DIR": str(PROJECT_ROOT / "schemas" / "sources"), "CITYLAKE_ROOT": str(PROJECT_ROOT)}
    with scoped_env(env):
        yield load_settings()


def _one_line(result: object) -> str:
    text = result.stderr.strip()  # type: ignore[attr-defined]
    assert result.exit_code != 0 and text.count("\n") == 0, text  # type: ignore[attr-defined]
    return text


def test_cli_add_answer_ls_round_trip(lake: Settings) -> None:
    from pipelines.cli import app

    runner = CliRunner()
    added = runner.invoke(app, ["request", "add", "--title", "空气质量站点日数据", "--requester", PERSON, "--purpose",
                                "出行健康研究", "--contact", MOBILE, "--dataset", "air_quality_daily"])
    assert added.exit_code == 0, added.output
    rid = re.search(r"(REQ-\d{8}-[0-9a-f]{8}): 已受理", added.stdout)
    assert rid, added.stdout
    rid_text = rid.group(1)
    assert rid_text[4:12] == f"{datetime.now(TZ):%Y%m%d}"

    listed = json.loads(runner.invoke(app, ["request", "ls", "--json"]).stdout)
    assert [r["request_id"] for r in listed] == [rid_text]
    assert listed[0]["status"] == "已受理" and listed[0]["contact"] == "139****5678" and listed[0]["requester"] == "张*"
    table = runner.invoke(app, ["request", "ls"]).stdout
    assert rid_text in table and MOBILE not in table and PERSON not in table and "139****5678" in table

    # answers: a status change appends a row, the latest wins, the same answer twice is recorded once
    assert runner.invoke(app, ["request", "answer", rid_text, "--status", "处理中", "--by", "市数据资源局开放科"]).exit_code == 0
    done = ["request", "answer", rid_text, "--status", "已开放", "--by", "市数据资源局开放科", "--answer", "已在开放平台发布，每日更新"]
    assert runner.invoke(app, done).exit_code == 0
    again = runner.invoke(app, done)
    assert again.exit_code == 0 and "未重复记录" in again.stdout
    current = json.loads(runner.invoke(app, ["request", "ls", "--json"]).stdout)[0]
    assert (current["status"], current["answer"], current["answered_by"]) == ("已开放", "已在开放平台发布，每日更新", "市数据资源局开放科")
    assert current["received_at"] == listed[0]["received_at"]  # a status change keeps when it was received
    catalog = get_catalog(lake)
    assert [r.status for r in history(catalog, rid_text)] == ["已受理", "处理中", "已开放"]  # append-only
    assert len(read_rows(catalog)) == 3
    shown = runner.invoke(app, ["request", "show", rid_text, "--json"])
    assert [r["status"] for r in json.loads(shown.stdout)] == ["已受理", "处理中", "已开放"]
    assert json.loads(runner.invoke(app, ["request", "ls", "--status", "已受理", "--json"]).stdout) == []
    assert len(json.loads(runner.invoke(app, ["request", "ls", "--kind", "open", "--json"]).stdout)) == 1

    # bad input: one line each, nothing recorded
    assert "已共享" in _one_line(runner.invoke(app, ["request", "answer", rid_text, "--status", "已共享", "--by", "x",
                                                     "--answer", "y"]))  # an open request is never 已共享
    assert "--answer" in _one_line(runner.invoke(app, ["request", "answer", rid_text, "--status", "不予开放", "--by", "x"]))
    assert "--by" in _one_line(runner.invoke(app, ["request", "answer", rid_text, "--status", "处理中", "--by", " "]))
    assert "REQ-nope" in _one_line(runner.invoke(app, ["request", "answer", "REQ-nope", "--status", "处理中", "--by", "x"]))
    unknown = _one_line(runner.invoke(app, ["request", "add", "--title", "t", "--requester", "r", "--purpose", "p",
                                            "--dataset", "air_quality_dialy"]))
    assert "air_quality_daily" in unknown  # did you mean
    bad_contact = _one_line(runner.invoke(app, ["request", "add", "--title", "t", "--requester", "r", "--purpose", "p",
                                                "--contact", "微信 zhangwei88"]))
    assert "contact" in bad_contact and "zhangwei88" not in bad_contact  # the value is personal: never echoed
    assert "department" in _one_line(runner.invoke(app, ["request", "add", "--kind", "share", "--title", "t",
                                                         "--requester", "r", "--purpose", "p"]))
    assert len(read_rows(catalog)) == 3


def test_answer_rules_and_stable_ids(lake: Settings) -> None:
    r = add_request(lake, title="企业登记统计", requester="合肥工业大学", purpose="产业研究", contact=LANDLINE,
                    received_at="2026/11/20 09:30")
    assert r.received_at == datetime(2026, 11, 20, 1, 30, tzinfo=UTC) and r.request_id.startswith("REQ-20261120-")
    with pytest.raises(RequestError, match="names the dataset"):  # 已开放 says which dataset meets it
        answer_request(lake, r.request_id, status="已开放", by="开放科", answer="已开放")
    with pytest.raises(RequestError, match="not a catalogued dataset"):
        answer_request(lake, r.request_id, status="已开放", by="开放科", answer="已开放", dataset="nosuch")
    new, appended = answer_request(lake, r.request_id, status="已开放", by="开放科", answer="见企业登记月度统计",
                                   dataset="enterprise_registrations_monthly")
    assert appended and new.dataset == "enterprise_registrations_monthly"
    [current] = list_requests(get_catalog(lake), dataset="enterprise_registrations_monthly")
    assert current.request_id == r.request_id and current.status == "已开放"
    share = add_request(lake, kind="共享", title="参保信息核验", requester="合肥市公安局", purpose="户籍业务核验",
                        requester_department="11340100003001113F", dataset="insured")
    assert share.kind == "share"
    with pytest.raises(RequestError, match="不予共享"):  # a sharing request's refusal is 不予共享, not 不予开放
        answer_request(lake, share.request_id, status="不予开放", by="x", answer="y")
    assert {q.kind for q in list_requests(get_catalog(lake))} == {"open", "share"}


def test_contact_masks() -> None:
    assert mask_contact(MOBILE) == "139****5678" and mask_contact("+86 139 1234 5678") == "+86 139****5678"
    assert mask_contact(EMAIL) == "w***@example.cn"
    assert mask_contact(LANDLINE) == "0551*******34" and mask_contact(None) is None


def test_requesters_fail_closed_and_free_text_hides_names_and_house_numbers() -> None:
    from pipelines.departments import load_departments

    departments = load_departments()
    masked = {v: mask_person(v, departments) for v in ["张伟（个人）", "市民张伟", "Zhang Wei", EMAIL, PERSON, "王科",
                                                       "欧阳建科", "某人"]}
    assert masked == {"张伟（个人）": "张*****", "市民张伟": "市***", "Zhang Wei": "Z********", EMAIL: "w***@example.cn",
                      PERSON: "张*", "王科": "王*", "欧阳建科": "欧***", "某人": "某*"}
    clear = ["合肥工业大学", "合肥工业大学（科研处）", "数据资源局开放科", "合肥某科技有限公司", "Hefei University",
             "统计局", "合肥市公安局", "11340100003001113F"]
    assert {v: mask_person(v, departments) for v in clear} == {v: v for v in clear}
    assert mask_person("合肥工业大学（电话13912345678）", departments) == "合肥工业大学（电话139****5678）"
    free = mask_free("申请人张伟，住长江西路88号，电话13912345678；市民王芳申请公交数据；联系人：李娜 住长江西路八十八号")
    assert free == "申请人张*，住长江西路**号，电话139****5678；市民王*申请公交数据；联系人：李* 住长江西路***号"
    for text in ["公交线路日客流", "空气质量日数据用于出行研究", "企业登记月度统计", "地名地址兴趣点"]:
        assert mask_free(text) == text


def _write_inbox(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "2026-11-20-portal.yml").write_text(
        "- title: 公交线路日客流\n"
        "  requester: 王芳\n"
        f"  contact: {EMAIL}\n"
        "  purpose: 通勤研究\n"
        "  dataset: bus_ridership_daily\n"
        "  received_at: 2026-11-20T08:15:00+08:00\n"
        "- 标题: 地名地址兴趣点\n"
        "  申请人: 合肥某科技有限公司\n"
        "  用途: 地图标注\n"
        "  类型: 开放\n", encoding="utf-8")
    # Excel's "CSV UTF-8": a BOM, Chinese headers, CRLF, a date as Excel writes it, a quoted comma
    (folder / "窗口登记.csv").write_bytes(("\ufeff标题,申请人,联系方式,用途,数据集,申请日期\r\n"
                                          f"空气质量日数据,{PERSON},{MOBILE},\"出行, 健康\",air_quality_daily,2026/11/19\r\n"
                                          f"企业登记月度统计,李娜,{LANDLINE},创业分析,,2026-11-19 10:00\r\n").encode())
    (folder / "english.csv").write_text("title,requester,purpose,kind\nPOI in WGS-84,Hefei University,mapping,open\n",
                                        encoding="utf-8")
    (folder / "notes.txt").write_text("not a request file: left alone\n", encoding="utf-8")


def test_inbox_yaml_and_csv_are_imported_once(lake: Settings) -> None:
    folder = inbox_dir(lake)
    _write_inbox(folder)
    outcomes = {o.file: o for o in import_inbox(lake)}
    assert {f: (o.status, len(o.new), len(o.duplicates)) for f, o in outcomes.items()} == {
        "2026-11-20-portal.yml": ("imported", 2, 0), "窗口登记.csv": ("imported", 2, 0), "english.csv": ("imported", 1, 0)}
    assert sorted(p.name for p in (folder / "processed").iterdir()) == ["2026-11-20-portal.yml", "english.csv", "窗口登记.csv"]
    assert (folder / "notes.txt").is_file() and not list(folder.glob("*.csv"))
    catalog = get_catalog(lake)
    requests = {r.title: r for r in list_requests(catalog)}
    assert len(requests) == 5 and {r.status for r in requests.values()} == {"已受理"}
    air = requests["空气质量日数据"]
    assert (air.requester, air.contact, air.purpose, air.dataset) == (PERSON, MOBILE, "出行, 健康", "air_quality_daily")
    assert air.received_at == datetime(2026, 11, 18, 16, tzinfo=UTC)  # 2026/11/19 in Beijing
    assert air.source == "inbox:窗口登记.csv" and air.request_id.startswith("REQ-20261119-")
    assert requests["公交线路日客流"].received_at == datetime(2026, 11, 20, 0, 15, tzinfo=UTC)
    assert requests["地名地址兴趣点"].kind == "open" and requests["地名地址兴趣点"].contact is None

    # the same files dropped again (and a crash-repeat): nothing new, the same ids
    _write_inbox(folder)
    again = {o.file: o for o in import_inbox(lake)}
    assert all(o.status == "imported" and not o.new for o in again.values())
    assert sorted(i for o in again.values() for i in o.duplicates) == sorted(r.request_id for r in requests.values())
    assert len(read_rows(catalog)) == 5 and len(list((folder / "processed").iterdir())) == 6  # kept, renamed
    assert import_inbox(lake) == []  # nothing left to import


def test_a_bad_inbox_file_is_rejected_whole_with_file_and_line(lake: Settings) -> None:
    from pipelines.cli import app

    folder = inbox_dir(lake)
    folder.mkdir(parents=True)
    (folder / "bad.csv").write_text("标题,申请人,联系方式,用途,数据集\n"
                                    "好的一行,合肥学院,,教学,\n"
                                    f"联系方式不对,{PERSON},微信 zw{MOBILE[-4:]},研究,\n"
                                    ",某单位,,研究,\n"
                                    "数据集写错,某单位,,研究,persn\n", encoding="utf-8")
    (folder / "gbk.csv").write_bytes("标题,申请人,用途\n测试,某单位,研究\n".encode("gbk"))
    (folder / "header.csv").write_text("标题,申请人,用途,备注\n测试,某单位,研究,无\n", encoding="utf-8")
    (folder / "bad.yml").write_text("title: 空气质量\nrequester: 某单位\npurpose: 研究\npriority: high\n", encoding="utf-8")
    (folder / "broken.yaml").write_text("title: [unclosed\nrequester: x\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["request", "import"])
    assert result.exit_code == 3, result.output
    rejected = folder / "rejected"
    reasons = {p.name.removesuffix(".reason.txt"): p.read_text(encoding="utf-8").splitlines()
               for p in rejected.glob("*.reason.txt")}
    assert set(reasons) == {"bad.csv", "gbk.csv", "header.csv", "bad.yml", "broken.yaml"}
    assert {p.name for p in rejected.iterdir() if not p.name.endswith(".txt")} == set(reasons)  # moved, not copied
    assert reasons["bad.csv"][0].startswith("bad.csv:3: contact:") and len(reasons["bad.csv"]) == 3
    assert reasons["bad.csv"][1].startswith("bad.csv:4: title: required field is empty")
    assert reasons["bad.csv"][2].startswith("bad.csv:5: dataset:") and "'person'" in reasons["bad.csv"][2]
    assert MOBILE[-4:] not in "".join(reasons["bad.csv"])  # the bad contact itself is never quoted
    assert reasons["gbk.csv"][0].startswith("gbk.csv:1: not UTF-8")
    assert reasons["header.csv"][0].startswith("header.csv:1: unknown column(s) '备注'")
    assert reasons["bad.yml"] == ["bad.yml:4: priority: unknown field; allowed: kind, dataset, title, requester, "
                                  "requester_department, contact, purpose, received_at"]
    assert reasons["broken.yaml"][0].startswith("broken.yaml:") and "invalid YAML" in reasons["broken.yaml"][0]
    assert "bad.csv:3: contact" in result.stderr
    assert read_rows(get_catalog(lake)) == []  # a file with a bad row records nothing: fix it and drop it again
    fixed = (rejected / "bad.csv").read_text(encoding="utf-8").replace(f"微信 zw{MOBILE[-4:]}", MOBILE)
    fixed = fixed.replace(",某单位,,研究,\n", "补上标题,某单位,,研究,\n", 1).replace("persn", "person")
    (folder / "bad.csv").write_text(fixed, encoding="utf-8")
    assert [(o.status, len(o.new)) for o in import_inbox(lake)] == [("imported", 4)]


def test_contacts_are_masked_in_catalog_json_and_the_report(lake: Settings, tmp_path: Path) -> None:
    from pipelines.catalog.build import build_catalog, find_entry
    from pipelines.catalog.export import write_catalog
    from pipelines.cli import app
    from pipelines.report import build_site

    r = add_request(lake, title="空气质量站点日数据", requester=PERSON, purpose="研究", contact=MOBILE,
                    dataset="air_quality_daily")
    add_request(lake, title="人口综合信息", requester="王芳", purpose="研究", contact=EMAIL, dataset="person")
    answer_request(lake, r.request_id, status="处理中", by="开放科")
    entries = build_catalog(lake)
    entry = find_entry(entries, "air_quality_daily")
    assert entry is not None and entry.layer == "curated"
    assert [(q["request_id"], q["status"], q["contact"], q["requester"]) for q in entry.requests] == [
        (r.request_id, "处理中", "139****5678", "张*")]
    assert [q["contact"] for q in find_entry(entries, "person").requests] == ["w***@example.cn"]  # type: ignore[union-attr]
    json_path, csv_path = write_catalog(entries, tmp_path / "catalog")
    shown = CliRunner().invoke(app, ["catalog", "show", "air_quality_daily"]).stdout
    assert r.request_id in shown and "139****5678" in shown
    site = build_site(lake, out_dir=tmp_path / "site").parent
    opened = (site / "open.html").read_text(encoding="utf-8")
    assert r.request_id in opened and "139****5678" in opened and "w***@example.cn" in opened
    assert f"{r.request_id}（处理中）" in csv_path.read_text(encoding="utf-8-sig")
    for path in [json_path, csv_path, *site.rglob("*.html"), site / "catalog.json"]:
        text = path.read_text(encoding="utf-8-sig")
        for personal in (MOBILE, EMAIL, PERSON, "王芳"):
            assert personal not in text, (path.name, personal)
    assert r.request_id in (site / "datasets" / "air_quality_daily.html").read_text(encoding="utf-8")
