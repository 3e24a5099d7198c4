"""``citylake request``: the open-data demand intake (开放需求受理反馈): add, list, show, answer, import."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from pipelines.console import err, fail, out, wide
from pipelines.errors import CitylakeError
from pipelines.formats import beijing_time
from pipelines.settings import load_settings

request_app = typer.Typer(no_args_is_help=True, help="Requests for data (开放需求受理反馈): add, ls, show, answer, import.")

EXIT_FILES_REJECTED = 3
"""`citylake request import` exit code when some inbox files were rejected (moved to rejected/ with a reason)."""


def _departments() -> Any:
    from pipelines.config import load_departments

    try:
        return load_departments(load_settings())
    except CitylakeError:
        return {}


def _table(rows: list[dict[str, Any]], title: str) -> Table:
    t = Table("编号", "类型", "数据集", "标题", "申请人", "联系方式", "状态", "答复", "答复人", "收到（北京时间）", title=title)
    t.columns[0].no_wrap = True
    for r in rows:
        t.add_row(r["request_id"], r["kind_label"], r["dataset"] or "—", r["title"], r["requester"] or "",
                  r["contact"] or "—", r["status"], r["answer"] or "", r["answered_by"] or "",
                  beijing_time(r["received_at"]))
    return t


@request_app.command("add")
def request_add(
    title: Annotated[str, typer.Option("--title", help="What is asked for (需求名称).")],
    requester: Annotated[str, typer.Option("--requester", help="Who asks: a person or an organisation (申请人).")],
    purpose: Annotated[str, typer.Option("--purpose", help="What for (用途).")],
    kind: Annotated[str, typer.Option("--kind", help="open (开放需求) or share (共享申请).")] = "open",
    dataset: Annotated[str | None, typer.Option("--dataset", help="The catalogued dataset asked for, if any.")] = None,
    department: Annotated[str | None, typer.Option("--department", help="Requesting department's code (share).")] = None,
    contact: Annotated[str | None, typer.Option("--contact", help="Telephone or e-mail (stored, shown masked).")] = None,
    received: Annotated[str | None, typer.Option("--received", help="When it was received (default now), "
                                                 "YYYY-MM-DD or YYYY-MM-DD HH:MM, Beijing time.")] = None,
) -> None:
    """Record a request (status 已受理) and print its id."""
    from pipelines.catalog.requests import add_request

    try:
        r = add_request(load_settings(), title=title, requester=requester, purpose=purpose, kind=kind,
                        dataset=dataset, requester_department=department, contact=contact, received_at=received)
    except CitylakeError as exc:
        fail(str(exc))
    out.print(f"{r.request_id}: {r.status}", highlight=False)


@request_app.command("ls")
def request_ls(
    status: Annotated[str | None, typer.Option("--status", help="Only this status (已受理, 处理中, 已答复, 已开放, …).")] = None,
    kind: Annotated[str | None, typer.Option("--kind", help="Only open or share.")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="Only requests naming this dataset.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")] = False,
) -> None:
    """Every request's current state (its latest row), newest first; contacts masked."""
    from pipelines.catalog.requests import KIND_STATUSES, STATUSES, list_requests, public
    from pipelines.lake.catalog import get_catalog

    if status is not None and status not in STATUSES:
        fail(f"--status {status!r}: one of {' / '.join(STATUSES)}")
    if kind is not None and kind not in KIND_STATUSES:
        fail(f"--kind {kind!r}: open or share")
    departments = _departments()
    rows = [public(r, departments) for r in list_requests(get_catalog(load_settings()), status=status, kind=kind,
                                                          dataset=dataset)]
    if as_json:
        sys.stdout.write(json.dumps(rows, ensure_ascii=False, indent=2) + "\n")
        return
    wide(10).print(_table(rows, f"开放需求（{len(rows)} 项）"))


@request_app.command("show")
def request_show(request_id: Annotated[str, typer.Argument(help="REQ-YYYYMMDD-xxxxxxxx")],
                 as_json: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")] = False) -> None:
    """One request's history: intake, then every status change (oldest first); contacts masked."""
    from pipelines.catalog.requests import history, public
    from pipelines.lake.catalog import get_catalog

    rows = [public(r, _departments()) for r in history(get_catalog(load_settings()), request_id.strip())]
    if not rows:
        fail(f"no request {request_id!r} (see `citylake request ls`)")
    if as_json:
        sys.stdout.write(json.dumps(rows, ensure_ascii=False, indent=2) + "\n")
        return
    t = Table("记录（北京时间）", "状态", "答复", "答复人", "数据集", title=f"{request_id} {rows[-1]['title']}")
    for r in rows:
        t.add_row(beijing_time(r["updated_at"]), r["status"], r["answer"] or "", r["answered_by"] or "", r["dataset"] or "—")
    wide(5).print(t)


@request_app.command("answer")
def request_answer(
    request_id: Annotated[str, typer.Argument(help="REQ-YYYYMMDD-xxxxxxxx")],
    status: Annotated[str, typer.Option("--status", help="处理中, 已答复, 已开放, 不予开放 (open); 已共享, 不予共享 (share).")],
    by: Annotated[str, typer.Option("--by", help="Who answers: the office or person responsible.")],
    answer: Annotated[str | None, typer.Option("--answer", help="What the requester is told (required to close).")] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="The dataset that meets it, if the request named none.")] = None,
) -> None:
    """Change a request's status with an answer (a row appended; the history stays)."""
    from pipelines.catalog.requests import answer_request

    try:
        r, appended = answer_request(load_settings(), request_id, status=status, by=by, answer=answer, dataset=dataset)
    except CitylakeError as exc:
        fail(str(exc))
    out.print(f"{r.request_id}: {r.status}" + ("" if appended else "（与当前状态相同，未重复记录）"), highlight=False)


@request_app.command("import")
def request_import(inbox: Annotated[Path | None, typer.Argument(
        help="Inbox folder (default <data_dir>/inbox/requests).")] = None) -> None:
    """Import the inbox's *.yml / *.csv requests: good files to processed/, bad ones to rejected/ with a reason.

    Exit code 3 when a file was rejected. Importing a request again records nothing new."""
    from pipelines.catalog.requests import import_inbox
    from pipelines.privacy.mask import mask_file_name

    try:
        outcomes = import_inbox(load_settings(), inbox)
    except CitylakeError as exc:
        fail(str(exc))
    t = Table("文件", "结果", "新增", "已存在", title=f"导入开放需求（{len(outcomes)} 个文件）")
    for o in outcomes:
        t.add_row(mask_file_name(o.file) or "", "已导入" if o.status == "imported" else "已拒收", str(len(o.new)),
                  str(len(o.duplicates)))
    wide(4).print(t)
    rejected = [o for o in outcomes if o.status == "rejected"]
    for o in rejected:
        for problem in o.problems:  # file:line: field: problem (values never quoted)
            err.print(f"[yellow]rejected:[/] {mask_file_name(problem.split(':', 1)[0])}:{problem.split(':', 1)[1]}",
                      highlight=False, soft_wrap=True)
    if rejected:
        err.print(f"{len(rejected)} file(s) moved to rejected/ with <name>.reason.txt; fix and drop them again",
                  highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_FILES_REJECTED)
