"""``citylake share`` on a small lake (seeded city, scale 0.01, std.person published through the gate), driven
through Typer's CliRunner like an operator: the grants table says which grants go and why the others are
refused; ``deliver`` exits 0 on a refusal and 1 on a failure (missing master key), ``--full`` forces a full
delivery, an unexpected error is one line; ``audit --department`` filters; empty states are one line; a
department's request lands in meta.requests as kind ``share`` and shows in ``citylake request ls``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from share_lake import AT, share_lake
from typer.testing import CliRunner, Result

DAY = "2026-11-20"
RSJ = "113401000030088844"   # 合肥市人力资源和社会保障局: a file grant of person
SCJG = "113401000030022204"  # 合肥市市场监督管理局: an expired grant
GJJ = "123401004850066616"   # 合肥住房公积金管理中心: a 免审即享 scenario grant
ZRZY = "11340100003007777F"  # 合肥市自然资源和规划局: no grant, no audit row

PERSON = {"dataset": "person", "columns": ["resident_id", "person_name", "sex_code"], "purpose": "社保待遇资格认证（测试）",
          "deid": {"resident_id": "pseudonym"}, "delivery": {"method": "file"}}
GRANTS = {
    RSJ: [{"id": "rsj-person", "consumer": RSJ, **PERSON}],
    SCJG: [{"id": "scjg-person-old", "consumer": SCJG, **PERSON, "approver": "市场监管局 审批（测试）",
            "approved_on": "2025-01-01", "expires": "2026-01-01"}],
    GJJ: [{"id": "gjj-insured-check", "consumer": GJJ, "dataset": "insured", "columns": ["resident_id", "insurance_type"],
           "scenario": "loan_check", "deid": {"resident_id": "pseudonym"}, "delivery": {"method": "file"}}],
}
SCENARIOS = {"scenarios": [{"id": "loan_check", "name": "公积金贷款社保缴存核验", "dataset": "insured",
                            "columns": ["resident_id", "insurance_type"], "purpose": "贷款审核核验参保（测试）",
                            "legal_basis": "测试", "approved_by": "测试决定", "consumers": [GJJ]}]}


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The project's schemas, the population system ingested and std.person published; the test grants; a key."""
    with share_lake(tmp_path_factory.mktemp("share_cli"), GRANTS, SCENARIOS) as (settings, env):
        from pipelines.quality.gate import run_quality

        run_quality("person", settings=settings, reference_date=AT.date(), run_id="first")
        yield env


def _run(*args: str) -> Result:
    from pipelines.cli import app

    return CliRunner().invoke(app, list(args))


def _audit(*args: str) -> list[dict[str, Any]]:
    ran = _run("share", "audit", "--json", *args)
    assert ran.exit_code == 0, ran.output
    return json.loads(ran.stdout)


def test_grants_table_lists_valid_and_refused_grants_with_their_reason(lake: dict[str, str]) -> None:
    ran = _run("share", "grants", "--date", DAY)
    assert ran.exit_code == 0, ran.output
    text = " ".join(ran.stdout.split())
    assert "共享授权（2026-11-20，3 项）" in text
    assert "rsj-person" in text and "person 人口基础信息" in text and "社保待遇资格认证（测试）" in text
    assert "将拒绝：expired（授权已于" in text and "有效" in text
    assert "免审即享：" in text and "市场监管局 审批（测试）" in text and "2026-01-01" in text
    rows = {r["grant_id"]: r for r in json.loads(_run("share", "grants", "--date", DAY, "--json").stdout)}
    assert rows["rsj-person"]["valid"] and rows["rsj-person"]["dataset_name"] == "人口基础信息"
    assert rows["rsj-person"]["columns"] == {"resident_id": "pseudonym", "person_name": "mask", "sex_code": "keep"}
    assert (rows["scjg-person-old"]["valid"], rows["scjg-person-old"]["refusal"]) == (False, "expired")
    assert "授权已于 2026-01-01 到期" in rows["scjg-person-old"]["detail"]
    assert rows["gjj-insured-check"]["scenario_name"] == "公积金贷款社保缴存核验"
    assert rows["gjj-insured-check"]["valid"] and rows["gjj-insured-check"]["purpose"] == "贷款审核核验参保（测试）"
    assert (rows["scjg-person-old"]["approver"], rows["scjg-person-old"]["expires"]) == ("市场监管局 审批（测试）",
                                                                                         "2026-01-01")


def test_deliver_exits_0_on_a_refusal_and_1_on_a_failure(lake: dict[str, str],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    refused = _run("share", "deliver", "scjg-person-old", "--date", DAY, "--run-id", "cli-refused")
    assert refused.exit_code == 0, refused.output
    assert "refused 已拒绝" in " ".join(refused.stdout.split())

    monkeypatch.delenv("CITYLAKE_SHARE_MASTER_KEY")
    failed = _run("share", "deliver", "rsj-person", "--date", DAY, "--run-id", "cli-no-key")
    assert failed.exit_code == 1, failed.output
    assert "CITYLAKE_SHARE_MASTER_KEY" in failed.output and "Traceback" not in failed.output
    assert [(r["outcome"], r["reason"]) for r in _audit("--department", RSJ) if r["run_id"] == "cli-no-key"] == [
        ("failed", "missing_key")]


def test_deliver_full_forces_a_full_delivery(lake: dict[str, str]) -> None:
    first = _run("share", "deliver", "rsj-person", "--date", DAY, "--run-id", "cli-1", "--json")
    assert first.exit_code == 0, first.output
    [r] = json.loads(first.stdout)
    assert (r["outcome"], r["mode"]) == ("delivered", "full") and r["rows"] > 0
    again = json.loads(_run("share", "deliver", "rsj-person", "--date", DAY, "--run-id", "cli-2", "--json").stdout)
    assert again[0]["outcome"] == "nothing_new"
    forced = _run("share", "deliver", "rsj-person", "--date", DAY, "--run-id", "cli-3", "--full", "--json")
    assert forced.exit_code == 0, forced.output
    [r3] = json.loads(forced.stdout)
    assert (r3["outcome"], r3["mode"], r3["rows"]) == ("delivered", "full", r["rows"])
    listed = " ".join(_run("share", "ls").stdout.split())
    assert "rsj-person" in listed and "person 人口基础信息" in listed and "exports" not in listed.split("rsj-person")[0]


def test_an_unexpected_error_is_one_line_without_secrets(lake: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import pipelines.share.deliver as deliver

    def boom(*_: Any, **__: Any) -> None:
        raise RuntimeError("connection to postgresql://share:s3cret-pw@db.example:5432/x refused\nsecond line")

    monkeypatch.setattr(deliver, "deliver_grant", boom)
    ran = _run("share", "deliver", "rsj-person", "--date", DAY)
    assert ran.exit_code == 1
    assert "Traceback" not in ran.output and "s3cret-pw" not in ran.output
    assert "error: RuntimeError: connection to postgresql://share:***@db.example:5432/x refused; second line" in \
        " ".join(ran.output.split())


def test_audit_department_filters_and_empty_states_are_one_line(lake: dict[str, str], tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    assert _run("share", "deliver", "scjg-person-old", "--date", DAY, "--run-id", "cli-audit").exit_code == 0
    assert _run("share", "deliver", "rsj-person", "--date", DAY, "--run-id", "cli-audit").exit_code == 0
    assert {r["consumer"] for r in _audit("--department", SCJG)} == {SCJG}
    assert {r["consumer"] for r in _audit("--department", RSJ)} == {RSJ}
    assert {SCJG, RSJ} <= {r["consumer"] for r in _audit()}
    table = " ".join(_run("share", "audit", "--department", SCJG).stdout.split())
    assert "scjg-person-old" in table and "rsj-person" not in table and "person 人口基础信息" in table
    empty = _run("share", "audit", "--department", ZRZY)
    assert empty.exit_code == 0 and empty.stdout.strip() == f"共享审计表中没有记录（部门 {ZRZY}）"
    monkeypatch.setenv("CITYLAKE_LAKE_DIR", str(tmp_path / "empty_lake"))  # no audit table at all
    for command in (("share", "ls"), ("share", "audit")):
        ran = _run(*command)
        assert ran.exit_code == 0, ran.output
        assert len(ran.stdout.strip().splitlines()) == 1 and "没有" in ran.stdout, ran.stdout


def test_request_lands_in_meta_requests_as_a_share_request(lake: dict[str, str]) -> None:
    ran = _run("share", "request", "--department", GJJ, "--dataset", "insured", "--purpose", "贷款审核核验参保")
    assert ran.exit_code == 0, ran.output
    request_id, status = ran.stdout.strip().split(": ")
    assert request_id.startswith("REQ-") and status == "已受理"
    listed = json.loads(_run("request", "ls", "--kind", "share", "--json").stdout)
    mine = [r for r in listed if r["request_id"] == request_id]
    assert len(mine) == 1 and mine[0]["kind"] == "share" and mine[0]["dataset"] == "insured"
    table = _run("request", "ls")
    assert table.exit_code == 0 and request_id in table.stdout
