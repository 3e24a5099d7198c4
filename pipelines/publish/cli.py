"""``citylake open``: release the open curated datasets (what ``publish__open_data`` runs) and list what the
portal's pointer holds."""

from __future__ import annotations

import json
import sys
from datetime import date
from typing import Annotated, Any

import typer
from rich.table import Table

from pipelines.console import err, fail, out, wide
from pipelines.errors import CitylakeError
from pipelines.settings import TZ, load_settings

open_app = typer.Typer(no_args_is_help=True, help="The open-data release (开放数据): release, ls, withdraw.")

STATUS_ZH = {"released": "已发布", "unchanged": "未变化", "blocked": "已拦截", "failed": "失败", "not_open": "不予开放",
             "not_passed": "未通过质量检查", "withdrawn": "已撤回"}


def _date(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        fail(f"--date {value!r}: expected a date such as 2026-11-20")


@open_app.command("release")
def open_release(
    release_date: Annotated[str | None, typer.Option("--date", help="Release date (default: today, Asia/Shanghai).")] = None,
    dataset: Annotated[list[str] | None, typer.Option("--dataset", "-d", help="Only this curated dataset (repeatable).")] = None,
    run_id: Annotated[str | None, typer.Option(help="Run id recorded in meta.releases (default: a new one).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")] = False,
) -> None:
    """Release every open curated dataset whose latest build passed the gate to <exports>/open/<date>/.

    Exit code 1 when a dataset was blocked by the leak gate or failed (the others are released)."""
    from pipelines.publish.release import release_open_data

    when = _date(release_date)
    try:
        with err.status("open release: de-identify, write, leak-scan, verify…"):
            result = release_open_data(load_settings(), release_date=when, datasets=dataset or None, run_id=run_id)
    except CitylakeError as exc:
        fail(str(exc))
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), ensure_ascii=False, indent=2, default=str) + "\n")
    else:
        t = Table("dataset", "status", "rows", "folder", "seconds", "reason",
                  title=f"open release {result.release_date} (run {result.run_id})")
        for o in result.outcomes:
            t.add_row(o.dataset, f"{o.status} {STATUS_ZH.get(o.status, '')}", f"{o.rows:,}", o.folder or "",
                      f"{o.seconds.get('total', 0):.1f}", o.reason or "")
        wide(6).print(t)
        for o in result.outcomes:
            for hit in o.leak_hits[:5]:  # masked by the leak gate
                err.print(f"[bold red]blocked:[/] {o.dataset} {hit['file']} row {hit['row']} column {hit['column']}: "
                          f"{hit['kind']} {hit['value']}", highlight=False, soft_wrap=True)
        if result.catalog:
            out.print(f"catalog: {result.catalog}", highlight=False)
        # the last line is where the portal looks: the date's folder, or the pointer when nothing new was released
        out.print(result.folder if result.released_today else result.pointer, highlight=False, soft_wrap=True)
    if not result.ok:
        raise typer.Exit(1)


@open_app.command("withdraw")
def open_withdraw(
    dataset: Annotated[str, typer.Argument(help="The released dataset to take off the portal.")],
    reason: Annotated[str, typer.Option("--reason", help="Why (recorded in meta.releases, masked).")],
    every_date: Annotated[bool, typer.Option("--every-date", help="Also delete its folders of earlier dates.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")] = False,
) -> None:
    """Withdraw a released dataset (e.g. a leak found after the release): its open/latest.json entry removed,
    the folder it named deleted, the catalog rewritten without it, a withdrawn event in meta.releases."""
    from pipelines.publish.release import withdraw

    try:
        outcome = withdraw(dataset, reason, settings=load_settings(), every_date=every_date)
    except CitylakeError as exc:
        fail(str(exc))
    if as_json:
        sys.stdout.write(json.dumps(outcome.to_dict(), ensure_ascii=False, indent=2, default=str) + "\n")
    else:
        out.print(f"{dataset}: 已撤回 (withdrawn), {outcome.folder} 已删除; {outcome.reason}", highlight=False,
                  soft_wrap=True)


def _latest_events(settings: Any) -> dict[str, dict[str, Any]]:
    from pipelines.lake.catalog import get_catalog
    from pipelines.lake.meta import latest_events
    from pipelines.lake.raw import open_table

    table = open_table(get_catalog(settings), "meta.releases")
    if table is None or table.current_snapshot() is None:
        return {}
    # the log grows by a row per dataset per night: only the latest row per dataset becomes Python rows
    rows = latest_events(table.scan().to_arrow(), by=("dataset",)).to_pylist()
    return {row["dataset"]: row for row in rows}


@open_app.command("ls")
def open_ls(as_json: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")] = False) -> None:
    """What open/latest.json points to, and each curated dataset's latest release event."""
    from pipelines.publish.pointer import read_pointer
    from pipelines.publish.release import store_for

    settings = load_settings()
    try:
        store = store_for(settings)
        pointer = read_pointer(store)
        events = _latest_events(settings)
    except CitylakeError as exc:
        fail(str(exc))
    if as_json:
        sys.stdout.write(json.dumps({"exports": store.location, "pointer": pointer, "latest_events": events},
                                    ensure_ascii=False, indent=2, default=str) + "\n")
        return
    t = Table("dataset", "release", "rows", "folder", "build", "last event", "at", "reason",
              title=f"open data ({store.url('open/latest.json')})")
    for ds in sorted(set(pointer["datasets"]) | set(events)):
        entry = pointer["datasets"].get(ds, {})
        ev = events.get(ds, {})
        at = ev.get("recorded_at")
        t.add_row(ds, entry.get("release_date", "—"), f"{entry['rows']:,}" if "rows" in entry else "—",
                  entry.get("path", ""), entry.get("build_id", ""),
                  f"{ev['status']} {STATUS_ZH.get(ev['status'], '')}" if ev else "",
                  at.astimezone(TZ).strftime("%Y-%m-%d %H:%M") if at else "", ev.get("reason") or "")
    wide(8).print(t)
    if pointer.get("catalog"):
        out.print(f"catalog: {store.url(pointer['catalog'])}", highlight=False)
