"""Number formats shared by every place a person reads a score or a rate: the report's pages, the catalog's
CSV and the ``citylake catalog`` CLI, so one dataset never reads 100.0 % in one and 99.95 % in another."""

from __future__ import annotations

from decimal import ROUND_FLOOR, Decimal


def percent(value: float | None, digits: int = 2) -> str:
    """A 0..1 score or rate as a percentage, rounded DOWN: 100 % only when nothing failed (a score of
    0.99999 reads 99.99 %, not 100.00 %); a non-zero value below the last digit reads ``<0.01%`` (a rate of
    one in a million is not 0.00 %); "—" when there is none (a dimension without rules).

    Decimal from ``repr`` so float noise (0.29 * 100 = 28.999…) does not push a value one step down."""
    if value is None:
        return "—"
    step = Decimal(1).scaleb(-digits)
    shown = (Decimal(repr(float(value))) * 100).quantize(step, rounding=ROUND_FLOOR)
    if shown == 0 and value > 0:
        return f"<{step}%"
    return f"{shown}%"
