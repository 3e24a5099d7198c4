"""Standardization (raw → staged): each column to its data element's standard, every change counted.

Per column, in order: trim; full-width → half-width; upper-case X in resident IDs; strip +86/0086 from
mobiles; source codes → standard codes through the code list's aliases ('男' → '1'); cast to the
standard type; coordinates from their declared CRS to CGCS2000/WGS-84. The log says, per column and
transformation, how many rows it changed, so the report can say what was changed and why.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.contracts import DatasetContract
from pipelines.lake.raw import normalize_array
from pipelines.quality.geo import to_wgs84
from pipelines.standards import DataElement, Standards

_FULLWIDTH = "[\uff01-\uff5e\u3000]"
_TYPES = {"string": pa.string(), "integer": pa.int64(), "float": pa.float64(), "boolean": pa.bool_(),
          "date": pa.date32(), "timestamp": pa.timestamp("us", tz="UTC")}


@dataclass(frozen=True)
class Change:
    dataset: str
    column: str
    transformation: str
    rows_changed: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _changed(before: pa.Array, after: pa.Array) -> int:
    if before.type != after.type:
        before = before.cast(after.type, safe=False) if pa.types.is_string(after.type) else before
    if before.type != after.type:
        return int(pc.sum(pc.is_valid(after)).as_py() or 0)
    diff = pc.fill_null(pc.not_equal(before, after), True)
    both_null = pc.and_(pc.is_null(before), pc.is_null(after))
    return int(pc.sum(pc.and_not(diff, both_null)).as_py() or 0)


def _text_steps(arr: pa.Array, element: DataElement, standards: Standards) -> list[tuple[str, pa.Array]]:
    steps = [("trim", pc.utf8_trim_whitespace(arr))]
    cur = steps[-1][1]
    steps.append(("fullwidth_to_halfwidth",
                  pc.if_else(pc.fill_null(pc.match_substring_regex(cur, _FULLWIDTH), False),
                             pc.utf8_normalize(cur, form="NFKC"), cur)))
    cur = steps[-1][1]
    if element.validator == "resident_id":
        steps.append(("uppercase_x", pc.utf8_upper(cur)))
    elif element.validator == "mobile":
        steps.append(("strip_country_code", pc.replace_substring_regex(cur, r"^(\+86|0086)[\s-]?", "")))
    cur = steps[-1][1]
    if element.code_list:
        aliases = standards.aliases(element.code_list)
        if aliases:
            keys = pa.array(list(aliases), pa.string())
            codes = pa.array(list(aliases.values()), pa.string())
            idx = pc.index_in(cur, value_set=keys)
            mapped = pc.take(codes, idx)
            steps.append(("code_list_mapping", pc.if_else(pc.is_valid(idx), mapped, cur)))
    return steps


def _cast(arr: pa.Array, element: DataElement) -> pa.Array:
    if element.type == "decimal":
        return arr if pa.types.is_decimal(arr.type) else pc.cast(arr, pa.decimal128(38, 10))
    target = _TYPES[element.type]
    if arr.type == target:
        return arr
    if element.type == "date" and pa.types.is_string(arr.type):
        parsed = pc.strptime(pc.utf8_slice_codeunits(arr, 0, 10), format="%Y-%m-%d", unit="s", error_is_null=True)
        return parsed.cast(pa.date32())
    if element.type == "timestamp" and pa.types.is_string(arr.type):
        naive = pc.strptime(pc.utf8_slice_codeunits(arr, 0, 19), format="%Y-%m-%d %H:%M:%S", unit="us",
                            error_is_null=True)
        return normalize_array(naive, target)  # naive source times are Asia/Shanghai
    return pc.cast(arr, target, safe=False) if element.type in ("string",) else pc.cast(arr, target)


def standardize(table: pa.Table, contract: DatasetContract, standards: Standards,
                crs: str | None = None) -> tuple[pa.Table, list[Change]]:
    """The contract's columns of ``table`` (raw column codes) in their standard form, and what changed."""
    out: dict[str, pa.Array] = {}
    log: list[Change] = []
    for col in contract.columns:
        element = standards.element(col.element)
        arr = table.column(col.source).combine_chunks() if col.source in table.column_names else \
            pa.nulls(table.num_rows, _TYPES.get(element.type, pa.string()))
        if pa.types.is_large_string(arr.type):
            arr = arr.cast(pa.string())
        if element.type == "string" and not pa.types.is_string(arr.type):
            cast = arr.cast(pa.string())
            log.append(Change(contract.dataset, col.name, "cast_to_string", int(pc.sum(pc.is_valid(arr)).as_py() or 0)))
            arr = cast
        if pa.types.is_string(arr.type):
            for name, after in _text_steps(arr, element, standards):
                n = _changed(arr, after)
                if n:
                    log.append(Change(contract.dataset, col.name, name, n))
                arr = after
        typed = _cast(arr, element)
        if typed.type != arr.type:
            unparsed = int(pc.sum(pc.and_(pc.is_valid(arr), pc.is_null(typed))).as_py() or 0)
            log.append(Change(contract.dataset, col.name, f"cast_to_{element.type}",
                              int(pc.sum(pc.is_valid(typed)).as_py() or 0)))
            if unparsed:  # kept visible: validation fails these rows as not conforming
                log.append(Change(contract.dataset, col.name, f"unparseable_{element.type}", unparsed))
        out[col.name] = typed
    lon = next((c.name for c in contract.columns if c.element == "longitude"), None)
    lat = next((c.name for c in contract.columns if c.element == "latitude"), None)
    if crs and crs not in ("WGS-84", "CGCS2000") and lon and lat:
        out[lon], out[lat] = to_wgs84(out[lon], out[lat], crs)
        moved = int(pc.sum(pc.is_valid(out[lon])).as_py() or 0)
        log.append(Change(contract.dataset, lon, f"crs_{crs}_to_CGCS2000", moved))
        log.append(Change(contract.dataset, lat, f"crs_{crs}_to_CGCS2000", moved))
    return pa.table(out), log
