"""``card.md`` + ``card.json``: the 高质量数据集 card of a curated dataset released for AI use.

What a model builder needs before training on the data: where it comes from (inputs at their snapshots, the
source systems and departments behind them, the build), the time span, the quality score, the
de-identification applied to each column, the licence, and the intended use and limitations the contract's
``card`` block states. The JSON holds the same facts for machines; the Markdown is Chinese for people.
"""

from __future__ import annotations

from typing import Any

from pipelines.formats import percent
from pipelines.publish.datapackage import licence
from pipelines.publish.dictionary import deid_text
from pipelines.publish.model import DatasetRelease


def _config() -> Any:
    from pipelines.config import load_all
    from pipelines.settings import load_settings

    return load_all(load_settings())


def provenance(release: DatasetRelease, config: Any = None) -> list[dict[str, Any]]:
    """One entry per direct input (``std.<ds>``/``curated.<ds>``) with its snapshot, title, and the source
    systems and departments behind it (a curated input's own inputs followed down to the std datasets).
    ``config``: ``pipelines.config.load_all``'s Config (loaded when not given)."""
    config = _config() if config is None else config
    departments = getattr(config, "departments", None)
    if departments is None:
        from pipelines.departments import load_departments

        departments = load_departments()

    def sources(identifier: str, seen: frozenset[str]) -> list[tuple[str, str, str, str]]:
        """(system, system name, department code, department name) of every raw source under ``identifier``."""
        ns, _, name = identifier.partition(".")
        if ns == "std" and name in config.contracts:
            c = config.contracts[name]
            system = config.systems.get(c.source["system"])
            return [(c.source["system"], getattr(system, "name", c.source["system"]), c.owner,
                     getattr(departments.get(c.owner), "name", c.owner))]
        if ns == "curated" and name in config.curated and identifier not in seen:
            return [s for x in config.curated[name].inputs for s in sources(x, seen | {identifier})]
        return []

    out = []
    for identifier, snapshot in sorted(release.inputs.items()):
        ns, _, name = identifier.partition(".")
        contract = (config.contracts if ns == "std" else config.curated).get(name)
        found = list(dict.fromkeys(sources(identifier, frozenset())))
        out.append({"input": identifier, "snapshot": snapshot, "title": getattr(contract, "name", identifier),
                    "systems": [{"system": s, "name": n} for s, n in dict.fromkeys((s[0], s[1]) for s in found)],
                    "departments": [{"code": d, "name": n} for d, n in dict.fromkeys((s[2], s[3]) for s in found)]})
    return out


def card(release: DatasetRelease, config: Any = None) -> tuple[str, dict[str, Any]]:
    """(card.md, card.json) of one release. ``config``: see ``provenance``."""
    c = release.contract
    block = c.card
    spdx = (block.licence if block is not None and block.licence else None) or c.licence
    declared = {col.name: col for col in c.columns}
    k = c.open.k
    deid = [{"column": col.name, "title": col.title, "deid": col.deid,
             "method": deid_text(col.deid, k=k, grid=getattr(declared.get(col.name), "grid", None)
                                 if col.deid == "grid" else None)} for col in release.columns]
    dropped = [{"column": col.name, "title": col.name, "deid": "drop", "method": "删除"}
               for col in c.columns if col.deid == "drop"]
    inputs = provenance(release, config)
    systems = list(dict.fromkeys((s["system"], s["name"]) for i in inputs for s in i["systems"]))
    departments = list(dict.fromkeys((d["code"], d["name"]) for i in inputs for d in i["departments"]))
    span = ({"start": release.temporal[0].isoformat(), "end": release.temporal[1].isoformat()}
            if release.temporal else None)
    data: dict[str, Any] = {
        "dataset": release.dataset, "title": c.name, "description": c.description,
        "resource_code": c.resource_code, "release_date": release.release_date.isoformat(),
        "publisher": {"code": release.publisher[0], "name": release.publisher[1]},
        "provenance": {"inputs": inputs, "systems": [{"system": s, "name": n} for s, n in systems],
                       "departments": [{"code": d, "name": n} for d, n in departments],
                       "build_id": release.build_id},
        "time_span": span,
        "latest_event_time": release.latest_event_time.isoformat() if release.latest_event_time else None,
        "rows": release.rows,
        "quality_score": release.quality_score,
        "deidentification": deid + dropped,
        "open": {"type": c.open.type, "condition": c.open.condition, "met_by": c.open.met_by},
        "licence": licence(spdx),
        "intended_use": block.intended_use if block is not None else None,
        "limitations": block.limitations if block is not None else None,
        "files": [{"name": f.name, "rows": f.rows, "bytes": f.bytes, "sha256": f.sha256} for f in release.data_files],
    }
    return _markdown(data), data


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _markdown(d: dict[str, Any]) -> str:
    lines = [f"# {d['title']}（{d['dataset']}）数据集说明", "",
             f"高质量数据集卡片 · 发布日期 {d['release_date']} · 提供方 {d['publisher']['name']} · "
             f"信息资源代码 `{d['resource_code']}`", "", d["description"], "",
             "## 预期用途", "", d["intended_use"] or "（合约未声明）", ""]
    if d["limitations"]:
        lines += ["## 局限与注意事项", "", d["limitations"], ""]
    lines += ["## 数据来源", "", "| 输入 | 名称 | 来源系统 | 提供部门 | 快照 |", "|---|---|---|---|---|"]
    for i in d["provenance"]["inputs"]:
        lines.append(f"| `{i['input']}` | {_cell(i['title'])} | "
                     f"{_cell('、'.join(s['name'] for s in i['systems']) or '—')} | "
                     f"{_cell('、'.join(x['name'] for x in i['departments']) or '—')} | {i['snapshot']} |")
    lines += ["", f"构建号 `{d['provenance']['build_id']}`；数据截至 {d['latest_event_time'] or '—'}。", ""]
    span = d["time_span"]
    lines += ["## 时间范围", "", f"{span['start']} 至 {span['end']}" if span else "—", "",
              "## 质量", "", f"质量得分（GB/T 36344，各维度均值）：{percent(d['quality_score'])}；"
              f"记录数 {d['rows']:,}。", "",
              "## 去标识化处理", "", "| 字段 | 中文名 | 处理 |", "|---|---|---|"]
    lines += [f"| `{x['column']}` | {_cell(x['title'])} | {x['method']} |" for x in d["deidentification"]]
    if d["open"]["type"] == "有条件开放":
        lines += ["", f"开放条件：{d['open']['condition']}" + (f"（{d['open']['met_by']}）" if d["open"]["met_by"] else "")]
    lic = d["licence"]
    lines += ["", "## 许可", "", f"[{lic['title']}]({lic['path']})（SPDX `{lic['name']}`）", "",
              "## 文件", "", "| 文件 | 记录数 | 字节 | SHA-256 |", "|---|---|---|---|"]
    lines += [f"| {f['name']} | {f['rows'] if f['rows'] is not None else '—'} | {f['bytes']} | `{f['sha256']}` |"
              for f in d["files"]]
    return "\n".join(lines) + "\n"
