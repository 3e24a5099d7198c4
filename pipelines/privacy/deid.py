"""De-identification for open data (GB/T 35273-2020, GB/T 37964-2019), declared per curated column.

``curated.<dataset>`` keeps full values; the open release passes every record batch through a
``Deidentifier`` built from the curated contract's columns (``deid``): ``drop`` (never read),
``mask`` (the display mask of the column's data element, ``pipelines.privacy.mask``), ``year`` (a date or
timestamp generalised to its year, Asia/Shanghai), ``district`` (an address generalised to the GB/T 2260
county-level division named in it, else null), ``grid`` (coordinates floored to the south-west corner of
a ``grid``-degree cell) and ``suppress`` (a small non-zero count, 1 ≤ n < ``k``, withheld as null, counted;
GB/T 37964 practice: a zero is published, since it names nobody, so an empty cell in a suppressed column
always means "fewer than k, at least one").
No pseudonyms, ever: a stable pseudonym is still linkable personal data (keyed pseudonyms belong to
sharing, not to open data).

Everything works on whole Arrow arrays (pyarrow compute, numpy), one call per column and batch: the
release streams tens of millions of rows through here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.standards import DataElement

Array: TypeAlias = pa.Array | pa.ChunkedArray

GENERIC_DIVISIONS = frozenset({"市辖区", "市区", "郊区", "矿区", "县", "区"})
"""GB/T 2260 county-level names that are ordinary words in an address (郊区 "suburb"): never matched."""


def county_names(divisions: Mapping[str, str]) -> list[str]:
    """County-level names of a GB/T 2260 code list (code → name; a code ending ``00`` is a province or
    prefecture), generic names left out, longest first so that a longer name wins at one position."""
    names = {name.strip() for code, name in divisions.items()
             if len(code) == 6 and not code.endswith("00") and name and name.strip() not in GENERIC_DIVISIONS}
    return sorted(names, key=lambda n: (-len(n), n))


def _flat(arr: Array) -> pa.Array:
    if isinstance(arr, pa.ChunkedArray):
        return arr.combine_chunks() if arr.num_chunks else pa.array([], arr.type)
    return arr


def to_year(arr: Array) -> pa.Array:
    """A date, timestamp (its Asia/Shanghai calendar year) or ``YYYY…`` text → its year (int32)."""
    a = _flat(arr)
    t = a.type
    if pa.types.is_timestamp(t):
        if t.tz is not None:
            a = a.cast(pa.timestamp(t.unit, tz="Asia/Shanghai"))
        return pc.year(a).cast(pa.int32())
    if pa.types.is_date(t):
        return pc.year(a).cast(pa.int32())
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        head = pc.utf8_slice_codeunits(a, 0, 4)
        ok = pc.match_substring_regex(head, r"^\d{4}$")
        return pc.if_else(ok, head, pa.scalar(None, head.type)).cast(pa.int32())
    raise TypeError(f"deid year needs a date, timestamp or date text, not {t}")


def to_district(arr: Array, counties: Sequence[str]) -> pa.Array:
    """Address text → the first county-level division name (``county_names``) found in it, else null."""
    a = _flat(arr)
    if pa.types.is_large_string(a.type) or pa.types.is_string_view(a.type):
        a = a.cast(pa.string())
    if not counties:
        return pa.nulls(len(a), pa.string())
    pattern = "(?P<county>" + "|".join(_re2_escape(n) for n in counties) + ")"
    found = pc.extract_regex(pc.utf8_normalize(a, "NFKC"), pattern)
    return found.flatten()[0]  # flatten applies the struct's nulls (no match) to the field


def _re2_escape(text: str) -> str:
    return "".join("\\" + ch if ch in r".^$*+?()[]{}|\\" else ch for ch in text)


def grid_decimals(size: float) -> int:
    """Decimal places that express a multiple of ``size`` exactly enough (0.01 → 2, 0.005 → 3, 0.5 → 1)."""
    text = f"{size:.10f}".rstrip("0")
    return max(0, len(text.partition(".")[2])) if "." in text else 0


def to_grid(arr: Array, size: float) -> pa.Array:
    """Coordinates floored to the south-west corner of their ``size``-degree cell, rounded to the cell's
    decimals (117.2834 at 0.01 → 117.28). A value on a cell edge stays in that cell despite binary floats
    (117.29 / 0.01 = 11728.999…): a nano-cell tolerance before the floor."""
    if not size > 0 or not math.isfinite(size):
        raise ValueError(f"deid grid: cell size must be a positive number of degrees, not {size}")
    a = _flat(arr)
    if not (pa.types.is_floating(a.type) or pa.types.is_decimal(a.type) or pa.types.is_integer(a.type)):
        raise TypeError(f"deid grid needs numeric coordinates, not {a.type}")
    x = a.cast(pa.float64())
    cells = pc.floor(pc.add(pc.divide(x, size), 1e-9))
    scale = 10 ** grid_decimals(size)
    # whole units of 10^-d, then one division: the nearest double to the decimal (31.99, not 31.990000000000002)
    units = pc.round(pc.multiply(cells, size * scale))
    return pc.divide(units, float(scale))


def suppress(arr: Array, k: int) -> tuple[pa.Array, int]:
    """Small non-zero counts (1 ≤ n < ``k``) withheld (null); zeros and counts ≥ k published as they are.
    Returns the array and how many cells were suppressed."""
    a = _flat(arr)
    if not pa.types.is_integer(a.type):
        raise TypeError(f"deid suppress needs integer counts, not {a.type}")
    small = pc.fill_null(pc.and_(pc.greater_equal(a, 1), pc.less(a, k)), False)
    n = int(pc.sum(small.cast(pa.int64())).as_py() or 0)
    if not n:
        return a, 0
    return pc.if_else(small, pa.scalar(None, a.type), a), n


def mask_values(arr: Array, element: DataElement) -> pa.Array:
    """The display mask of ``element`` (``pipelines.privacy.mask.mask``, the one rule every output shows)
    applied to each distinct value once: the column is dictionary-encoded and only its dictionary goes
    through the mask, so a masked column costs its distinct values, not its rows."""
    from pipelines.privacy.mask import is_personal, mask, mask_sql

    a = _flat(arr)
    if pa.types.is_string(a.type) or pa.types.is_large_string(a.type):
        sql = mask_sql(element, '"v"')
        if sql is not None:  # the same rule in DuckDB, vectorised: names and addresses are mostly distinct
            return _duck_mask(a, sql)
    if pa.types.is_date32(a.type) and element.type == "date" and is_personal(element) and not element.code_list \
            and element.validator not in ("resident_id", "mobile"):
        year = pc.utf8_slice_codeunits(pc.cast(a, pa.string()), 0, 4)  # Arrow writes dates as isoformat does
        return pc.binary_join_element_wise(year, pa.scalar("-**-**"), "")
    encoded = a if pa.types.is_dictionary(a.type) else pc.dictionary_encode(a)
    masked = pa.array([mask(v, element) for v in encoded.dictionary.to_pylist()], pa.string())
    return pc.take(masked, encoded.indices)


def _duck_mask(a: pa.Array, sql: str) -> pa.Array:
    from pipelines.privacy.duck import column_sql

    return column_sql(a, sql).cast(pa.string())


@dataclass(frozen=True)
class ColumnRule:
    """One released column's de-identification (a curated contract column, reduced to what deid needs)."""

    name: str
    deid: str
    element: DataElement | None = None
    grid: float = 0.01


@dataclass
class Deidentifier:
    """Applies a dataset's column rules to record batches; ``suppressed`` counts withheld cells per column."""

    rules: list[ColumnRule]
    k: int = 5
    counties: Sequence[str] = ()
    suppressed: dict[str, int] = field(default_factory=dict)

    @classmethod
    def for_contract(cls, contract: Any, standards: Any) -> Deidentifier:
        """From a CuratedContract and the standards (elements for masks; the division list for district)."""
        divisions = standards.code_list("division") if "division" in standards.code_lists else {}
        rules = [ColumnRule(c.name, c.deid, standards.element(c.element), getattr(c, "grid", 0.01))
                 for c in contract.columns]
        return cls(rules, k=contract.open.k, counties=county_names(divisions))

    @property
    def read_columns(self) -> list[str]:
        """The columns to read from the curated table: a dropped column is never read."""
        return [r.name for r in self.rules if r.deid != "drop"]

    def apply(self, batch: pa.RecordBatch | pa.Table) -> pa.RecordBatch:
        """The batch as the open release has it: released columns only, in rule order."""
        names, arrays = [], []
        for r in self.rules:
            if r.deid == "drop":
                continue
            if r.name not in batch.schema.names:
                raise KeyError(f"column {r.name}: not in the curated table (columns: {', '.join(batch.schema.names)})")
            arrays.append(self.column(r, batch.column(r.name)))
            names.append(r.name)
        return pa.RecordBatch.from_arrays([_flat(a) for a in arrays], names=names)

    def column(self, rule: ColumnRule, values: Array) -> pa.Array:
        try:
            return self._column(rule, values)
        except (TypeError, ValueError, pa.ArrowException) as exc:
            raise ValueError(f"column {rule.name}: deid {rule.deid}: {exc}") from exc

    def _column(self, rule: ColumnRule, values: Array) -> pa.Array:
        if rule.deid == "keep":
            return _flat(values)
        if rule.deid == "year":
            return to_year(values)
        if rule.deid == "district":
            return to_district(values, self.counties)
        if rule.deid == "grid":
            return to_grid(values, rule.grid)
        if rule.deid == "suppress":
            out, n = suppress(values, self.k)
            self.suppressed[rule.name] = self.suppressed.get(rule.name, 0) + n
            return out
        if rule.deid == "mask":
            if rule.element is None:
                raise ValueError("mask needs the column's data element")
            return mask_values(values, rule.element)
        raise ValueError(f"unknown deid {rule.deid!r}")

    def output_schema(self, source: pa.Schema) -> pa.Schema:
        """The released schema for a curated table's Arrow schema (types after generalisation)."""
        empty = pa.RecordBatch.from_arrays([pa.array([], source.field(n).type) for n in source.names],
                                           names=list(source.names))
        saved = dict(self.suppressed)
        try:
            return self.apply(empty).schema
        finally:
            self.suppressed = saved
