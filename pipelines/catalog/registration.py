"""公共数据资源登记 (发改数据规〔2025〕26号): the registration authority issues each registered resource a code;
the lake records it (``meta.registrations``), it never mints one.

The log is append-only: recording again (a corrected code, a re-registration) adds a row, and the latest row
of a dataset (``recorded_at``) is its registration, so the history of what was recorded stays readable.

The code check is deliberately structural, not a checksum: the national format of the unified registration
code is not confirmed (STANDARDS.md gives none), so a stricter rule could refuse a genuine code. What it
catches are the mistakes a person makes when copying a code from a certificate: an empty or placeholder
value, spaces inside, Chinese or full-width characters, a truncated fragment:
- 6 to 64 characters after trimming surrounding whitespace;
- ASCII letters and digits, with ``-`` ``/`` ``.`` ``_`` allowed between them (not first or last);
- at least one digit (a code, not a word such as ``TODO``).
The code is stored as entered (trimmed), never re-cased or reformatted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from pipelines.errors import CitylakeError
from pipelines.lake.meta import append_log
from pipelines.lake.raw import open_table
from pipelines.settings import TZ, Settings

TABLE = "meta.registrations"
CODE_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._/-]{4,62})[A-Za-z0-9]$")


class RegistrationError(CitylakeError):
    """A registration that cannot be recorded: the message names the dataset and what is wrong."""


@dataclass(frozen=True)
class Registration:
    dataset: str
    code: str
    registered_on: date
    recorded_by: str | None = None
    recorded_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """{code, date} as the catalog shows it (ISO date)."""
        return {"code": self.code, "date": self.registered_on.isoformat()}


def check_code(dataset: str, code: str) -> str:
    """The trimmed code, or a RegistrationError saying what is wrong with it (rules in the module doc)."""
    text = (code or "").strip()
    if not text:
        raise RegistrationError(f"dataset {dataset}: registration code is empty (give the code the registration "
                                f"authority issued, --code ...)")
    if not CODE_RE.match(text) or re.search(r"[._/-]{2}", text):
        raise RegistrationError(
            f"dataset {dataset}: registration code {text!r} is not a code: 6–64 ASCII letters and digits, "
            f"'-' '/' '.' '_' only between them, no spaces or Chinese/full-width characters")
    if not re.search(r"\d", text):
        raise RegistrationError(f"dataset {dataset}: registration code {text!r} has no digit: give the code "
                                f"the registration authority issued, not a placeholder")
    return text


def check_date(dataset: str, value: date | str, today: date | None = None) -> date:
    """An ISO 8601 calendar date (YYYY-MM-DD) not after today (Asia/Shanghai)."""
    if isinstance(value, datetime):
        value = value.date()
    if isinstance(value, date):
        on = value
    else:
        try:
            on = date.fromisoformat(value.strip())
        except ValueError:
            raise RegistrationError(f"dataset {dataset}: registration date {value!r} is not an ISO date "
                                    f"(YYYY-MM-DD, e.g. 2026-11-20)") from None
    today = today or datetime.now(TZ).date()
    if on > today:
        raise RegistrationError(f"dataset {dataset}: registration date {on.isoformat()} is in the future "
                                f"(today is {today.isoformat()}, Asia/Shanghai)")
    return on


def register(settings: Settings, dataset: str, code: str, on: date | str, *, recorded_by: str | None = None,
             catalog: Any = None, today: date | None = None) -> Registration:
    """Record the registration code ``code`` issued for ``dataset`` on ``on``; the dataset must have a
    contract. Returns what was recorded. Raises RegistrationError (one line) on bad input."""
    from pipelines.config import load_config
    from pipelines.lake.catalog import get_catalog

    text = check_code(dataset, code)  # the cheap checks first: no config load for a mistyped code
    day = check_date(dataset, on, today)
    contracts = load_config(settings)[2]
    if dataset not in contracts:
        known = ", ".join(sorted(contracts)) or "none"
        raise RegistrationError(f"dataset {dataset!r} has no contract in schemas/datasets/ (known: {known}); "
                                f"only a catalogued dataset can be registered")
    catalog = catalog if catalog is not None else get_catalog(settings)
    append_log(catalog, TABLE, [{"dataset": dataset, "registration_code": text, "registered_on": day,
                                 "recorded_by": recorded_by}])
    return Registration(dataset, text, day, recorded_by)


def latest_registrations(catalog: Any) -> dict[str, Registration]:
    """Per dataset its latest recorded registration (none recorded yet: an empty dict)."""
    table = open_table(catalog, TABLE)
    if table is None or table.current_snapshot() is None:
        return {}
    return latest_of(table.scan().to_arrow().to_pylist())


def latest_of(rows: Iterable[dict[str, Any]]) -> dict[str, Registration]:
    """Per dataset the row with the latest ``recorded_at``. A row without one (written by hand or by an old
    tool) counts as older than every timestamped row, so it is used only while a dataset has nothing else
    and never outranks a later recording."""
    out: dict[str, Registration] = {}
    for r in rows:
        seen, at = out.get(r["dataset"]), r.get("recorded_at")
        if seen is None or (at is not None and (seen.recorded_at is None or at >= seen.recorded_at)):
            out[r["dataset"]] = Registration(r["dataset"], r["registration_code"], r["registered_on"],
                                             r.get("recorded_by"), at)
    return out
