"""Create-or-evolve and streamed appends of the lake's Iceberg tables, shared by std, quarantine and meta writes.

Lives one floor below the stages so that the quality gate, the consistency check and the meta tables use
one implementation (no stage imports another's private helper).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.exceptions import TableAlreadyExistsError

from pipelines.lake.raw import open_table, retry_conflicts

PROPS = {"format-version": "2", "write.parquet.compression-codec": "zstd"}
STAGED_BATCH_ROWS = 128 * 1024


def table_for(catalog: Any, name: str, schema: pa.Schema, properties: dict[str, str]) -> Any:
    """The table, created from ``schema`` the first time, evolved when ``schema`` brings new columns (a
    column added in a later release: older lakes lack it) or ``properties`` a key the table lacks."""
    table = open_table(catalog, name)
    if table is None:
        try:
            return catalog.create_table(name, schema=schema, properties=properties)
        except TableAlreadyExistsError:  # another process created it first
            table = catalog.load_table(name)
    # format-version is the table's format, not a settable property (pyiceberg consumes it at creation)
    missing = {k: v for k, v in properties.items() if k not in table.properties and k != "format-version"}
    new_columns = set(schema.names) - set(table.schema().column_names)
    if new_columns or missing:
        with table.transaction() as tx:
            if new_columns:
                with tx.update_schema() as update:
                    update.union_by_name(schema)
            if missing:
                tx.set_properties(missing)
        table = catalog.load_table(name)
    return table


def append_staged(tx: Any, table: Any, rows: pq.ParquetFile | None, props: dict[str, str],
                  keep: Callable[[pa.RecordBatch], pa.Array] | None = None, batch_rows: int = 0, *,
                  overwrite: bool = False, schema: pa.Schema | None = None) -> None:
    """One append snapshot of a staged Parquet file, written a file's worth of rows at a time; ``keep``
    filters each record batch first. With ``overwrite`` it is one overwrite snapshot instead, which also
    deletes every current data file of ``table``; ``rows`` may then be None (nothing staged, checked against
    ``schema``), which leaves the table empty.

    ``Transaction.append`` of a ``RecordBatchReader`` hands every target-sized bin to an executor at once
    (``executor.map`` submits eagerly), so the whole stream is read ahead of the writers; this is the same
    append, fed one bin at a time."""
    from pyiceberg.io.pyarrow import _check_pyarrow_schema_compatible, _dataframe_to_data_files

    meta = tx.table_metadata
    provided = rows.schema_arrow if rows is not None else schema
    _check_pyarrow_schema_compatible(meta.schema(), provided_schema=provided,
                                     format_version=meta.format_version)
    target = int(meta.properties.get("write.target-file-size-bytes", 512 << 20))
    counter = itertools.count(0)
    update = tx.update_snapshot(snapshot_properties=props)
    with (update.overwrite() if overwrite else update.fast_append()) as snapshot:
        if overwrite and table.current_snapshot() is not None:
            for task in table.scan().plan_files():
                snapshot.delete_data_file(task.file)
        pending: list[pa.RecordBatch] = []
        size = 0
        batches = rows.iter_batches(batch_size=batch_rows or STAGED_BATCH_ROWS) if rows is not None else iter(())
        for batch in itertools.chain(batches, [None]):
            if batch is not None and keep is not None:
                batch = batch.filter(keep(batch))
            if batch is not None:
                pending.append(batch)
                size += batch.nbytes
            if pending and (batch is None or size >= target):
                for f in _dataframe_to_data_files(table_metadata=meta, df=pa.Table.from_batches(pending), io=table.io,
                                                  write_uuid=snapshot.commit_uuid, counter=counter):
                    snapshot.append_data_file(f)
                pending, size = [], 0


def append(catalog: Any, name: str, data: pa.Table | Path, props: dict[str, str] | None = None,
           properties: dict[str, str] | None = None, replace: Any = None) -> None:
    """Append to a table, creating it from the data's schema the first time; a staged Parquet file is
    appended a data file's worth at a time (bounded memory). ``replace`` (a pyiceberg row filter) deletes
    the rows it matches in the same commit, so a rerun replaces what an earlier attempt wrote.

    A concurrent writer's commit (two Airflow tasks appending to one meta or quarantine table) redoes the
    whole write on the reloaded table: pyiceberg retries a plain append only 4 times, and not a first
    create, a schema change or a delete that now conflicts."""
    staged = rows = None
    if isinstance(data, Path):
        staged = pq.ParquetFile(data) if data.exists() else None
        staged = staged if staged is not None and staged.metadata.num_rows else None
    elif data.num_rows:
        rows = data

    def attempt() -> None:
        if staged is None and rows is None:  # nothing to add: at most the replace's delete
            if replace is not None and (table := open_table(catalog, name)) is not None:
                with table.transaction() as tx:
                    _delete(tx, replace, props)
            return
        schema = staged.schema_arrow if staged is not None else rows.schema  # type: ignore[union-attr]
        table = table_for(catalog, name, schema, properties or PROPS)
        with table.transaction() as tx:
            _delete(tx, replace, props)
            if staged is not None:
                append_staged(tx, table, staged, props or {})
            else:
                tx.append(rows, snapshot_properties=props or {})

    retry_conflicts(f"{name}: write", attempt)


def _delete(tx: Any, row_filter: Any, props: dict[str, str] | None) -> None:
    import warnings

    if row_filter is None or tx.table_metadata.current_snapshot_id is None:
        return
    with warnings.catch_warnings():  # "did not match any records" is the usual case: a first attempt
        warnings.filterwarnings("ignore", message="Delete operation did not match any records")
        tx.delete(row_filter, snapshot_properties=props or {})
