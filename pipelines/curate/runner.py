"""Curated builds: one DuckDB SQL model per curated dataset, put through the write-audit-publish gate.

A build of ``curated.<dataset>`` reads its inputs (``std.<ds>`` / ``curated.<ds>``, contract ``inputs``) at their
current snapshots and is identified by them and by its definition: build id = ``build__`` + the first 16 hex
digits of the SHA-256 of the sorted ``identifier@snapshot`` lines and the definition hash (the model's SQL, the code
lists it reads, aqi.py when it calls the AQI, its suite, its contract file, elements.yml). A build whose id is the
curated table's current snapshot's is ``nothing_new`` (and recorded from the snapshot summary when a crash lost
its ``meta.batches`` event). An input not in the lake yet makes the build ``waiting``.

What a model sees (DuckDB, one SELECT in ``pipelines/curate/<dataset>.sql``):
- ``std_<ds>`` / ``curated_<ds>``: each input at its build snapshot, every column (lineage ``_batch_id``,
  ``_extracted_at``, ``_load_seq``, ``_warnings`` included), streamed in (``lake.raw.stream_scan``) a record batch
  at a time into a DuckDB database file under ``$TMPDIR`` with a memory limit (it spills beyond it);
- ``code_list_<name>``: every code list CSV of schemas/standards/code_lists, all columns as text;
- ``inputs(identifier, layer, dataset, system, source_table, snapshot_id)``: the build's input snapshots;
- ``std_columns(dataset, column_name, element, system, table_name, source_column, authoritative)``: every std
  contract column and whether it is its data element's authoritative source (elements.yml);
- ``elements(element, name_zh, type, authoritative_system, authoritative_table, authoritative_column, std_dataset,
  std_column)``: each data element's authority and the std column that carries it;
- ``provenance(dataset, column)``: a macro, the provenance of a std input column as a struct ``{system, table,
  dataset, snapshot, authoritative}`` (golden records' ``field_provenance``);
- ``hj633_aqi(pm25_24h, pm10_24h, so2_24h, no2_24h, co_24h, o3_1h, o3_8h)``: ``aqi.daily_aqi`` as a vectorised
  (Arrow) function, ``STRUCT(aqi INTEGER, level, category, primary_pollutant)``; NULL for an absent pollutant.

The runner orders the result by the primary key (so every build of the same inputs writes the same rows in the
same order), marks extra copies of a key (quarantined as ``duplicate_key``, as the std gate does), casts each
column to its element's type, evaluates the curated suite (``expectations/<dataset>.json``) a chunk at a time and
stages the rows in Parquet; the std gate's second pass (``gate.split_staged``) counts the rules and splits the
rows. A critical rule failing on more than its threshold holds the build (nothing written, ``meta.batches``
``held``, ``QualityGateError``); otherwise ONE Iceberg commit replaces ``curated.<dataset>`` whole, its snapshot
summary carrying ``citylake.build-id``, ``citylake.inputs``, ``citylake.batches``, ``citylake.run-id``,
``citylake.definition`` and the counts; failing rows replace ``quarantine.<dataset>`` whole BEFORE that commit (it
holds the current build's failing rows only); ``meta.quality_results``, ``meta.batches``
(``raw_batch_id`` = the build id) and the GX result JSON are written as the std gate writes them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.expressions import AlwaysTrue

from pipelines.contracts import CuratedContract
from pipelines.errors import CitylakeError, ConfigError
from pipelines.lake.catalog import get_catalog
from pipelines.lake.changes import release_memory
from pipelines.lake.meta import new_run_id
from pipelines.lake.raw import (
    PUBLISHED_BATCHES,
    data_snapshot,
    open_table,
    retry_conflicts,
    single_attempt,
    snapshot_with_data,
    stream_scan,
    summary_value,
    total_records,
)
from pipelines.lake.tables import PROPS, append, append_staged, table_for
from pipelines.privacy import mask_message
from pipelines.quality.gate import (
    CHUNK_ROWS,
    QUARANTINE_PROPS,
    GateResult,
    Masker,
    RuleTally,
    Staged,
    chunks,
    duplicate_rule,
    flag_rules,
    hold_error,
    ordered_map,
    over_threshold,
    record_batches,
    record_results,
    split_staged,
    write_gx_result,
)
from pipelines.quality.rules import Rule
from pipelines.quality.suites import load_suite
from pipelines.settings import TZ, Settings, load_settings

BUILD_ID = "citylake.build-id"
INPUTS = "citylake.inputs"
DEFINITION = "citylake.definition"
"""Snapshot summary: SHA-256 of the model's SQL and the code lists it reads (a changed model rebuilds)."""
CURATED_PROPS = {**PROPS, "write.target-file-size-bytes": str(64 << 20)}
MEMORY_LIMIT = os.environ.get("CITYLAKE_CURATE_MEMORY", "512MB")
"""DuckDB's buffer limit for a build; beyond it DuckDB spills to the build's folder under ``$TMPDIR``."""
BATCH_ROWS = 32 * 1024
"""Rows conformed and validated at a time: curated rows can be wide (a golden record's provenance is ~1 KB)."""
TYPES = {"string": pa.string(), "integer": pa.int64(), "float": pa.float64(), "boolean": pa.bool_(),
         "date": pa.date32(), "timestamp": pa.timestamp("us", tz="UTC"), "decimal": pa.decimal128(38, 10)}
"""A curated column's Arrow type, from its data element's type (as standardization types std columns); a
decimal element declaring ``format: decimal(p,s)`` is cast to that precision and scale (``element_type``)."""


def element_type(element: Any) -> pa.DataType:
    """The Arrow type of a curated column carrying ``element``: a decimal at its declared precision and scale, so
    the released text reads 4921986.21, not 4921986.2100000000."""
    if element.type == "decimal":
        m = re.fullmatch(r"\s*decimal\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)\s*", str(element.format or ""))
        if m:
            return pa.decimal128(int(m.group(1)), int(m.group(2)))
    return TYPES[element.type]


@dataclass
class CurateResult:
    dataset: str
    run_id: str
    build_id: str
    status: str
    """published | released (a held build published by hand, ``release``) | held | nothing_new | waiting (an input
    is not in the lake yet: ``waiting_for``; nothing built, nothing recorded)."""
    rows: int = 0
    """Rows in ``curated.<dataset>`` after the build (published ones; for nothing_new, the table's)."""
    quarantined: int = 0
    snapshot_id: int | None = None
    inputs: dict[str, int] = field(default_factory=dict)
    """Input identifier → the snapshot id the build read."""
    produced: int = 0
    """Rows the model produced (= rows + quarantined, or every one of them held)."""
    warned: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    waiting_for: list[str] = field(default_factory=list)
    """status waiting: the inputs not in the lake yet."""
    reason: str | None = None
    """status released: why the held build was published."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_id_of(inputs: dict[str, int], definition: str) -> str:
    """``build__`` + 16 hex digits of SHA-256 over the sorted ``identifier@snapshot`` lines and the definition
    hash (``definition_hash``): a corrected model is a new build, which the release (comparing build ids)
    publishes, and a held build of a new definition never shares an id with the published build."""
    text = "\n".join([*sorted(f"{k}@{v}" for k, v in inputs.items()), f"definition@{definition}"])
    return "build__" + hashlib.sha256(text.encode()).hexdigest()[:16]


def input_snapshots(catalog: Any, contract: CuratedContract, *, missing: list[str] | None = None) -> dict[str, int]:
    """Each input's current snapshot id: its data snapshot (``raw.data_snapshot``: a compaction is no new
    input, its summary names the data snapshot it holds, which may have expired; ``input_scan`` reads the
    compaction); 0 for a table created but never written. A missing input stops the
    build with the dataset and the input named, or, given a ``missing`` list, is added to it (and left out)."""
    out: dict[str, int] = {}
    for identifier in contract.inputs:
        table = open_table(catalog, identifier)
        if table is None:
            if missing is not None:
                missing.append(identifier)
                continue
            by = "its curate build" if identifier.startswith("curated.") else "its ingest and quality run"
            raise CitylakeError(f"curated.{contract.dataset}: input {identifier} is not in the lake yet ({by} "
                                "publishes it); nothing was built")
        snap = data_snapshot(table)  # a compaction after the last publish is not a new input
        out[identifier] = snap.snapshot_id if snap is not None else 0
    return out


def input_scan(table: Any, identifier: str, snapshot_id: int) -> Any:
    """The scan of an input at data snapshot ``snapshot_id`` (``input_snapshots``): the newest snapshot of
    the current ancestry holding its rows (a compaction of it: fewer files, and lake maintenance may have
    expired the data snapshot itself), else that snapshot; 0 reads the (empty) table as it is. A
    ``CitylakeError`` naming the input when neither is left (a newer publish came and it expired)."""
    if not snapshot_id:
        return table.scan()
    snap = snapshot_with_data(table, snapshot_id)
    if snap is None:
        raise CitylakeError(f"{identifier}: snapshot {snapshot_id} of this build's input is no longer in its "
                            "history (a newer publish came and lake maintenance expired it); rerun the build")
    return table.scan(snapshot_id=snap.snapshot_id)


def model_sql(contract: CuratedContract) -> str:
    """The model's one SELECT (trailing ``;`` and blanks removed); ConfigError naming the file otherwise."""
    path = contract.model_path
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the model of curated.{contract.dataset}: {exc.strerror}") from None
    import duckdb

    try:
        statements = duckdb.connect().extract_statements(text)
    except duckdb.Error as exc:
        raise ConfigError(f"{path}: not valid DuckDB SQL: {exc}") from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise ConfigError(f"{path}: a model is one SELECT statement (found {len(statements)} statement(s))")
    return text.rstrip().rstrip(";").rstrip()


def definition_hash(settings: Settings, contract: CuratedContract, sql: str) -> str:
    """SHA-256 of what, beside the inputs, decides a build: the model's SQL, every code list it names, the AQI
    code when it calls it, the curated suite (expectations/<dataset>.json), the contract file and elements.yml."""
    digest = hashlib.sha256(sql.encode())
    parts = [(f"code_list_{n}", _code_list_dir(settings) / f"{n}.csv")
             for n in sorted(set(re.findall(r"\bcode_list_(\w+)", sql)))]
    if "hj633_aqi" in sql:
        parts.append(("aqi", Path(__file__).with_name("aqi.py")))
    parts += [("suite", settings.root / "expectations" / f"{contract.dataset}.json"),
              ("contract", Path(contract.file) if contract.file else
               settings.root / "schemas" / "curated" / f"{contract.dataset}.yml"),
              ("elements", settings.root / "schemas" / "standards" / "elements.yml")]
    for name, path in parts:
        digest.update(f"\n{name}\n".encode())
        if path.exists():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def _code_list_dir(settings: Settings) -> Path:
    return settings.root / "schemas" / "standards" / "code_lists"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


# --- the model's environment ------------------------------------------------------------------------


def hj633_aqi(pm25: Any, pm10: Any, so2: Any, no2: Any, co: Any, o3_1h: Any, o3_8h: Any) -> pa.StructArray:
    """``aqi.daily_aqi`` over Arrow columns (DuckDB hands each argument as a chunked array): the pollutants with no
    value in a row are left out of that row's index, so NULL arguments stand for pollutants not measured."""
    names = ("pm25_24h", "pm10_24h", "so2_24h", "no2_24h", "co_24h", "o3_1h", "o3_8h")
    columns = {n: pc.cast(c, pa.float64()).to_numpy(zero_copy_only=False)
               for n, c in zip(names, (pm25, pm10, so2, no2, co, o3_1h, o3_8h), strict=True)}
    from pipelines.curate.aqi import daily_aqi

    result = daily_aqi(columns)
    aqi = result.aqi
    valid = np.isfinite(aqi)
    return pa.StructArray.from_arrays(
        [pa.array(np.where(valid, aqi, 0).astype(np.int32), mask=~valid),
         pa.array(result.level, pa.string()), pa.array(result.category, pa.string()),
         pa.array(["|".join(p) if p else None for p in result.primary], pa.string())],  # the element's format
        names=["aqi", "level", "category", "primary_pollutant"])


def register_functions(con: Any) -> None:
    """The functions models may call (the AQI), on a DuckDB connection."""
    import duckdb
    from duckdb import sqltypes as t

    con.create_function("hj633_aqi", hj633_aqi, [t.DOUBLE] * 7,
                        duckdb.struct_type({"aqi": t.INTEGER, "level": t.VARCHAR, "category": t.VARCHAR,
                                            "primary_pollutant": t.VARCHAR}),
                        type="arrow", null_handling="special")


def _connect(folder: Path) -> Any:
    import duckdb

    con = duckdb.connect(str(folder / "build.duckdb"), config={
        "memory_limit": MEMORY_LIMIT, "temp_directory": str(folder / "spill"), "threads": 2,
        "preserve_insertion_order": False})
    con.execute("SET TimeZone = 'UTC'")  # timestamps come back as UTC instants, as the lake stores them
    return con


def _load_table(con: Any, name: str, reader: pa.RecordBatchReader) -> None:
    """Stream a reader into a DuckDB table (on disk: the build's database file), a record batch at a time."""
    con.register("_incoming", reader)
    try:
        con.execute(f"CREATE TABLE {_q(name)} AS SELECT * FROM _incoming")
    finally:
        con.unregister("_incoming")


def prepare(con: Any, catalog: Any, settings: Settings, contract: CuratedContract, snapshots: dict[str, int],
            config: Any) -> None:
    """Everything a model may read (module docstring): inputs at their snapshots, code lists, the provenance
    tables and macro, the AQI function."""
    for identifier, snap in snapshots.items():
        layer, _, dataset = identifier.partition(".")
        _load_table(con, f"{layer}_{dataset}", stream_scan(input_scan(catalog.load_table(identifier), identifier, snap)))
    for path in sorted(_code_list_dir(settings).glob("*.csv")):
        con.execute(f"CREATE VIEW {_q('code_list_' + path.stem)} AS SELECT * FROM read_csv({_lit(str(path))}, "
                    "header = true, all_varchar = true)")
    standards, contracts = config.standards, config.contracts
    rows = []
    for identifier, snap in snapshots.items():
        layer, _, dataset = identifier.partition(".")
        source = contracts[dataset].source if layer == "std" and dataset in contracts else {}
        rows.append({"identifier": identifier, "layer": layer, "dataset": dataset, "system": source.get("system"),
                     "source_table": source.get("table"), "snapshot_id": snap})
    _load_table(con, "inputs", pa.Table.from_pylist(rows, schema=pa.schema([
        ("identifier", pa.string()), ("layer", pa.string()), ("dataset", pa.string()), ("system", pa.string()),
        ("source_table", pa.string()), ("snapshot_id", pa.int64())])).to_reader())
    columns = []
    carriers: dict[tuple[str, str, str], tuple[str, str]] = {}
    for c in contracts.values():
        for col in c.columns:
            key = (c.source["system"], c.source["table"], col.source)
            element = standards.elements[col.element]
            authority = element.authority.key() if element.authority else None
            columns.append({"dataset": c.dataset, "column_name": col.name, "element": col.element,
                            "system": key[0], "table_name": key[1], "source_column": key[2],
                            "authoritative": authority == key})
            carriers.setdefault(key, (c.dataset, col.name))
    _load_table(con, "std_columns", pa.Table.from_pylist(columns, schema=pa.schema([
        ("dataset", pa.string()), ("column_name", pa.string()), ("element", pa.string()), ("system", pa.string()),
        ("table_name", pa.string()), ("source_column", pa.string()), ("authoritative", pa.bool_())])).to_reader())
    elements = []
    for e in standards.elements.values():
        ref = e.authority
        std = carriers.get(ref.key()) if ref is not None else None
        elements.append({"element": e.code, "name_zh": e.name_zh, "type": e.type,
                         "authoritative_system": ref.system if ref else None,
                         "authoritative_table": ref.table if ref else None,
                         "authoritative_column": ref.column if ref else None,
                         "std_dataset": std[0] if std else None, "std_column": std[1] if std else None})
    _load_table(con, "elements", pa.Table.from_pylist(elements, schema=pa.schema(
        [(n, pa.string()) for n in ("element", "name_zh", "type", "authoritative_system", "authoritative_table",
                                    "authoritative_column", "std_dataset", "std_column")])).to_reader())
    con.execute(provenance_macro(columns, snapshots))
    register_functions(con)


def provenance_macro(columns: list[dict[str, Any]], snapshots: dict[str, int]) -> str:
    """``provenance(dataset, column)`` as a CASE over literal structs, one per column of a std input: called with
    constants (as models do) it folds to a constant when DuckDB plans the query. A lookup subquery instead was
    planned as one cross join per call (a golden record calls it a dozen times per row: 60 s and out of memory
    for 2 M residents)."""
    branches = []
    for c in columns:
        snap = snapshots.get(f"std.{c['dataset']}")
        if snap is None:
            continue
        branches.append(
            f"WHEN {_lit(c['dataset'] + '.' + c['column_name'])} THEN {{'system': {_lit(c['system'])}, "
            f"'table': {_lit(c['table_name'])}, 'dataset': {_lit(c['dataset'])}, 'snapshot': {int(snap)}::BIGINT, "
            f"'authoritative': {'true' if c['authoritative'] else 'false'}}}")
    null = "NULL::STRUCT(system VARCHAR, \"table\" VARCHAR, dataset VARCHAR, snapshot BIGINT, authoritative BOOLEAN)"
    return (f"CREATE MACRO provenance(ds, col) AS CASE ds || '.' || col {' '.join(branches)} "
            f"ELSE {null} END" if branches else f"CREATE MACRO provenance(ds, col) AS {null}")


def run_model(con: Any, contract: CuratedContract, sql: str, batch_rows: int) -> pa.RecordBatchReader:
    """Run the model into a DuckDB table (on disk, spilling), then read it back ordered by the primary key, each
    extra copy of a key marked ``_extra`` (the first one kept): every build of the same inputs stages the same rows
    in the same order. Extra copies are found over the keys alone; one query doing the window and the sort over
    whole rows ran out of DuckDB's memory on 2 M golden records (a kilobyte of provenance each)."""
    _check_columns(contract, list(con.sql(sql).columns))
    con.execute(f"CREATE TABLE _model AS {sql}")
    k = ", ".join(_q(x) for x in contract.primary_key)
    con.execute(f"CREATE TABLE _extra AS SELECT rid FROM (SELECT rowid AS rid, row_number() OVER (PARTITION BY {k} "
                "ORDER BY rowid) AS n FROM _model) WHERE n > 1")
    order = ", ".join(f"m.{_q(x)}" for x in contract.primary_key)
    return con.sql(f"SELECT m.*, m.rowid IN (SELECT rid FROM _extra) AS _extra FROM _model AS m "
                   f"ORDER BY {order}, m.rowid").to_arrow_reader(batch_rows)


def target_schema(contract: CuratedContract, standards: Any) -> pa.Schema:
    return pa.schema([pa.field(c.name, element_type(standards.element(c.element))) for c in contract.columns])


def _check_columns(contract: CuratedContract, produced: list[str]) -> None:
    wanted = [c.name for c in contract.columns]
    missing = [c for c in wanted if c not in produced]
    extra = [c for c in produced if c not in wanted]
    if missing or extra:
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + \
                ([f"not in the contract: {', '.join(extra)}"] if extra else [])
        where = contract.file or f"schemas/curated/{contract.dataset}.yml"
        raise ConfigError(f"{contract.model_path}: the model's columns differ from {where}'s ({'; '.join(parts)})")


def _conform(chunk: pa.Table, schema: pa.Schema, contract: CuratedContract) -> pa.Table:
    """The model's columns in contract order, each cast to its element's type; a value that does not fit stops
    the build naming the column (never the value: it may be personal)."""
    out = []
    for f in schema:
        col = chunk.column(f.name)
        if col.type != f.type:
            try:
                if pa.types.is_decimal(f.type) and (pa.types.is_decimal(col.type) or pa.types.is_floating(col.type)):
                    col = pc.round(col, ndigits=f.type.scale)  # half to even: a model's extra digits rounded away
                col = pc.cast(col, f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                raise CitylakeError(f"{contract.model_path}: column {f.name}: the model returns {col.type}, which does "
                                    f"not convert to the contract element's type {f.type}") from None
        out.append(col)
    return pa.Table.from_arrays(out, schema=schema)


def _stage(reader: pa.RecordBatchReader, contract: CuratedContract, schema: pa.Schema, rules: list[Rule],
           build_id: str, path: Path) -> tuple[Staged, pa.Array]:
    """Pass 1, a chunk at a time (two at once): conform the model's rows, evaluate every rule and stage the rows
    with their position, the build id and one failure flag per rule (the std gate's staged layout, so its pass 2
    applies). Returns the staged rows and the positions of extra copies of a key."""

    def numbered() -> Any:
        pos = 0
        for chunk in chunks(reader, BATCH_ROWS):
            yield pos, chunk
            pos += chunk.num_rows

    def work(item: tuple[int, pa.Table]) -> tuple[pa.Table, np.ndarray, dict[int, str]]:
        pos, chunk = item
        n = chunk.num_rows
        data = _conform(chunk, schema, contract)
        positions = np.arange(pos, pos + n, dtype=np.int64)
        extra = positions[chunk.column("_extra").to_numpy(zero_copy_only=False).astype(bool)]
        rows = data.append_column("_batch_id", pa.repeat(pa.scalar(build_id), n)) \
            .append_column("_pos", pa.array(positions))
        rows, errors = flag_rules(rows, rules)
        return rows, extra, errors

    writer: pq.ParquetWriter | None = None
    total = 0
    extras: list[np.ndarray] = []
    errors: dict[int, str] = {}
    try:
        for rows, extra, errs in ordered_map(work, numbered()):
            if writer is None:
                writer = pq.ParquetWriter(path, rows.schema, compression="lz4")
            writer.write_table(rows.cast(writer.schema))
            total += rows.num_rows
            extras.append(extra)
            for i, e in errs.items():
                errors.setdefault(i, e)
    finally:
        if writer is not None:
            writer.close()
    staged = Staged(path, total, total, pa.table({}), {}, errors)
    return staged, pa.array(np.concatenate([np.empty(0, np.int64), *extras]))


# --- the commit -------------------------------------------------------------------------------------


PUBLISHED = "citylake.published"
QUARANTINED = "citylake.quarantined"
EXTRACTED = "citylake.produced"
RELEASE_REASON = "citylake.release-reason"
"""Snapshot summary: the build's counts (and a release's reason), so a retry after a crash between the commit and
``meta.batches`` records the build from the snapshot alone."""


def _same_build(snap: Any, build_id: str) -> bool:
    return summary_value(snap, BUILD_ID) == build_id  # the definition is part of the build id


def _replace(catalog: Any, contract: CuratedContract, good: Path, schema: pa.Schema, props: dict[str, str],
             build_id: str) -> tuple[int | None, bool]:
    """One commit replacing every row of ``curated.<dataset>`` with the staged passing rows (one overwrite
    snapshot: readers see the previous build or this one, never a mix), written a data file's worth at a time.
    Refused by a concurrent commit, it is decided again on the reloaded table; when that commit was this very
    build, nothing is written. Returns (snapshot id, whether another run had committed it)."""
    rows = pq.ParquetFile(good) if good.exists() else None
    file_schema = rows.schema_arrow if rows is not None else \
        schema.append(pa.field("_batch_id", pa.string())).append(pa.field("_warnings", pa.list_(pa.string())))

    def attempt() -> tuple[int | None, bool]:
        table = table_for(catalog, contract.table, file_schema, CURATED_PROPS)
        head = table.current_snapshot()
        if _same_build(head, build_id):
            return head.snapshot_id, True
        tx = single_attempt(table).transaction()
        append_staged(tx, table, rows, props, overwrite=True, schema=file_schema)
        tx.commit_transaction()
        snap = catalog.load_table(contract.table).current_snapshot()
        return (snap.snapshot_id if snap else None), False

    return retry_conflicts(f"{contract.table}: build", attempt)


# --- the build --------------------------------------------------------------------------------------


def model_rows(dataset: str, *, settings: Settings | None = None) -> pa.Table:
    """What the model produces from its inputs' current snapshots, conformed to the contract and ordered by the
    primary key as a build stages it, with no rule evaluated and nothing written (tests; looking at a model).
    In memory: for small inputs."""
    from pipelines.config import load_all

    settings = settings or load_settings()
    config = load_all(settings)
    contract = config.curated[dataset]
    catalog = get_catalog(settings)
    snapshots = input_snapshots(catalog, contract)
    sql = model_sql(contract)
    schema = target_schema(contract, config.standards)
    with tempfile.TemporaryDirectory(prefix=f"citylake-model-{dataset}-") as tmp_name:
        con = _connect(Path(tmp_name))
        try:
            prepare(con, catalog, settings, contract, snapshots, config)
            produced = run_model(con, contract, sql, CHUNK_ROWS).read_all()
        finally:
            con.close()
    return _conform(produced, schema, contract)


def _record_from_summary(catalog: Any, contract: CuratedContract, head: Any, build_id: str, run_id: str) -> bool:
    """A build committed to ``curated.<dataset>`` whose ``meta.batches`` event is missing (the run died between
    the commit and the event): record it from the snapshot summary. True when it recorded one."""
    from pipelines.lake.meta import batch_status

    if build_id in batch_status(catalog, contract.dataset):
        return False
    published = int(summary_value(head, PUBLISHED) or total_records(head) or 0)
    quarantined = int(summary_value(head, QUARANTINED) or 0)
    reason = summary_value(head, RELEASE_REASON)
    gate = GateResult(contract.dataset, summary_value(head, "citylake.run-id") or run_id, [build_id],
                      "published" if reason is None else "released", reason=reason)
    gate.batch_counts = {build_id: {"extracted": int(summary_value(head, EXTRACTED) or published + quarantined),
                                    "published": published, "quarantined": quarantined, "held": 0}}
    record_batches(catalog, contract, gate, head.snapshot_id)
    return True


def build_curated(dataset: str, *, settings: Settings | None = None, run_id: str | None = None,
                  reference_date: date | None = None, release: str | None = None) -> CurateResult:
    """Build ``curated.<dataset>`` from its inputs' current snapshots through the write-audit-publish gate
    (module docstring). Raises ``QualityGateError`` when the build is held, ``CitylakeError`` for a model whose
    columns or types do not fit its contract (nothing written either way). An input not in the lake yet is
    status ``waiting`` (nothing built). ``release`` (a reason) publishes a build its critical rules would hold:
    passing rows to ``curated.<dataset>``, failing ones to quarantine, recorded ``released`` with the reason.
    The run is recorded in ``meta.runs`` (kind ``curate``; a held build as ``held``)."""
    from pipelines.lake.runs import record_run
    from pipelines.quality.gate import QualityGateError

    settings = settings or load_settings()
    run_id = run_id or new_run_id()
    with record_run("curate", run_id=run_id, target=f"curated.{dataset}", settings=settings,
                    snapshot_of=f"curated.{dataset}", statuses={QualityGateError: "held"}, dataset=dataset) as run:
        try:
            result = _build_curated(dataset, settings=settings, run_id=run_id, reference_date=reference_date,
                                    release=release)
        except QualityGateError as exc:
            run.done(rows_in=exc.held, rows_out=0)
            raise
        run.done(status=result.status, rows_in=result.produced, rows_out=result.rows, snapshot=result.snapshot_id,
                 batch_id=result.build_id or None,
                 detail=f"waiting for {', '.join(result.waiting_for)}" if result.waiting_for else None)
    return result


def _build_curated(dataset: str, *, settings: Settings, run_id: str, reference_date: date | None,
                   release: str | None) -> CurateResult:
    from pipelines.config import load_for

    config = load_for(settings, dataset)  # a broken contract of another curated dataset does not stop this one
    if dataset not in config.curated:
        raise CitylakeError(f"no curated contract {dataset!r} (known: {', '.join(sorted(config.curated))})")
    contract = config.curated[dataset]
    standards = config.standards
    reference_date = reference_date or datetime.now(TZ).date()
    catalog = get_catalog(settings)
    missing: list[str] = []
    snapshots = input_snapshots(catalog, contract, missing=missing)
    sql = model_sql(contract)
    definition = definition_hash(settings, contract, sql)
    if missing:
        return CurateResult(dataset, run_id, "", "waiting", inputs=snapshots, waiting_for=missing)
    build_id = build_id_of(snapshots, definition)
    result = CurateResult(dataset, run_id, build_id, "nothing_new", inputs=snapshots)
    current = open_table(catalog, contract.table)
    head = current.current_snapshot() if current is not None else None
    if head is not None and _same_build(head, build_id):
        result.snapshot_id, result.rows = head.snapshot_id, total_records(head) or 0
        result.quarantined = int(summary_value(head, QUARANTINED) or 0)
        if _record_from_summary(catalog, contract, head, build_id, run_id):
            result.reason = summary_value(head, RELEASE_REASON)
            result.status = "published" if result.reason is None else "released"
        return result
    # the suite loader reads a contract's dataset and column names, which both kinds have
    rules = load_suite(settings.root / "expectations", cast(Any, contract), standards, reference_date)
    schema = target_schema(contract, standards)
    with tempfile.TemporaryDirectory(prefix=f"citylake-curate-{dataset}-") as tmp_name:
        tmp = Path(tmp_name)
        con = _connect(tmp)
        try:
            prepare(con, catalog, settings, contract, snapshots, config)
            try:
                reader = run_model(con, contract, sql, BATCH_ROWS)
                staged, extras = _stage(reader, contract, schema, rules, build_id, tmp / "staged.parquet")
            except CitylakeError:
                raise
            except Exception as exc:  # DuckDB's binder and runtime errors say what in the model is wrong
                raise CitylakeError(f"{contract.model_path}: {type(exc).__name__}: {mask_message(exc)}") from None
        finally:
            con.close()
        release_memory()
        tallies = [RuleTally(r, error=staged.errors.get(i)) for i, r in enumerate(rules)]
        dup = RuleTally(duplicate_rule(contract))
        masker = Masker(contract, standards)
        good, quarantine = tmp / "good.parquet", tmp / "quarantine.parquet"
        split = split_staged(staged, extras, rules, tallies, dup, masker, run_id, good, quarantine, BATCH_ROWS)
        release_memory()
        result.produced = staged.rows
        over = over_threshold(tallies)
        if len(extras) and staged.rows and len(extras) / staged.rows > dup.rule.threshold:
            over.append(dup)  # a model writing many copies of a key is broken: hold rather than pick one
        record_results(catalog, run_id, contract, [*tallies, dup])
        write_gx_result(settings, contract, [*tallies, dup], run_id, reference_date, [build_id],
                        batch_spec={"build_id": build_id, "inputs": snapshots,
                                    "model": str(contract.model_path.name)})
        result.failures = [{"rule": t.rule.id, "failed": t.failed, "evaluated": t.evaluated} for t in over]
        gate = GateResult(dataset, run_id, [build_id], "held", extracted=staged.rows, failures=result.failures,
                          reason=release if over else None)
        if over and release is None:
            result.status = "held"
            gate.held = staged.rows
            gate.batch_counts = {build_id: {"extracted": staged.rows, "published": 0, "quarantined": 0,
                                            "held": staged.rows}}
            record_batches(catalog, contract, gate, None)
            raise hold_error(contract, over, staged.rows)
        assert staged.rows == split.published + split.quarantined, (staged.rows, split)
        # quarantine first, replaced whole (it holds the current build's failing rows only): a crash after the
        # curated commit then loses nothing, and a retry writes the same rows again
        if quarantine.exists() or open_table(catalog, f"quarantine.{dataset}") is not None:
            append(catalog, f"quarantine.{dataset}", quarantine, props={"citylake.run-id": run_id,
                                                                        BUILD_ID: build_id},
                   properties=QUARANTINE_PROPS, replace=AlwaysTrue())
        props = {BUILD_ID: build_id, INPUTS: json.dumps(snapshots, sort_keys=True), DEFINITION: definition,
                 PUBLISHED_BATCHES: json.dumps([build_id]), "citylake.run-id": run_id,
                 PUBLISHED: str(split.published), QUARANTINED: str(split.quarantined), EXTRACTED: str(staged.rows),
                 **({RELEASE_REASON: release} if over and release is not None else {})}
        result.snapshot_id, elsewhere = _replace(catalog, contract, good, schema, props, build_id)
        if elsewhere:  # a concurrent run committed this very build first: its to record
            result.rows = split.published
            return result
    result.status = "released" if over else "published"
    result.reason = gate.reason
    result.rows, result.quarantined, result.warned = split.published, split.quarantined, split.warned
    gate.status, gate.published, gate.quarantined = result.status, split.published, split.quarantined
    gate.batch_counts = {build_id: {"extracted": staged.rows, "published": split.published,
                                    "quarantined": split.quarantined, "held": 0}}
    record_batches(catalog, contract, gate, result.snapshot_id)
    return result
