"""Ambient air quality index per HJ 633-2012 (环境空气质量指数 (AQI) 技术规定), vectorised over numpy/Arrow.

A daily AQI is computed from the day's concentrations of the pollutants present, never as a mean of hourly
AQIs: 24-hour means of SO2, NO2, PM10, PM2.5 (μg/m³) and CO (mg/m³), the day's maximum 1-hour O3 and maximum
8-hour moving mean of O3. Each pollutant's sub-index (IAQI) interpolates linearly within its breakpoint
segment (HJ 633-2012 table 1, formula 1) and is rounded up to an integer (§4.3: 进位取整数); the AQI is the
largest IAQI; the primary pollutant(s) are those with that IAQI when the AQI is above 50 (§5.2).
Written by hand: no maintained Python library implements the Chinese standard (python-aqi covers the US EPA
index, whose breakpoints and O3 rules differ).

Beyond the table: a concentration above the highest breakpoint has no defined sub-index; it is reported as
500 (the top of the scale, "爆表") with ``beyond_scale`` set, so a day is never dropped. O3 8-hour above
800 μg/m³ is not indexed; the 1-hour O3 sub-index is used instead (table 1, note 3).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

IAQI_STEPS = np.array([0, 50, 100, 150, 200, 300, 400, 500], dtype=np.float64)

# HJ 633-2012 table 1: concentration limits at each IAQI step (daily report: 24-hour means, O3 1h/8h).
BREAKPOINTS: dict[str, tuple[float, ...]] = {
    "so2_24h": (0, 50, 150, 475, 800, 1600, 2100, 2620),
    "no2_24h": (0, 40, 80, 180, 280, 565, 750, 940),
    "pm10_24h": (0, 50, 150, 250, 350, 420, 500, 600),
    "co_24h": (0, 2, 4, 14, 24, 36, 48, 60),          # mg/m³
    "o3_1h": (0, 160, 200, 300, 400, 800, 1000, 1200),
    "o3_8h": (0, 100, 160, 215, 265, 800),             # not indexed above 800: the 1-hour value is used
    "pm25_24h": (0, 35, 75, 115, 150, 250, 350, 500),
}
POLLUTANT_NAMES = {"so2_24h": "SO2", "no2_24h": "NO2", "pm10_24h": "PM10", "co_24h": "CO", "o3_1h": "O3",
                   "o3_8h": "O3_8h", "pm25_24h": "PM2.5"}
"""The names HJ 633 reports a primary pollutant by (首要污染物)."""

# §5.1 table 2: AQI → level (级别) and category (类别).
LEVELS = ((50, "一级", "优"), (100, "二级", "良"), (150, "三级", "轻度污染"), (200, "四级", "中度污染"),
          (300, "五级", "重度污染"), (float("inf"), "六级", "严重污染"))


def iaqi(pollutant: str, concentration: np.ndarray | list[float | None]) -> np.ndarray:
    """The sub-index of ``pollutant`` (a key of ``BREAKPOINTS``) for each concentration: float array, NaN where
    the concentration is missing or negative (an instrument error, not clean air), rounded up to an integer,
    500 above the highest breakpoint (see ``beyond_scale``). O3 8-hour values above 800 are NaN here: the
    caller uses the 1-hour sub-index (``daily_aqi`` does)."""
    if pollutant not in BREAKPOINTS:
        raise ValueError(f"unknown pollutant {pollutant!r} (HJ 633-2012: {', '.join(BREAKPOINTS)})")
    c = np.asarray(concentration, dtype=np.float64)  # None → NaN
    bp = np.asarray(BREAKPOINTS[pollutant], dtype=np.float64)
    steps = IAQI_STEPS[: len(bp)]
    # segment i covers (bp[i], bp[i+1]]; a concentration equal to a breakpoint takes that step's IAQI exactly
    i = np.clip(np.searchsorted(bp, c, side="left") - 1, 0, len(bp) - 2)
    lo, hi = bp[i], bp[i + 1]
    value = (steps[i + 1] - steps[i]) / (hi - lo) * (c - lo) + steps[i]
    # ceil after removing float noise: 51.000000000001 must stay 51, not become 52
    out = np.ceil(np.round(value, 9))
    out[c > bp[-1]] = np.nan if pollutant == "o3_8h" else 500.0
    out[~np.isfinite(c) | (c < 0)] = np.nan
    return out


def beyond_scale(pollutant: str, concentration: np.ndarray | list[float | None]) -> np.ndarray:
    """True where the concentration is above the pollutant's highest breakpoint (its IAQI is reported as 500)."""
    c = np.asarray(concentration, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(c, nan=-1.0) > BREAKPOINTS[pollutant][-1]


@dataclass(frozen=True)
class DailyAqi:
    aqi: np.ndarray
    """Integer-valued float AQI per row; NaN where no pollutant was present."""
    primary: list[list[str]]
    """Primary pollutant(s) per row (HJ 633 names); empty when the AQI is 50 or less or missing."""
    level: list[str | None]
    """级别 (一级 … 六级) per row."""
    category: list[str | None]
    """类别 (优 … 严重污染) per row."""


def daily_aqi(concentrations: Mapping[str, np.ndarray | list[float | None]]) -> DailyAqi:
    """The daily AQI per row from the day's concentrations of the pollutants present (keys of ``BREAKPOINTS``;
    absent pollutants are simply left out, as a station that measures only particulates reports)."""
    if not concentrations:
        raise ValueError("daily_aqi needs at least one pollutant's concentrations")
    subs = {p: iaqi(p, c) for p, c in concentrations.items()}
    if "o3_8h" in subs and "o3_1h" in subs:  # table 1 note 3: above 800 the 1-hour sub-index stands in
        eight = subs["o3_8h"]
        over = beyond_scale("o3_8h", concentrations["o3_8h"])
        eight[over] = subs["o3_1h"][over]
    names = list(subs)
    stacked = np.vstack([subs[p] for p in names])
    present = np.isfinite(stacked)
    aqi = np.where(present.any(axis=0), np.nanmax(np.where(present, stacked, -1.0), axis=0), np.nan)
    primary: list[list[str]] = []
    level: list[str | None] = []
    category: list[str | None] = []
    for j, value in enumerate(aqi):
        if not np.isfinite(value):
            primary.append([])
            level.append(None)
            category.append(None)
            continue
        primary.append([POLLUTANT_NAMES[names[k]] for k in range(len(names))
                        if value > 50 and present[k, j] and stacked[k, j] == value])
        grade = next(g for g in LEVELS if value <= g[0])
        level.append(grade[1])
        category.append(grade[2])
    return DailyAqi(aqi=aqi, primary=primary, level=level, category=category)
