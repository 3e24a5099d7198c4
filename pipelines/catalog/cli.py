"""``citylake catalog``: list, show and register entries of the resource catalog (一本账)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from pipelines.console import fail, out, wide
from pipelines.errors import CitylakeError
from pipelines.formats import TIME_ZONE_LABEL, beijing_time, percent
from pipelines.settings import load_settings

catalog_app = typer.Typer(no_args_is_help=True, help="The resource catalog (数据资源一本账).")


def _wide() -> Console:
    return wide(columns=17)


def _entries() -> list[Any]:
    from pipelines.catalog.build import build_catalog

    try:
        return build_catalog(load_settings())
    except CitylakeError as exc:
        fail(str(exc).replace("\n", "; "))


def _score(value: float | None) -> str:
    return percent(value)  # as the site and catalog.csv show it


def _rows(value: int | None) -> str:
    return "—" if value is None else f"{value:,}"


@catalog_app.command("ls")
def catalog_ls(as_json: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")] = False) -> None:
    """Every raw, std and curated table, and every contracted dataset not yet published."""
    entries = _entries()
    if as_json:
        sys.stdout.write(json.dumps([e.to_dict() for e in entries], ensure_ascii=False, indent=2) + "\n")
        return
    t = Table("标识", "信息资源名称", "编目状态", "信息资源代码", "提供方", "分级", "共享类型", "行数", f"最近更新（{TIME_ZONE_LABEL}）",
              "质量得分", "登记状态", title=f"数据资源一本账（{len(entries)} 项）")
    t.columns[0].no_wrap = True
    t.columns[3].no_wrap = True
    for e in entries:
        grade = e.grade or {}
        t.add_row(e.identifier, e.name, e.status, e.resource_code or "", (e.provider or {}).get("name") or "",
                  f"{grade.get('level', '')} {grade.get('grade') or ''}".strip(), (e.sharing or {}).get("type") or "",
                  _rows(e.rows), beijing_time(e.last_updated), _score(e.quality_score), e.registration_status)
    _wide().print(t)
    todo = [e for e in entries if e.fix]
    for e in todo:
        out.print(f"{e.identifier} {e.status}: {e.fix}", highlight=False, soft_wrap=True)


@catalog_app.command("show")
def catalog_show(key: Annotated[str, typer.Argument(help="Dataset code (person) or identifier (raw.population__person).")],
                 as_json: Annotated[bool, typer.Option("--json", help="Print only JSON on stdout.")] = False) -> None:
    """One catalog entry: its catalog fields, items, lineage, registration and overrides."""
    from pipelines.catalog.build import find_entry

    entries = _entries()
    entry = find_entry(entries, key)
    if entry is None:
        datasets = sorted({e.dataset for e in entries if e.dataset})
        fail(f"no catalog entry {key!r}: not a dataset ({', '.join(datasets) or 'none'}) nor a lake table "
              f"(see `citylake catalog ls`)")
    if as_json:
        sys.stdout.write(json.dumps(entry.to_dict(), ensure_ascii=False, indent=2) + "\n")
        return
    d = entry.to_dict()
    grade, sharing, opening = d["grade"] or {}, d["sharing"] or {}, d["open"] or {}
    fields = [
        ("标识", d["identifier"]), ("信息资源名称", d["name"]), ("编目状态", d["status"]), ("待办", d["fix"]),
        ("信息资源代码", d["resource_code"]), ("信息资源分类", (d["classification"] or {}).get("path")),
        ("提供方", f"{(d['provider'] or {}).get('name') or ''} {(d['provider'] or {}).get('code') or ''}".strip()),
        ("摘要", d["summary"]), ("格式", d["format"]), ("共享类型", sharing.get("type")),
        ("共享条件", sharing.get("condition")), ("共享方式", "、".join(sharing.get("methods") or [])),
        ("开放属性", opening.get("type")), ("开放条件", opening.get("condition")), ("更新周期", d["update_cycle"]),
        ("分级", f"{grade.get('level') or ''} {grade.get('grade') or ''}".strip()), ("行数", _rows(d["rows"])),
        (f"最近更新（{TIME_ZONE_LABEL}）", beijing_time(d["last_updated"])), ("质量得分", _score(d["quality_score"])),
        ("登记", f"{entry.registration_status} {(d['registration'] or {}).get('code') or ''} "
               f"{(d['registration'] or {}).get('date') or ''}".strip()),
        ("源系统", f"{d['system'] or ''} {d['source_table'] or ''}".strip()),
        ("部门", (d["department"] or {}).get("name")),
        ("开放条件的满足方式", opening.get("met_by")), ("开放许可", opening.get("licence")),
        ("当前开放版本", f"{(d['release'] or {}).get('path') or ''} {(d['release'] or {}).get('release_date') or ''}".strip()),
    ]
    t = Table("字段", "值", title=entry.identifier, show_header=False)
    t.columns[1].overflow = "fold"
    for k, v in fields:
        if v not in (None, ""):
            t.add_row(k, str(v))
    console = _wide()
    console.print(t)
    if d["items"]:
        curated = any("deid" in i for i in d["items"])
        items = Table("信息项", "数据元", "名称", "类型", "敏感度", "分级", *(["开放处理"] if curated else []), title="信息项")
        for i in d["items"]:
            items.add_row(i["name"], i["element"] or "", i["element_name"] or "", i["type"] or "",
                          i.get("sensitivity") or "", str(i.get("grade") or ""),
                          *([i["deid_label"] if i.get("opened") or i.get("deid") == "drop" else "不开放"] if curated else []))
        console.print(items)
    lineage = Table("步骤", "标识", "快照", "时间", title="血缘")
    for s in d["lineage"]:
        lineage.add_row(s["label"], s["identifier"], str(s["snapshot_id"] or "—"), s["at"] or "—")
    console.print(lineage)
    if d["overrides"]:
        o = Table("属性", "取值", "默认", "理由", "批准", title="例外审批")
        for x in d["overrides"]:
            o.add_row(*(str(x.get(k) or "") for k in ("attribute", "value", "default", "reason", "approved_by")))
        console.print(o)
    if d["requests"]:  # as requests.public shows them: contacts and personal requesters masked
        r = Table("编号", "类型", "标题", "申请人", "联系方式", "状态", "答复", "收到", title=f"开放需求（{len(d['requests'])} 项）")
        for x in d["requests"]:
            r.add_row(x["request_id"], x["kind_label"], x["title"], x["requester"] or "", x["contact"] or "—",
                      x["status"], x["answer"] or "", beijing_time(x["received_at"]))
        console.print(r)


@catalog_app.command("register")
def catalog_register(dataset: Annotated[str, typer.Argument(help="Dataset code.")],
                     code: Annotated[str, typer.Option("--code", help="The registration code the authority issued.")],
                     on: Annotated[str, typer.Option("--date", help="Registration date, YYYY-MM-DD.")],
                     by: Annotated[str | None, typer.Option("--by", help="Who records it (optional).")] = None) -> None:
    """Record a 公共数据资源登记 code issued by the registration authority (recorded, never minted)."""
    from pipelines.catalog.registration import register

    try:
        r = register(load_settings(), dataset, code, on, recorded_by=by)
    except CitylakeError as exc:
        fail(str(exc).replace("\n", "; "))
    out.print(f"{dataset}: 已登记 {r.code}（{r.registered_on.isoformat()}）", highlight=False)
