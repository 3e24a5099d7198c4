"""Display masks (GB/T 35273 style: 张** / 340104********1234 / 138****1234 / 622848*********0123).

``mask`` masks a value by its declared data element, ``mask_kind`` by what a detector found it to be,
``mask_text`` masks every identifier inside free text (a rejection reason quoting a cell, a composite
key ``id|type``), and ``mask_free_text`` hides a whole text value (fail-closed mode).
"""

from __future__ import annotations

import re
from typing import Any

from pipelines.privacy.detect import ADDRESS, BANK_CARD, MOBILE, PERSON_NAME, RESIDENT_ID
from pipelines.standards import DataElement

PERSONAL = ("个人信息", "敏感个人信息")


def _text(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _keep(text: str, head: int, tail: int) -> str:
    if len(text) <= head + tail:
        return text[:1] + "*" * max(1, len(text) - 1)
    return text[:head] + "*" * (len(text) - head - tail) + text[len(text) - tail:]


def _address(text: str) -> str:
    cut = max(text.find("区"), text.find("县"))
    return text[:cut + 1] + "***" if cut > 0 else text[:6] + "***"  # generalised to the district


def _mobile(text: str) -> str:
    digits = "".join(ch for ch in text if ch.isdigit())
    if len(digits) < 11:
        return _keep(text, 3, 4)
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


def mask_kind(value: Any, kind: str) -> str | None:
    """Display mask for a value a detector recognised as ``kind`` (see ``pipelines.privacy.detect``)."""
    if value is None:
        return None
    text = _text(value)
    if kind in (RESIDENT_ID, BANK_CARD):
        return _keep(text, 6, 4)
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
# Shapes, not checks: a rejection reason quotes exactly the IDs whose check digit or date is wrong, and
# those are as personal as valid ones. Longest first, so a card is not read as an ID plus digits.
_IDENTIFIERS = re.compile(
    _NOT_BEFORE + "(?:"
    r"(?P<card>(?:62|81|4|5[1-5]|2[2-7]|35|6011|64[4-9]|65|9558|601428)\d{14,17}(?!\d))"
    r"|(?P<card_spaced>\d{4}(?:[ -]\d{4}){3}(?:[ -]?\d{1,3})?)"
    r"|(?P<ric>\d{17}[\dA-Za-z]?)"  # a wrong check character or a lost one is still that person's ID
    r"|(?P<old_ric>\d{15})"
    r"|(?P<mobile>(?:\+?86[ -]?|0086[ -]?)?1[3-9]\d[ -]?\d{4}[ -]?\d{4})"
    ")" + _NOT_AFTER)


def _sub(m: re.Match[str]) -> str:
    text = m.group(0)
    if m["mobile"]:
        return _mobile(text)
    return _keep(text, 6, 4)


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


_WORDS = re.compile(r"[^\x00-\x7f]|[A-Za-z]+\s+[A-Za-z]+")


def quote(value: Any) -> str:
    """A cell value as an error message or log line may show it (``repr``-like): identifiers masked,
    text with Han characters or words (a name, an address) hidden but its first character; numbers,
    dates and short codes clear, since they are what the reader needs to see what went wrong."""
    if value is None:
        return "None"
    text = mask_text(_text(value)) or ""
    return repr(mask_free_text(text) if _WORDS.search(text) else text)


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
