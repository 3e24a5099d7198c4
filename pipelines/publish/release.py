"""``release_open_data``: the nightly open-data release (``publish__open_data``, ``citylake open release``).

For each curated dataset, in turn (one dataset's failure never stops the next):
1. not released when its open type is 不予开放 (``not_open``; a dataset the pointer still names is then
   ``withdrawn``: its entry removed, the pointer's catalog rewritten without it, its folders left to
   retention; so is a dataset the pointer names whose contract was deleted, at ``finish_release``) or its
   current build did not pass the gate
   (``not_passed``: the build id in ``curated.<ds>``'s snapshot summary has no published/released event in
   ``meta.batches``); ``unchanged`` when ``latest.json`` already points at a verified folder of the same build
   made with the same contract and release format (no new folder);
2. ``curated.<ds>`` streamed at that snapshot (``stream_scan``, dropped columns never read) → de-identified
   (``pipelines.privacy.deid``) → Parquet, CSV and JSON Lines written in one pass into a staging folder,
   SHA-256 and rows counted while writing;
3. the leak gate: the three data files read back and scanned (``leak``); a hit blocks the dataset: its staged
   files are deleted, its pointer stays, ``meta.releases`` says ``blocked`` with the hits masked;
4. metadata (``datapackage.json``, ``dictionary.csv``, ``changes.json`` against the release the pointer names,
   ``card.md``/``card.json`` when the contract has a ``card``, then ``manifest.json`` over all of them), each
   scanned as text with the dataset's entry of the date's catalog (``leak.scan_text``): a hit blocks as in 3;
5. the folder moved into place under a NEW name and verified there (``store``): ``open/<d>/<ds>/`` for
   the day's first build, ``open/<d>/<ds>~<8 hex of the build id>/`` for a later one (folders are immutable;
   the pointer carries the path), then ``latest.json`` replaced atomically for this dataset only
   (``pointer``).
The run's ``meta.releases`` events (one per dataset) are appended in one commit at its end, also when it is
interrupted (the DAG runs one dataset per task, so one event per task).
Then (``finish_release``) ``open/<date>/catalog.jsonld`` (DCAT-AP 3) over every dataset the pointer names, and
retention: release-date folders beyond the newest ``settings.open_keep`` are removed, except every folder the
pointer references; within the kept dates a same-day folder superseded by the one the pointer names is
removed too. ``withdraw`` (``citylake open withdraw``) takes a dataset down by hand (a leak found after the
release): its pointer entry, the folder it named, a ``withdrawn`` event, the catalog rewritten.

A run killed at any point leaves every pointer on a complete, verified folder: a folder is complete before
it is renamed into place, and the pointer moves only after that; what the killed run staged is swept by the
next run (a dot-named folder the portal never lists).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import CitylakeError
from pipelines.publish.pointer import (
    POINTER,
    move_dataset,
    read_pointer,
    referenced_folders,
    remove_dataset,
    set_catalog,
)
from pipelines.publish.store import Store, open_store
from pipelines.settings import TZ, Settings, load_settings

log = logging.getLogger(__name__)

RELEASE_FORMAT = 1
"""Version of what the release writes (layout, formats, metadata): a new version releases every dataset
again even when its build did not change."""
PASSED = ("published", "released")
"""``meta.batches`` statuses of a build that passed the gate."""
STATUSES = ("released", "unchanged", "blocked", "failed", "not_open", "not_passed", "withdrawn")
INTERRUPTED = "发布中断 (interrupted)"


@dataclass
class DatasetOutcome:
    """What the release did with one dataset."""

    dataset: str
    status: str
    folder: str | None = None
    """Relative to the exports root (``open/<d>/<ds>/``): the new folder, or the one the pointer keeps."""
    rows: int = 0
    build_id: str | None = None
    reason: str | None = None
    """Why it was not released (masked)."""
    leak_counts: dict[str, int] = field(default_factory=dict)
    leak_hits: list[dict[str, Any]] = field(default_factory=list)
    """The first hits per file, values masked."""
    suppressed: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    """Seconds per step (write, scan, metadata, place, total)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ReleaseResult:
    release_date: date
    run_id: str
    exports: str
    """Where the release lives (a local folder or ``s3://bucket/prefix/``)."""
    outcomes: list[DatasetOutcome]
    catalog: str | None = None
    """The ``catalog.jsonld`` written (relative), None when nothing was released on this date."""
    removed: list[str] = field(default_factory=list)
    """Folders retention removed."""

    @property
    def folder(self) -> str:
        """The release-date folder: ``<exports>/open/<d>/``."""
        base = self.exports if self.exports.endswith("/") else self.exports + "/"
        return f"{base}open/{self.release_date.isoformat()}/"

    @property
    def pointer(self) -> str:
        """``<exports>/open/latest.json``."""
        base = self.exports if self.exports.endswith("/") else self.exports + "/"
        return f"{base}open/latest.json"

    @property
    def released_today(self) -> bool:
        """Whether the release-date folder holds something (this run's or an earlier run's of the same day)."""
        return self.catalog is not None or any(o.status == "released" for o in self.outcomes)

    @property
    def ok(self) -> bool:
        """No dataset blocked or failed."""
        return not any(o.status in ("blocked", "failed") for o in self.outcomes)

    def to_dict(self) -> dict[str, Any]:
        return {"release_date": self.release_date.isoformat(), "run_id": self.run_id, "exports": self.exports,
                "folder": self.folder, "pointer": self.pointer, "catalog": self.catalog, "removed": self.removed,
                "datasets": [o.to_dict() for o in self.outcomes]}


@dataclass
class _Run:
    settings: Settings
    config: Any
    store: Store
    catalog: Any
    release_date: date
    run_id: str
    scratch: Path
    departments: Any = None
    names: dict[str, str] | None = None
    """GB/T 2260 code → name (``dcat.division_names``), read once per run like ``departments``."""
    scores: dict[str, float | None] | None = None
    gate: dict[tuple[str, str], str] = field(default_factory=dict)
    """(dataset, build id) → its latest ``meta.batches`` status (``gate_status``)."""
    released: dict[str, Any] = field(default_factory=dict)
    """dataset → DatasetRelease made by this run."""

    @property
    def day(self) -> str:
        return self.release_date.isoformat()

    def registry(self) -> Any:
        """The department registry, loaded on first use."""
        if self.departments is None:
            from pipelines.departments import load_departments

            self.departments = load_departments(self.settings)
        return self.departments

    def division_names(self) -> dict[str, str]:
        """The division names the DCAT catalog uses, read on first use."""
        if self.names is None:
            from pipelines.publish.dcat import division_names

            self.names = division_names(self.settings.root)
        return self.names

    def quality_score(self, dataset: str) -> float | None:
        if self.scores is None:
            try:
                from pipelines.quality.scorecard import latest_scores

                self.scores = latest_scores(self.catalog)
            except Exception as exc:  # noqa: BLE001 - a score is metadata; its absence must not block a release
                log.warning("open release: quality scores unavailable (%s); manifests say null", exc)
                self.scores = {}
        return self.scores.get(dataset)


def today() -> date:
    return datetime.now(TZ).date()


def store_for(settings: Settings) -> Store:
    """The release store of ``settings.exports`` (local folder or S3 prefix)."""
    return open_store(settings.exports, s3_endpoint=settings.s3_endpoint,
                      scratch=settings.lake_dir / "tmp" / "open-stage")


def release_open_data(settings: Settings | None = None, *, release_date: date | None = None,
                      datasets: list[str] | None = None, run_id: str | None = None,
                      finish: bool = True) -> ReleaseResult:
    """Release the open curated datasets (all, or ``datasets``) for ``release_date`` (default: today in
    Asia/Shanghai). ``finish``: also write the date's DCAT catalog and apply retention (the DAG does that in a
    task of its own after the per-dataset tasks). Never raises for one dataset's failure: see the outcomes."""
    from pipelines.config import load_all
    from pipelines.lake.catalog import get_catalog
    from pipelines.lake.meta import new_run_id
    from pipelines.lake.runs import record_run

    settings = settings or load_settings()
    config = load_all(settings)
    names = sorted(config.curated) if datasets is None else list(dict.fromkeys(datasets))
    unknown = [n for n in names if n not in config.curated]
    if unknown:
        raise CitylakeError(f"open release: no curated contract {', '.join(unknown)} (known: "
                            f"{', '.join(sorted(config.curated))}; schemas/curated/)")
    store = store_for(settings)
    run = _Run(settings, config, store, get_catalog(settings), release_date or today(), run_id or new_run_id("open"),
               Path())
    outcomes: list[DatasetOutcome] = []
    with store.lock(), tempfile.TemporaryDirectory(prefix="citylake-open-") as scratch:
        run.scratch = Path(scratch)
        store.sweep()
        run.gate = gate_status(run.catalog, names)
        try:
            for name in names:
                outcome = DatasetOutcome(name, "failed", reason=INTERRUPTED)
                outcomes.append(outcome)
                # meta.runs: one row per dataset and release run (status: the outcome's)
                with record_run("release", run_id=run.run_id, target=f"open:{run.day}/{name}", settings=settings,
                                dataset=name, table=f"curated.{name}") as ledger:
                    _release_one(run, config.curated[name], outcome)
                    ledger.done(status=outcome.status, rows_out=outcome.rows, batch_id=outcome.build_id,
                                detail=outcome.reason)
                log.info("open release %s %s: %s %s", run.day, name, outcome.status, outcome.reason or "")
        finally:  # one commit for the run's events, also when it is interrupted between two datasets
            if outcomes and outcomes[-1].reason == INTERRUPTED:
                _settle(run, outcomes[-1])
            _record(run, outcomes)
        result = ReleaseResult(run.release_date, run.run_id, store.location, outcomes)
        if finish:
            result.catalog, result.removed = _finish(run)
    return result


def finish_release(settings: Settings | None = None, *, release_date: date | None = None) -> tuple[str | None, list[str]]:
    """The date's ``catalog.jsonld`` over every dataset the pointer names, and retention; returns (catalog path
    relative to the exports root or None, folders removed). The DAG's last task."""
    from pipelines.config import load_all
    from pipelines.lake.catalog import get_catalog

    settings = settings or load_settings()
    store = store_for(settings)
    run = _Run(settings, load_all(settings), store, get_catalog(settings), release_date or today(), "", Path())
    with store.lock(), tempfile.TemporaryDirectory(prefix="citylake-open-") as scratch:
        run.scratch = Path(scratch)
        return _finish(run)


# --- one dataset -------------------------------------------------------------------------------------


def _settle(run: _Run, outcome: DatasetOutcome) -> None:
    """The outcome of a dataset whose release was interrupted: released when the pointer already names this
    date's folder of its build (the interruption came after the pointer moved), else failed."""
    try:
        entry = read_pointer(run.store)["datasets"].get(outcome.dataset) or {}
    except Exception:  # noqa: BLE001 - recording what is known matters more than the detail
        return
    if outcome.build_id and entry.get("build_id") == outcome.build_id and entry.get("release_date") == run.day:
        outcome.status, outcome.reason = "released", None
        outcome.folder, outcome.rows = entry.get("path"), int(entry.get("rows") or 0)


def fingerprint(contract: Any) -> str:
    """What besides the build decides a release folder's content: the curated contract (columns, de-
    identification, metadata), the release format and the leak detectors' version (a detector fix re-scans
    unchanged builds). 16 hex of SHA-256."""
    from pipelines.publish.leak import LEAK_VERSION

    text = json.dumps({"format": RELEASE_FORMAT, "leak": LEAK_VERSION, "contract": contract.model_dump(mode="json")},
                      ensure_ascii=False, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def gate_status(catalog: Any, datasets: list[str]) -> dict[tuple[str, str], str]:
    """(dataset, build id) → the latest ``meta.batches`` status of every build of ``datasets`` (one read of the
    log for the whole run; ``latest_events`` is the gate's own rule for "latest")."""
    from pyiceberg.expressions import In

    from pipelines.lake.meta import latest_events
    from pipelines.lake.raw import open_table

    log_table = open_table(catalog, "meta.batches")
    if log_table is None or log_table.current_snapshot() is None or not datasets:
        return {}
    events = log_table.scan(row_filter=In("dataset", datasets)).to_arrow()
    return {(r["dataset"], r["raw_batch_id"]): r["status"] for r in latest_events(events).to_pylist()}


def current_build(catalog: Any, contract: Any, gate: dict[tuple[str, str], str] | None = None
                  ) -> tuple[Any, Any, str | None, str | None]:
    """(table, snapshot, build id, why not releasable) of ``curated.<ds>``: its current snapshot's build must
    have a published or released ``meta.batches`` event (the gate's verdict on that build). ``gate``: the
    statuses read once for the run (``gate_status``), read here when not given."""
    from pipelines.lake.raw import open_table, summary_value

    table = open_table(catalog, contract.table)
    snap = table.current_snapshot() if table is not None else None
    if snap is None:
        return table, None, None, f"{contract.table} 尚未构建 (not built yet: citylake curate {contract.dataset})"
    build_id = summary_value(snap, "citylake.build-id")
    if build_id is None:
        return table, snap, None, f"{contract.table}: 当前快照没有构建号 (snapshot {snap.snapshot_id} has no build id)"
    if gate is None:
        gate = gate_status(catalog, [contract.dataset])
    status = gate.get((contract.dataset, build_id))
    if status not in PASSED:
        return table, snap, build_id, (f"构建 {build_id} 未通过质量检查 (gate status {status or 'none recorded'})")
    return table, snap, build_id, None


def _release_one(run: _Run, contract: Any, outcome: DatasetOutcome) -> DatasetOutcome:
    """Release one dataset, recording what happened in ``outcome`` as it goes (the caller holds it, so an
    interruption still leaves what was done)."""
    ds = contract.dataset
    started = time.perf_counter()
    stage: Path | None = None
    try:
        if contract.open.type == "不予开放":
            outcome.status, outcome.reason = "not_open", f"开放类型为不予开放 ({_where(run, contract, 'open', 'type')})"
            if ds in read_pointer(run.store)["datasets"]:  # it was open before: take it off the portal
                _withdraw(run, ds, outcome, f"开放类型改为不予开放，撤回 ({_where(run, contract, 'open', 'type')})")
            return outcome
        table, snap, build_id, why = current_build(run.catalog, contract, run.gate)
        outcome.build_id = build_id
        pointer = read_pointer(run.store)
        entry = pointer["datasets"].get(ds)
        outcome.folder = entry.get("path") if entry else None
        if why is not None or build_id is None:
            outcome.status, outcome.reason = "not_passed", why
            return outcome
        fp = fingerprint(contract)
        if entry and entry.get("build_id") == build_id and entry.get("fingerprint") == fp \
                and run.store.exists(f"{entry['path']}manifest.json"):
            outcome.status, outcome.rows = "unchanged", int(entry.get("rows") or 0)
            outcome.reason = f"构建 {build_id} 已于 {entry.get('release_date')} 发布"
            return outcome
        folder = new_folder(run.store, run.day, ds, build_id)
        stage = run.store.stage(run.day, ds)
        release, hits = _build_folder(run, contract, table, snap, build_id, fp, entry, stage, outcome, folder)
        if hits:
            outcome.status = "blocked"
            outcome.reason = (f"泄露检查发现个人信息 {sum(outcome.leak_counts.values())} 处 "
                              f"({', '.join(f'{k} {n}' for k, n in sorted(outcome.leak_counts.items()))})；"
                              "本次不发布，指针保持上一版本")
            return outcome
        t0 = time.perf_counter()
        run.store.place(stage, folder, {f.name: (f.bytes, f.sha256) for f in release.files})
        stage = None
        outcome.seconds["place"] = round(time.perf_counter() - t0, 3)
        manifest_sha = next(f.sha256 for f in release.files if f.name == "manifest.json")
        move_dataset(run.store, ds, {"release_date": run.day, "path": folder, "manifest": manifest_sha,
                                     "rows": release.rows, "build_id": build_id, "fingerprint": fp})
        run.released[ds] = release
        outcome.status, outcome.folder, outcome.rows, outcome.reason = "released", folder, release.rows, None
        return outcome
    except Exception as exc:  # noqa: BLE001 - one dataset's failure must not stop the others
        from pipelines.privacy.mask import mask_message

        log.exception("open release %s: failed", ds)
        outcome.status = "failed"
        outcome.reason = mask_message(f"{type(exc).__name__}: {exc}")
        return outcome
    finally:
        if stage is not None:
            shutil.rmtree(stage, ignore_errors=True)
        outcome.seconds["total"] = round(time.perf_counter() - started, 3)


def _where(run: _Run, contract: Any, *loc: Any) -> str:
    """``contract.where`` with the file relative to the project root (``schemas/curated/<ds>.yml:24``): the
    reason is recorded in meta.releases and shown on the open page, not the server's absolute path."""
    text = str(contract.where(*loc))
    for root in (run.settings.root, run.settings.root.resolve()):
        prefix = f"{root}/"
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


class _Coverage:
    """Temporal and spatial coverage of the released rows, gathered batch by batch."""

    def __init__(self, schema: pa.Schema, division_columns: list[str], month_columns: Sequence[str] = ()) -> None:
        self.dates = [f.name for f in schema if pa.types.is_date(f.type) or pa.types.is_timestamp(f.type)]
        self.months = [c for c in month_columns if c in schema.names and pa.types.is_string(schema.field(c).type)]
        self.divisions = [c for c in division_columns if c in schema.names and pa.types.is_string(schema.field(c).type)]
        self.low: Any = None
        self.high: Any = None
        self.codes: set[str] = set()

    def __call__(self, batch: pa.RecordBatch) -> None:
        for name in self.dates:
            col = batch.column(name)
            if pa.types.is_timestamp(col.type):  # the Asia/Shanghai calendar day of an instant
                if col.type.tz:
                    col = pc.local_timestamp(col.cast(pa.timestamp("us", tz="Asia/Shanghai")))
                col = col.cast(pa.timestamp("us")).cast(pa.date32())
            mm = pc.min_max(col)
            lo, hi = mm["min"].as_py(), mm["max"].as_py()
            if lo is not None:
                self.low = lo if self.low is None else min(self.low, lo)
                self.high = hi if self.high is None else max(self.high, hi)
        for name in self.months:  # YYYY-MM text: the first day of the first month to the last of the last
            mm = pc.min_max(batch.column(name))
            lo, hi = _month(mm["min"].as_py()), _month(mm["max"].as_py(), last=True)
            if lo is not None and hi is not None:
                self.low = lo if self.low is None else min(self.low, lo)
                self.high = hi if self.high is None else max(self.high, hi)
        for name in self.divisions:
            self.codes.update(v for v in pc.unique(batch.column(name)).to_pylist() if v)

    @property
    def temporal(self) -> tuple[date, date] | None:
        return (self.low, self.high) if self.low is not None else None


def _month(text: str | None, last: bool = False) -> date | None:
    """The first (``last``: the last) day of a ``YYYY-MM`` month; None for anything else."""
    import calendar

    try:
        year, month = (int(p) for p in str(text).split("-"))
        return date(year, month, calendar.monthrange(year, month)[1] if last else 1)
    except (ValueError, TypeError):
        return None


def is_month_element(element: Any) -> bool:
    """Whether an element holds a calendar month as ``YYYY-MM`` text (its ``format`` accepts 2024-01 and
    2024-12, not a date): such a column gives the release its temporal coverage like a date column."""
    import re

    fmt = getattr(element, "format", None)
    if not fmt or getattr(element, "type", None) != "string":
        return False
    try:
        return all(re.fullmatch(fmt, m) for m in ("2024-01", "2024-12")) and not re.fullmatch(fmt, "2024-01-01")
    except re.error:
        return False


def _normalized(schema: pa.Schema) -> pa.Schema:
    from pipelines.lake.raw import normalize_type

    return pa.schema([pa.field(f.name, normalize_type(f.type)) for f in schema])


def new_folder(store: Store, day: str, dataset: str, build_id: str) -> str:
    """A folder name no release used yet: ``open/<d>/<ds>/`` for the day's first build, else
    ``open/<d>/<ds>~<8 hex of the build id>/`` (plus a random tail for a second folder of the same build, made
    with another contract or release format). A folder a pointer may name is never written again."""
    base = f"open/{day}/{dataset}"
    candidates = [f"{base}/", f"{base}~{build_id.removeprefix('build__')[:8]}/"]
    for name in candidates:
        if not store.folder_exists(name):
            return name
    return f"{candidates[1].rstrip('/')}-{uuid.uuid4().hex[:6]}/"


def _dataset_of(folder_name: str) -> str:
    """The dataset of a release folder name (``<ds>`` or ``<ds>~<build>``)."""
    return folder_name.split("~", 1)[0]


def _build_folder(run: _Run, contract: Any, table: Any, snap: Any, build_id: str, fp: str,
                  entry: dict[str, Any] | None, stage: Path, outcome: DatasetOutcome,
                  folder: str) -> tuple[Any, bool]:
    """Write, scan and describe one dataset's folder in ``stage``; (DatasetRelease, blocked)."""
    from pipelines.lake.changes import release_memory
    from pipelines.lake.raw import stream_scan, summary_value
    from pipelines.privacy.deid import Deidentifier
    from pipelines.publish import leak
    from pipelines.publish.writers import write_formats

    standards = run.config.standards
    ds = contract.dataset
    deid = Deidentifier.for_contract(contract, standards)
    t0 = time.perf_counter()
    reader = stream_scan(table.scan(snapshot_id=snap.snapshot_id, selected_fields=tuple(deid.read_columns)))
    source = _normalized(reader.schema)
    schema = deid.output_schema(source)
    elements = {c.name: standards.element(c.element) for c in contract.columns}
    divisions = [c.name for c in contract.columns if elements[c.name].code_list == "division"
                 and c.deid in ("keep", "suppress")]
    months = [c.name for c in contract.columns if c.deid == "keep" and is_month_element(elements[c.name])]
    coverage = _Coverage(schema, divisions, months)

    def batches() -> Any:
        for batch in reader:
            yield deid.apply(batch.cast(source) if batch.schema != source else batch)

    written = write_formats(batches(), schema, stage, ds, observe=coverage)
    release_memory()  # each phase starts from its own needs, not the previous phase's peak
    outcome.suppressed = {k: v for k, v in deid.suppressed.items() if v}
    outcome.seconds["write"] = round(time.perf_counter() - t0, 3)
    t0 = time.perf_counter()
    inputs = {str(k): int(v) for k, v in json.loads(summary_value(snap, "citylake.inputs") or "{}").items()}
    exempt, input_time = _input_snapshots(run.catalog, inputs)
    scans = leak.scan_files([(w.path, w.format) for w in written], leak.scan_columns(schema, elements),
                            exempt=exempt)
    outcome.seconds["scan"] = round(time.perf_counter() - t0, 3)
    release_memory()
    rows = written[0].rows
    short = [f"{s.file} 读回 {s.rows} 行" for s in scans if s.rows != rows]
    if short:
        raise CitylakeError(f"{ds}: written {rows} rows, but {'; '.join(short)}")
    outcome.rows = rows
    outcome.leak_counts, outcome.leak_hits = {}, []
    _merge_scans(outcome, scans)
    if outcome.leak_counts:
        return None, True
    t0 = time.perf_counter()
    # the build's own commit when no input snapshot can be found any more (expired): an upper bound
    cutoff = input_time or datetime.fromtimestamp(snap.timestamp_ms / 1000, TZ)
    release = _describe(run, contract, written, rows, build_id, inputs, coverage, fp, entry, stage, outcome,
                        cutoff, folder)
    outcome.seconds["metadata"] = round(time.perf_counter() - t0, 3)
    if _scan_metadata(run, release, stage, exempt, outcome):
        return None, True
    return release, False


def _scan_metadata(run: _Run, release: Any, stage: Path, exempt: frozenset[str], outcome: DatasetOutcome) -> bool:
    """The leak gate over the folder's metadata files and the dataset's entry of the date's catalog, as text
    (``leak.scan_text``); True (blocked) on a hit, the hits recorded in ``outcome`` like a data file's."""
    from pipelines.publish import leak
    from pipelines.publish.dcat import dcat_catalog, open_base_url

    scans = [leak.scan_text(f.name, (stage / f.name).read_bytes(), exempt) for f in release.files
             if f.name in leak.METADATA_FILES]
    entry = dcat_catalog([release], run.release_date, open_base_url(run.settings),
                         names=run.division_names(), departments=run.registry())
    scans.append(leak.scan_text("catalog.jsonld", _json(entry), exempt))
    _merge_scans(outcome, scans)
    return bool(outcome.leak_counts)


def _merge_scans(outcome: DatasetOutcome, scans: Sequence[Any]) -> None:
    """Add the leak scans' counts by kind and their hits to ``outcome``."""
    for s in scans:
        for kind, n in s.counts.items():
            outcome.leak_counts[kind] = outcome.leak_counts.get(kind, 0) + n
        outcome.leak_hits += [h.to_dict() for h in s.hits]


def _input_snapshots(catalog: Any, inputs: dict[str, int]) -> tuple[frozenset[str], datetime | None]:
    """(every snapshot id of the build's input tables: ``field_provenance`` quotes them (``"snapshot": …``), and
    a random 63-bit id looks like a bank card (issuer prefix + Luhn) about one time in 35. They are the lake's
    own bookkeeping, exempt in the data files only as a ``"snapshot"`` value in a released provenance column
    (``leak.without_snapshots``), nowhere else — and no current contract releases one (golden_legal_person
    drops field_provenance, golden_resident is not open), so there the exemption applies to nothing today. The
    metadata files quote them as the build's inputs (manifest, catalog): ``leak.scan_text`` exempts them there;
    and when the newest input snapshot the build read was committed: the data cut-off (the std tables' last
    publish, or an input curated table's build, before this build), None when none is found). Each input
    table is opened once."""
    from pipelines.lake.raw import data_snapshot_ms, open_table

    ids = {str(v) for v in inputs.values()}
    times = []
    for identifier, snapshot_id in inputs.items():
        table = open_table(catalog, identifier)
        if table is None:
            continue
        ids.update(str(s.snapshot_id) for s in table.metadata.snapshots)
        at = data_snapshot_ms(table, snapshot_id)  # kept, or carried by the compaction that holds its rows
        if at is not None:
            times.append(at)
    return frozenset(ids), datetime.fromtimestamp(max(times) / 1000, TZ) if times else None


def _previous(run: _Run, entry: dict[str, Any] | None) -> str | None:
    """The folder this release's change summary compares with: the pointer's folder, or for a same-day rerun
    the release that folder itself was compared with (today's folder is being replaced)."""
    if not entry or not entry.get("path"):
        return None
    if entry.get("release_date") != run.day:
        return str(entry["path"])
    data = run.store.read_bytes(f"{entry['path']}manifest.json")
    try:
        previous = json.loads(data or b"{}").get("changes", {}).get("previous")
    except (json.JSONDecodeError, AttributeError):
        return None
    return previous if previous and run.store.exists(f"{previous}manifest.json") else None


def _describe(run: _Run, contract: Any, written: list[Any], rows: int, build_id: str, inputs: dict[str, int],
              coverage: _Coverage, fp: str, entry: dict[str, Any] | None, stage: Path,
              outcome: DatasetOutcome, cutoff: datetime | None, folder: str) -> Any:
    """The DatasetRelease and its metadata files in ``stage`` (C2's writers), manifest last."""
    from pipelines.departments import department_name
    from pipelines.publish.card import card
    from pipelines.publish.datapackage import datapackage, schema_version
    from pipelines.publish.dictionary import dictionary_csv
    from pipelines.publish.diff import change_summary
    from pipelines.publish.manifest import manifest
    from pipelines.publish.model import DatasetRelease, FileInfo, open_columns

    ds = contract.dataset
    previous = _previous(run, entry)
    old = run.store.local_copy(f"{previous}{ds}.parquet", run.scratch) if previous else None
    changes = change_summary(stage / f"{ds}.parquet", old, list(contract.primary_key),
                             temp_dir=run.scratch)
    changes["previous"] = previous if old is not None else None
    if old is not None and old.parent == run.scratch:
        old.unlink(missing_ok=True)
    release = DatasetRelease(
        dataset=ds, contract=contract, columns=open_columns(contract, run.config.standards),
        release_date=run.release_date, folder=folder,
        files=[FileInfo(w.name, w.media_type, w.format, w.bytes, w.sha256, w.rows) for w in written],
        rows=rows, build_id=build_id, inputs=inputs,
        # the cut-off is when the newest input snapshot was committed (what the build could have seen), not
        # the largest date in the data: coverage.temporal says which days the rows are about
        latest_event_time=cutoff,
        temporal=coverage.temporal, spatial=sorted(coverage.codes), quality_score=run.quality_score(ds),
        changes=changes, publisher=(contract.owner, department_name(run.registry(), contract.owner)),
        extra={"created_at": datetime.now(TZ), "run_id": run.run_id, "fingerprint": fp,
               "suppressed": outcome.suppressed})

    def add(name: str, data: bytes, media_type: str, fmt: str) -> None:
        (stage / name).write_bytes(data)
        release.files.append(FileInfo(name, media_type, fmt, len(data), hashlib.sha256(data).hexdigest(), None))

    add("datapackage.json", _json(datapackage(release)), "application/json", "json")
    add("dictionary.csv", dictionary_csv(release), "text/csv", "csv")
    add("changes.json", _json(changes), "application/json", "json")
    if contract.card is not None:
        md, data = card(release, run.config)
        add("card.md", md.encode("utf-8"), "text/markdown", "md")
        add("card.json", _json(data), "application/json", "json")
    add("manifest.json", _json(manifest(release, schema_version(release))), "application/json", "json")
    return release


def _json(data: Any) -> bytes:
    return (json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n").encode("utf-8")


def _record(run: _Run, outcomes: list[DatasetOutcome]) -> None:
    """The ``meta.releases`` events of the run, one commit (reasons and hits are masked already). The pointer,
    not this log, is what the portal trusts: a run killed outright records nothing, its rerun does."""
    from pipelines.lake.meta import append_log

    append_log(run.catalog, "meta.releases", [{
        "release_date": run.day, "dataset": o.dataset, "status": o.status, "folder": o.folder,
        "rows": o.rows, "build_id": o.build_id, "reason": o.reason,
        "leak_hits": json.dumps(o.leak_hits, ensure_ascii=False) if o.leak_hits else None,
        "run_id": run.run_id} for o in outcomes])


# --- catalog and retention ---------------------------------------------------------------------------


def _from_manifest(run: _Run, dataset: str, entry: dict[str, Any]) -> Any:
    """A DatasetRelease rebuilt from the folder the pointer names (its manifest.json), for the catalog of a
    date on which this dataset was not released again."""
    from pipelines.publish.model import DatasetRelease, FileInfo, open_columns

    contract = run.config.curated.get(dataset)
    data = run.store.read_bytes(f"{entry['path']}manifest.json")
    if contract is None or data is None:
        return None
    m = json.loads(data)
    cutoff = m.get("cutoff") or {}
    coverage = m.get("coverage") or {}
    temporal = coverage.get("temporal")
    latest = cutoff.get("latest_event_time")
    return DatasetRelease(
        dataset=dataset, contract=contract, columns=open_columns(contract, run.config.standards),
        release_date=date.fromisoformat(m["release_date"]), folder=str(entry["path"]),
        files=[FileInfo(f["name"], f["media_type"], f["format"], int(f["bytes"]), f["sha256"], f.get("rows"))
               for f in m.get("files", [])],
        rows=int(m.get("rows") or 0), build_id=str(m.get("build_id") or ""),
        inputs={k: int(v) for k, v in (cutoff.get("inputs") or {}).items()},
        latest_event_time=datetime.fromisoformat(latest) if latest else None,
        temporal=(date.fromisoformat(temporal[0]), date.fromisoformat(temporal[1])) if temporal else None,
        spatial=list(coverage.get("spatial") or []), quality_score=m.get("quality_score"),
        changes=m.get("changes") or {},
        publisher=((m.get("publisher") or {}).get("code", contract.owner),
                   (m.get("publisher") or {}).get("name", contract.owner)))


def _finish(run: _Run) -> tuple[str | None, list[str]]:
    _withdraw_uncontracted(run)
    catalog = _write_catalog(run)
    return catalog, _retention(run)


def _withdraw(run: _Run, dataset: str, outcome: DatasetOutcome, reason: str, *, delete: bool = False,
              every_date: bool = False) -> dict[str, Any] | None:
    """Take ``dataset`` off the portal: its pointer entry removed (one conditional pointer write), the
    pointer's catalog rewritten without it, and with ``delete`` the folder the entry named (``every_date``:
    every folder of the dataset in the store) deleted now instead of by retention. Fills ``outcome``
    (``withdrawn``); returns the former entry, None when the pointer did not name the dataset."""
    from pipelines.privacy.mask import mask_message

    entry = remove_dataset(run.store, dataset)
    if entry is None:
        return None
    outcome.status, outcome.reason = "withdrawn", mask_message(reason)
    outcome.folder, outcome.rows = entry.get("path"), int(entry.get("rows") or 0)
    outcome.build_id = outcome.build_id or entry.get("build_id")
    catalog = read_pointer(run.store).get("catalog")
    if catalog:  # the portal's catalog must not list it until the next release writes a new one
        _write_catalog(replace(run, release_date=date.fromisoformat(str(catalog).split("/")[1])), force=True)
    if delete:
        doomed = {str(entry.get("path", "")).rstrip("/")} - {""}
        if every_date:
            doomed |= {f"open/{d}/{name}" for d in run.store.release_dates() for name in run.store.folders(d)
                       if _dataset_of(name) == dataset}
        for folder in sorted(doomed):
            run.store.delete(folder + "/")
    log.warning("open release: %s withdrawn (%s)", dataset, outcome.reason)
    return entry


def _withdraw_uncontracted(run: _Run) -> None:
    """Withdraw every dataset the pointer names whose curated contract is gone (one event each)."""
    gone = sorted(set(read_pointer(run.store)["datasets"]) - set(run.config.curated))
    outcomes = []
    for ds in gone:
        outcome = DatasetOutcome(ds, "withdrawn")
        if _withdraw(run, ds, outcome, f"契约 schemas/curated/{ds}.yml 已删除，撤回") is not None:
            outcomes.append(outcome)
    if outcomes:
        if not run.run_id:
            from pipelines.lake.meta import new_run_id

            run.run_id = new_run_id("open")
        _record(run, outcomes)


def withdraw(dataset: str, reason: str, *, settings: Settings | None = None, run_id: str | None = None,
             every_date: bool = False) -> DatasetOutcome:
    """``citylake open withdraw``: take a released dataset off the portal by hand (e.g. a leak found after the
    release): pointer entry removed, the folder it named deleted (``every_date``: every folder of it), the
    catalog rewritten, a ``withdrawn`` event with ``reason`` (masked) in ``meta.releases``."""
    from pipelines.config import load_all
    from pipelines.lake.catalog import get_catalog
    from pipelines.lake.meta import new_run_id

    if not reason.strip():
        raise CitylakeError("open withdraw: --reason is required (it is recorded in meta.releases)")
    settings = settings or load_settings()
    store = store_for(settings)
    run = _Run(settings, load_all(settings), store, get_catalog(settings), today(), run_id or new_run_id("open"),
               Path())
    outcome = DatasetOutcome(dataset, "withdrawn")
    with store.lock(), tempfile.TemporaryDirectory(prefix="citylake-open-") as scratch:
        run.scratch = Path(scratch)
        if _withdraw(run, dataset, outcome, f"人工撤回：{reason.strip()}", delete=True,
                     every_date=every_date) is None:
            raise CitylakeError(f"open withdraw: {dataset} is not in {store.url(POINTER)} (citylake open ls)")
        _record(run, [outcome])
    return outcome


def _write_catalog(run: _Run, force: bool = False) -> str | None:
    """``open/<d>/catalog.jsonld`` when something was released on this date (now or earlier the same day), or
    with ``force`` (a withdrawal rewriting the pointer's catalog)."""
    from pipelines.publish.dcat import dcat_catalog, open_base_url
    from pipelines.publish.leak import scan_text

    if not force and not run.store.folders(run.day):
        return None
    pointer = read_pointer(run.store)
    releases = []
    for ds, entry in sorted(pointer["datasets"].items()):
        release = run.released.get(ds) or _from_manifest(run, ds, entry)
        if release is None:
            log.warning("open release: %s is in %s but has no contract or manifest; left out of the catalog",
                        ds, POINTER)
            continue
        releases.append(release)
    doc = dcat_catalog(releases, run.release_date, open_base_url(run.settings),
                       names=run.division_names(), departments=run.registry())
    rel = f"open/{run.day}/catalog.jsonld"
    data = _json(doc)
    scan = scan_text("catalog.jsonld", data, frozenset(str(v) for r in releases for v in r.inputs.values()))
    if scan.hits:  # each entry was scanned at its release: only a catalog-level text can get here
        found = ", ".join(f"{h.kind} {h.value} 第 {h.row} 行" for h in scan.hits)
        raise CitylakeError(f"{rel}: 泄露检查发现个人信息 ({found})；目录未写入")
    run.store.write_atomic(rel, data)
    set_catalog(run.store, rel)
    return rel


def _retention(run: _Run) -> list[str]:
    """Remove release-date folders beyond the newest ``open_keep``, keeping every folder the pointer names
    (and the date folder of the pointer's catalog); in the kept dates, remove a dataset's same-day folders
    that the one the pointer names superseded."""
    pointer = read_pointer(run.store)
    referenced = referenced_folders(pointer)
    catalog_day = str(pointer.get("catalog", "")).split("/")[1:2]
    dates = run.store.release_dates()
    removed = []
    for day in dates[:-run.settings.open_keep] if len(dates) > run.settings.open_keep else []:
        names = run.store.folders(day)
        kept = [ds for ds in names if f"open/{day}/{ds}" in referenced]
        if not kept and day not in catalog_day:
            run.store.delete(f"open/{day}/")
            removed.append(f"open/{day}/")
            continue
        for ds in names:
            if f"open/{day}/{ds}" not in referenced:
                run.store.delete(f"open/{day}/{ds}/")
                removed.append(f"open/{day}/{ds}/")
    for day in dates[-run.settings.open_keep:]:
        names = run.store.folders(day)
        current = {_dataset_of(n) for n in names if f"open/{day}/{n}" in referenced}
        for name in names:
            if _dataset_of(name) in current and f"open/{day}/{name}" not in referenced:
                run.store.delete(f"open/{day}/{name}/")
                removed.append(f"open/{day}/{name}/")
    return removed
