"""Display masks (GB/T 35273 style: 张** / 340104********1234 / 138****1234 / 622848*********0123).

``mask`` masks a value by its declared data element, ``mask_kind`` by what a detector found it to be,
``mask_text`` masks every identifier inside free text (a rejection reason quoting a cell, a composite
key ``id|type``), and ``mask_free_text`` hides a whole text value (fail-closed mode).
"""

from __future__ import annotations

import re
from typing import Any

from pipelines.privacy.detect import ADDRESS, BANK_CARD, MOBILE, PERSON_NAME, RESIDENT_ID, has_card_prefix
from pipelines.standards import DataElement

PERSONAL = ("个人信息", "敏感个人信息")


def _text(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def keep_ends(text: str, head: int, tail: int) -> str:
    """``text`` with only its first ``head`` and last ``tail`` characters shown; one no longer than both shows
    its first character only."""
    if len(text) <= head + tail:
        return text[:1] + "*" * max(1, len(text) - 1)
    return text[:head] + "*" * (len(text) - head - tail) + text[len(text) - tail:]


def _address(text: str) -> str:
    cut = max(text.find("区"), text.find("县"))
    return text[:cut + 1] + "***" if cut > 0 else text[:6] + "***"  # generalised to the district


def _mobile(text: str) -> str:
    digits = "".join(ch for ch in text if ch.isdigit())
    if len(digits) < 11:
        return keep_ends(text, 3, 4)
    national = digits[-11:]
    return ("+86 " if len(digits) > 11 else "") + national[:3] + "****" + national[-4:]


def _name(text: str) -> str:
    return text[:1] + "*" * max(1, len(text) - 1)


def is_personal(element: DataElement) -> bool:
    return element.sensitivity in PERSONAL


def mask(value: Any, element: DataElement) -> str | None:
    """Display mask for a value of a declared data element (clear when the element is not personal)."""
    if value is None:
        return None
    text = _text(value)
    if not is_personal(element) or element.code_list:
        return text  # code values (sex 1/2, district codes) identify nobody on their own
    if element.validator == "resident_id" and len(text) == 18:
        return text[:6] + "*" * 8 + text[-4:]
    if element.validator == "mobile" and len(text) == 11:
        return text[:3] + "****" + text[-4:]
    if element.type in ("date", "timestamp"):
        return text[:4] + "-**-**"  # generalised to the year (GB/T 35273)
    if "address" in element.code:
        return _address(text)
    return _name(text)


def mask_sql(element: DataElement, v: str) -> str | None:
    """``mask`` for a text column as one DuckDB expression over ``v`` (characters counted as Python counts
    them: code points), so a column is masked without a Python call per value; None where the rule depends on
    more than the text (a date or timestamp column's own type goes through ``mask``)."""
    name = f"left({v}, 1) || repeat('*', greatest(1, length({v}) - 1))"
    if not is_personal(element) or element.code_list:
        return v
    if element.type in ("date", "timestamp"):
        return None
    rules = []
    if element.validator == "resident_id":
        rules.append(f"WHEN length({v}) = 18 THEN left({v}, 6) || '********' || right({v}, 4)")
    if element.validator == "mobile":
        rules.append(f"WHEN length({v}) = 11 THEN left({v}, 3) || '****' || right({v}, 4)")
    if "address" in element.code:
        cut = f"greatest(instr({v}, '区'), instr({v}, '县'))"  # 1-based, 0 when absent: Python's find + 1
        rules.append(f"WHEN {cut} > 1 THEN left({v}, {cut}) || '***'")
        name = f"left({v}, 6) || '***'"
    return f"CASE WHEN {v} IS NULL THEN NULL {' '.join(rules)} ELSE {name} END"


def mask_kind(value: Any, kind: str) -> str | None:
    """Display mask for a value a detector recognised as ``kind`` (see ``pipelines.privacy.detect``)."""
    if value is None:
        return None
    text = _text(value)
    if kind in (RESIDENT_ID, BANK_CARD):
        return keep_ends(text, 6, 4)
    if kind == MOBILE:
        return _mobile(text)
    if kind == ADDRESS:
        return _address(text)
    if kind == PERSON_NAME:
        return _name(text)
    return mask_free_text(text)


def mask_free_text(value: Any) -> str | None:
    """Hide a whole text value but its first character (fail-closed mode: nothing says what it is)."""
    if value is None:
        return None
    text = _text(value)
    return text[:1] + "*" * min(8, max(1, len(text) - 1))


_NOT_BEFORE, _NOT_AFTER = r"(?<![0-9A-Za-z])", r"(?![0-9A-Za-z])"
# Shapes, not checks: a rejection reason quotes exactly the IDs whose check digit or date is wrong (and
# the cards whose Luhn digit is), and those are as personal as valid ones. A digit run is judged whole in
# ``_sub``: 16-19 digits with an issuer prefix from detect's one table are a card, 17-18 an ID, 15 an old ID.
_IDENTIFIERS = re.compile(
    _NOT_BEFORE + "(?:"
    r"(?P<run>\d{15,19})(?P<tail>[A-Za-z]?)"  # an ID's check character may be a letter (or the wrong one)
    r"|(?P<card_spaced>\d{4}(?:[ -]\d{4}){3}(?:[ -]?\d{1,3})?)"
    r"|(?P<mobile>(?:\+?86[ -]?|0086[ -]?)?1[3-9]\d[ -]?\d{4}[ -]?\d{4})"
    ")" + _NOT_AFTER)


def _sub(m: re.Match[str]) -> str:
    text = m.group(0)
    if m["mobile"]:
        return _mobile(text)
    if m["run"]:
        run, tail = m["run"], m["tail"]
        card = not tail and len(run) >= 16 and has_card_prefix(run)
        resident_id = len(run) == 17 or (len(run) in (15, 18) and not tail)
        return keep_ends(text, 6, 4) if card or resident_id else text
    return keep_ends(text, 6, 4)


def mask_text(text: Any) -> str | None:
    """Mask every resident ID (18 or 15 digits), bank card and mobile number inside free text.

    Shape-based on purpose: the text is a message or a key, so an ID with a wrong check digit (the one
    a rejection quotes) is masked too. Names and addresses inside free text cannot be told from other
    words: never format a personal column's value into a message; use ``mask`` or ``mask_kind``.
    """
    if text is None:
        return None
    return _IDENTIFIERS.sub(_sub, str(text))


mask_identifiers = mask_text  # the name consistency/gate callers used before the privacy module


# What a cell may show in clear in a message: numbers, dates and times, and the few words that say a
# value is missing. Anything else could be a name or free text (张三丰(户主), Alice Wang, a one-word
# English name), and a detector cannot prove otherwise, so only its shape is shown.
_HARMLESS = re.compile(
    r"[+-]?(?:\d[\d,_]*)?(?:\.\d+)?(?:[eE][+-]?\d+)?%?"  # numbers
    r"|\d{2,4}(?:[-/.年]\d{1,2}(?:[-/.月]\d{1,2}日?)?)?(?:[ T]\d{1,2}(?::\d{1,2}){1,2}(?:\.\d+)?)?"  # dates
    r"(?:Z|[+-]\d{2}:?\d{2})?"
    r"|\d{1,2}(?::\d{1,2}){1,2}(?:\.\d+)?"  # times
    r"|(?i:true|false|yes|no|null|none|nan|n/?a|inf|-inf|-+|/|\?+)")
_IDENTIFIER_MASKED = re.compile(r"[0-9A-Za-z+ ]*\*+[0-9A-Za-z ]*")


def quote(value: Any) -> str:
    """A cell value as an error message, a rejection reason or a log line may show it (``repr``-like):
    numbers, dates and missing-value words clear, since they are what the reader needs to see what went
    wrong; an identifier masked (``mask_text``); anything else only by its shape, ``'张**' (6 chars)``:
    the first character and the length, never the text (a name or a remark cannot be told from a code)."""
    if value is None:
        return "None"
    text = _text(value)
    masked = mask_text(text) or ""
    if masked != text and _IDENTIFIER_MASKED.fullmatch(masked):
        return repr(masked)  # the whole value is an identifier: its masked form says which kind it is
    if masked == text and len(text) <= 40 and _HARMLESS.fullmatch(text.strip()):
        return repr(text)
    if len(text) <= 1:
        return "'*' (1 char)"
    return f"{text.strip()[:1] + '**'!r} ({len(text)} chars)"


_QUOTED = re.compile(r"""'([^'\n]{1,200})'|"([^"\n]{1,200})"|“([^”\n]{1,200})”""")


def mask_message(text: Any) -> str | None:
    """An exception's text from a driver or library, made fit for a log line or XCom: ``mask_text``, and
    every quoted segment that is a personal name or an address (the detectors) hidden. Quoted column
    names and codes stay readable, since they are what the reader needs to fix the load."""
    if text is None:
        return None
    masked = mask_text(text) or ""
    segments = [m.group(1) or m.group(2) or m.group(3) for m in _QUOTED.finditer(masked)]
    if not segments:
        return masked
    import pyarrow as pa

    from pipelines.privacy.detect import addresses, person_names

    values = pa.array(segments, pa.string())
    personal = {s for s, n, a in zip(segments, person_names(values), addresses(values), strict=True) if n or a}
    return _QUOTED.sub(lambda m: m.group(0).replace(s, mask_free_text(s) or "") if (
        s := m.group(1) or m.group(2) or m.group(3)) in personal else m.group(0), masked)


# A file name's parts: the tokens between ``_ - .`` and spaces, and inside a token its runs of Han
# characters, so 张伟_340104….csv and 张伟340104….csv both give the part 张伟.
_FILE_NAME_TOKENS = re.compile(r"[^_\-.\s]+|[_\-.\s]+")
_HAN_RUNS = re.compile(r"[\u3400-\u9fff·]+|[^\u3400-\u9fff·]+")


def mask_file_name(name: Any) -> str | None:
    """A file name as an alert, a page or a log line may show it. People name drop files after the person
    (``张伟_340104199001011234.csv``): identifiers are masked (``mask_text``), a token (between ``_ - .`` and
    spaces) the detectors read as an address is masked as one, and a run of Han characters they read as a
    personal name is masked as one → ``张*_340104********1234.csv``."""
    if name is None:
        return None
    import pyarrow as pa

    from pipelines.privacy.detect import addresses, person_names

    tokens = _FILE_NAME_TOKENS.findall(mask_text(str(name)) or "")
    is_address = addresses(pa.array(tokens, pa.string()))
    runs = [_HAN_RUNS.findall(t) for t in tokens]
    flat = [r for rs in runs for r in rs]
    names = iter(person_names(pa.array(flat, pa.string())))
    out = []
    for token, address, token_runs in zip(tokens, is_address, runs, strict=True):
        masked = "".join(_name(r) if next(names) else r for r in token_runs)
        out.append(_address(token) if address else masked)
    return "".join(out)
