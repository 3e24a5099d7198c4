"""Which columns of a lake table a person may read in clear: by declaration, by detection, fail-closed.

A column is masked when its declared data element is personal, OR when most of a sample of its values
are a personal kind (``detect.column_kind``), so a new system's IDs, mobiles and names are masked
before anyone declares them. Any other text column of an undeclared table has the identifiers inside
its values masked, and the quoted names and addresses inside them (JSON text) too (``mask_message``);
so does a declared non-personal text column unless its element has a code list. Structs, lists and maps
are masked field by field. When the standards, registry or contracts cannot be read, nothing is trusted:
every detected value is masked, every free-text column is hidden (``mask_free_text``) and dates are kept
to the year; only code-like values (no space, no Han, short) stay readable.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.contracts import CuratedContract, DatasetContract
from pipelines.privacy.detect import column_kind
from pipelines.privacy.mask import is_personal, mask, mask_file_name, mask_free_text, mask_kind, mask_message, mask_text
from pipelines.settings import Settings
from pipelines.standards import DataElement, Standards

Mask = Callable[[Any], Any]
_CODE_LIKE = r"^[0-9A-Za-z_.:/+|=@#\-]{0,64}$"
_DATE_LIKE = r"^\d{4}[-/.年]\d{1,2}[-/.月]\d{1,2}"


@dataclass(frozen=True)
class Declarations:
    """The standards and contracts (std and curated): what each lake column carries, where it is declared."""

    standards: Standards
    contracts: dict[str, DatasetContract]
    curated: Mapping[str, CuratedContract] = field(default_factory=dict)
    """Curated contracts: ``curated.<ds>`` and ``quarantine.<ds>`` of a curated dataset (names differ from std's)."""

    def columns_of(self, table: str) -> dict[str, DataElement]:
        """Column → data element for ``raw.<system>__<table>``, ``std.<ds>``, ``curated.<ds>`` and
        ``quarantine.<ds>`` (of a std or a curated dataset)."""
        ns, _, name = table.partition(".")
        if ns == "raw" and "__" in name:
            system, _, code = name.partition("__")
            out = {}
            for c in self.contracts.values():  # a contract maps the raw table's source columns to elements
                if (c.source["system"], c.source["table"]) == (system, code):
                    out.update({col.source: self.standards.element(col.element) for col in c.columns})
            for e in self.standards.elements.values():
                for ref in [*e.authoritative, *e.copies]:
                    if (ref.system, ref.table) == (system, code):
                        out[ref.column] = e
            return out
        if ns in ("std", "quarantine") and name in self.contracts:
            return {c.name: self.standards.element(c.element) for c in self.contracts[name].columns}
        if ns in ("curated", "quarantine") and name in self.curated:
            return {c.name: self.standards.element(c.element) for c in self.curated[name].columns}
        return {}


def load_declarations(settings: Settings) -> tuple[Declarations | None, str | None]:
    """(declarations, None), or (None, why) when any of the config cannot be read: masking then fails
    closed. Any exception counts — a config that crashes the loader must not switch masking off. The curated
    contracts are part of it: a curated table is masked by its declared elements as a std one is."""
    from pipelines.config import load_all

    try:
        config = load_all(settings)
    except Exception as exc:  # noqa: BLE001 - fail closed on anything
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return Declarations(config.standards, config.contracts, config.curated), None


def _is_text(arr: pa.ChunkedArray | pa.Array) -> bool:
    return pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) or (
        pa.types.is_dictionary(arr.type) and pa.types.is_string(arr.type.value_type))


def _code_like(arr: pa.ChunkedArray | pa.Array, sample: int = 1000) -> bool:
    values = arr.drop_null().slice(0, sample)
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    return bool(pc.all(pc.match_substring_regex(values, _CODE_LIKE)).as_py() is not False)


def _date_like(arr: pa.Array) -> bool:
    if pa.types.is_date(arr.type) or pa.types.is_timestamp(arr.type):
        return True
    if not _is_text(arr):
        return False
    values = arr.drop_null().slice(0, 1000)
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    return len(values) > 0 and bool(pc.all(pc.match_substring_regex(values, _DATE_LIKE)).as_py())


def _to_year(value: Any) -> Any:
    return None if value is None else str(value)[:4] + "-**-**"


def _each(child: Mask, value: Any) -> Any:
    return None if value is None else [child(v) for v in value]


def _fields(children: dict[str, Mask], value: Any) -> Any:
    return None if value is None else {k: children[k](v) if k in children else v for k, v in value.items()}


def _entries(keys: Mask | None, items: Mask | None, value: Any) -> Any:
    return None if value is None else [(keys(k) if keys else k, items(v) if items else v) for k, v in value]


def value_mask(values: pa.ChunkedArray | pa.Array, element: DataElement | None, *, closed: bool = False,
               internal: bool = False) -> Mask | None:
    """The mask for one column's values, or None when they may be read in clear. ``element`` is the
    column's declared data element (None: undeclared); ``closed``: the config is unreadable (fail closed);
    ``internal``: a citylake bookkeeping column (``_batch_id``, ``_ingested_at``), readable in any mode.

    Structs, lists and maps are masked field by field, by the same rules applied to each field's values
    (a JSONL ``{"person": {"name": …, "sfzh": …}}`` lands as a struct). Text is never shown raw unless it is
    a declared code-list value: identifiers and quoted names inside it are masked (``mask_message``),
    and when failing closed free text is hidden and dates are kept to the year."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if pa.types.is_struct(arr.type):
        flat = arr.flatten()  # the parent's nulls applied to each field
        children = {arr.type.field(i).name: value_mask(flat[i], element, closed=closed) for i in range(len(flat))}
        masked = {k: m for k, m in children.items() if m is not None}
        return partial(_fields, masked) if masked else None
    if pa.types.is_map(arr.type):
        keys, items = value_mask(arr.keys, element, closed=closed), value_mask(arr.items, element, closed=closed)
        return partial(_entries, keys, items) if keys or items else None
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        child = value_mask(pc.list_flatten(arr), element, closed=closed)
        return partial(_each, child) if child else None
    if element is not None and is_personal(element):
        return partial(mask, element=element)
    kind = column_kind(arr)
    if kind is not None:
        return partial(mask_kind, kind=kind)  # a mis-declared element (公开 on an ID column) does not leak
    if closed and not internal and _date_like(arr):
        return _to_year  # a birth date, generalised to the year (GB/T 35273)
    if not _is_text(arr) or (element is not None and element.code_list):
        return None  # numbers and code values (sex 1/2, district codes) identify nobody on their own
    if closed and not internal and not _code_like(arr):
        return mask_free_text
    return mask_message  # identifiers anywhere, names and addresses quoted inside (JSON)


def column_masks(data: pa.Table, declared: Mapping[str, DataElement] | None) -> dict[str, Mask]:
    """Column → mask for every column of ``data`` a person may not read in clear. ``declared`` is the
    column's data elements (``Declarations.columns_of``); None means the config is unreadable (fail closed)."""
    masks: dict[str, Mask] = {}
    for name in data.column_names:
        element = declared.get(name) if declared is not None else None
        fn = value_mask(data.column(name), element, closed=declared is None, internal=name.startswith("_"))
        if fn is not None:
            masks[name] = fn
    return masks


def _conflict_value(row: dict[str, Any], column: str, decl: Declarations | None) -> Any:
    element = decl.standards.elements.get(row.get("element") or "") if decl is not None else None
    value = row[column]
    if element is not None:
        return mask(value, element)
    kind = column_kind(pa.array([value], pa.string())) if value is not None else None
    return mask_kind(value, kind) if kind else mask_free_text(value)


KEY_SEP = "|"
"""How ``pipelines.quality.consistency`` joins the parts of a copy's composite primary key."""


def _key_part(part: str, element: DataElement | None) -> Any:
    # Undeclared (no contract, or a key that does not split into its primary key): fail closed, so a
    # name or address is hidden whole while an ID keeps its masked shape and a code stays readable.
    fn = value_mask(pa.array([part], pa.string()), element, closed=element is None)
    return fn(part) if fn is not None else part


def conflict_key(row: Mapping[str, Any], decl: Declarations | None) -> Any:
    """A ``meta.conflicts`` key as a person may read it: split by the copy contract's primary key (the copy
    is the row's ``other_system``/``other_table``) and each part masked by its column's declared element,
    so a key that holds a name or an address is masked like that column, not only where a pattern sees an
    ID. A key of no known copy, or with another number of parts, is masked part by part as undeclared."""
    key = row.get("key")
    if key is None:
        return None
    text = str(key)
    contract = None
    if decl is not None:
        contract = next((c for c in decl.contracts.values()
                         if (c.source["system"], c.source["table"]) == (row.get("other_system"), row.get("other_table"))),
                        None)
    parts = text.split(KEY_SEP)
    if contract is not None and len(contract.primary_key) == 1:
        parts = [text]  # a single-column key may itself hold the separator
    elements: list[DataElement | None] = [None] * len(parts)
    if contract is not None and decl is not None and len(parts) == len(contract.primary_key):
        declared = {c.name: c.element for c in contract.columns}
        elements = [decl.standards.elements.get(declared.get(k) or "") for k in contract.primary_key]
    return KEY_SEP.join(str(_key_part(p, e)) for p, e in zip(parts, elements, strict=True))


def deleted_key(row: Mapping[str, Any], decl: Declarations | None) -> Any:
    """A ``meta.deleted_keys`` key (JSON array of the key's values as text, in the dataset's ``primary_key``
    order) as a person may read it: each value masked by its key column's declared element, like
    ``conflict_key``. A key of no known dataset, with another number of values, or not a JSON array is
    masked as undeclared (fail closed)."""
    key = row.get("key")
    if key is None:
        return None
    try:
        parts = json.loads(str(key))
    except ValueError:
        parts = None
    if not isinstance(parts, list):
        return _key_part(str(key), None)
    contract = decl.contracts.get(str(row.get("dataset"))) if decl is not None else None
    elements: list[DataElement | None] = [None] * len(parts)
    if contract is not None and decl is not None and len(parts) == len(contract.primary_key):
        declared = {c.name: c.element for c in contract.columns}
        elements = [decl.standards.elements.get(declared.get(k) or "") for k in contract.primary_key]
    return json.dumps([None if p is None else _key_part(str(p), e) for p, e in zip(parts, elements, strict=True)],
                      ensure_ascii=False)


def masked_rows(table: str, data: pa.Table, decl: Declarations | None) -> list[dict[str, Any]]:
    """The rows of lake table ``table`` as a person may read them (every rendering goes through here)."""
    masks = column_masks(data, decl.columns_of(table) if decl is not None else None)
    if table.startswith("meta.") and "key" in data.column_names:
        masks["key"] = mask_text  # keys of conflicts and the like: identifiers inside composite text
    if "_source_file" in data.column_names:  # raw lineage: drop files are named after the person
        masks["_source_file"] = mask_file_name
    rows = []
    for row in data.to_pylist():
        out = {k: masks[k](v) if k in masks else v for k, v in row.items()}
        if table == "meta.conflicts":  # values of any element: masked by the row's element
            for col in ("authoritative_value", "other_value"):
                if col in row:
                    out[col] = _conflict_value(row, col, decl)
            if "key" in row:
                out["key"] = conflict_key(row, decl)
        if table == "meta.deleted_keys" and "key" in row:  # resident IDs in clear: masked by the dataset's key
            out["key"] = deleted_key(row, decl)
        rows.append(out)
    return rows
