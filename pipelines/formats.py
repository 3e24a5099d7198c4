"""Formats shared by every place a person reads a score, a rate or a time: the report's pages, the catalog's
CSV and the ``citylake catalog`` CLI, so one dataset never reads 100.0 % in one and 99.95 % in another, nor
10:00 (Beijing) on the site and 02:00Z in the CSV."""

from __future__ import annotations

from datetime import date, datetime
from decimal import ROUND_FLOOR, Decimal

from pipelines.settings import TZ

TIME_ZONE_LABEL = "北京时间"
"""What a column header or page says the times are in (Asia/Shanghai)."""


def percent_floor(value: float, digits: int = 2) -> Decimal:
    """``value`` × 100 rounded DOWN to ``digits`` decimals: the one rounding rule of every percentage shown
    (text and chart points), so a chart's point never reads higher than the headline beside it.

    Decimal from ``repr`` so float noise (0.29 * 100 = 28.999…) does not push a value one step down."""
    return (Decimal(repr(float(value))) * 100).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_FLOOR)


def percent(value: float | None, digits: int = 2) -> str:
    """A 0..1 score or rate as a percentage, rounded DOWN: 100 % only when nothing failed (a score of
    0.99999 reads 99.99 %, not 100.00 %); a non-zero value below the last digit reads ``<0.01%`` (a rate of
    one in a million is not 0.00 %); "—" when there is none (a dimension without rules)."""
    if value is None:
        return "—"
    shown = percent_floor(value, digits)
    if shown == 0 and value > 0:
        return f"<{Decimal(1).scaleb(-digits)}%"
    return f"{shown}%"


def beijing_time(value: datetime | date | str | None) -> str:
    """Asia/Shanghai time as ``2026-11-30 06:00`` (a date as ``2026-11-30``); ISO text (catalog entries hold
    UTC ``…Z``) is parsed first; "—" when there is none. Text that is not ISO is returned as it is."""
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        try:
            parsed: datetime | date = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
        value = parsed
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(TZ)
        return f"{value:%Y-%m-%d %H:%M}"
    return f"{value:%Y-%m-%d}"
