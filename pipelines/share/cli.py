"""``citylake share``: departmental sharing (数据共享) for the operator: grants, ls, deliver, audit, request."""

from __future__ import annotations

import json
import re
import sys
from datetime import date, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from pipelines.console import err, fail, out, wide
from pipelines.errors import CitylakeError
from pipelines.settings import TZ, load_settings

share_app = typer.Typer(no_args_is_help=True,
                        help="Departmental sharing (数据共享): grants, ls, deliver, audit, request.")

METHOD_ZH = {"file": "文件", "database": "数据库"}
MODE_ZH = {"full": "全量", "incremental": "增量"}


def _outcome(outcome: str | None) -> str:
    from pipelines.share.audit import OUTCOME_ZH

    return f"{outcome} {OUTCOME_ZH.get(outcome or '', '')}".strip() if outcome else ""


def _date(value: str | None) -> date:
    if value is None:
        return datetime.now(TZ).date()
    try:
        return date.fromisoformat(value)
    except ValueError:
        fail(f"--date {value!r}: expected a date such as 2026-11-20")


def _department(code: str | None) -> str | None:
    """``--department``: a registered code (the registry's message with near matches otherwise)."""
    if code is None:
        return None
    from pipelines.departments import check_department, load_departments

    try:
        return check_department(code.strip(), load_departments(load_settings()))
    except (CitylakeError, ValueError) as exc:
        fail(f"--department: {exc}")


def _names() -> Any:
    """code → department name (the code itself when the registry cannot be read or does not know it)."""
    from pipelines.departments import department_name, load_departments

    try:
        departments = load_departments(load_settings())
    except CitylakeError:
        return lambda code: code
    return lambda code: department_name(departments, code) if code in departments else code


def _dataset_names() -> Any:
    """dataset → ``dataset 中文名`` (the dataset alone when the contracts cannot be read or do not know it)."""
    from pipelines.config import load_all

    try:
        config = load_all(load_settings())
    except CitylakeError:
        return lambda ds: ds
    names = {**{k: c.name for k, c in config.curated.items()}, **{k: c.name for k, c in config.contracts.items()}}
    return lambda ds: f"{ds} {names[ds]}" if ds in names else ds


_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")


def _unexpected(exc: BaseException) -> str:
    """An unexpected error as one line, with any URL password hidden (a driver may quote its URL)."""
    return _URL_PASSWORD.sub(r"\1***@", f"{type(exc).__name__}: {exc}")


def _when(ts: Any) -> str:
    return ts.astimezone(TZ).strftime("%Y-%m-%d %H:%M") if ts else ""


@share_app.command("grants")
def share_grants(
    department: Annotated[str | None, typer.Option("--department", help="Only this consumer department's grants.")] = None,
    on: Annotated[str | None, typer.Option("--date", help="Decide as on this date (default today, Asia/Shanghai).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")] = False,
) -> None:
    """Every grant and what the policy decides for it today: 有效, or the reason it would be refused."""
    from pipelines.config import load_all
    from pipelines.departments import department_name, load_departments
    from pipelines.share.grants import load_grants
    from pipelines.share.policy import decide

    settings = load_settings()
    code = _department(department)
    when = _date(on)
    try:  # isolate: a broken file is named below, the others' grants are still shown
        config = load_all(settings)
        departments, grants = load_departments(settings), load_grants(settings, isolate=True)
    except CitylakeError as exc:
        fail(str(exc))
    rows: list[dict[str, Any]] = []
    for gid, grant in sorted(grants.grants.items()):
        if code is not None and grant.consumer != code:
            continue
        decision = decide(grant, config, departments, grants, when)
        contract = config.contracts.get(grant.dataset) or config.curated.get(grant.dataset)
        scenario = grants.scenarios.get(grant.scenario) if grant.scenario else None
        rows.append({"grant_id": gid, "consumer": grant.consumer,
                     "consumer_name": department_name(departments, grant.consumer)
                     if grant.consumer in departments else grant.consumer,
                     "dataset": grant.dataset, "dataset_name": contract.name if contract else None,
                     "tier": contract.sharing.type if contract else "—", "method": grant.delivery.method,
                     "columns": decision.columns,
                     "purpose": grant.purpose or (scenario.purpose if scenario else None),
                     "approver": grant.approver,
                     "approved_on": grant.approved_on.isoformat() if grant.approved_on else None,
                     "scenario": grant.scenario, "scenario_name": scenario.name if scenario else None,
                     "expires": grant.expires.isoformat() if grant.expires else None,
                     "valid": decision.refusal is None,
                     "refusal": decision.refusal.code if decision.refusal else None,
                     "detail": decision.refusal.detail if decision.refusal else None,
                     "file": grant.where})
    if as_json:
        sys.stdout.write(json.dumps(rows, ensure_ascii=False, indent=2) + "\n")
    else:
        t = Table("授权", "用数部门", "数据集", "共享类型", "方式", "用途", "审批 / 场景", "到期", "状态",
                  title=f"共享授权（{when}，{len(rows)} 项）")
        for c in t.columns[1:]:
            c.overflow = "fold"  # every reason and purpose in full, wrapped, never cut with …
        t.columns[0].no_wrap = True
        for r in rows:
            # the row names the grant: its detail without the "授权 <id> (<file:line>)：" head
            reason = r["detail"].split("：", 1)[-1] if r["detail"] else ""
            status = "有效" if r["valid"] else f"将拒绝：{r['refusal']}（{reason}）"
            if r["scenario"]:
                basis = f"免审即享：{r['scenario_name'] or r['scenario']}"
            elif r["approver"]:
                basis = f"{r['approver']}（{r['approved_on'] or '无审批日期'}）"
            else:
                basis = "—"
            dataset = f"{r['dataset']} {r['dataset_name']}" if r["dataset_name"] else r["dataset"]
            t.add_row(r["grant_id"], r["consumer_name"], dataset, r["tier"], METHOD_ZH.get(r["method"], r["method"]),
                      r["purpose"] or "—", basis, r["expires"] or "不限", status)
        wide(9).print(t)
        if not rows:
            out.print("没有共享授权" + (f"（部门 {code}）" if code else f"（{settings.grants}）"), highlight=False)
    if grants.problems:  # the grants of these files are not listed and do not deliver
        for file, lines in grants.problems.items():
            err.print(f"[bold red]error:[/] 授权文件 {file} 有错误，其授权未列出也不交付：{'; '.join(lines)}",
                      highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@share_app.command("ls")
def share_ls(
    department: Annotated[str | None, typer.Option("--department", help="Only this consumer department.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")] = False,
) -> None:
    """Each grant's latest delivery: where it is (folder or schema.table), rows, mode, date."""
    from pipelines.lake.catalog import get_catalog
    from pipelines.share.audit import latest_per_grant, read_audit

    settings = load_settings()
    code = _department(department)
    try:
        rows = read_audit(get_catalog(settings), department=code)
    except CitylakeError as exc:
        fail(str(exc))
    delivered = latest_per_grant(rows, "delivered")
    last = latest_per_grant(rows, None)
    if as_json:
        sys.stdout.write(json.dumps({"delivered": delivered, "last": last}, ensure_ascii=False, indent=2,
                                    default=str) + "\n")
        return
    if not last:
        out.print("还没有共享交付记录" + (f"（部门 {code}）" if code else "") + "：用 citylake share deliver 交付",
                  highlight=False)
        return
    name, dataset_name = _names(), _dataset_names()
    # the place is per row (a folder under the exports or a database schema.table), not one path for all
    t = Table("授权", "用数部门", "数据集", "方式", "交付位置", "行数", "删除", "模式", "交付日期", "快照", "最近一次",
              title=f"共享交付（{len(last)} 项授权）")
    t.columns[0].no_wrap = True
    for gid in sorted(set(delivered) | set(last)):
        d, latest = delivered.get(gid, {}), last[gid]
        t.add_row(gid, name(latest["consumer"]), dataset_name(latest["dataset"]),
                  METHOD_ZH.get(latest.get("method") or "", ""),
                  d.get("target") or "—", f"{d['rows']:,}" if d else "—", f"{d.get('deleted') or 0:,}" if d else "—",
                  MODE_ZH.get(d.get("mode") or "", "—"), d.get("delivery_date") or "—",
                  str(d.get("std_snapshot_id") or "—"),
                  f"{_outcome(latest['outcome'])} {_when(latest.get('recorded_at'))}")
    wide(11).print(t)


def _print_results(results: list[Any], title: str) -> None:
    if not results:
        out.print("没有要交付的授权", highlight=False)
        return
    name, dataset_name = _names(), _dataset_names()
    t = Table("授权", "用数部门", "数据集", "结果", "模式", "行数", "删除", "位置", "说明", title=title)
    t.columns[0].no_wrap = True
    for r in results:
        t.add_row(r.grant_id, name(r.consumer), dataset_name(r.dataset), _outcome(r.outcome), MODE_ZH.get(r.mode or "", "—"),
                  f"{r.rows:,}", f"{r.deleted:,}", r.target or "", r.detail or "")
    wide(9).print(t)


@share_app.command("deliver")
def share_deliver(
    grant_id: Annotated[str | None, typer.Argument(help="The grant to deliver (see `citylake share grants`).")] = None,
    every: Annotated[bool, typer.Option("--all", help="Deliver every grant.")] = False,
    department: Annotated[str | None, typer.Option("--department", help="Every grant of this consumer department.")] = None,
    delivery_date: Annotated[str | None, typer.Option("--date", help="Delivery date (default today, Asia/Shanghai).")] = None,
    run_id: Annotated[str | None, typer.Option(help="Run id recorded in meta.sharing_audit (default: a new one).")] = None,
    full: Annotated[bool, typer.Option("--full", help="A full delivery whatever was delivered before (the consumer "
                                       "replaces its copy).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")] = False,
) -> None:
    """Deliver one grant, a department's grants or all of them (incremental since each grant's last delivery).

    Exit code 1 when a delivery failed (refusals are recorded in meta.sharing_audit and are not failures); any
    error is one line on stderr."""
    from pipelines.lake.meta import new_run_id
    from pipelines.share.deliver import deliver_all, deliver_grant

    if (grant_id is not None) + every + (department is not None) != 1:
        fail("share deliver: give one of GRANT_ID, --all or --department CODE")
    when = _date(delivery_date)
    code = _department(department)
    rid = run_id or new_run_id("share")
    try:
        with err.status("share: decide, read the changes, de-identify, deliver…"):
            if grant_id is not None:
                results = [deliver_grant(load_settings(), grant_id, delivery_date=when, run_id=rid, full=full)]
            else:
                results = deliver_all(load_settings(), delivery_date=when, run_id=rid, consumer=code, full=full)
    except CitylakeError as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - the operator gets one line, not a traceback
        fail(_unexpected(exc))
    if as_json:
        sys.stdout.write(json.dumps([r.to_dict() for r in results], ensure_ascii=False, indent=2) + "\n")
    else:
        _print_results(results, f"共享交付 {when}（run {rid}）")
    if any(r.outcome == "failed" for r in results):
        raise typer.Exit(1)


@share_app.command("audit")
def share_audit(
    department: Annotated[str | None, typer.Option("--department", help="Only this consumer department.")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Only this dataset.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="The newest N rows (0: all).")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout (every matching row).")] = False,
) -> None:
    """The sharing audit trail (meta.sharing_audit): every delivery and refusal, newest first."""
    from pipelines.lake.catalog import get_catalog
    from pipelines.share.audit import read_audit

    code = _department(department)
    try:
        rows = read_audit(get_catalog(load_settings()), department=code, dataset=dataset)
    except CitylakeError as exc:
        fail(str(exc))
    rows.reverse()
    if as_json:
        sys.stdout.write(json.dumps(rows, ensure_ascii=False, indent=2, default=str) + "\n")
        return
    if not rows:
        scope = "、".join(f for f in (f"部门 {code}" if code else "", f"数据集 {dataset}" if dataset else "") if f)
        out.print("共享审计表中没有记录" + (f"（{scope}）" if scope else ""), highlight=False)
        return
    shown = rows[:limit] if limit > 0 else rows
    name, dataset_name = _names(), _dataset_names()
    t = Table("记录（北京时间）", "授权", "用数部门", "数据集", "结果", "原因", "模式", "行数", "删除", "位置", "说明",
              title=f"共享审计（{len(shown)} / {len(rows)} 条）")
    for r in shown:
        t.add_row(_when(r.get("recorded_at")), r["grant_id"], name(r["consumer"]), dataset_name(r["dataset"]),
                  _outcome(r["outcome"]),
                  r.get("reason") or "", MODE_ZH.get(r.get("mode") or "", ""), f"{r.get('rows') or 0:,}",
                  f"{r.get('deleted') or 0:,}", r.get("target") or "", r.get("detail") or "")
    wide(11).print(t)


@share_app.command("request")
def share_request(
    department: Annotated[str, typer.Option("--department", help="Requesting department's code (部门代码).")],
    dataset: Annotated[str, typer.Option("--dataset", help="The dataset asked for.")],
    purpose: Annotated[str, typer.Option("--purpose", help="What for (用途).")],
    title: Annotated[str | None, typer.Option("--title", help="Title (default: 共享申请：<dataset>).")] = None,
    requester: Annotated[str | None, typer.Option("--requester", help="Who asks (default: the department's name).")] = None,
    contact: Annotated[str | None, typer.Option("--contact", help="Telephone or e-mail (stored, shown masked).")] = None,
) -> None:
    """Record a department's sharing request (共享申请) in meta.requests (status 已受理) and print its id."""
    from pipelines.catalog.requests import add_request
    from pipelines.departments import department_name, load_departments

    settings = load_settings()
    code = _department(department)
    try:
        name = requester or department_name(load_departments(settings), str(code))
        r = add_request(settings, kind="share", dataset=dataset, requester_department=code, purpose=purpose,
                        title=title or f"共享申请：{dataset}", requester=name, contact=contact)
    except CitylakeError as exc:
        fail(str(exc))
    out.print(f"{r.request_id}: {r.status}", highlight=False)
