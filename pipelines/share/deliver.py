"""Departmental sharing: deliver one grant (``deliver_grant``) or every grant (``deliver_all``) of a day.

Per grant: the policy decides (``policy.decide``); a refusal is recorded and returned, nothing is read.
Otherwise the grant's last delivery to the same destination (``target.destination``: a file store's dataset
folder, a database's host/db/schema.table) says where to start (``audit.last_delivered``): a std dataset is
delivered from the std snapshots published since (``changes.std_changes``: the raw batches they carry,
checked against ``meta.batches``), only the rows of those batches (``_batch_id IN …``, files pruned by their
exact ``_batch_id`` bounds) plus the keys deleted at the source (``changes.deleted_keys``). A delivery is
full when it is the first, when ``full`` is asked, when the snapshot delivered last left the table's
history, when the delivery's fingerprint changed (keys, columns and their de-identification, delivered
types, mask rules, and the consumer's pseudonym key: a master-key rotation re-bases the consumer), when the
consumer side's own record (``target.last_record``) does not show the audited last delivery, or when the
target refuses the incremental (``NeedsFull``). A curated dataset (rebuilt whole) is delivered full when its
current build passed the gate and is not the one delivered last. Rows stream one record batch at a time from
the scan through de-identification (keyed pseudonyms per consumer, element masks) into the target
(``targets``), so memory is bounded by a batch whatever the table's size.

Every attempt appends one ``meta.sharing_audit`` row with the grant's basis (purpose, legal basis, approver,
expiry, the grant's sha256). A missing master key when a pseudonym is needed fails the delivery before
anything is read (never clear values instead); any failure is recorded and raised as one masked line, and
the target leaves the consumer's previous delivery as it was. A delivery that landed but whose audit row
could not be written is recovered from the target's record on the next run (a ``delivered`` row marked
补记), never delivered twice; a retry of a run that already delivered finds its own audit row and the same
snapshot: ``nothing_new``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import date
from typing import Any

import pyarrow as pa

from pipelines.errors import CitylakeError, ConfigError
from pipelines.settings import Settings, load_settings

log = logging.getLogger(__name__)

OUTCOMES = ("delivered", "nothing_new", "refused", "failed")
MASK_RULES = "mask/v1"
"""Part of the delivery fingerprint: bump it when ``pipelines.privacy`` changes what a masked value looks
like, so every consumer gets a full delivery in the new form instead of a mix of old and new."""
AUDIT_ATTEMPTS = 3
KEY_FILTER_MAX = 10_000
"""Up to this many deleted keys of a single-column key go into the scan's filter (files pruned by their key
bounds); more would make the expression itself the cost."""


@dataclass
class ShareResult:
    """What one grant's delivery did (also one ``meta.sharing_audit`` row)."""

    grant_id: str
    consumer: str
    dataset: str
    outcome: str
    reason: str | None = None
    """Refusal code (``policy``), ``missing_key``, ``target_failed`` or ``error``; None when delivered."""
    detail: str | None = None
    mode: str | None = None
    rows: int = 0
    deleted: int = 0
    target: str | None = None
    checksum: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Context:
    """What every grant of a run shares, loaded once."""

    settings: Settings
    config: Any
    departments: Any
    grants: Any
    catalog: Any
    delivery_date: date
    run_id: str


def _context(settings: Settings | None, delivery_date: date, run_id: str) -> _Context:
    from pipelines.config import load_all
    from pipelines.departments import load_departments
    from pipelines.lake.catalog import get_catalog
    from pipelines.share.grants import load_grants

    settings = settings or load_settings()
    # isolate: a broken grant file leaves out its own grants (named in ``problems``), not every department's
    return _Context(settings, load_all(settings), load_departments(settings), load_grants(settings, isolate=True),
                    get_catalog(settings), delivery_date, run_id)


def _problems(ctx: _Context) -> dict[str, list[str]]:
    return dict(getattr(ctx.grants, "problems", None) or {})


def deliver_grant(settings: Settings | None, grant_id: str, *, delivery_date: date, run_id: str,
                  full: bool = False) -> ShareResult:
    """Deliver grant ``grant_id`` for ``delivery_date`` under ``run_id`` (``full``: a full delivery whatever was
    delivered before). Refusals and nothing-new are returned; a failure is audited and raised as one masked
    line (MissingKeyError stays one: retrying cannot make a key appear)."""
    ctx = _context(settings, delivery_date, run_id)
    grant = ctx.grants.grants.get(grant_id)
    if grant is None:
        problems = [line for lines in _problems(ctx).values() for line in lines]
        if problems:  # the grant may be in a file that does not load: say why, not "no such grant"
            raise ConfigError(*problems)
        known = ", ".join(sorted(ctx.grants.grants)) or "none"
        raise CitylakeError(f"share: no grant {grant_id!r} in {ctx.settings.grants}/*.yml (known: {known})")
    return _deliver(ctx, grant, full)


def deliver_all(settings: Settings | None = None, *, delivery_date: date, run_id: str,
                consumer: str | None = None, full: bool = False) -> list[ShareResult]:
    """Deliver every grant (of ``consumer`` when given), in grant id order; one grant's failure is in its result
    (outcome ``failed``, audited) and never stops the next. A grant file that does not load is one ``failed``
    result (grant id: the file; not audited: there is no grant to record) and the other files' grants go."""
    from pathlib import Path

    ctx = _context(settings, delivery_date, run_id)
    results = []
    for gid, grant in sorted(ctx.grants.grants.items()):
        if consumer is not None and grant.consumer != consumer:
            continue
        try:
            results.append(_deliver(ctx, grant, full))
        except Exception as exc:  # noqa: BLE001 - audited in _deliver; the next grant still goes
            results.append(ShareResult(gid, grant.consumer, grant.dataset, "failed",
                                       getattr(exc, "share_reason", "error"), str(exc)))
    for file, lines in sorted(_problems(ctx).items()):
        stem = Path(file).stem  # one file per consumer department, named by its code
        if consumer is None or stem == consumer:
            log.warning("share: grant file %s not loaded, its grants are not delivered: %s", file, " | ".join(lines))
            results.append(ShareResult(file, stem, "", "failed", "error", " | ".join(lines)))
    return results


# --- one grant -----------------------------------------------------------------------------------------


def _safe(exc: BaseException) -> str:
    """An exception as one masked line without URLs' secrets (it goes into the audit table and logs)."""
    from pipelines.connections import scrub_urls
    from pipelines.privacy.mask import mask_message

    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return mask_message(scrub_urls(text)) or type(exc).__name__


def _where(ctx: _Context, grant: Any) -> str:
    """``schemas/grants/x.yml:12`` (relative to the project root when inside it)."""
    text = f"{grant.file}:{grant.line}"
    for root in (ctx.settings.root, ctx.settings.root.resolve()):
        if text.startswith(f"{root}/"):
            return text[len(str(root)) + 1:]
    return text


def _audit(ctx: _Context, grant: Any, result: ShareResult, **extra: Any) -> ShareResult:
    from pipelines.share.audit import grant_basis, record

    record(ctx.catalog, [{
        "run_id": ctx.run_id, "delivery_date": ctx.delivery_date.isoformat(), "consumer": grant.consumer,
        "dataset": grant.dataset, "grant_id": grant.id, "grant_file": _where(ctx, grant), "outcome": result.outcome,
        "reason": result.reason, "detail": result.detail, "mode": result.mode, "rows": result.rows,
        "deleted": result.deleted, "method": grant.delivery.method, "target": result.target,
        "checksum": result.checksum, "grant_basis": grant_basis(grant), **extra}])
    level = logging.WARNING if result.outcome in ("refused", "failed") else logging.INFO
    log.log(level, "share %s → %s %s: %s %s", grant.id, grant.consumer, grant.dataset, result.outcome,
            result.detail or "")
    return result


class _Unaudited(CitylakeError):
    """The delivery landed at the target but its audit row could not be written (not a delivery failure)."""

    share_reason = "error"


def _deliver(ctx: _Context, grant: Any, full: bool = False) -> ShareResult:
    """One grant's delivery, recorded in ``meta.runs`` (kind ``share``, target ``grant:<id>``, status the outcome)."""
    from pipelines.lake.runs import record_run

    with record_run("share", run_id=ctx.run_id, target=f"grant:{grant.id}", settings=ctx.settings,
                    dataset=grant.dataset, table=f"std.{grant.dataset}") as run:
        result = _deliver_once(ctx, grant, full)
        run.done(status=result.outcome, rows_out=result.rows,
                 detail=" ".join(x for x in (result.mode, result.reason) if x) or None)
    return result


def _deliver_once(ctx: _Context, grant: Any, full: bool = False) -> ShareResult:
    from pipelines.privacy.pseudonym import MissingKeyError
    from pipelines.share.policy import decide

    base = {"grant_id": grant.id, "consumer": grant.consumer, "dataset": grant.dataset}
    plan: _Plan | None = None
    columns: dict[str, str] | None = None
    try:
        decision = decide(grant, ctx.config, ctx.departments, ctx.grants, ctx.delivery_date)
        columns = dict(decision.columns) or None
        if decision.refusal is not None:
            result = ShareResult(**base, outcome="refused", reason=decision.refusal.code,
                                 detail=decision.refusal.detail)
            return _audit(ctx, grant, result, columns=columns)
        plan = _Plan(ctx, grant, decision, force_full=full)
        return plan.run()
    except _Unaudited:
        raise  # landed: a ``failed`` row would be false; the next run recovers the row from the target
    except Exception as exc:
        reason = getattr(exc, "share_reason", None) or ("missing_key" if isinstance(exc, MissingKeyError) else "error")
        detail = _failure(grant, reason, exc)
        result = ShareResult(**base, outcome="failed", reason=reason, detail=detail,
                             mode=plan.mode if plan else None, target=plan.destination if plan else None)
        try:
            _audit(ctx, grant, result, columns=columns, std_snapshot_id=plan.snapshot_id if plan else None,
                   batches=(plan.batches or None) if plan else None,
                   fingerprint=plan.fingerprint if plan else None)
        except Exception as audit_exc:  # noqa: BLE001 - the delivery's own failure is the one to raise
            log.error("share %s: the failure could not be audited: %s", grant.id, _safe(audit_exc))
        # one masked line: an Arrow error quoting a value must not reach the task log in clear
        error = (MissingKeyError if isinstance(exc, MissingKeyError) else CitylakeError)(detail)
        error.share_reason = reason  # type: ignore[attr-defined]  # deliver_all's result says the same
        raise error from None


def _failure(grant: Any, reason: str, exc: BaseException) -> str:
    if reason == "missing_key":  # the key error names the variable and connection, never a value
        return f"授权 {grant.id}：共享主密钥未配置，需要化名的交付已停止，未交付任何数据 ({_safe(exc)})"
    if reason == "target_failed":
        return f"授权 {grant.id}：交付目标写入失败，接收方保留上一次交付 ({_safe(exc)})"  # no code: masking mangles it
    return f"授权 {grant.id}：交付失败 ({_safe(exc)})"


def _fingerprint(key: bytes | None, keys: list[str], columns: dict[str, str], schema: pa.Schema,
                 elements: dict[str, Any]) -> str:
    """What a consumer's copy depends on besides the rows: keyed by the consumer's pseudonym key, so a
    rotated master key changes it without revealing either key. A masked column's element attributes count
    too: a standards edit (a new validator, another type) changes its masked form."""
    masks = {c: [e.code, e.type, e.validator, e.sensitivity, bool(e.code_list)]
             for c, e in elements.items() if columns.get(c) == "mask"}
    text = json.dumps({"keys": keys, "columns": columns, "schema": [[f.name, str(f.type)] for f in schema],
                       "mask": MASK_RULES, "elements": masks}, sort_keys=True, ensure_ascii=False)
    return hmac.new(key or b"", text.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def _at_target(call: Any) -> Any:
    """A call that reaches the consumer's side (its folder, its database): a failure there is the target's."""
    try:
        return call()
    except Exception as exc:
        if not hasattr(exc, "share_reason"):
            exc.share_reason = "target_failed"  # type: ignore[attr-defined]
        raise


class _Plan:
    """One grant's delivery once the policy allowed it: what to read, how to de-identify, where to put it."""

    def __init__(self, ctx: _Context, grant: Any, decision: Any, *, force_full: bool = False) -> None:
        self.ctx, self.grant, self.decision, self.force_full = ctx, grant, decision, force_full
        self.columns: dict[str, str] = dict(decision.columns)
        self.keys: list[str] = list(decision.keys)
        self.mode: str | None = None
        self.destination: str | None = None
        self.snapshot_id: int | None = None
        self.batches: list[str] = []
        self.fingerprint: str | None = None
        self.blocked: str | None = None

    def result(self, outcome: str, **kw: Any) -> ShareResult:
        return ShareResult(self.grant.id, self.grant.consumer, self.grant.dataset, outcome, **kw)

    def audit(self, result: ShareResult) -> ShareResult:
        return _audit(self.ctx, self.grant, result, columns=self.columns, std_snapshot_id=self.snapshot_id,
                      batches=self.batches if self.mode == "incremental" else [] if self.mode else None,
                      fingerprint=self.fingerprint)

    def run(self) -> ShareResult:
        from pipelines.lake.raw import open_table
        from pipelines.share.targets import open_target

        ctx, grant = self.ctx, self.grant
        # the key first: a delivery that needs pseudonyms and cannot make them reads nothing
        key = self._consumer_key()
        table = open_table(ctx.catalog, str(self.decision.table))
        if table is None:
            return self.audit(self.result("nothing_new", detail=f"{self.decision.table} 尚未建立"))
        arrow = table.schema().as_arrow()
        elements = self._elements()
        deid = _Deid(self.columns, elements, key)
        source = _normalized(pa.schema([arrow.field(c) for c in self.columns]))
        self.fingerprint = _fingerprint(key, self.keys, self.columns, deid.schema(source), elements)
        target = open_target(ctx.settings, grant)
        self.destination = _at_target(lambda: target.destination(grant.consumer, grant.dataset))
        last, why_full = self._last(target)
        since = None if why_full else last  # full even when nothing new was published: the copy is re-based
        found = self._curated(since) if self.decision.kind == "curated" else self._std(since)
        if isinstance(found, ShareResult):
            return self.audit(found)
        full, why = found
        return self._place(target, table, source, deid, last, full, why_full or why)

    def _last(self, target: Any) -> tuple[dict[str, Any] | None, str | None]:
        """The delivery to continue from (None: full) and, when it cannot be continued, why the next is full.

        The audit and the consumer side's own record must agree: a target record of this grant at a snapshot
        the audit lacks is a delivery whose audit append was lost (recovered here, not delivered again); a
        target that does not show the audited delivery (table dropped, latest.json replaced, another grant's
        delivery) gets everything again."""
        from pipelines.share.audit import delivered_rows

        ctx, grant = self.ctx, self.grant
        rows = delivered_rows(ctx.catalog, grant.id, grant.delivery.method, self.destination)
        last = rows[-1] if rows else None
        record = _at_target(lambda: target.last_record(grant.consumer, grant.dataset))
        landed = (record.get("std_snapshot_id"), record.get("fingerprint")) if record is not None else None
        # by snapshot AND fingerprint: a full re-base at an audited snapshot (rotated key, --full) is a delivery too
        if landed is not None and record is not None and record.get("grant_id") == grant.id and landed[1] \
                and landed[0] is not None \
                and landed not in {(r.get("std_snapshot_id"), r.get("fingerprint")) for r in rows}:
            last = self._recover(record)
        if self.force_full:  # after the recovery: a landed delivery is recorded whatever the next one does
            return None, "按要求全量交付"
        if last is None:
            return None, None
        if record is None or (record.get("grant_id"), record.get("std_snapshot_id"), record.get("fingerprint")) != \
                (grant.id, last.get("std_snapshot_id"), last.get("fingerprint")):
            return last, "接收方的交付记录与审计的上次交付不符，全量交付"
        if last.get("fingerprint") != self.fingerprint:
            if _columns_of(last) != self.columns:
                return last, "授权的列或脱敏方式已变更，全量交付"
            return last, "交付指纹已变更（化名密钥、列类型或脱敏规则），全量交付"
        return last, None

    def _recover(self, record: dict[str, Any]) -> dict[str, Any]:
        """Append the ``delivered`` row the target shows and the audit lacks (the run died, or the audit append
        failed, after the target's commit) and continue from it."""
        snapshot, mode = record.get("std_snapshot_id"), record.get("mode")
        result = self.result("delivered", mode=mode, rows=int(record.get("rows") or 0),
                             deleted=int(record.get("deleted") or 0), target=self.destination,
                             checksum=record.get("checksum") or record.get("manifest"),
                             detail=f"补记：接收方记录显示该快照已交付（{record.get('delivered_at') or '时间未知'}），"
                                    "审计缺此行（上次运行在目标提交后、审计写入前中断），按接收方记录补记，不重复交付")
        _audit(self.ctx, self.grant, result, columns=self.columns, std_snapshot_id=snapshot, batches=[],
               fingerprint=record.get("fingerprint"))
        return {"run_id": None, "delivery_date": record.get("delivery_date") or self.ctx.delivery_date.isoformat(),
                "std_snapshot_id": snapshot, "fingerprint": record.get("fingerprint"),
                "columns": json.dumps(self.columns, ensure_ascii=False)}

    def _place(self, target: Any, table: Any, source: pa.Schema, deid: _Deid, last: dict[str, Any] | None,
               full: bool, why: str) -> ShareResult:
        from pipelines.share.targets import NeedsFull

        self.mode = "full" if full else "incremental"
        if full:
            self.batches = []  # a full delivery is the snapshot; its batch list would grow with the table's history
        try:
            placed = target.deliver(self._delivery(deid.schema(source), last), iter(self._rows(table, source, deid)),
                                    self._deletions(table, deid))
        except NeedsFull as exc:
            if full:
                exc.share_reason = "target_failed"  # type: ignore[attr-defined]
                raise
            log.warning("share %s: the target refused the incremental, delivering in full: %s", self.grant.id,
                        _safe(exc))
            return self._place(target, table, source, deid, None, True, f"接收方无法应用增量（{_safe(exc)}），改为全量交付")
        except Exception as exc:
            exc.share_reason = "target_failed"  # type: ignore[attr-defined]
            raise
        # snapshot ids stay in their own column: a 19-digit id in text reads as a bank card to every masker
        detail = (f"{why}；交付 {placed.rows} 行" + (f"，删除 {placed.deleted} 个主键" if placed.deleted else "")
                  + (f"；{self.blocked}" if self.blocked else ""))
        # the audit's target is the destination for a database (``schema.table`` alone would not say which
        # database) and the delivery folder inside it for a file drop
        where = placed.target if _inside(placed.target, self.destination) else self.destination
        result = self.result("delivered", detail=detail, mode=self.mode, rows=placed.rows, deleted=placed.deleted,
                             target=where, checksum=placed.checksum)
        for attempt in range(AUDIT_ATTEMPTS):
            try:
                return self.audit(result)
            except Exception as exc:  # noqa: BLE001 - the rows are at the consumer: only the record is missing
                if attempt == AUDIT_ATTEMPTS - 1:
                    raise _Unaudited(f"授权 {self.grant.id}：已交付到 {where}（快照 {self.snapshot_id}），但审计行未能写入 "
                                     f"({_safe(exc)})；下次运行按接收方记录补记") from None
                time.sleep(1 + attempt)
        raise AssertionError("unreachable")

    def _consumer_key(self) -> bytes | None:
        if "pseudonym" not in self.columns.values():
            return None
        from pipelines.privacy.pseudonym import consumer_key, master_key

        return consumer_key(master_key(), self.grant.consumer)

    # --- what changed ---------------------------------------------------------------------------------

    def _std(self, last: dict[str, Any] | None) -> ShareResult | tuple[bool, str]:
        from pipelines.lake.changes import std_changes

        since = last.get("std_snapshot_id") if last else None
        changes = std_changes(self.ctx.catalog, self.grant.dataset, since)
        self.snapshot_id, self.batches = changes.snapshot_id, list(changes.batches)
        self.blocked = getattr(changes, "blocked", None)  # a publish not yet recorded in meta.batches
        if self.blocked:
            log.warning("share %s: %s", self.grant.id, self.blocked)
        tail = f"；{self.blocked}" if self.blocked else ""
        if changes.snapshot_id is None:
            return self.result("nothing_new", detail=f"{self.decision.table} 尚无已发布的数据{tail}")
        if changes.full or last is None:
            return True, changes.reason
        if not changes.batches or changes.snapshot_id == since:
            if last.get("run_id") == self.ctx.run_id:  # an Airflow retry after its delivery was recorded
                return self.result("nothing_new", target=self.destination,
                                   detail=f"本次运行已于 {last.get('delivery_date')} 交付同一快照，不重复交付{tail}")
            return self.result("nothing_new", target=self.destination,
                               detail=f"上次交付的快照之后没有新发布的批次{tail}")
        return False, changes.reason

    def _curated(self, last: dict[str, Any] | None) -> ShareResult | tuple[bool, str]:
        from pipelines.publish.release import current_build

        contract = self.ctx.config.curated[self.grant.dataset]
        _table, snap, build_id, why = current_build(self.ctx.catalog, contract)
        if snap is None or why is not None:
            return self.result("nothing_new", detail=why or f"{contract.table} 尚未构建")
        self.snapshot_id = snap.snapshot_id
        if last is not None and last.get("std_snapshot_id") == snap.snapshot_id:
            return self.result("nothing_new", target=self.destination,
                               detail=f"构建 {build_id} 已于 {last.get('delivery_date')} 交付")
        return True, f"构建 {build_id}，全量交付" if last is None else f"新构建 {build_id}，全量交付"

    # --- rows -----------------------------------------------------------------------------------------

    def _scan(self, table: Any, fields: list[str], full: bool, row_filter: Any = None) -> Any:
        from pyiceberg.expressions import And, In

        from pipelines.lake.raw import stream_scan

        if full:
            return stream_scan(table.scan(snapshot_id=self.snapshot_id, selected_fields=tuple(fields)))
        expr = In("_batch_id", self.batches)
        return stream_scan(table.scan(row_filter=expr if row_filter is None else And(expr, row_filter),
                                      snapshot_id=self.snapshot_id, selected_fields=tuple(fields)))

    def _rows(self, table: Any, source: pa.Schema, deid: _Deid) -> _Rows:
        return _Rows(self._scan(table, list(self.columns), self.mode == "full"), source, deid)

    def _elements(self) -> dict[str, Any]:
        standards = self.ctx.config.standards
        return {c: standards.element(e) for c, e in self.decision.elements.items()}

    def _deletions(self, table: Any, deid: _Deid) -> pa.Table:
        """The keys deleted at the source in the delivered batches, minus keys the delivered rows carry again
        (deleted, then inserted anew), de-identified like the rows' keys. Empty for a full delivery.

        Only the changed rows whose key is a deleted one are kept from the key scan (a semi join per record
        batch): memory follows the deletions, not the changed batches' rows."""
        from pyiceberg.expressions import In

        from pipelines.lake.changes import deleted_keys

        arrow = table.schema().as_arrow()
        schema = _normalized(pa.schema([arrow.field(k) for k in self.keys]))
        if self.mode == "full" or not self.batches or not self.keys:
            return deid.keys_table(schema.empty_table(), self.keys)
        gone = deleted_keys(self.ctx.catalog, self.grant.dataset, self.batches, schema).cast(schema)
        if gone.num_rows:
            only = None
            if len(self.keys) == 1 and gone.num_rows <= KEY_FILTER_MAX:
                only = In(self.keys[0], gone.column(0).to_pylist())
            again = []
            for batch in self._scan(table, self.keys, False, only):
                if batch.num_rows:
                    rows = pa.Table.from_batches([batch]).select(self.keys).cast(schema)
                    again.append(rows.join(gone, self.keys, join_type="left semi"))
            if again:
                gone = gone.join(pa.concat_tables(again), self.keys, join_type="left anti")
        return deid.keys_table(gone.select(self.keys), self.keys)

    def _delivery(self, schema: pa.Schema, last: dict[str, Any] | None) -> Any:
        from pipelines.share.targets import Delivery

        # the target checks under its own lock/transaction that it still holds what this incremental builds on
        expect = None if self.mode == "full" or last is None else {
            "grant_id": self.grant.id, "std_snapshot_id": last.get("std_snapshot_id"),
            "fingerprint": last.get("fingerprint")}
        return Delivery(consumer=self.grant.consumer, dataset=self.grant.dataset, grant_id=self.grant.id,
                        delivery_date=self.ctx.delivery_date.isoformat(), mode=str(self.mode), keys=self.keys,
                        schema=schema, columns=self.columns, std_snapshot_id=self.snapshot_id,
                        batches=self.batches, fingerprint=self.fingerprint, info=self._info(schema), expect=expect)

    def _info(self, schema: pa.Schema) -> dict[str, Any]:
        """The dataset as the consumer reads it (``manifest.json``'s ``dataset_info``)."""
        config, grant = self.ctx.config, self.grant
        contract = (config.curated if self.decision.kind == "curated" else config.contracts).get(grant.dataset)
        elements = self._elements()
        return {"name": getattr(contract, "name", grant.dataset), "purpose": grant.purpose,
                "legal_basis": grant.legal_basis, "expires": grant.expires.isoformat() if grant.expires else None,
                "columns": [{"name": f.name, "title": getattr(elements.get(f.name), "name_zh", None),
                             "element": self.decision.elements.get(f.name), "type": str(f.type),
                             "deid": self.columns[f.name]} for f in schema]}


def _columns_of(row: dict[str, Any]) -> dict[str, str] | None:
    try:
        return json.loads(row.get("columns") or "null")
    except json.JSONDecodeError:
        return None


def _inside(path: str | None, base: str | None) -> bool:
    from pipelines.share.audit import same_target

    return path is not None and base is not None and same_target(path, base)


def _normalized(schema: pa.Schema) -> pa.Schema:
    from pipelines.lake.raw import normalize_type

    return pa.schema([pa.field(f.name, normalize_type(f.type)) for f in schema])


class _Deid:
    """De-identification of a grant's columns over whole arrays: keep, keyed pseudonym, element mask."""

    def __init__(self, columns: dict[str, str], elements: dict[str, Any], key: bytes | None) -> None:
        self.columns, self.elements, self.key = columns, elements, key

    def column(self, name: str, values: Any) -> pa.Array | pa.ChunkedArray:
        method = self.columns.get(name, "keep")
        if method == "pseudonym":
            from pipelines.privacy.pseudonym import pseudonymize

            if self.key is None:  # never reached: _consumer_key ran first; kept so no path yields clear values
                raise CitylakeError(f"{name}: pseudonym without a consumer key")
            return pseudonymize(values, self.key)
        if method == "mask":
            from pipelines.privacy.deid import mask_values

            return mask_values(values, self.elements[name])
        return values

    def output_type(self, name: str, source: pa.DataType) -> pa.DataType:
        return pa.string() if self.columns.get(name, "keep") in ("pseudonym", "mask") else source

    def schema(self, source: pa.Schema) -> pa.Schema:
        return pa.schema([pa.field(f.name, self.output_type(f.name, f.type)) for f in source])

    def batch(self, batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
        arrays = [self.column(name, batch.column(name)) for name in schema.names]
        return pa.RecordBatch.from_arrays([a.cast(f.type) for a, f in zip(arrays, schema, strict=True)],
                                          schema=schema)

    def keys_table(self, keys: pa.Table, names: list[str]) -> pa.Table:
        out = self.schema(keys.schema)
        return pa.Table.from_arrays([self.column(n, keys.column(n)).cast(out.field(n).type) for n in names],
                                    schema=out) if names else keys


class _Rows:
    """The delivered rows: the scan's record batches de-identified one at a time (``schema`` known up front)."""

    def __init__(self, reader: pa.RecordBatchReader, source: pa.Schema, deid: _Deid) -> None:
        # ``source`` from the table's schema, not the reader's: the fingerprint was computed from it
        self.reader, self.source, self.deid = reader, source, deid
        self.schema = deid.schema(source)

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        for batch in self.reader:
            if batch.num_rows == 0:
                continue
            if batch.schema != self.source:
                batch = batch.select(self.source.names).cast(self.source)
            yield self.deid.batch(batch, self.schema)
