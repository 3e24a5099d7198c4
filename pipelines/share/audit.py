"""``meta.sharing_audit``: the append-only record of every departmental delivery and refusal.

One row per attempt (``delivered``, ``nothing_new``, ``refused``, ``failed``), written through
``meta.append_log`` and never updated: the latest ``delivered`` row of a grant, method and target is where its
next incremental delivery starts (``last_delivered``). Every row carries the grant's basis (``grant_basis``)
and a delivery its fingerprint (``pipelines.share.deliver``). Rows carry no secret and no clear personal value: the
detail is masked before it is written.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

TABLE = "meta.sharing_audit"
OUTCOMES = ("delivered", "nothing_new", "refused", "failed")
OUTCOME_ZH = {"delivered": "已交付", "nothing_new": "无新数据", "refused": "已拒绝", "failed": "失败"}
_JSON = ("columns", "batches", "grant_basis")


def _row(row: Mapping[str, Any]) -> dict[str, Any]:
    from pipelines.privacy.mask import mask_message

    out = dict(row)
    if out.get("outcome") not in OUTCOMES:
        raise ValueError(f"{TABLE}: outcome {out.get('outcome')!r} is not one of {', '.join(OUTCOMES)}")
    out.setdefault("audit_id", uuid.uuid4().hex)
    for name in _JSON:  # JSON text in the table, Python values in the callers
        if out.get(name) is not None and not isinstance(out[name], str):
            out[name] = json.dumps(out[name], ensure_ascii=False)
    if out.get("detail"):
        out["detail"] = mask_message(out["detail"])
    return out


def record(catalog: Any, rows: Iterable[Mapping[str, Any]]) -> None:
    """Append audit rows in one commit (``columns``/``batches`` may be given as dict/list; ``detail`` masked)."""
    from pipelines.lake.meta import append_log

    append_log(catalog, TABLE, [_row(r) for r in rows])


def _scan(catalog: Any, row_filter: Any = None) -> list[dict[str, Any]]:
    from pipelines.lake.raw import open_table

    table = open_table(catalog, TABLE)
    if table is None or table.current_snapshot() is None:
        return []
    scan = table.scan(row_filter=row_filter) if row_filter is not None else table.scan()
    rows = scan.to_arrow().to_pylist()
    rows.sort(key=lambda r: (r["recorded_at"] is not None, r["recorded_at"]))
    return rows


def read_audit(catalog: Any, department: str | None = None, dataset: str | None = None) -> list[dict[str, Any]]:
    """Audit rows (oldest first), of one consumer department and/or dataset when given."""
    from pyiceberg.expressions import And, EqualTo

    filters = [EqualTo(name, value) for name, value in (("consumer", department), ("dataset", dataset)) if value]
    expr = None
    for f in filters:
        expr = f if expr is None else And(expr, f)
    return _scan(catalog, expr)


def same_target(recorded: str | None, target: str | None) -> bool:
    """Whether an audit row's target is the destination ``target``: equal, or inside it (a file delivery's
    folder ``…/share/<consumer>/<dataset>/<date>/`` is inside ``…/share/<consumer>/<dataset>/``)."""
    if target is None:
        return True
    if recorded is None:
        return False
    base = target.rstrip("/")
    return recorded.rstrip("/") == base or recorded.startswith(base + "/")


def delivered_rows(catalog: Any, grant_id: str, method: str, target: str | None = None) -> list[dict[str, Any]]:
    """Every ``delivered`` row of ``grant_id`` by ``method`` to ``target`` (``same_target``), oldest first."""
    from pyiceberg.expressions import And, EqualTo

    rows = _scan(catalog, And(And(EqualTo("grant_id", grant_id), EqualTo("method", method)),
                              EqualTo("outcome", "delivered")))
    return [r for r in rows if same_target(r.get("target"), target)]


def last_delivered(catalog: Any, grant_id: str, method: str, target: str | None = None) -> dict[str, Any] | None:
    """The latest ``delivered`` row of ``grant_id`` by ``method`` to ``target`` (``same_target``), None when the
    grant never delivered there (its next delivery is full)."""
    rows = delivered_rows(catalog, grant_id, method, target)
    return rows[-1] if rows else None


def grant_basis(grant: Any) -> dict[str, Any]:
    """What the grant rested on when the row was written: purpose, legal basis, approval, expiry, scenario,
    verification, and the sha256 of the whole grant (its canonical JSON, without where it was written), so
    an audit shows which version of a grant a delivery or refusal followed even after the file changed."""
    data = grant.model_dump(mode="json", exclude={"file", "line"})
    canonical = json.dumps(data, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    basis = {k: data.get(k) for k in ("purpose", "legal_basis", "approver", "approved_on", "expires", "scenario",
                                      "verification")}
    return {**basis, "grant_sha256": hashlib.sha256(canonical.encode("utf-8")).hexdigest()}


def latest_per_grant(rows: Iterable[Mapping[str, Any]], outcome: str | None = "delivered") -> dict[str, dict[str, Any]]:
    """grant id → its latest row (of ``outcome`` when given) among ``rows`` (oldest first, as ``read_audit``)."""
    latest: dict[str, dict[str, Any]] = {}
    for r in rows:
        if outcome is None or r.get("outcome") == outcome:
            latest[str(r["grant_id"])] = dict(r)
    return latest


def counts(catalog: Any) -> dict[str, int]:
    """outcome → number of audit rows (the demo's closing line)."""
    found = {o: 0 for o in OUTCOMES}
    for r in _scan(catalog):
        found[r["outcome"]] = found.get(r["outcome"], 0) + 1
    return found
