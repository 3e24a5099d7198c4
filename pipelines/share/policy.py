"""What a grant may deliver today: Hefei's sharing tiers applied to one grant (``decide``).

- 无条件共享 goes to a subscribing department without approval, but a personal column (its data element is
  个人信息 or 敏感个人信息) needs a stated purpose and is de-identified (masked unless the grant says
  ``pseudonym``); it goes clear (``keep``) only for identity verification (``verification: true``) with an
  approver.
- 有条件共享 needs an unexpired approved grant (approver, approved_on on or before the delivery day, expires),
  unless the grant names a 免审即享 scenario of the same dataset whose columns cover the grant's and whose
  ``consumers`` list the grant's department.
- A grant expires when its ``expires`` is before the delivery day or before today (a back-dated delivery
  does not revive an expired approval).
- 不予共享 never goes.

Every refusal is a ``Refusal(code, detail)``: the code for the audit table and a one-line Chinese detail
naming the grant id, its file:line and the thing refused. The first problem found refuses the grant.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

from pipelines.config import Config
from pipelines.contracts import CuratedContract, DatasetContract
from pipelines.departments import Department
from pipelines.privacy.mask import PERSONAL
from pipelines.settings import TZ
from pipelines.share.grants import SCENARIOS_FILE, DeidMethod, Grant, Grants

REFUSAL_CODES = (
    "unknown_department", "unknown_dataset", "not_shared", "unknown_column", "column_outside_grant",
    "key_not_granted", "unknown_scenario", "method_not_offered", "expired", "missing_approver", "missing_expiry",
    "missing_purpose", "clear_not_allowed", "key_masked",
)
"""Every code ``decide`` refuses with (the audit's ``reason``)."""


@dataclass
class Refusal:
    code: str
    """One of ``REFUSAL_CODES``."""
    detail: str
    """One Chinese line: grant id, file:line and what is refused; no personal values, no secrets."""


@dataclass
class Decision:
    grant: Grant
    table: str | None
    """``std.<dataset>`` / ``curated.<dataset>``; None for an unknown dataset."""
    kind: Literal["std", "curated"] | None
    keys: list[str] = field(default_factory=list)
    """The dataset's primary key (granted, unless refused with ``key_not_granted``)."""
    columns: dict[str, DeidMethod] = field(default_factory=dict)
    """The granted columns the dataset has, in the dataset's order → how each is delivered (what was, or would
    have been, delivered: the audit records it for refusals too). ``mask`` on a column whose mask leaves the
    values as they are (not personal, or a code list) is ``keep``: the audit and manifest say what went."""
    elements: dict[str, str] = field(default_factory=dict)
    """Granted column → its data element's code (``config.standards.elements``)."""
    refusal: Refusal | None = None


def _list(items: list[str]) -> str:
    return "、".join(items)


def _near(name: str, known: list[str]) -> str:
    near = difflib.get_close_matches(name, known, n=2)
    return f"，是否为 {_list(near)}？" if near else ""


def decide(grant: Grant, config: Config, departments: Mapping[str, Department], grants: Grants,
           on: date, today: date | None = None) -> Decision:
    """The decision for ``grant`` on delivery day ``on`` (``today``: the day it is decided, default today in
    Asia/Shanghai): the columns and how each is de-identified, or the first reason to refuse it."""
    today = today or datetime.now(TZ).date()
    head = f"授权 {grant.id} ({grant.where})"

    def refuse(code: str, text: str, decision: Decision) -> Decision:
        decision.refusal = Refusal(code, f"{head}：{text}")
        return decision

    contract: DatasetContract | CuratedContract | None = config.contracts.get(grant.dataset)
    kind: Literal["std", "curated"] | None = "std" if contract is not None else None
    if contract is None and (contract := config.curated.get(grant.dataset)) is not None:
        kind = "curated"
    if contract is None:
        decision = Decision(grant, None, None)
    else:
        decision = _columns(grant, contract, config)
        decision.kind = kind
    if grant.consumer not in departments:
        file = Path(getattr(departments, "file", "departments.yml")).name
        return refuse("unknown_department", f"用数部门代码 {grant.consumer} 不在部门注册表 ({file}) 中"
                      f"{_near(grant.consumer, list(departments))}", decision)
    if contract is None:
        known = sorted([*config.contracts, *config.curated])
        return refuse("unknown_dataset", f"数据集 {grant.dataset} 没有数据契约 (schemas/datasets、schemas/curated)"
                      f"{_near(grant.dataset, known)}", decision)
    name = f"数据集 {grant.dataset} ({contract.name})"
    sharing = contract.sharing
    if sharing.type == "不予共享":
        return refuse("not_shared", f"{name} 为不予共享，依据：{sharing.basis}", decision)

    names = [c.name for c in contract.columns]
    unknown = [c for c in [*grant.columns, *grant.deid] if c not in names]
    if unknown:
        hint = _near(unknown[0], names)
        return refuse("unknown_column", f"{name} 没有列 {_list(list(dict.fromkeys(unknown)))}{hint}", decision)
    outside = [c for c in grant.deid if c not in grant.columns]
    if outside:
        return refuse("column_outside_grant", f"deid 指定的列 {_list(outside)} 不在授权的 columns 中", decision)
    missing_keys = [k for k in contract.primary_key if k not in grant.columns]
    if missing_keys:
        return refuse("key_not_granted", f"{name} 的主键列 {_list(missing_keys)} 未授权：增量更新和删除按主键匹配，"
                      "请把主键列加入 columns (个人信息主键可用 pseudonym)", decision)

    scenario = None
    if grant.scenario is not None:
        scenario = grants.scenarios.get(grant.scenario)
        if scenario is None:
            broken = [p for f, lines in grants.problems.items() if Path(f).name == SCENARIOS_FILE for p in lines]
            why = f"；{SCENARIOS_FILE} 有错误：{broken[0]}" if broken else ""
            return refuse("unknown_scenario", f"免审即享场景 {grant.scenario} 不存在 (scenarios.yml 有："
                          f"{_list(sorted(grants.scenarios)) or '无'}){why}", decision)
        if scenario.dataset != grant.dataset:
            return refuse("unknown_scenario", f"免审即享场景 {scenario.id} ({scenario.name}, {scenario.where}) 适用于"
                          f"数据集 {scenario.dataset}，不适用于 {grant.dataset}", decision)
        if grant.consumer not in scenario.consumers:
            return refuse("unknown_scenario", f"用数部门 {grant.consumer} 不在免审即享场景 {scenario.id} "
                          f"({scenario.name}, {scenario.where}) 的适用部门中，不具备引用资格 (consumers："
                          f"{_list(scenario.consumers)})", decision)
        beyond = [c for c in grant.columns if c not in scenario.columns]
        if beyond:
            return refuse("column_outside_grant", f"列 {_list(beyond)} 超出免审即享场景 {scenario.id} "
                          f"({scenario.name}) 的范围 ({_list(scenario.columns)})", decision)

    method = grant.delivery.method
    if method not in sharing.methods:
        return refuse("method_not_offered", f"{name} 的共享方式为 {_list(list(sharing.methods))}，不提供 {method}",
                      decision)
    if grant.expires is not None and grant.expires < on:
        return refuse("expired", f"授权已于 {grant.expires} 到期 (交付日 {on})", decision)
    if grant.expires is not None and grant.expires < today:
        return refuse("expired", f"授权已于 {grant.expires} 到期 (今天 {today}；补交付日 {on} 不使过期授权恢复)",
                      decision)
    if grant.approved_on is not None and grant.approved_on > on:
        return refuse("missing_approver", f"审批日期 {grant.approved_on} 晚于交付日 {on}：尚未批准", decision)

    if sharing.type == "有条件共享" and scenario is None:
        lacking = [f for f in ("approver", "approved_on") if getattr(grant, f) is None]
        if lacking:
            return refuse("missing_approver", f"{name} 为有条件共享，需经审批 (或引用免审即享场景)：缺少 "
                          f"{_list(lacking)}", decision)
        if grant.expires is None:
            return refuse("missing_expiry", f"{name} 为有条件共享，审批须有有效期 (expires)", decision)

    personal = [c for c in decision.columns if config.standards.elements[decision.elements[c]].sensitivity
                in PERSONAL]
    masked_keys = [k for k in contract.primary_key if decision.columns.get(k) == "mask"]
    if masked_keys:
        return refuse("key_masked", f"主键列 {_list(masked_keys)} 不能掩码 (mask)：增量更新和删除按主键匹配，"
                      "请写 deid 为 keep 或 pseudonym", decision)
    purpose = grant.purpose or (scenario.purpose if scenario is not None else None)
    if personal and not purpose:
        return refuse("missing_purpose", f"授权了个人信息列 {_list(personal)}，须说明用途 (purpose)", decision)
    # a code-list element (sex 1/2) identifies nobody on its own: its mask is the value, not a clear request
    clear = [c for c in personal if decision.columns[c] == "keep"
             and not config.standards.elements[decision.elements[c]].code_list]
    if clear and not grant.verification:
        return refuse("clear_not_allowed", f"个人信息列 {_list(clear)} 要求明文 (keep)：仅限身份核验授权 "
                      "(verification: true) 且经审批；否则用 pseudonym 或 mask", decision)
    if clear:
        lacking = [f for f in ("approver", "approved_on") if getattr(grant, f) is None]
        if lacking:
            return refuse("missing_approver", f"个人信息列 {_list(clear)} 以明文交付 (身份核验) 需要审批人与审批日期：缺少 "
                          f"{_list(lacking)}", decision)
        if grant.expires is None:
            return refuse("missing_expiry", f"个人信息列 {_list(clear)} 以明文交付 (身份核验)，审批须有有效期 "
                          "(expires)", decision)
    return decision


def _columns(grant: Grant, contract: DatasetContract | CuratedContract, config: Config) -> Decision:
    """The granted columns the dataset has, in its order, with their method: the grant's ``deid``, else mask for
    a personal column and keep for any other."""
    columns: dict[str, DeidMethod] = {}
    elements: dict[str, str] = {}
    for col in contract.columns:
        if col.name not in grant.columns:
            continue
        element: Any = config.standards.elements.get(col.element)
        personal = element is not None and element.sensitivity in PERSONAL
        method: DeidMethod = grant.deid.get(col.name, "mask" if personal else "keep")
        if method == "mask" and (not personal or element.code_list):
            method = "keep"  # pipelines.privacy.mask returns such values as they are
        columns[col.name] = method
        elements[col.name] = col.element
    return Decision(grant, contract.table, None, list(contract.primary_key), columns, elements)
