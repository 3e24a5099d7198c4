"""Departmental sharing: deliver one grant (``deliver_grant``) or every grant (``deliver_all``) of a day.

Per grant: the policy decides (``policy.decide``); a refusal is recorded and returned, nothing is read.
Otherwise the grant's last delivery to the same method and destination (``audit.last_delivered``) says where
to start: a std dataset is delivered from the std snapshots published since (``changes.std_changes``: the
raw batches they carry, checked against ``meta.batches``), only the rows of those batches
(``_batch_id IN …``, files pruned by their exact ``_batch_id`` bounds) plus the keys deleted at the source
(``changes.deleted_keys``); the first delivery, a grant whose columns or de-identification changed, or a
snapshot no longer in the table's history is full. A curated dataset (rebuilt whole) is delivered full when
its current build passed the gate and is not the one delivered last. Rows stream one record batch at a time
from the scan through de-identification (keyed pseudonyms per consumer, element masks) into the target
(``targets``), so memory is bounded by a batch whatever the table's size.

Every attempt appends one ``meta.sharing_audit`` row. A missing master key when a pseudonym is needed fails
the delivery before anything is read (never clear values instead); a target failure is recorded and raised,
and the target leaves the consumer's previous delivery as it was. A retry of a run that already delivered
finds its own audit row and the same snapshot: ``nothing_new``, not a second delivery.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import date
from typing import Any

import pyarrow as pa

from pipelines.errors import CitylakeError
from pipelines.settings import Settings, load_settings

log = logging.getLogger(__name__)

OUTCOMES = ("delivered", "nothing_new", "refused", "failed")


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
    return _Context(settings, load_all(settings), load_departments(settings), load_grants(settings),
                    get_catalog(settings), delivery_date, run_id)


def deliver_grant(settings: Settings | None, grant_id: str, *, delivery_date: date, run_id: str) -> ShareResult:
    """Deliver grant ``grant_id`` for ``delivery_date`` under ``run_id``. Refusals and nothing-new are returned;
    a missing master key (MissingKeyError) or a target failure is audited and raised."""
    ctx = _context(settings, delivery_date, run_id)
    grant = ctx.grants.grants.get(grant_id)
    if grant is None:
        known = ", ".join(sorted(ctx.grants.grants)) or "none"
        raise CitylakeError(f"share: no grant {grant_id!r} in {ctx.settings.grants}/*.yml (known: {known})")
    return _deliver(ctx, grant)


def deliver_all(settings: Settings | None = None, *, delivery_date: date, run_id: str,
                consumer: str | None = None) -> list[ShareResult]:
    """Deliver every grant (of ``consumer`` when given), in grant id order; one grant's failure is in its result
    (outcome ``failed``, audited) and never stops the next."""
    ctx = _context(settings, delivery_date, run_id)
    results = []
    for gid, grant in sorted(ctx.grants.grants.items()):
        if consumer is not None and grant.consumer != consumer:
            continue
        try:
            results.append(_deliver(ctx, grant))
        except Exception as exc:  # noqa: BLE001 - audited in _deliver; the next grant still goes
            results.append(ShareResult(gid, grant.consumer, grant.dataset, "failed",
                                       getattr(exc, "share_reason", "error"), _safe(exc)))
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
    from pipelines.share.audit import record

    record(ctx.catalog, [{
        "run_id": ctx.run_id, "delivery_date": ctx.delivery_date.isoformat(), "consumer": grant.consumer,
        "dataset": grant.dataset, "grant_id": grant.id, "grant_file": _where(ctx, grant), "outcome": result.outcome,
        "reason": result.reason, "detail": result.detail, "mode": result.mode, "rows": result.rows,
        "deleted": result.deleted, "method": grant.delivery.method, "target": result.target,
        "checksum": result.checksum, **extra}])
    level = logging.WARNING if result.outcome in ("refused", "failed") else logging.INFO
    log.log(level, "share %s → %s %s: %s %s", grant.id, grant.consumer, grant.dataset, result.outcome,
            result.detail or "")
    return result


def _deliver(ctx: _Context, grant: Any) -> ShareResult:
    from pipelines.share.policy import decide

    decision = decide(grant, ctx.config, ctx.departments, ctx.grants, ctx.delivery_date)
    columns = dict(decision.columns)
    base = {"grant_id": grant.id, "consumer": grant.consumer, "dataset": grant.dataset}
    if decision.refusal is not None:
        result = ShareResult(**base, outcome="refused", reason=decision.refusal.code, detail=decision.refusal.detail)
        return _audit(ctx, grant, result, columns=columns or None)
    plan = _Plan(ctx, grant, decision)
    try:
        return plan.run()
    except Exception as exc:
        reason = getattr(exc, "share_reason", None) or _reason(exc)
        result = ShareResult(**base, outcome="failed", reason=reason, detail=_failure(grant, reason, exc),
                             mode=plan.mode, target=plan.destination)
        _audit(ctx, grant, result, columns=columns, std_snapshot_id=plan.snapshot_id, batches=plan.batches or None)
        exc.share_reason = reason  # type: ignore[attr-defined]  # deliver_all's result says the same
        raise


def _reason(exc: BaseException) -> str:
    from pipelines.privacy.pseudonym import MissingKeyError

    return "missing_key" if isinstance(exc, MissingKeyError) else "error"


def _failure(grant: Any, reason: str, exc: BaseException) -> str:
    if reason == "missing_key":  # the key error names the variable and connection, never a value
        return f"授权 {grant.id}：共享主密钥未配置，需要化名的交付已停止，未交付任何数据 ({_safe(exc)})"
    if reason == "target_failed":
        return f"授权 {grant.id}：交付目标写入失败，{grant.consumer} 保留上一次交付 ({_safe(exc)})"
    return f"授权 {grant.id}：交付失败 ({_safe(exc)})"


class _Plan:
    """One grant's delivery once the policy allowed it: what to read, how to de-identify, where to put it."""

    def __init__(self, ctx: _Context, grant: Any, decision: Any) -> None:
        self.ctx, self.grant, self.decision = ctx, grant, decision
        self.columns: dict[str, str] = dict(decision.columns)
        self.keys: list[str] = list(decision.keys)
        self.mode: str | None = None
        self.destination: str | None = None
        self.snapshot_id: int | None = None
        self.batches: list[str] = []

    def result(self, outcome: str, **kw: Any) -> ShareResult:
        return ShareResult(self.grant.id, self.grant.consumer, self.grant.dataset, outcome, **kw)

    def run(self) -> ShareResult:
        from pipelines.lake.raw import open_table
        from pipelines.share.audit import last_delivered
        from pipelines.share.targets import open_target

        ctx, grant = self.ctx, self.grant
        # the key first: a delivery that needs pseudonyms and cannot make them reads nothing
        key = self._consumer_key()
        target = open_target(ctx.settings, grant)
        self.destination = _destination(ctx.settings, grant)
        last = last_delivered(ctx.catalog, grant.id, grant.delivery.method, self.destination)
        same_columns = last is not None and _columns_of(last) == self.columns
        table = open_table(ctx.catalog, str(self.decision.table))
        if self.decision.kind == "curated":
            found = self._curated(table, last if same_columns else None)
        else:
            found = self._std(last if same_columns else None, changed=last is not None and not same_columns)
        if isinstance(found, ShareResult):
            return _audit(ctx, grant, found, columns=self.columns, std_snapshot_id=self.snapshot_id,
                          batches=self.batches or None)
        full, why = found
        self.mode = "full" if full else "incremental"
        rows, deletions = self._rows(table, full, key), self._deletions(table, full, key)
        delivery = self._delivery(rows.schema)
        try:
            placed = target.deliver(delivery, iter(rows), deletions)
        except Exception as exc:
            exc.share_reason = "target_failed"  # type: ignore[attr-defined]
            raise
        detail = (f"{why}；交付 {placed.rows} 行" + (f"，删除 {placed.deleted} 个主键" if placed.deleted else "")
                  + f"（快照 {self.snapshot_id}）")
        result = self.result("delivered", detail=detail, mode=self.mode, rows=placed.rows, deleted=placed.deleted,
                             target=placed.target, checksum=placed.checksum)
        return _audit(self.ctx, grant, result, columns=self.columns, std_snapshot_id=self.snapshot_id,
                      batches=self.batches)

    def _consumer_key(self) -> bytes | None:
        if "pseudonym" not in self.columns.values():
            return None
        from pipelines.privacy.pseudonym import consumer_key, master_key

        return consumer_key(master_key(), self.grant.consumer)

    # --- what changed ---------------------------------------------------------------------------------

    def _std(self, last: dict[str, Any] | None, *, changed: bool) -> ShareResult | tuple[bool, str]:
        from pipelines.lake.changes import std_changes

        since = last.get("std_snapshot_id") if last else None
        changes = std_changes(self.ctx.catalog, self.grant.dataset, since)
        self.snapshot_id, self.batches = changes.snapshot_id, list(changes.batches)
        if changes.snapshot_id is None:
            return self.result("nothing_new", detail=f"{self.decision.table} 尚无已发布的数据")
        if changes.full or last is None:
            why = "授权的列或脱敏方式已变更，全量交付" if changed else changes.reason
            return True, why
        if not changes.batches or changes.snapshot_id == since:
            if last is not None and last.get("run_id") == self.ctx.run_id:  # an Airflow retry after its delivery was recorded
                return self.result("nothing_new", target=self.destination,
                                   detail=f"本次运行已于 {last.get('delivery_date')} 交付快照 {since}，不重复交付")
            return self.result("nothing_new", target=self.destination, detail=f"快照 {since} 之后没有新发布的批次")
        return False, changes.reason

    def _curated(self, table: Any, last: dict[str, Any] | None) -> ShareResult | tuple[bool, str]:
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

    def _scan(self, table: Any, fields: list[str], full: bool) -> Any:
        from pyiceberg.expressions import In

        from pipelines.lake.raw import stream_scan

        if full:
            return stream_scan(table.scan(snapshot_id=self.snapshot_id, selected_fields=tuple(fields)))
        return stream_scan(table.scan(row_filter=In("_batch_id", self.batches), snapshot_id=self.snapshot_id,
                                      selected_fields=tuple(fields)))

    def _rows(self, table: Any, full: bool, key: bytes | None) -> _Rows:
        reader = self._scan(table, list(self.columns), full)
        return _Rows(reader, _Deid(self.columns, self._elements(), key))

    def _elements(self) -> dict[str, Any]:
        standards = self.ctx.config.standards
        return {c: standards.element(e) for c, e in self.decision.elements.items()}

    def _deletions(self, table: Any, full: bool, key: bytes | None) -> pa.Table:
        """The keys deleted at the source in the delivered batches, minus keys the delivered rows carry again
        (deleted, then inserted anew), de-identified like the rows' keys. Empty for a full delivery."""
        from pipelines.lake.changes import deleted_keys

        arrow = table.schema().as_arrow()
        schema = _normalized(pa.schema([arrow.field(k) for k in self.keys]))
        if full or not self.batches or not self.keys:
            return _Deid(self.columns, self._elements(), key).keys_table(schema.empty_table(), self.keys)
        gone = deleted_keys(self.ctx.catalog, self.grant.dataset, self.batches, schema)
        if gone.num_rows:
            present = pa.Table.from_batches(list(self._scan(table, self.keys, False)))
            if present.num_rows:
                present = present.cast(schema)
                gone = gone.cast(schema).join(present, self.keys, join_type="left anti")
        return _Deid(self.columns, self._elements(), key).keys_table(gone.select(self.keys), self.keys)

    def _delivery(self, schema: pa.Schema) -> Any:
        from pipelines.share.targets import Delivery

        return Delivery(consumer=self.grant.consumer, dataset=self.grant.dataset, grant_id=self.grant.id,
                        delivery_date=self.ctx.delivery_date.isoformat(), mode=str(self.mode), keys=self.keys,
                        schema=schema, columns=self.columns, std_snapshot_id=self.snapshot_id,
                        batches=self.batches)


def _columns_of(row: dict[str, Any]) -> dict[str, str] | None:
    try:
        return json.loads(row.get("columns") or "null")
    except json.JSONDecodeError:
        return None


def _destination(settings: Settings, grant: Any) -> str:
    """Where the grant's deliveries go, as the audit's ``target`` starts: a file grant's dataset folder
    (``<exports>/share/<consumer>/<dataset>``, each delivery a dated folder inside), a database grant's
    ``share_<consumer>.<dataset>`` (a move to another exports location or schema starts again in full)."""
    if grant.delivery.method == "file":
        from pipelines.publish.store import open_store
        from pipelines.share.targets import share_folder

        store = open_store(settings.exports, s3_endpoint=settings.s3_endpoint)
        return store.url(share_folder(grant.consumer, grant.dataset))
    return f"share_{grant.consumer.lower()}.{grant.dataset}"


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

    def __init__(self, reader: pa.RecordBatchReader, deid: _Deid) -> None:
        self.reader = reader
        self.deid = deid
        self.source = _normalized(reader.schema)
        self.schema = deid.schema(self.source)

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        for batch in self.reader:
            if batch.num_rows == 0:
                continue
            if batch.schema != self.source:
                batch = batch.cast(self.source)
            yield self.deid.batch(batch, self.schema)
