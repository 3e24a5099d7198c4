"""``citylake sql`` and ``lake show --where``: read-only DuckDB SQL over lake tables, masked in the views.

A query names lake tables as ``<namespace>.<table>`` (``raw.population__person``, ``std.person``). sqlglot
parses it (one SELECT/WITH/set-operation query, nothing else) and finds the tables it references, scope by
scope so a CTE that shadows a name stays a CTE; every other table reference must be a lake table (no table
functions, no file paths). Each is read through the project's streaming scan (``raw.stream_scan``, the
columns the query can name only) and handed to DuckDB as an Arrow stream object that opens a fresh scan
for every scan DuckDB makes (a self-join reads the table twice), registered as a view ``<ns>.<table>``.

Masking happens BEFORE DuckDB sees a value: the stream object masks every record batch with the masks
``lake show`` uses (``pipelines.privacy.column_masks``: declared sensitivity from the contracts, detection
on a sample, fail-closed when the config is unreadable), decided once per table on its first rows. So
``substr``, ``LIKE`` or ``=`` in the query only ever compare masked text; ``unmasked`` is the only way to
clear values. DuckDB then runs with external access off (no file, no extension install, no ATTACH, no
COPY), Python replacement scans off (a Python variable is not a table) and the configuration locked.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from itertools import chain
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.errors import CitylakeError
from pipelines.lake.catalog import NAMESPACES
from pipelines.settings import Settings

if TYPE_CHECKING:
    import duckdb
    from sqlglot import exp

    from pipelines.privacy import Declarations

SAMPLE_ROWS = 1000
"""Rows the masking decision reads (detection samples the first 1,000 non-null values, as ``lake show``)."""

# Tables whose masks depend on other cells of the row (a conflict's element, a deleted key's dataset):
# masked row by row through ``masked_rows`` itself, and read whole (no projection).
_ROW_MASKED = ("meta.conflicts", "meta.deleted_keys")


class QueryError(CitylakeError):
    """A query ``citylake sql`` refuses or DuckDB could not run: one line."""


# --- parsing ------------------------------------------------------------------------------------------


@dataclass
class Parsed:
    """A checked query: the lake tables it reads and, per table, the columns it can name (None: all)."""

    sql: str
    tables: dict[str, set[str] | None] = field(default_factory=dict)


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def parse_query(sql: str) -> Parsed:
    """The lake tables ``sql`` reads (``namespace.table``, lower case), after checking it is one read-only
    query over lake tables only; a ``QueryError`` names what is refused."""
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import SqlglotError
    from sqlglot.optimizer.scope import traverse_scope

    try:
        trees = [t for t in sqlglot.parse(sql, read="duckdb") if t is not None]
    except SqlglotError as exc:
        raise QueryError(f"cannot parse the query: {_one_line(str(exc))[:300]}") from None
    if len(trees) != 1:
        raise QueryError(f"one query only ({len(trees)} statements given)")
    root = trees[0]
    if not isinstance(root, exp.Query):
        kind = root.key.upper() if not isinstance(root, exp.Command) else str(root.this).upper()
        raise QueryError(f"only a read-only query (SELECT, WITH … SELECT, UNION …) is allowed, not {kind}")
    for node in root.walk():
        if isinstance(node, exp.DML | exp.DDL | exp.Command | exp.Set | exp.Pragma | exp.Copy | exp.Attach
                      | exp.Detach | exp.Install):
            raise QueryError(f"only a read-only query is allowed ({node.key.upper()} inside it)")
        if isinstance(node, exp.Placeholder):
            raise QueryError("parameters ($x, ?) are not supported: write the values into the query")
    tables: dict[str, set[str] | None] = {}
    aliases: set[str] = set()
    for scope in traverse_scope(root):
        for table in scope.tables:
            name = _lake_name(table, scope.cte_sources)
            if name is None:
                continue
            tables[name] = set()
            aliases.update({table.name.lower(), (table.alias or "").lower()})
    # Anything the query can name a column by: identifiers anywhere (USING lists are not Columns).
    names = {i.name.lower() for i in root.find_all(exp.Identifier)}
    if _reads_whole_rows(root, aliases - {""}):
        return Parsed(sql, {t: None for t in tables})
    return Parsed(sql, {t: (None if t in _ROW_MASKED else names) for t in tables})


def _lake_name(table: exp.Table, ctes: dict[str, Any]) -> str | None:
    """``namespace.table`` of a lake table reference, None for a CTE; refuses anything else."""
    from sqlglot import exp

    if not isinstance(table.this, exp.Identifier):
        what = table.this.sql_name().lower() if isinstance(table.this, exp.Func) else table.this.key
        raise QueryError(f"table function {what}() is not allowed: citylake sql reads lake tables only "
                         "(no files, no other sources)")
    if table.args.get("catalog"):
        raise QueryError(f"table {table.sql(dialect='duckdb')}: lake tables are named <namespace>.<table> "
                         f"({', '.join(NAMESPACES)})")
    if not table.db:
        if table.name in ctes:
            return None
        raise QueryError(f"unknown table {table.name!r}: lake tables are named <namespace>.<table> "
                         f"({', '.join(NAMESPACES)}; see `citylake lake ls`)")
    return f"{table.db}.{table.name}".lower()


def _reads_whole_rows(root: exp.Expr, aliases: set[str]) -> bool:
    """True when the query can read columns it does not name: ``*`` (not ``count(*)``), ``COLUMNS(...)``,
    a positional ``#1``, or a table alias used as a value (DuckDB's whole-row struct)."""
    from sqlglot import exp

    for node in root.walk():
        if isinstance(node, exp.Star) and not isinstance(node.parent, exp.Count):
            return True
        if isinstance(node, exp.Columns | exp.PositionalColumn):
            return True
        if isinstance(node, exp.Anonymous) and node.name.lower() == "columns":
            return True
        if isinstance(node, exp.Column) and not node.table and node.name.lower() in aliases:
            return True
    return False


# --- masked streams -----------------------------------------------------------------------------------


def _string(values: list[Any]) -> pa.Array:
    return pa.array([None if v is None else v if isinstance(v, str) else str(v) for v in values], pa.string())


def _nested_json(value: Any) -> Any:
    return None if value is None else json.dumps(value, ensure_ascii=False, default=str)


class _Masker:
    """The masks of one lake table (decided once, on its first rows) applied to each record batch."""

    def __init__(self, name: str, sample: pa.Table, decl: Declarations | None) -> None:
        from pipelines.privacy import column_masks, mask_file_name, mask_text

        self.name, self.decl = name, decl
        masks = column_masks(sample, decl.columns_of(name) if decl is not None else None)
        if name.startswith("meta.") and "key" in sample.column_names:
            masks["key"] = mask_text  # as ``masked_rows``
        if "_source_file" in sample.column_names:
            masks["_source_file"] = mask_file_name
        if name in _ROW_MASKED:
            masks.update({c: mask_text for c in ("key", "authoritative_value", "other_value")
                          if c in sample.column_names})
        self.masks = masks
        from pipelines.privacy import mask

        # a code-list element's mask shows the code (sex 1/2): declared personal, yet read as it is
        self.clear = {c for c, fn in masks.items()
                      if isinstance(fn, partial) and fn.func is mask and fn.keywords["element"].code_list}
        self.schema = pa.schema([pa.field(f.name, pa.string()) if f.name in masks else f for f in sample.schema])

    def apply(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if self.name in _ROW_MASKED:
            from pipelines.privacy import masked_rows

            rows = masked_rows(self.name, pa.Table.from_batches([batch]), self.decl)
            return pa.RecordBatch.from_arrays(
                [_string([r[c] for r in rows]) if c in self.masks else batch.column(c) for c in batch.schema.names],
                schema=self.schema)
        arrays = [self._column(c, batch.column(c)) if c in self.masks else batch.column(c)
                  for c in batch.schema.names]
        return pa.RecordBatch.from_arrays(arrays, schema=self.schema)

    def _column(self, name: str, values: pa.Array) -> pa.Array:
        from pipelines.privacy import mask
        from pipelines.privacy.deid import mask_values

        fn = self.masks[name]
        if isinstance(fn, partial) and fn.func is mask and not _nested(values.type):
            return mask_values(values, fn.keywords["element"]).cast(pa.string())  # the same rule, vectorised
        if _nested(values.type):
            return _string([_nested_json(fn(v)) for v in values.to_pylist()])
        # each distinct value once: a column costs its distinct values, not its rows
        encoded = values if pa.types.is_dictionary(values.type) else pc.dictionary_encode(values)
        masked = _string([fn(v) for v in encoded.dictionary.to_pylist()])
        return pc.take(masked, encoded.indices)


def _nested(t: pa.DataType) -> bool:
    return pa.types.is_nested(t)


class LakeStream:
    """A lake table as an Arrow stream object (``__arrow_c_stream__``): every call opens a fresh streaming
    scan, so DuckDB can scan it more than once; its batches masked unless ``unmasked``. The masks are
    decided on the first call (its first ``SAMPLE_ROWS`` rows) and kept, so every scan agrees."""

    def __init__(self, table: Any, name: str, columns: set[str] | None, decl: Declarations | None, *,
                 unmasked: bool, snapshot_id: int | None = None, row_filter: Any = None) -> None:
        self.table, self.name, self.decl, self.unmasked = table, name, decl, unmasked
        self.snapshot_id, self.row_filter = snapshot_id, row_filter
        schema = table.schema()
        snap = table.snapshot_by_id(snapshot_id) if snapshot_id is not None else None
        if snap is not None and snap.schema_id is not None:
            schema = table.schemas().get(snap.schema_id, schema)  # the columns as of that snapshot
        self.schema_fields = schema
        fields = [f.name for f in schema.fields]
        self.fields = fields if columns is None else [f for f in fields if f.lower() in columns] or fields[:1]
        self._masker: _Masker | None = None
        self._schema: pa.Schema | None = None

    def _reader(self) -> pa.RecordBatchReader:
        from pyiceberg.expressions import AlwaysTrue

        from pipelines.lake.raw import stream_scan

        scan = self.table.scan(selected_fields=tuple(self.fields), snapshot_id=self.snapshot_id,
                               row_filter=self.row_filter if self.row_filter is not None else AlwaysTrue())
        return stream_scan(scan)

    def _batches(self) -> tuple[pa.Schema, Iterator[pa.RecordBatch]]:
        reader = self._reader()
        if self.unmasked:
            return reader.schema, iter(reader)
        if self._masker is None:
            head: list[pa.RecordBatch] = []
            for batch in reader:  # the first rows decide, as ``lake show`` decides on the rows it shows
                head.append(batch)
                if sum(b.num_rows for b in head) >= SAMPLE_ROWS:
                    break
            sample = pa.Table.from_batches(head, reader.schema).slice(0, SAMPLE_ROWS)
            self._masker = _Masker(self.name, sample, self.decl)
            masker = self._masker
            return masker.schema, (masker.apply(b) for b in chain(head, reader))  # lazily: not a list
        masker = self._masker
        return masker.schema, (masker.apply(b) for b in reader)

    def masked(self, column: str) -> bool:
        """Whether ``column``'s values are masked in this stream (after its masks were decided)."""
        m = self._masker
        return not self.unmasked and m is not None and column in m.masks and column not in m.clear

    def arrow_schema(self) -> pa.Schema:
        if self._schema is None:
            if self.unmasked:
                self._schema = self._reader().schema
            else:
                schema, _ = self._batches()  # decides the masks (reads the first rows once)
                self._schema = schema
        return self._schema

    def __arrow_c_schema__(self) -> Any:
        return self.arrow_schema().__arrow_c_schema__()

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        schema, batches = self._batches()
        return pa.RecordBatchReader.from_batches(schema, batches).__arrow_c_stream__(requested_schema)


# --- running ------------------------------------------------------------------------------------------


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def connect(streams: dict[str, LakeStream]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB with one view per lake table (``<ns>.<table>``) over its stream, then sealed:
    no file or network access, no Python replacement scans, configuration locked."""
    import duckdb

    con = duckdb.connect(config={"python_enable_replacements": False})
    con.execute("SET enable_progress_bar = false")  # a long query would draw a bar on the terminal
    for i, (name, stream) in enumerate(sorted(streams.items())):
        ns, _, table = name.partition(".")
        hidden = f"__lake_{i}"  # masked as the view is: nothing clear hides behind it
        con.register(hidden, stream)
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(ns)}")
        con.execute(f"CREATE VIEW {_quote(ns)}.{_quote(table)} AS SELECT * FROM {_quote(hidden)}")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def _declarations(settings: Settings, unmasked: bool) -> tuple[Declarations | None, str | None]:
    if unmasked:
        return None, None
    from pipelines.privacy import load_declarations

    decl, why = load_declarations(settings)
    warning = f"config unreadable ({why}): every value that looks personal and all free text masked" if why else None
    return decl, warning


@dataclass
class Result:
    """A query's running relation, its connection (kept open while it streams) and the masking warning."""

    con: Any
    relation: Any
    warning: str | None
    masked: bool

    def batches(self, rows: int = 10_000) -> Iterator[pa.RecordBatch]:
        import duckdb

        try:
            reader = self.relation.to_arrow_reader(rows)
            yield from reader
        except duckdb.Error as exc:
            raise self.error(exc) from None

    def error(self, exc: BaseException) -> QueryError:
        return _duck_error(exc, self.masked)

    def close(self) -> None:
        """Close the connection now: a DuckDB connection left to the garbage collector may be destroyed in
        a forked child, whose destructor then crashes (its threads stayed in the parent)."""
        self.con.close()

    def __enter__(self) -> Result:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _duck_error(exc: BaseException, masked: bool) -> QueryError:
    from pipelines.privacy import mask_message

    text = _one_line(str(exc))
    return QueryError(mask_message(text) or "" if masked else text)


def run_sql(sql: str, settings: Settings, *, unmasked: bool = False) -> Result:
    """Run a checked read-only query over the lake tables it names; the result streams (``Result.batches``)."""
    import duckdb
    from pyiceberg.exceptions import NoSuchTableError

    from pipelines.lake.catalog import get_catalog

    parsed = parse_query(sql)
    catalog = get_catalog(settings)
    decl, warning = _declarations(settings, unmasked)
    streams = {}
    for name, columns in parsed.tables.items():
        if name.partition(".")[0] not in NAMESPACES:
            raise QueryError(f"unknown table {name}: lake namespaces are {', '.join(NAMESPACES)}")
        try:
            table = catalog.load_table(name)
        except NoSuchTableError:
            raise QueryError(f"unknown table {name} (see `citylake lake ls`)") from None
        streams[name] = LakeStream(table, name, columns, decl, unmasked=unmasked)
    con = connect(streams)
    try:
        relation = con.sql(sql)
    except duckdb.Error as exc:
        con.close()
        raise _duck_error(exc, not unmasked) from None
    if relation is None:
        con.close()
        raise QueryError("the query returned nothing (not a SELECT)")
    return Result(con, relation, warning, not unmasked)


# --- lake show --where --------------------------------------------------------------------------------


def _pushdown(condition: str, schema: Any) -> Any:
    """The condition as a pyiceberg expression bound to ``schema`` (its own parser: comparisons, IN, IS NULL,
    LIKE 'x%', AND/OR/NOT), or None when it has more than that or does not bind (a literal of another type):
    DuckDB alone filters then."""
    from pyiceberg.expressions.parser import parse
    from pyiceberg.expressions.visitors import bind

    try:
        expression = parse(condition)
        bind(schema, expression, case_sensitive=True)
    except Exception:  # noqa: BLE001 - pyparsing's and binding's errors: not pushed down, DuckDB filters
        return None
    return expression


def show_where(name: str, condition: str, limit: int, settings: Settings, *, unmasked: bool = False,
               as_of: int | datetime | None = None) -> tuple[list[str], list[dict[str, Any]], str | None]:
    """(columns, rows, warning): the first ``limit`` rows of ``name`` (now or ``as_of``) where ``condition``
    holds. The condition is the registry filter's grammar (``pipelines.sql_filter``: one predicate over the
    table's own columns) and is evaluated on the rows AS SHOWN: masked values unless ``unmasked``, so
    ``resident_id LIKE '3401%'`` matches masked IDs by their visible prefix and cannot test hidden digits.
    With ``unmasked`` it is also pushed down to the Iceberg scan where pyiceberg's parser reads it (files
    pruned; DuckDB still applies the exact condition)."""
    import duckdb

    from pipelines.errors import ConfigError
    from pipelines.lake.catalog import get_catalog
    from pipelines.lake.inspect import snapshot_at
    from pipelines.sql_filter import render_filter

    table = get_catalog(settings).load_table(name)  # NoSuchTableError: the CLI names the table
    snapshot_id = snapshot_at(table, name, as_of) if as_of is not None else None
    stream = LakeStream(table, name, None, None, unmasked=True, snapshot_id=snapshot_id)
    try:
        rendered = render_filter(condition, "duckdb", stream.fields, f"{name} --where")
    except ConfigError as exc:
        raise QueryError(str(exc)) from None
    decl, warning = _declarations(settings, unmasked)
    pushed = _pushdown(rendered, stream.schema_fields) if unmasked else None
    stream = LakeStream(table, name, None, decl, unmasked=unmasked, snapshot_id=snapshot_id, row_filter=pushed)
    con = connect({name: stream})
    ns, _, short = name.partition(".")
    try:
        rel = con.sql(f"SELECT * FROM {_quote(ns)}.{_quote(short)} WHERE {rendered} LIMIT {int(limit)}")
        data = rel.to_arrow_table()
    except duckdb.Error as exc:
        raise _duck_error(exc, not unmasked) from None
    finally:
        con.close()  # never left to the garbage collector (see Result.close)
    masked = sorted(c for c in stream.fields if stream.masked(c) and c.lower() in _names(rendered))
    if masked:  # not an error (a masked ID's visible prefix is a fine filter), but say what was compared
        note = (f"--where compared the masked values of {', '.join(masked)} (as shown: 张*, 340104********1234, "
                "1990-**-**); --unmasked compares clear values")
        warning = f"{warning}; {note}" if warning else note
    return data.column_names, data.to_pylist(), warning


def _names(condition: str) -> set[str]:
    from sqlglot import exp, parse_one

    return {c.name.lower() for c in parse_one(condition, read="duckdb").find_all(exp.Column)}
