"""一数一源: every copy of a data element is compared with its authoritative source, joined on the key.

Values are compared after standardization (std tables), so a full-width/half-width or whitespace
difference is not a conflict. Every disagreeing key is recorded in ``meta.conflicts`` with both values
(personal values masked), and the mismatch rate per element and system in ``meta.quality_results``.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.config import load_config
from pipelines.contracts import DatasetContract
from pipelines.lake.catalog import get_catalog
from pipelines.lake.meta import new_run_id, replace_run
from pipelines.lake.raw import open_table, stream_scan
from pipelines.privacy import mask
from pipelines.settings import Settings, load_settings
from pipelines.standards import DataElement


@dataclass(frozen=True)
class Pair:
    element: DataElement
    authority: DatasetContract
    copy: DatasetContract
    auth_column: str
    copy_column: str
    join: list[tuple[str, str]]  # (authority std column, copy std column)


def pairs(standards: Any, contracts: dict[str, DatasetContract]) -> list[Pair]:
    """Every (element, copy) that can be joined to its authority on the authority's key."""
    by_source = {(c.source["system"], c.source["table"]): c for c in contracts.values()}
    out = []
    for e in standards.elements.values():
        auth_ref = e.authority
        if auth_ref is None:  # a derived element (curated) has no authority to compare copies with
            continue
        auth = by_source.get((auth_ref.system, auth_ref.table))
        if auth is None:
            continue
        auth_col = next(c.name for c in auth.columns if c.source == auth_ref.column)
        auth_key_elements = {next(c.element for c in auth.columns if c.name == k): k for k in auth.primary_key}
        for ref in e.copies:
            copy = by_source.get((ref.system, ref.table))
            if copy is None or e.code in auth_key_elements:
                continue  # a copy of the key itself is referential integrity, not a value conflict
            copy_col = next(c.name for c in copy.columns if c.source == ref.column)
            join = []
            for element_code, auth_key in auth_key_elements.items():
                match = next((c.name for c in copy.columns if c.element == element_code), None)
                if match:
                    join.append((auth_key, match))
            if len(join) == len(auth_key_elements):
                out.append(Pair(e, auth, copy, auth_col, copy_col, join))
    return out


def run_consistency(*, settings: Settings | None = None, run_id: str | None = None) -> list[dict[str, Any]]:
    """Compare every copy with its authority; record conflicts and rates. Returns one summary per pair.

    A run replaces what an earlier attempt of the same ``run_id`` recorded; without one (a CLI call) the
    run gets its own id, so two runs are told apart rather than piled under one name."""
    import duckdb

    settings = settings or load_settings()
    run_id = run_id or new_run_id()
    standards, _systems, contracts = load_config(settings)
    catalog = get_catalog(settings)
    summaries, conflicts = [], []
    for p in pairs(standards, contracts):
        auth_t, copy_t = open_table(catalog, p.authority.std_table), open_table(catalog, p.copy.std_table)
        if auth_t is None or copy_t is None:
            continue
        # Both sides stream into DuckDB (it spills its join past the memory limit); only the differing
        # rows come back, so memory does not follow the size of the registries.
        a = stream_scan(auth_t.scan(selected_fields=tuple({k for k, _ in p.join} | {p.auth_column})))
        c = stream_scan(copy_t.scan(selected_fields=tuple({*p.copy.primary_key, *(j for _, j in p.join),
                                                           p.copy_column})))
        con = duckdb.connect(config={"memory_limit": "256MB", "temp_directory": tempfile.gettempdir(), "threads": 2})
        con.register("a", a)
        con.register("c", c)
        on = " AND ".join(f'a."{x}" = c."{y}"' for x, y in p.join)
        keys = ", ".join(f'c."{k}" AS "k_{k}"' for k in p.copy.primary_key)
        # a missing value on either side is not a conflict (completeness rules report it)
        result = con.sql(f'SELECT {keys}, a."{p.auth_column}" AS auth_value, c."{p.copy_column}" AS copy_value, '
                         f'coalesce(a."{p.auth_column}" <> c."{p.copy_column}", false) AS differ '
                         f"FROM c JOIN a ON {on}").fetch_record_batch(64 * 1024)
        compared, parts = 0, []
        for batch in result:
            compared += batch.num_rows
            differing = pa.Table.from_batches([batch]).filter(pc.field("differ"))
            if differing.num_rows:
                parts.append(differing)
        con.close()
        bad = pa.concat_tables(parts) if parts else result.schema.empty_table()
        rate = bad.num_rows / compared if compared else 0.0
        summaries.append({"element": p.element.code, "authoritative_system": p.authority.source["system"],
                          "department": p.copy.owner,
                          "other_system": p.copy.source["system"], "other_table": p.copy.source["table"],
                          "compared": compared, "conflicts": bad.num_rows, "rate": round(rate, 6)})
        key_cols = [f"k_{k}" for k in p.copy.primary_key]
        for row in bad.to_pylist():
            key = [row[k] for k in key_cols]
            conflicts.append({
                "run_id": run_id, "element": p.element.code, "element_name": p.element.name_zh,
                "authoritative_system": p.authority.source["system"], "other_system": p.copy.source["system"],
                "other_table": p.copy.source["table"], "other_column": p.copy_column,
                "key": key[0] if len(key) == 1 else "|".join(map(str, key)),
                "authoritative_value": mask(row["auth_value"], p.element),
                "other_value": mask(row["copy_value"], p.element)})
    replace_run(catalog, "meta.conflicts", run_id, conflicts)
    replace_run(catalog, "meta.quality_results", run_id, [
        {"run_id": run_id, "dataset": f"{s['other_system']}.{s['other_table']}", "department": s["department"],
         "rule": f"{s['element']}.consistency.{s['other_system']}", "tag": "source_conflict", "dimension": "一致性",
         "element": s["element"], "column": s["element"], "evaluated": s["compared"], "failed": s["conflicts"],
         "severity": "warning", "passed": s["conflicts"] == 0, "error": None} for s in summaries],
        tag="source_conflict")  # its own rows only: a CLI run id also carries the gate's results
    return summaries
