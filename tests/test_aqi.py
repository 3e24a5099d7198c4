"""HJ 633-2012 daily AQI: sub-indices by linear interpolation rounded up, AQI = max, primary pollutant above 50."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.curate.aqi import BREAKPOINTS, IAQI_STEPS, beyond_scale, daily_aqi, iaqi


def test_breakpoints_map_to_their_steps_exactly() -> None:
    for pollutant, bp in BREAKPOINTS.items():
        assert iaqi(pollutant, list(bp)).tolist() == IAQI_STEPS[: len(bp)].tolist(), pollutant


@pytest.mark.parametrize(("pollutant", "c", "expected"), [
    ("pm25_24h", 36, 52),      # 50 + 50/40 × 1 = 51.25 → rounded up
    ("pm25_24h", 74, 99),      # 50 + 50/40 × 39 = 98.75
    ("pm25_24h", 116, 152),    # 150 + 50/35 × 1 = 151.43
    ("pm10_24h", 151, 101),    # 100 + 50/100 × 1 = 100.5
    ("pm10_24h", 60, 55),      # 50 + 50/100 × 10 = 55 exactly: no extra unit from float noise
    ("co_24h", 2.5, 63),       # mg/m³: 50 + 50/2 × 0.5 = 62.5
    ("o3_8h", 180, 119),       # 100 + 50/55 × 20 = 118.18 (8-hour O3: 160 → 100, 215 → 150)
    ("no2_24h", 81, 101),      # 100 + 50/100 × 1 = 100.5
])
def test_sub_index_interpolates_and_rounds_up(pollutant: str, c: float, expected: int) -> None:
    assert iaqi(pollutant, [c]).tolist() == [expected]


def test_missing_negative_and_beyond_scale() -> None:
    out = iaqi("pm25_24h", [None, -3.0, 620.0, float("nan")])
    assert np.isnan(out[0]) and np.isnan(out[1]) and out[2] == 500 and np.isnan(out[3])
    assert beyond_scale("pm25_24h", [None, 499.0, 620.0]).tolist() == [False, False, True]
    assert np.isnan(iaqi("o3_8h", [900.0])[0])  # not indexed above 800
    with pytest.raises(ValueError, match="unknown pollutant 'pm1'"):
        iaqi("pm1", [1.0])


def test_daily_aqi_is_the_largest_sub_index_of_the_pollutants_present() -> None:
    day = daily_aqi({"pm25_24h": [30.0, 116.0, None, 80.0, None],
                     "pm10_24h": [40.0, 151.0, 420.0, 240.0, None]})
    # 43 vs 40; 152 vs 101; PM10 alone; 107 (80 μg/m³ PM2.5) vs 145 (240 μg/m³ PM10); nothing measured
    assert day.aqi[:4].tolist() == [43, 152, 300, 145] and np.isnan(day.aqi[4])
    assert day.primary == [[], ["PM2.5"], ["PM10"], ["PM10"], []]  # none at 50 or below
    assert day.level == ["一级", "四级", "五级", "三级", None]
    assert day.category == ["优", "中度污染", "重度污染", "轻度污染", None]


def test_daily_aqi_is_not_the_mean_of_hourly_aqi() -> None:
    """18 clean hours and 6 polluted ones: the 24-hour mean concentration decides, not the hours' sub-indices."""
    hours = np.array([10.0] * 18 + [250.0] * 6)                     # mean 70 μg/m³
    assert daily_aqi({"pm25_24h": [hours.mean()]}).aqi.tolist() == [94]  # 50 + 50/40 × 35 = 93.75
    assert float(np.mean(iaqi("pm25_24h", hours))) == 86.25          # (18 × 15 + 6 × 300) / 24: not the AQI


def test_equal_sub_indices_name_every_primary_pollutant_and_o3_8h_falls_back_to_1h() -> None:
    day = daily_aqi({"pm25_24h": [75.0], "pm10_24h": [150.0]})
    assert day.aqi.tolist() == [100] and day.primary == [["PM2.5", "PM10"]]
    o3 = daily_aqi({"o3_8h": [900.0, 200.0], "o3_1h": [1000.0, 150.0]})
    # 900 μg/m³ 8-hour is not indexed: the 1-hour 1000 μg/m³ (400) stands in; 200 μg/m³ 8-hour → 137 vs 1-hour 150 → 47
    assert o3.aqi.tolist() == [400, 137] and o3.primary == [["O3_8h", "O3"], ["O3_8h"]]
