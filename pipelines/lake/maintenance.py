"""Lake maintenance (``maintain__lake``, ``citylake lake maintain``): compaction, snapshot expiry, orphan files.

pyiceberg 0.12's ``ExpireSnapshots`` only removes snapshot entries from the metadata; it deletes no file, and
pyiceberg has neither orphan-file removal nor compaction. What is written here, per table:

1. **Compaction** (std, meta, quarantine): a table's small data files are rewritten into files of its target
   size in ONE overwrite commit tagged ``citylake.maintenance=compact`` that adds and deletes the same rows.
   The new files are written by pyiceberg's own writer with the table's properties, so std's and
   quarantine's full ``_batch_id`` bounds (``write.metadata.metrics.column._batch_id=full``) hold for them
   too. The commit is a single attempt (``raw.single_attempt``): refused because another writer committed,
   the compaction is planned again on the reloaded table (``raw.retry_conflicts``), so the other writer's
   rows are never lost. raw (append-only history, files named by batch, which ``raw_batch_ids`` reads) and
   curated (rebuilt whole by each build, its build id in the current snapshot's summary) are not compacted.
2. **Snapshot expiry** (every table): snapshots older than ``settings.snapshot_retention_days`` go, except
   the ones still needed (``needed_snapshots``): the current one and those branches/tags point at; any
   snapshot that stopped being current less than the orphan window ago (a reader planned on it may still
   read its files); std's and curated's latest data snapshot (``raw.data_snapshot``: the report's and
   catalog's 最近更新, a curated build's input id); std snapshots carrying a batch ``meta.batches`` does
   not record as published/released (the gate's ``_published_elsewhere`` and ``_removed_by_run`` and
   ``std_changes``' ``blocked`` read them); every std snapshot from a grant's last delivery (within
   ``SHARE_PIN_DAYS``) to the current one (``std_changes`` walks that ancestry); raw snapshots of batches
   held or not yet validated by a dataset that reads the table. Watermarks and load state live in table
   properties (``citylake.state``), never in a summary, so expiry cannot lose them.
3. **Orphan files**: every file under the table's location that no remaining snapshot references (data
   and delete files of any manifest entry, manifests, manifest lists, statistics) and that is not the
   current metadata file or in its metadata log, deleted only when older than ``orphan_window()`` =
   ``dag_defaults.EXECUTION_TIMEOUT`` + ``ORPHAN_MARGIN``: a load writes its Parquet files before it
   commits, and no task runs longer than its execution timeout. Local disk and S3 alike (the table's
   pyarrow filesystem).
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

import pyarrow as pa

from pipelines.dag_defaults import EXECUTION_TIMEOUT
from pipelines.lake.catalog import NAMESPACES, get_catalog
from pipelines.lake.raw import (
    BATCH_ID,
    DATA_BATCHES,
    DATA_SNAPSHOT,
    DATA_SNAPSHOT_MS,
    MAINTENANCE,
    PUBLISHED_BATCHES,
    carried_data,
    data_snapshot,
    open_table,
    retry_conflicts,
    single_attempt,
    summary_value,
)
from pipelines.settings import Settings, load_settings

COMPACT_NAMESPACES = ("std", "meta", "quarantine")
ORPHAN_MARGIN = timedelta(hours=18)
"""Added to the longest task's execution timeout: clock skew between workers and the object store, a task
queued after its files were staged, a CLI load a little longer than a task may run."""
SHARE_PIN_DAYS = 90
"""A grant's last delivery keeps std's snapshots from it to the current one this long; a grant that did not
deliver for longer gets a full delivery next time (``std_changes``: the snapshot left the history)."""
COMPACT_MIN_FILES = 4
"""Small files a table needs before it is compacted (fewer are not worth a commit)."""
SMALL_FRACTION = 4
"""A data file is small below its table's target file size divided by this."""
MAX_PENDING_BYTES = 128 << 20
"""Arrow bytes gathered before a compacted file is written (caps memory below a 512 MB target)."""
PENDING_BATCH_DAYS = SHARE_PIN_DAYS
"""A raw snapshot of a batch no dataset reading the table has published or released stays at most this
long (a contract that never publishes would keep them all forever). The gate does not need it: it finds a
batch's rows by ``_batch_id`` and ``raw_batch_ids`` recovers batch ids from the data files' names."""
DELIVERABLE = ("published", "released")
T = TypeVar("T")


def orphan_window() -> timedelta:
    """How old an unreferenced file must be before it is deleted: longer than any task's execution timeout."""
    return EXECUTION_TIMEOUT + ORPHAN_MARGIN


@dataclass
class TableReport:
    """What maintenance did (or, dry, would do) to one table; counts only (XCom carries this)."""

    table: str
    compacted_files: int = 0
    """Small data files rewritten."""
    compacted_into: int = 0
    """Files they became."""
    expired: int = 0
    kept: dict[str, int] = field(default_factory=dict)
    """Snapshots older than the retention that stay, by reason."""
    orphans: int = 0
    orphan_bytes: int = 0
    young_orphans: int = 0
    """Unreferenced files left because they are younger than the orphan window (in-flight writes)."""
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Context:
    """What the needed-snapshot rules read once per run: batch statuses, readers of raw, sharing pins, the
    inputs of curated builds, the raw batches of the latest std publishes."""

    status: dict[tuple[str, str], str]
    """(dataset, raw batch id) → latest ``meta.batches`` status."""
    raw_readers: dict[str, list[str]] | None
    """raw table → datasets whose contract reads it; None when the config cannot be read (raw not expired)."""
    share_pins: dict[str, set[int]]
    """std table → snapshot ids of grants' last deliveries."""
    why_no_config: str | None = None
    build_inputs: dict[str, set[int]] = field(default_factory=dict)
    """table → the (data) snapshot ids the current build of a curated table read (``citylake.inputs``)."""
    lineage: dict[str, set[str]] = field(default_factory=dict)
    """raw table → the batches its datasets' latest std publishes carried (the catalog's lineage shows the
    raw snapshot they came from)."""


def _latest_inputs(table: Any) -> dict[str, int]:
    """``citylake.inputs`` of the newest snapshot of a curated table that carries it."""
    for snap in sorted(table.metadata.snapshots, key=lambda s: s.timestamp_ms, reverse=True):
        text = summary_value(snap, "citylake.inputs")
        if text:
            try:
                return {str(k): int(v) for k, v in json.loads(text).items()}
            except (ValueError, AttributeError):
                return {}
    return {}


def _latest_batches(table: Any) -> set[str]:
    """The batches of the newest publish of a std table (a compaction carries its data snapshot's)."""
    for snap in sorted(table.metadata.snapshots, key=lambda s: s.timestamp_ms, reverse=True):
        text = summary_value(snap, PUBLISHED_BATCHES) or summary_value(snap, DATA_BATCHES)
        if text:
            return {str(b) for b in json.loads(text)}
    return set()


def _context(catalog: Any, settings: Settings, now: datetime) -> _Context:
    """Read once per run. Raises when ``meta.batches``, the sharing audit or a lake table cannot be read:
    ``maintain`` then expires nothing (still compacts and sweeps) and reports every table failed."""
    from pipelines.lake.meta import latest_events

    status: dict[tuple[str, str], str] = {}
    batches = open_table(catalog, "meta.batches")
    if batches is not None and batches.current_snapshot() is not None:
        for r in latest_events(batches.scan(selected_fields=("dataset", "raw_batch_id", "status", "recorded_at"))
                               .to_arrow()).to_pylist():
            status[str(r["dataset"]), str(r["raw_batch_id"])] = str(r["status"])
    readers: dict[str, list[str]] | None = {}
    why = None
    try:
        from pipelines.config import load_all

        for name, contract in load_all(settings).contracts.items():
            readers.setdefault(contract.raw_table, []).append(name)  # type: ignore[union-attr]
    except Exception as exc:  # noqa: BLE001 - fail safe: without the contracts no raw snapshot is expired
        readers, why = None, f"config unreadable ({type(exc).__name__}): raw snapshots kept"
    pins: dict[str, set[int]] = {}
    audit = open_table(catalog, "meta.sharing_audit")
    if audit is not None and audit.current_snapshot() is not None:
        from pyiceberg.expressions import EqualTo

        horizon = now - timedelta(days=SHARE_PIN_DAYS)
        rows = audit.scan(row_filter=EqualTo("outcome", "delivered"),
                          selected_fields=("grant_id", "dataset", "std_snapshot_id", "recorded_at")).to_arrow()
        latest: dict[str, dict[str, Any]] = {}
        for r in rows.to_pylist():
            at = r.get("recorded_at")
            if r["std_snapshot_id"] is None or (at is not None and at < horizon):
                continue
            if r["grant_id"] not in latest or (at or now) >= (latest[r["grant_id"]].get("recorded_at") or now):
                latest[r["grant_id"]] = r
        for r in latest.values():
            pins.setdefault(f"std.{r['dataset']}", set()).add(int(r["std_snapshot_id"]))
    inputs: dict[str, set[int]] = {}
    for ident in sorted(catalog.list_tables("curated")):
        for table_name, snap_id in _latest_inputs(catalog.load_table(ident)).items():
            inputs.setdefault(table_name, set()).add(snap_id)
    lineage: dict[str, set[str]] = {}
    for raw_table, datasets in (readers or {}).items():
        for dataset in datasets:
            std = open_table(catalog, f"std.{dataset}")
            if std is not None:
                lineage.setdefault(raw_table, set()).update(_latest_batches(std))
    return _Context(status, readers, pins, why, inputs, lineage)


def _superseded_at(table: Any) -> dict[int, int]:
    """Snapshot id → when (epoch ms) it stopped being the current snapshot (its successor in the snapshot log,
    or a child's commit when the log no longer says)."""
    out: dict[int, int] = {}
    log = list(table.metadata.snapshot_log)
    for before, after in itertools.pairwise(log):
        if before.snapshot_id != after.snapshot_id:
            out.setdefault(before.snapshot_id, after.timestamp_ms)
    for snap in table.metadata.snapshots:
        if snap.parent_snapshot_id is not None:
            out[snap.parent_snapshot_id] = min(out.get(snap.parent_snapshot_id, snap.timestamp_ms), snap.timestamp_ms)
    return out


def needed_snapshots(table: Any, name: str, ctx: _Context, now_ms: int, recent_ms: int) -> dict[int, str]:
    """Snapshot id → why it must stay whatever its age (module docstring, rule 2)."""
    from pyiceberg.table.snapshots import ancestors_of

    meta = table.metadata
    keep: dict[int, str] = {}
    current = table.current_snapshot()
    if current is not None:
        keep[current.snapshot_id] = "current"
    for ref_name, ref in meta.refs.items():
        keep.setdefault(ref.snapshot_id, f"ref {ref_name}")
    for snap_id, at in _superseded_at(table).items():
        if at > now_ms - recent_ms:
            keep.setdefault(snap_id, "recently current")
    ns, _, dataset = name.partition(".")
    chain = [s.snapshot_id for s in ancestors_of(current, meta)] if current is not None else []  # newest first
    if ns in ("std", "curated") and current is not None and carried_data(current) is None:
        # the current snapshot is the data snapshot, or an older compaction that does not name it: kept.
        # A compaction that names it (citylake.data-snapshot) stands for it: it may expire, with its files
        keep.setdefault(data_snapshot(table).snapshot_id, "latest data")
    for snap_id in ctx.build_inputs.get(name, set()):
        # a current curated build read it (the release's cut-off and the catalog's lineage time): a
        # compaction naming it keeps its id and time, else the snapshot itself stays
        carriers = [s for s in meta.snapshots if (c := carried_data(s)) is not None and c.snapshot_id == snap_id]
        if carriers:
            keep.setdefault(max(carriers, key=lambda s: s.timestamp_ms).snapshot_id, "curated build input")
        elif table.snapshot_by_id(snap_id) is not None:
            keep.setdefault(snap_id, "curated build input")
    if ns == "std":
        unrecorded = [snap.snapshot_id for snap in meta.snapshots
                      if any(ctx.status.get((dataset, str(b))) not in DELIVERABLE
                             for b in json.loads(summary_value(snap, PUBLISHED_BATCHES) or "[]"))]
        # std_changes walks the ancestry: every snapshot from the oldest unrecorded publish to the current
        # one stays, or expiry (which cuts the parent link of an expired snapshot's child) would hide it
        reach = max((chain.index(u) for u in unrecorded if u in chain), default=-1)
        for snap_id in [*unrecorded, *chain[: reach + 1]]:
            keep.setdefault(snap_id, "unrecorded publish")
        pinned = ctx.share_pins.get(name, set())
        reach = max((chain.index(p) for p in pinned if p in chain), default=-1)
        for snap_id in chain[: reach + 1]:
            keep.setdefault(snap_id, "sharing delivery")
    if ns == "raw" and ctx.raw_readers is not None:
        horizon = now_ms - PENDING_BATCH_DAYS * 86_400_000
        newest: dict[str, Any] = {}
        for snap in meta.snapshots:
            batch = summary_value(snap, BATCH_ID)
            if batch is None:
                continue
            if snap.timestamp_ms >= horizon and any(ctx.status.get((ds, batch)) not in DELIVERABLE
                                                    for ds in ctx.raw_readers.get(name, [])):
                keep.setdefault(snap.snapshot_id, "batch not yet published")
            if batch in ctx.lineage.get(name, set()) and (
                    batch not in newest or snap.timestamp_ms > newest[batch].timestamp_ms):
                newest[batch] = snap
        for snap in newest.values():
            keep.setdefault(snap.snapshot_id, "latest publish's source")
    return keep


def expire_snapshots(catalog: Any, name: str, ctx: _Context, *, retention: timedelta, now: datetime,
                     recent: timedelta, dry_run: bool = False) -> tuple[int, dict[str, int]]:
    """Expire the table's snapshots older than ``retention`` that are not needed; (expired, kept by reason).
    One commit, asserting the current snapshot it planned on: a concurrent commit, or another maintenance
    run that expired some of them first, plans it again."""
    from pyiceberg.exceptions import CommitFailedException
    from pyiceberg.table.update import AssertRefSnapshotId
    from pyiceberg.table.update.snapshot import ExpireSnapshots

    now_ms = int(now.timestamp() * 1000)
    cutoff = now_ms - int(retention.total_seconds() * 1000)

    def attempt() -> tuple[int, dict[str, int]]:
        table = catalog.load_table(name)
        keep = needed_snapshots(table, name, ctx, now_ms, int(recent.total_seconds() * 1000))
        old = [s.snapshot_id for s in table.metadata.snapshots if s.timestamp_ms < cutoff]
        kept: dict[str, int] = {}
        for snap_id in old:
            if snap_id in keep:
                kept[keep[snap_id]] = kept.get(keep[snap_id], 0) + 1
        gone = [s for s in old if s not in keep]
        if gone and not dry_run:
            tx = single_attempt(table).transaction()
            expire = ExpireSnapshots(tx).by_ids(gone)
            # pyiceberg stages no requirement: a snapshot another writer made current meanwhile would go too
            expire._requirements = (AssertRefSnapshotId(snapshot_id=table.metadata.current_snapshot_id, ref="main"),)
            try:
                expire.commit()
                tx.commit_transaction()
            except ValueError as exc:
                # pyiceberg's RemoveSnapshots against the catalog's metadata: a snapshot it names is gone
                # (another maintenance run expired it first). A conflict: planned again on the reloaded table
                if "does not exist" not in str(exc):
                    raise
                raise CommitFailedException(f"{name}: snapshot already expired by another run") from exc
        return len(gone), kept

    return _counted(f"{name}: snapshot expiry", attempt)


CONFLICTS: Counter[str] = Counter()
"""Maintenance commits refused by a concurrent writer and planned again, by what (compaction, expiry of a
table): tests read it to see a conflict really happened."""


def _counted(what: str, attempt: Callable[[], T]) -> T:
    """``raw.retry_conflicts`` with each refused attempt counted in ``CONFLICTS``."""
    from pyiceberg.exceptions import CommitFailedException, ValidationException

    def counting() -> T:
        try:
            return attempt()
        except (CommitFailedException, ValidationException):
            CONFLICTS[what.split(": ", 1)[-1]] += 1
            raise

    return retry_conflicts(what, counting)


# --- orphan files ----------------------------------------------------------------------------------


def _path(location: str) -> str:
    from pyiceberg.io.pyarrow import PyArrowFileIO

    return PyArrowFileIO.parse_location(location)[2]


def live_files(table: Any) -> set[str]:
    """Every file the table's metadata references (as filesystem paths): the current metadata file and its
    metadata log, statistics, and for every snapshot its manifest list, manifests and every data/delete
    file of any entry (deleted entries too: the gate's ``_removed_by_run`` reads files a kept snapshot
    removed)."""
    meta = table.metadata
    live = {table.metadata_location, *(e.metadata_file for e in meta.metadata_log)}
    live.update(s.statistics_path for s in getattr(meta, "statistics", []) or [])
    live.update(s.statistics_path for s in getattr(meta, "partition_statistics", []) or [])
    seen: set[str] = set()
    for snap in meta.snapshots:
        live.add(snap.manifest_list)
        for manifest in snap.manifests(table.io):
            if manifest.manifest_path in seen:
                continue
            seen.add(manifest.manifest_path)
            live.add(manifest.manifest_path)
            for entry in manifest.fetch_manifest_entry(table.io, discard_deleted=False):
                live.add(entry.data_file.file_path)
    return {_path(p) for p in live if p}


def delete_orphans(table: Any, *, older_than: timedelta, now: datetime, dry_run: bool = False) -> tuple[int, int, int]:
    """Delete the files under the table's location that ``live_files`` does not name and that were last
    modified more than ``older_than`` before ``now``; (deleted, bytes, young ones left). Hand-written:
    pyiceberg 0.12 has no orphan removal (Iceberg Java's ``DeleteOrphanFiles`` is this, on Spark)."""
    from pyarrow.fs import FileSelector, FileType

    scheme, netloc, base = table.io.parse_location(table.location())
    fs = table.io.fs_by_scheme(scheme, netloc)
    live = live_files(table)  # after the listing's start would miss nothing: new files are young
    limit = now - older_than
    deleted = size = young = 0
    for info in fs.get_file_info(FileSelector(base.rstrip("/"), recursive=True, allow_not_found=True)):
        if info.type != FileType.File or info.path in live:
            continue
        mtime = info.mtime
        if mtime is None:
            continue  # age unknown: never deleted
        if mtime.tzinfo is None:
            mtime = mtime.replace(tzinfo=UTC)
        if mtime > limit:
            young += 1
            continue
        if not dry_run:
            fs.delete_file(info.path)
        deleted += 1
        size += info.size or 0
    return deleted, size, young


# --- compaction ------------------------------------------------------------------------------------


class _TrackedOutput:
    """An output file that keeps the stream pyiceberg's Parquet writer opens on it: its ``tell()`` is the bytes
    written so far, so a compacted file is closed by its size ON DISK (pyiceberg's writer sizes by Arrow bytes,
    3-10x more: judged on disk, its files were all small again next week)."""

    def __init__(self, output: Any) -> None:
        self.output, self.stream = output, None

    def create(self, overwrite: bool = False) -> Any:
        self.stream = self.output.create(overwrite=overwrite)
        return self.stream

    def __len__(self) -> int:
        return len(self.output)

    @property
    def location(self) -> str:
        return str(self.output.location)


def _rewrite(table: Any, tasks: list[Any], target: int, snapshot: Any) -> int:
    """Write the rows of ``tasks`` (in order, one file read at a time) into new data files of about ``target``
    bytes on disk, added to ``snapshot``; the files' statistics come from pyiceberg's Parquet writer with the
    table's properties (metrics modes: std's full ``_batch_id`` bounds). A file is closed once it reaches the
    target, unless what is left to read is itself small: that rest goes into the same file (no fragment).
    Row groups gather input files up to the row-group limit / ``MAX_PENDING_BYTES``. Returns files written.
    Hand-written around pyiceberg's per-file writer: its ``_dataframe_to_data_files`` cannot size by disk."""
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import (  # pyiceberg is pinned (0.12); tests/test_maintenance exercises these
        DOWNCAST_NS_TIMESTAMP_TO_US_ON_WRITE,
        ArrowScan,
        Config,
        FileFormatFactory,
        _to_requested_schema,
        load_location_provider,
        pyarrow_to_schema,
        sanitize_column_names,
    )
    from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
    from pyiceberg.table import WriteTask
    from pyiceberg.typedef import Record

    meta = table.metadata
    schema = meta.schema()
    file_schema = sanitize_column_names(schema)
    model = FileFormatFactory.get(FileFormat.PARQUET)
    locations = load_location_provider(table_location=meta.location, table_properties=meta.properties)
    downcast = Config().get_bool(DOWNCAST_NS_TIMESTAMP_TO_US_ON_WRITE) or False
    row_limit = int(meta.properties.get("write.parquet.row-group-limit", 1048576))
    reader = ArrowScan(table_metadata=meta, io=table.io, projected_schema=schema, row_filter=AlwaysTrue())
    counter = itertools.count(0)
    written = 0
    out: _TrackedOutput | None = None
    writer: Any = None
    path = ""
    pending: list[pa.Table] = []
    pending_rows = pending_bytes = pending_disk = 0
    left = sum(t.file.file_size_in_bytes for t in tasks)
    """Input bytes on disk not yet written out."""

    def write_pending() -> None:
        nonlocal out, writer, path, pending, pending_rows, pending_bytes, pending_disk
        if not pending:
            return
        data = pa.concat_tables(pending)
        task_schema = pyarrow_to_schema(data.schema, name_mapping=schema.name_mapping,
                                        downcast_ns_timestamp_to_us=downcast, format_version=meta.format_version)
        batches = [_to_requested_schema(requested_schema=file_schema, file_schema=task_schema, batch=b,
                                        downcast_ns_timestamp_to_us=downcast, include_field_ids=True,
                                        format_model=model) for b in data.to_batches()]
        if writer is None:
            name = WriteTask(write_uuid=snapshot.commit_uuid, task_id=next(counter), record_batches=[],
                             schema=task_schema).generate_data_file_filename(model.file_extension())
            path = locations.new_data_location(data_file_name=name)
            out = _TrackedOutput(table.io.new_output(path))
            writer = model.create_writer(cast(Any, out), file_schema, meta.properties)
        writer.write(pa.Table.from_batches(batches))
        pending, pending_rows, pending_bytes, pending_disk = [], 0, 0, 0

    def close() -> None:
        nonlocal out, writer, written
        if writer is None:
            return
        stats = writer.close()
        assert out is not None
        snapshot.append_data_file(DataFile.from_args(
            content=DataFileContent.DATA, file_path=path, file_format=FileFormat.PARQUET, partition=Record(),
            file_size_in_bytes=len(out), sort_order_id=None, spec_id=meta.default_spec_id, equality_ids=None,
            key_metadata=None, **stats.to_serialized_dict()))
        written += 1
        out = writer = None

    for task in tasks:
        part = reader.to_table(tasks=[task])
        left -= task.file.file_size_in_bytes
        if part.num_rows:
            pending.append(part)
            pending_rows += part.num_rows
            pending_bytes += part.nbytes
            pending_disk += task.file.file_size_in_bytes
        on_disk = out.stream.tell() if out is not None and out.stream is not None else 0
        if pending_rows >= row_limit or pending_bytes >= MAX_PENDING_BYTES or on_disk + pending_disk >= target:
            write_pending()
        on_disk = out.stream.tell() if out is not None and out.stream is not None else 0
        if on_disk >= target and left >= target // SMALL_FRACTION:
            close()
    write_pending()
    close()
    return written


def compact(catalog: Any, name: str, *, min_files: int = COMPACT_MIN_FILES, dry_run: bool = False) -> tuple[int, int]:
    """Rewrite the table's small data files into files of its target size, in one overwrite commit that adds
    exactly the rows it deletes (``citylake.maintenance=compact``, and the data snapshot it holds the rows
    of: ``citylake.data-snapshot``/``-ms``/``-data-batches``). Small and target are both ON DISK (the table's
    ``write.target-file-size-bytes``): a file is small below target / ``SMALL_FRACTION``; the outputs reach
    the target (``_rewrite``), so they are not small next time and a rerun with no new data does nothing.
    Rewritten only when it lowers the file count by 2 or more (estimated outputs: small bytes // target, at
    least 1) and at least ``min_files`` are small. Files keep their order. (files rewritten, files written)."""
    def attempt() -> tuple[int, int]:
        table = catalog.load_table(name)
        current = table.current_snapshot()
        if current is None or not table.metadata.spec().is_unpartitioned():
            return 0, 0  # no lake table is partitioned; one that is would need the partition-aware writer
        target = int(table.metadata.properties.get("write.target-file-size-bytes", 512 << 20))
        small = [t for t in table.scan().plan_files()
                 if not t.delete_files and t.file.file_size_in_bytes < target // SMALL_FRACTION]
        outputs = max(1, sum(t.file.file_size_in_bytes for t in small) // target)
        if len(small) < max(2, min_files) or outputs >= len(small) - 1:
            return 0, 0
        if dry_run:
            return len(small), outputs
        data = data_snapshot(table)
        props = {MAINTENANCE: "compact", DATA_SNAPSHOT: str(data.snapshot_id), DATA_SNAPSHOT_MS: str(data.timestamp_ms)}
        batches = summary_value(data, PUBLISHED_BATCHES) or summary_value(current, DATA_BATCHES)
        if batches:
            props[DATA_BATCHES] = batches
        tx = single_attempt(table).transaction()
        with tx.update_snapshot(snapshot_properties=props).overwrite() as snapshot:
            for task in small:
                snapshot.delete_data_file(task.file)
            written = _rewrite(table, small, target, snapshot)
        tx.commit_transaction()
        return len(small), written

    return _counted(f"{name}: compaction", attempt)


# --- the run ---------------------------------------------------------------------------------------


def lake_tables(catalog: Any, namespaces: Iterable[str] = NAMESPACES) -> list[str]:
    return [".".join(ident) for ns in namespaces for ident in sorted(catalog.list_tables(ns))]


def maintain(settings: Settings | None = None, tables: list[str] | None = None, *,
             namespaces: Iterable[str] = NAMESPACES, dry_run: bool = False, now: datetime | None = None,
             retention: timedelta | None = None, recent: timedelta | None = None,
             orphans_older_than: timedelta | None = None, min_files: int = COMPACT_MIN_FILES,
             run_id: str | None = None) -> list[TableReport]:
    """Compact, expire and sweep each table (``tables``, else every table of ``namespaces``); one report per
    table. ``retention`` defaults to the settings', ``recent`` and ``orphans_older_than`` to
    ``orphan_window()`` (tests shorten them). A table's failure is reported in it, not raised, so one bad
    table does not stop the others; ``maintain_lake`` raises after the whole run when any failed. A run that
    is not dry is recorded in ``meta.runs`` (kind ``maintenance``, one row per call, ``failed`` when a table
    failed)."""
    from pipelines.lake.meta import new_run_id
    from pipelines.lake.runs import record_run

    settings = settings or load_settings()
    kw = {"namespaces": namespaces, "dry_run": dry_run, "now": now, "retention": retention, "recent": recent,
          "orphans_older_than": orphans_older_than, "min_files": min_files}
    if dry_run:
        return _maintain(settings, tables, **kw)  # type: ignore[arg-type]
    target = "lake:" + ",".join(tables if tables is not None else namespaces)
    with record_run("maintenance", run_id=run_id or new_run_id("maint"), target=target[:500],
                    settings=settings) as run:
        reports = _maintain(settings, tables, **kw)  # type: ignore[arg-type]
        failed = [r.table for r in reports if r.skipped and r.skipped.startswith("failed")]
        run.done(status="failed" if failed else "succeeded", rows_in=len(reports),
                 detail=(f"failed: {', '.join(failed)}; " if failed else "")
                 + f"compacted {sum(r.compacted_files for r in reports)} file(s), expired "
                 f"{sum(r.expired for r in reports)} snapshot(s), {sum(r.orphans for r in reports)} orphan(s)")
        if failed:
            run.error = next(r.skipped for r in reports if r.skipped and r.skipped.startswith("failed"))
    return reports


def _maintain(settings: Settings, tables: list[str] | None, *, namespaces: Iterable[str], dry_run: bool,
              now: datetime | None, retention: timedelta | None, recent: timedelta | None,
              orphans_older_than: timedelta | None, min_files: int) -> list[TableReport]:
    catalog = get_catalog(settings)
    now = now or datetime.now(UTC)
    retention = retention if retention is not None else timedelta(days=settings.snapshot_retention_days)
    window = orphan_window()
    recent = recent if recent is not None else window
    orphans_older_than = orphans_older_than if orphans_older_than is not None else window
    names = tables if tables is not None else lake_tables(catalog, namespaces)
    ctx: _Context | None = None
    why_no_ctx = ""
    try:
        ctx = _context(catalog, settings, now)
    except Exception as exc:  # noqa: BLE001 - no expiry without it; compaction and the orphan sweep still run
        from pipelines.privacy import mask_message

        why_no_ctx = (f"failed: snapshot expiry not run: meta.batches, the sharing audit or a curated table "
                      f"unreadable ({type(exc).__name__}: {mask_message(str(exc).splitlines()[0] if str(exc) else '')})")
    reports = []
    for name in names:
        report = TableReport(name)
        reports.append(report)
        try:
            if open_table(catalog, name) is None:
                report.skipped = "no such table"
                continue
            if name.partition(".")[0] in COMPACT_NAMESPACES:
                report.compacted_files, report.compacted_into = compact(catalog, name, min_files=min_files,
                                                                        dry_run=dry_run)
            if ctx is None:
                report.skipped = why_no_ctx
            elif name.startswith("raw.") and ctx.raw_readers is None:
                report.skipped = ctx.why_no_config
            else:
                report.expired, report.kept = expire_snapshots(catalog, name, ctx, retention=retention, now=now,
                                                               recent=recent, dry_run=dry_run)
            report.orphans, report.orphan_bytes, report.young_orphans = delete_orphans(
                catalog.load_table(name), older_than=orphans_older_than, now=now, dry_run=dry_run)
        except Exception as exc:  # noqa: BLE001 - reported per table; the caller decides
            from pipelines.privacy import mask_message

            report.skipped = f"failed: {type(exc).__name__}: {mask_message(str(exc).splitlines()[0] if str(exc) else '')}"
    return reports
