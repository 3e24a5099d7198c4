"""Draft a dataset contract for a raw table a new source system landed (``citylake contract new``).

A new system stops at raw (未编目) until someone writes ``schemas/datasets/<dataset>.yml``. The draft
takes what the lake and the config already know: the raw table's schema and a bounded sample (the first
``SAMPLE_ROWS`` live rows, read through ``stream_scan``, never the whole table), the registry (names,
department, key, cursor, schedule) and the standards (data elements). Each column gets a proposed data
element when it is recognised, by declaration (elements.yml names this column), by its values (resident IDs
by check character, USCC by check character, mobiles, GB/T 2260 codes, sex codes and birth dates that agree
with a resident ID in the same row, names, addresses, coordinates) or by its name, with the reason as a
comment. What only a person can decide (catalog classification, grade, sharing, open, update cycle, an
unrecognised column's element) is written as ``TODO`` with what to decide and a suggestion: the contract
loader reports each remaining TODO with its file and line (``pipelines.contract_todos``), so a half-filled
draft never publishes. The text is built line by line (comments survive; PyYAML's dump drops them) and
checked with ``yaml.safe_load`` before it is written. No sampled value is ever written: only shares.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from pipelines.contract_todos import TODO, hint, todo_problems
from pipelines.departments import department_name, load_departments
from pipelines.errors import CitylakeError, ConfigError
from pipelines.grading import GRADE_TIERS, HARD_RULES, SENSITIVITY_GRADE, SENSITIVITY_TEXT
from pipelines.registry import DropTable, SourceSystem, SqlTable, get_system, load_yaml
from pipelines.settings import TZ, Settings
from pipelines.standards import DataElement, Standards, load_standards

SAMPLE_ROWS = 1000
"""Live rows read from the raw table's first data files: enough to tell IDs from codes, bounded for any size."""
RECOGNISED = 0.8
"""Share of a column's non-null sampled values that must be one kind for the draft to propose an element."""
AGREES = 0.9
"""Share of rows whose sex code / birth date must agree with the row's resident ID."""
KIND_SENSITIVITY = {"resident_id": "敏感个人信息", "bank_card": "敏感个人信息", "mobile": "个人信息",
                    "person_name": "个人信息", "address": "个人信息"}
"""Sensitivity of a column no element was proposed for, by the personal kind most of its values are."""
KIND_ZH = {"resident_id": "身份证号", "bank_card": "银行卡号", "mobile": "手机号码", "person_name": "姓名",
           "address": "地址"}
DROP_FORMATS = {"csv": "电子表格", "xlsx": "电子表格", "jsonl": "自描述格式", "parquet": "电子文件"}


@dataclass
class Guess:
    """What the draft proposes for one raw column."""

    column: str
    """Raw column code (the contract's ``source``)."""
    source_name: str | None
    """The source's own name when the registry renames it (e.g. 姓名)."""
    type: str
    non_null: int
    element: str | None = None
    reason: str = ""
    kind: str | None = None
    """Personal kind most sampled values are (``pipelines.privacy.detect``), for the grade suggestion."""
    notes: list[str] = field(default_factory=list)


@dataclass
class Draft:
    """The drafted contract: where it goes, its text, and what is still TODO."""

    path: Path
    text: str
    dataset: str
    todos: list[str]
    """``file:line: field: still TODO — …`` for every marker, as the loader will report them."""
    written: bool


def draft_contract(settings: Settings, system: str, table: str, *, force: bool = False, write: bool = True,
                   sample_rows: int = SAMPLE_ROWS) -> tuple[Path, str]:
    """Draft ``schemas/datasets/<dataset>.yml`` for ``raw.<system>__<table>`` and write it (unless ``write`` is
    False); returns (path, text). Refuses to overwrite an existing file unless ``force``."""
    d = draft(settings, system, table, force=force, write=write, sample_rows=sample_rows)
    return d.path, d.text


def draft(settings: Settings, system: str, table: str, *, force: bool = False, write: bool = True,
          sample_rows: int = SAMPLE_ROWS) -> Draft:
    """The draft of ``raw.<system>__<table>``'s contract, written unless ``write`` is False. Errors name the
    system, table or file and the command to run first (register, ingest, or ``--force``)."""
    if not (settings.registry_dir / f"{system}.yml").exists():
        known = ", ".join(sorted(p.stem for p in settings.registry_dir.glob("*.yml")))
        raise ConfigError(f"no source system {system!r} (known: {known}): register it in "
                          f"{settings.registry_dir / (system + '.yml')} and load it with `citylake ingest {system}` first")
    spec = get_system(settings.registry_dir, system)
    if table not in [t.code for t in spec.all_tables]:
        raise ConfigError(f"system {system} has no table {table!r} (known: {', '.join(t.code for t in spec.all_tables)}): "
                          f"add it to {settings.registry_dir / (system + '.yml')} and load it with "
                          f"`citylake ingest {system} --table {table}` first")
    tspec = spec.table(table)
    identifier = spec.raw_table(table)
    datasets = settings.root / "schemas" / "datasets"
    dataset, path = _target(datasets, system, table)
    if write:
        _not_another_tables(path, system, table)
    if path.exists() and not force and write:
        raise CitylakeError(f"{path} already exists (the contract of dataset {dataset}); edit it, or redraft it "
                            f"with `citylake contract new {system} {table} --force`")
    schema, sample = read_sample(settings, identifier, system, table, sample_rows)
    standards = load_standards(settings.root / "schemas" / "standards")
    renamed = {code: name for name, code in tspec.columns.items()}
    data_columns = [f for f in schema if not f.name.startswith("_")]
    context = _tokens(system) | _tokens(table)
    guesses = [_guess(f, renamed.get(f.name), sample, standards, spec, table, context) for f in data_columns]
    _contextual(guesses, sample, standards, context)
    _name_matches(guesses, standards, sample, context)
    text = render(spec, tspec, dataset, guesses, standards, sample.num_rows, sample_rows,
                  owner_name=department_name(load_departments(settings), spec.department),
                  classes=_classification_lines(settings), sequence=_next_sequence(datasets, spec.department, path))
    parsed = yaml.safe_load(text)  # the template must stay valid YAML whatever the names hold
    if not isinstance(parsed, dict) or len(parsed.get("columns", [])) != len(guesses):
        raise AssertionError(f"drafted contract for {identifier} does not parse back as written")
    if write:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return Draft(path, text, dataset, todos_of(path, text), write)


def todos_of(path: Path, text: str) -> list[str]:
    """The TODO problems the loader will report for ``text`` as the file ``path`` (read back through the
    loader's own ``load_yaml``, so the lines agree exactly)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp) / path.name
        scratch.write_text(text, encoding="utf-8")
        data, lines = load_yaml(scratch)
    return todo_problems(path, data, lines)


# --- the lake side --------------------------------------------------------------------------------


def read_sample(settings: Settings, identifier: str, system: str, table: str,
                rows: int) -> tuple[pa.Schema, pa.Table]:
    """The raw table's schema and its first ``rows`` live (not deletion) rows, read a batch at a time."""
    from pipelines.lake.catalog import get_catalog
    from pipelines.lake.raw import arrow_schema, open_table, stream_scan

    lake_table = open_table(get_catalog(settings), identifier)
    if lake_table is None:
        raise CitylakeError(f"{identifier} is not in the lake yet: load it first with "
                            f"`citylake ingest {system} --table {table}`")
    schema = arrow_schema(lake_table)
    wanted = [f.name for f in schema if not f.name.startswith("_")]
    deleted = "_deleted" in schema.names
    reader = stream_scan(lake_table.scan(selected_fields=tuple(wanted + (["_deleted"] if deleted else []))),
                         batch_rows=min(rows, 64 * 1024))
    parts: list[pa.Table] = []
    got = 0
    try:
        for batch in reader:
            part = pa.Table.from_batches([batch])
            if deleted:
                part = part.filter(pc.invert(pc.fill_null(part["_deleted"], False))).drop_columns(["_deleted"])
            parts.append(part.slice(0, rows - got))
            got += parts[-1].num_rows
            if got >= rows:
                break
    finally:
        reader.close()
    target = pa.schema([schema.field(n) for n in wanted])
    sample = pa.concat_tables([p.cast(target) for p in parts]) if parts else target.empty_table()
    return schema, sample


def _target(datasets: Path, system: str, table: str) -> tuple[str, Path]:
    """The dataset code and file: this table's existing contract, else the table code, else system_table
    (which, when both names are taken, may be another table's file: ``_not_another_tables`` refuses it)."""
    from pipelines.contracts import contract_files_of_table

    if found := contract_files_of_table(datasets, system, table):
        return found[0][0].stem, found[0][0]
    for code in (table, f"{system}_{table}"):
        if not (datasets / f"{code}.yml").exists():
            return code, datasets / f"{code}.yml"
    return f"{system}_{table}", datasets / f"{system}_{table}.yml"


def _not_another_tables(path: Path, system: str, table: str) -> None:
    """Refuse to write ``path`` when it exists and is not ``raw.<system>__<table>``'s contract: ``--force``
    redrafts this table's contract, never another table's (or a file nobody can read)."""
    if not path.exists():
        return
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        whose = f"it cannot be read as YAML ({type(exc).__name__})"
    else:
        source = data.get("source") if isinstance(data, dict) else None
        if source == {"system": system, "table": table}:
            return
        whose = (f"it is the contract of dataset {data.get('dataset') or path.stem}, built from "
                 f"raw.{source.get('system')}__{source.get('table')}" if isinstance(source, dict)
                 else "it names no source table")
    raise CitylakeError(f"{path} is not the contract of raw.{system}__{table}: {whose}. The draft's names "
                        f"{table}.yml and {system}_{table}.yml are both taken and --force never overwrites another "
                        f"table's contract: rename or remove the file in the way, or save the draft "
                        f"(`citylake contract new {system} {table} --print`) under another dataset code")


# --- recognising columns --------------------------------------------------------------------------


def _text(arr: pa.ChunkedArray | pa.Array) -> pa.Array:
    """Non-null values as text (codes stored as integers are still codes); empty for other types."""
    arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    arr = arr.drop_null()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) or pa.types.is_integer(arr.type):
        return pc.utf8_trim_whitespace(arr.cast(pa.string()))
    return pa.array([], pa.string())


def _tokens(text: str) -> set[str]:
    return {t for t in re.split(r"[_\W]+", text.lower()) if t}


def _in_context(element: str, tail: str, context: set[str]) -> bool:
    """``element`` is ``<prefix>_<tail>`` and every prefix word names this system or table: ``line_id`` of
    bus_ridership is ``bus_line_id``, ``status`` of enterprise ``enterprise_status``."""
    if not element.endswith("_" + tail):
        return False
    prefix = _tokens(element[: -len(tail) - 1])
    return bool(prefix) and prefix <= context


def _share(ok: pa.Array | pa.ChunkedArray | np.ndarray, n: int) -> float:
    """Share of ``n`` values that are True (null counts as not)."""
    if not n:
        return 0.0
    if isinstance(ok, pa.Array | pa.ChunkedArray):
        return float(pc.sum(pc.fill_null(ok, False).cast(pa.int64())).as_py() or 0) / n
    return float(np.count_nonzero(ok)) / n


def _pct(share: float) -> str:
    return f"{share:.0%}" if share < 1 else "100%"


@cache
def value_checks() -> list[tuple[str, str, str, Callable[[pa.Array], Any]]]:
    """(kind, element, what the values are, check) in the order a value is claimed: IDs before codes."""
    from pipelines.privacy import detect
    from pipelines.quality import validators

    divisions = pa.array(sorted(validators.division_codes()), pa.string())
    return [
        ("resident_id", "resident_id", "为有效身份证号 (GB 11643 校验位正确)", detect.resident_ids),
        ("uscc", "uscc", "为有效统一社会信用代码 (GB 32100 校验码正确)", validators.uscc_valid),
        ("mobile", "mobile_phone", "为手机号码", detect.mobiles),
        ("bank_card", "", "为银行卡号 (发卡行前缀 + Luhn 校验)", detect.bank_cards),
        ("division", "", "为 GB/T 2260 行政区划代码 (代码表中存在)",
         lambda a: pc.is_in(a, value_set=divisions)),
    ]


def _guess(f: pa.Field, source_name: str | None, sample: pa.Table, standards: Standards, spec: SourceSystem,
           table: str, context: set[str]) -> Guess:
    from pipelines.privacy import detect

    col = sample[f.name] if f.name in sample.column_names else pa.chunked_array([], f.type)
    g = Guess(f.name, source_name, str(f.type), len(col) - col.null_count)
    declared = standards.element_at(spec.system, table, f.name)
    kind = detect.column_kind(col) if g.non_null else None
    g.kind = kind if kind in KIND_SENSITIVITY else None
    if declared is not None:
        g.element = declared.code
        g.reason = f"按标准识别: elements.yml 把 {spec.system}.{table}.{f.name} 列为数据元 {declared.code} 的来源"
        return g
    if not g.non_null:
        g.notes.append("抽样中全为空值")
        return g
    text = _text(col)
    for kind_, element, what, check in value_checks():
        if not len(text):
            break
        share = _share(check(text), len(text))
        if share < RECOGNISED:
            continue
        g.kind = kind_ if kind_ in KIND_SENSITIVITY else g.kind
        evidence = f"{_pct(share)} {what} (抽样 {len(text):,} 个非空值)"
        if kind_ == "division":
            g.notes.append(f"division:{evidence}")  # which division element depends on the row: _contextual
        elif element:
            g.element, g.reason = element, f"按取值识别: {evidence}"
        else:
            g.notes.append(f"按取值识别: {evidence}; elements.yml 尚无此数据元 (敏感个人信息), 请新增")
        return g
    if len(text) and _code_list_match(g, text, standards, context):
        return g
    if pa.types.is_date(f.type) or pa.types.is_timestamp(f.type):
        g.notes.append("date" if pa.types.is_date(f.type) else "timestamp")
    elif len(text) and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type)):
        parsed = pc.strptime(pc.utf8_slice_codeunits(text, 0, 10), format="%Y-%m-%d", unit="s", error_is_null=True)
        if _share(parsed.is_valid(), len(text)) >= RECOGNISED:
            g.notes.append("date")
    return g


def _code_list_match(g: Guess, text: pa.Array, standards: Standards, context: set[str]) -> bool:
    """Values from one code list (codes or their aliases) → the element using it. Lists of one- or two-digit
    codes (1–5 …) match any small counter, so those also need the column's name to point at the element."""
    words = _tokens(g.column) | _tokens(g.source_name or "")
    for name, cl in sorted(standards.code_lists.items()):
        users = [e.code for e in standards.elements.values() if e.code_list == name]
        if name in ("division", "sex") or not users:
            continue  # division and sex codes are decided with the row (_contextual)
        share = _share(pc.is_in(text, value_set=pa.array(sorted({*cl.codes, *cl.aliases}), pa.string())), len(text))
        if share < RECOGNISED:
            continue
        named = [u for u in users if words & _tokens(u) or any(_in_context(u, w, context | words) for w in words)]
        if all(re.fullmatch(r"\d{1,2}", c) for c in cl.codes) and not named:
            continue
        picked = named if len(users) > 1 and named else users
        g.element = picked[0]
        others = f"; 同一代码表的其他数据元 {', '.join(u for u in users if u != picked[0])}" if len(users) > 1 else ""
        g.reason = f"按取值识别: {_pct(share)} 为代码表 {name} 中的代码或别名 (抽样 {len(text):,} 个非空值){others}"
        return True
    return False


def _contextual(guesses: list[Guess], sample: pa.Table, standards: Standards, context: set[str]) -> None:
    """Proposals that need the row: a sex code or birth date agreeing with the row's resident ID, a name or
    address beside a resident ID (a person's) or a USCC (a representative's), which division element a
    GB/T 2260 column is, coordinates inside Hefei."""
    from pipelines.privacy import detect
    from pipelines.quality import validators

    ids = next((g for g in guesses if g.element == "resident_id"), None)
    uscc = next((g for g in guesses if g.element == "uscc"), None)
    sex_aliases = standards.aliases("sex") if "sex" in standards.code_lists else {}
    sex_codes = set(standards.code_list("sex")) if "sex" in standards.code_lists else {"0", "1", "2", "9"}
    for g in guesses:
        if g.element is not None or not g.non_null:
            continue
        col = sample[g.column]
        division = next((n for n in g.notes if n.startswith("division:")), None)
        if division is not None:
            g.notes.remove(division)
            evidence = division.removeprefix("division:")
            options = [e.code for e in standards.elements.values() if e.code_list == "division"]
            words = f"{g.column} {g.source_name or ''}".lower()
            named = [o for o in options if _in_context(o, "district_code", context | _tokens(words))]
            if len(named) == 1:
                choice, why = named[0], f"按系统/表名 ({' '.join(sorted(context))}) 选 {named[0]}"
            elif any(w in words for w in ("residence", "hj", "户籍", "居住")) or (ids and not uscc):
                choice, why = "residence_district_code", "同表有身份证号 (人的行政区划)"
            elif any(w in words for w in ("enterprise", "qy", "企业", "注册")) or uscc:
                choice, why = "enterprise_district_code", "同表有统一社会信用代码 (企业的行政区划)"
            else:
                choice, why = "residence_district_code", "无法从同表判断是谁的行政区划"
            others = ", ".join(o for o in options if o != choice)
            g.element = choice if choice in standards.elements else None
            g.reason = (f"按取值识别: {evidence}; {why}, 请核对: 同一代码表 division 的其他数据元 {others}")
            continue
        if ids is not None and g.type in ("string", "large_string", "int64", "int32", "int16", "int8"):
            values = pc.cast(col, pa.string())
            mapped = pc.utf8_trim_whitespace(values)
            for alias, code in sex_aliases.items():
                mapped = pc.if_else(pc.equal(mapped, alias), code, mapped)
            in_list = _share(pc.fill_null(pc.is_in(mapped, value_set=pa.array(sorted(sex_codes))), False),
                             g.non_null)
            if in_list >= RECOGNISED:
                agree = validators.resident_id_sex(sample[ids.column], mapped)
                judged = len(agree) - agree.null_count
                share = _share(pc.fill_null(agree, False), judged)
                if judged and share >= AGREES and len(pc.unique(mapped.drop_null())) > 1:
                    g.element = "sex_code"
                    g.reason = (f"按取值识别: {_pct(in_list)} 为性别代码 (GB/T 2261.1, 含别名), {_pct(share)} 与同行身份证号"
                                f"第 17 位的性别一致")
                    continue
        if ids is not None and ("date" in g.notes or "timestamp" in g.notes):
            agree = validators.resident_id_birth_date_agrees(sample[ids.column], col)
            judged = len(agree) - agree.null_count
            share = _share(pc.fill_null(agree, False), judged)
            if judged and share >= AGREES:
                g.element = "birth_date"
                g.reason = f"按取值识别: {_pct(share)} 与同行身份证号中的出生日期一致"
                continue
        text = _text(col)
        if len(text) and _share(detect.person_names(text), len(text)) >= RECOGNISED:
            share = _share(detect.person_names(text), len(text))
            if uscc is not None and ids is None:
                g.element = "legal_representative"
                g.reason = f"按取值识别: {_pct(share)} 为人名; 同表有统一社会信用代码, 按法定代表人提议, 请核对"
            else:
                g.element = "person_name"
                g.reason = f"按取值识别: {_pct(share)} 为人名 (常见姓氏开头的 2–4 个汉字), 请核对"
            g.kind = "person_name"
            continue
        if len(text) and _share(detect.addresses(text), len(text)) >= RECOGNISED:
            g.kind = "address"
            share = _share(detect.addresses(text), len(text))
            if ids is not None:
                g.element = "residence_address"
                g.reason = f"按取值识别: {_pct(share)} 为地址; 同表有身份证号, 按户籍地址提议, 请核对"
            else:
                g.notes.append(f"按取值识别: {_pct(share)} 为地址 (个人信息); 是谁的地址请按含义选择数据元")
    for g in guesses:
        if g.element is None and g.reason == "":
            for axis in (0, 1):  # longitude first: Hefei's longitudes (116–118) are no latitudes
                coordinate = _coordinate(sample[g.column], axis) if g.non_null else None
                if coordinate is not None:
                    g.element, g.reason = coordinate
                    break


def _coordinate(col: pa.ChunkedArray, axis: int) -> tuple[str, str] | None:
    """longitude (axis 0) / latitude (axis 1) when the floats lie inside Hefei's extent."""
    from pipelines.quality.validators import HEFEI_BBOX

    if not (pa.types.is_floating(col.type) or pa.types.is_decimal(col.type)):
        return None
    values = pc.cast(col.drop_null(), pa.float64())
    if not len(values):
        return None
    low, high = HEFEI_BBOX[axis], HEFEI_BBOX[axis + 2]
    share = _share(pc.and_(pc.greater_equal(values, low), pc.less_equal(values, high)), len(values))
    if share < RECOGNISED:
        return None
    name = ("longitude", "经度") if axis == 0 else ("latitude", "纬度")
    return name[0], f"按取值识别: {_pct(share)} 在合肥市范围的{name[1]}内 ({low}–{high}); 请在登记文件写明 crs"


def _name_matches(guesses: list[Guess], standards: Standards, sample: pa.Table, context: set[str]) -> None:
    """A column named like an element (its code, English name or Chinese name, or close to one), or named
    as the element's code without a prefix naming this system or table (``name`` of enterprise)."""
    by_key: dict[str, DataElement] = {}
    for e in standards.elements.values():
        for key in (e.code, e.name_en.lower().replace(" ", "_"), e.name_zh):
            by_key.setdefault(key, e)
    keys = list(by_key)
    for g in guesses:
        names = [n for n in (g.column, g.source_name) if n]
        found: tuple[DataElement, str] | None = None
        for n in names:
            if n.lower() in by_key:
                found = (by_key[n.lower()], f"列名 {n} 与数据元 {by_key[n.lower()].code} ({by_key[n.lower()].name_zh}) 的名称相同")
                break
        if found is None:
            for n in names:
                near = difflib.get_close_matches(n.lower(), keys, n=1, cutoff=0.85)
                if near:
                    e = by_key[near[0]]
                    found = (e, f"列名 {n} 接近数据元 {e.code} ({e.name_zh}) 的名称 {near[0]}")
                    break
        if found is None:
            for n in names:
                prefixed = [e for e in standards.elements.values() if _in_context(e.code, n.lower(), context)]
                if len(prefixed) == 1:
                    e = prefixed[0]
                    found = (e, f"列名 {n} 加上系统/表名即数据元 {e.code} ({e.name_zh})")
                    break
        if found is None:
            continue
        element, why = found
        if g.element is None:
            g.element = element.code
            g.reason = f"按名称识别: {why}" + _values_fit(element, sample[g.column], g.non_null)
        elif g.element != element.code:
            g.reason += f"; 按名称则像 {element.code}, 请核对"


def _values_fit(element: DataElement, col: pa.ChunkedArray, non_null: int) -> str:
    """For a name match, how many sampled values pass the element's identifier check, if it has one."""
    checks = {"resident_id": "resident_id", "uscc": "uscc", "mobile": "mobile", "division_code": "division"}
    kind = checks.get(element.validator or "")
    if kind is None or not non_null:
        return ""
    text = _text(col)
    check = next(c for k, _e, _w, c in value_checks() if k == kind)
    share = _share(check(text), len(text)) if len(text) else 0.0
    return f"; 抽样中 {_pct(share)} 的取值符合" + ("" if share >= RECOGNISED else ", 请核对")


# --- the text -------------------------------------------------------------------------------------


def _q(value: str) -> str:
    """A YAML scalar for free text (JSON strings are YAML double-quoted scalars)."""
    return json.dumps(value, ensure_ascii=False)


def _todo(dotted: str, extra: str = "") -> str:
    return f"{TODO}  # TODO: {hint(dotted)}" + (f"; {extra}" if extra else "")


def _cycle(schedule: str) -> str | None:
    """更新周期 suggested by the extraction schedule (a cron of five fields or an @preset)."""
    presets = {"@hourly": "每小时", "@daily": "每日", "@weekly": "每周", "@monthly": "每月", "@yearly": "每年",
               "@annually": "每年"}
    if schedule.startswith("@"):
        return presets.get(schedule)
    minute, hour, dom, month, dow = schedule.split()
    if hour == "*" or hour.startswith("*/"):
        return "每小时"
    if dom == "*" and month == "*":
        return "每日" if dow == "*" else "每周"
    if month == "*":
        return "每月"
    return None


def _classification_lines(settings: Settings) -> list[str]:
    """The 类/项/目 code list as one comment line per 类, to choose the catalog codes from."""
    from pipelines.resource_classification import FILE, load_resource_classification

    try:
        classes = load_resource_classification(settings.root / FILE)
    except (CitylakeError, OSError):
        return []
    out = []
    for top in sorted((c for c in classes.values() if c.level == "类"), key=lambda c: c.code):
        items = []
        for item in sorted((c for c in classes.values() if c.parent == top.code), key=lambda c: c.code):
            cats = ", ".join(f"{c.code[len(item.code):]} {c.name}" for c in sorted(classes.values(), key=lambda c: c.code)
                             if c.parent == item.code)
            items.append(f"{item.code[len(top.code):]} {item.name}" + (f" ({cats})" if cats else ""))
        out.append(f"#   {top.code} {top.name}: " + ("; ".join(items) if items else "(尚无项)"))
    return out


def _next_sequence(datasets: Path, owner: str, target: Path) -> tuple[int, list[int]]:
    """(the next free 顺序码 of this provider, the ones its other contracts use)."""
    used = []
    for path in sorted(datasets.glob("*.yml")):
        if path == target:
            continue
        try:
            data, _ = load_yaml(path)
        except ConfigError:
            continue
        if isinstance(data, dict) and str(data.get("owner")) == owner and isinstance(data.get("catalog"), dict):
            seq = data["catalog"].get("sequence")
            if isinstance(seq, int):
                used.append(seq)
    return max(used, default=0) + 1, sorted(used)


def render(spec: SourceSystem, tspec: SqlTable | DropTable, dataset: str, guesses: list[Guess],
           standards: Standards, sampled: int, sample_rows: int, *, owner_name: str | None = None,
           classes: list[str] | None = None, sequence: tuple[int, list[int]] = (1, [])) -> str:
    """The contract text: every inferred field with where it came from, every other one a marked TODO."""
    source_label = tspec.source if isinstance(tspec, SqlTable) else tspec.glob
    name = f"{spec.name}{source_label}" if re.search(r"[\u4e00-\u9fff]", source_label) else f"{spec.name} {tspec.code}"
    names: dict[str, str] = {}
    used: set[str] = set()
    for g in guesses:
        base = g.element if g.element and g.element not in used else g.column
        while base in used:
            base += "_2"
        names[g.column] = base
        used.add(base)
    pk = [names.get(c, c) for c in tspec.primary_key]
    cursor = names.get(tspec.cursor) if isinstance(tspec, SqlTable) and tspec.cursor else None
    fmt = "数据库" if isinstance(tspec, SqlTable) else DROP_FORMATS[tspec.format]
    sensitive = [(g, standards.elements[g.element].sensitivity if g.element in standards.elements
                  else KIND_SENSITIVITY.get(g.kind or "", "内部")) for g in guesses]
    top = max((SENSITIVITY_GRADE[s] for _g, s in sensitive), default=1)
    worst = [f"{g.column} ({s})" for g, s in sensitive if SENSITIVITY_GRADE[s] == top]
    why_grade = ", ".join(worst[:4]) + (f" 等 {len(worst)} 列" if len(worst) > 4 else "") if worst else "无"
    share, opening = GRADE_TIERS[top]
    cycle = _cycle(spec.schedule)
    today = datetime.now(TZ).date().isoformat()
    summary = f"{spec.name} ({spec.system}) 的 {source_label} 数据"

    out = [
        f"# {name} — dataset contract drafted by `citylake contract new {spec.system} {tspec.code}` on {today}",
        f"# from raw.{spec.system}__{tspec.code} (its schema and the first {sampled:,} live rows, at most {sample_rows:,}).",
        "# Every TODO fails validation until a person decides it: any command that loads the config (e.g.",
        "# `citylake quality suites`) lists what is left, one line each. Rules: STANDARDS.md (资源目录, 分类分级);",
        "# a value departing from its default needs `override: {reason: …, approved_by: …}` beside it.",
        f"dataset: {dataset}",
        f"name: {_q(name)}  # 信息资源名称: 由系统名与表名拼成, 请改成资源的正式名称",
        f"description: {_q(summary)}  # 摘要: 请写明资源内容",
        f"owner: {_q(spec.department)}  # 提供方代码: {owner_name or '(不在 schemas/departments.yml)'}, 系统 "
        f"{spec.system} 在登记文件中的部门",
        f"resource_category: {_todo('resource_category')}",
        "# 资源分类 类/项/目 (schemas/standards/code_lists/resource_classification.csv; 资源代码 = 类项目细目/提供方代码-顺序码):",
        *(classes or []),
        "catalog:",
        f"  class: {_todo('catalog.class')}",
        f"  item: {_todo('catalog.item')}",
        f"  category: {_todo('catalog.category')}",
        '  subcategory: ""  # 细目: 3 位代码, 或空',
        f"  sequence: {_todo('catalog.sequence', f'建议 {sequence[0]}' + (f' (本提供方已用 {sequence[1]})' if sequence[1] else ''))}",
        f"source: {{system: {spec.system}, table: {tspec.code}}}",
        f"primary_key: [{', '.join(pk)}]  # 来自登记文件 schemas/sources/{spec.system}.yml",
    ]
    if cursor:
        out.append(f"cursor: {cursor}  # 来自登记文件的增量游标列")
    out += [
        f"format: {fmt}  # 按来源类型推断 ({'关系数据库' if isinstance(tspec, SqlTable) else tspec.format + ' 文件'})",
        f"update_cycle: {_todo('update_cycle', f'抽取计划 {spec.schedule!r} 建议 {cycle}' if cycle else '')}",
        f"# 建议 一般数据, grade {top}: 最敏感的列 {why_grade} (GB/T 43697 默认: {SENSITIVITY_TEXT})",
        "classification:",
        f"  level: {_todo('classification.level', '建议 一般数据')}",
        f"  grade: {_todo('classification.grade', f'建议 {top}')}",
        f"# 建议 (grade {top} 的默认): 共享 {share}, 开放 {opening}; 规则 (优先于默认, 不能 override): {HARD_RULES}",
        "sharing:",
        f"  type: {_todo('sharing.type', f'建议 {share}')}",
        f"  condition: {_todo('sharing.condition')}",
        f"  methods: [{TODO}]  # TODO: {hint('sharing.methods')}",
        "open:",
        f"  type: {_todo('open.type', f'建议 {opening}')}",
    ]
    if opening == "有条件开放":
        out.append(f"  condition: {_todo('open.condition')}")
    out.append("columns:")
    for g in guesses:
        label = f"{g.column} ({g.source_name})" if g.source_name else g.column
        if g.element:
            out.append(f"  # {label}: {g.reason}")
        else:
            notes = [_note(n) for n in g.notes]
            if g.kind in KIND_ZH and not any("按取值识别" in n for n in g.notes):
                notes.append(f"过半取值像{KIND_ZH[g.kind]} ({KIND_SENSITIVITY[g.kind]}), 已计入分级建议")
            notes_text = "; ".join(notes) or "按名称和取值都未识别"
            out.append(f"  # {label}: 未识别 ({g.type}, 抽样 {g.non_null:,} 个非空值): {notes_text}")
        required = ", required: true" if names[g.column] in pk else ""
        element = g.element or TODO
        out.append(f"  - {{name: {names[g.column]}, element: {element}, source: {g.column}{required}}}"
                   + ("" if g.element else f"  # TODO: {hint('columns.0.element')}"))
    return "\n".join(out) + "\n"


def _note(note: str) -> str:
    if note == "date":
        return "取值为日期; 按含义选择数据元 (如 birth_date, established_on, insurance_start_date) 或新增"
    if note == "timestamp":
        return "取值为时间戳 (如记录更新时间); 现有时间数据元属于别的表, 多半需新增一个"
    return note
