"""GCJ-02 / BD-09 → WGS-84: round trips within half a metre over Hefei, nulls kept."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipelines.quality.geo import bd09_to_gcj02_np, gcj02_to_wgs84_np, to_wgs84, wgs84_to_gcj02, wgs84_to_gcj02_np

METRES_PER_DEGREE = 111_320.0


def test_gcj02_round_trip_over_hefei() -> None:
    lon, lat = np.meshgrid(np.linspace(116.7, 117.95, 60), np.linspace(30.95, 32.5, 60))
    lon, lat = lon.ravel(), lat.ravel()
    glon, glat = wgs84_to_gcj02_np(lon, lat)
    shift = np.hypot((glon - lon) * METRES_PER_DEGREE * np.cos(np.radians(lat)), (glat - lat) * METRES_PER_DEGREE)
    assert 200 < shift.min() and shift.max() < 900  # the obfuscation moves Hefei by a few hundred metres
    back_lon, back_lat = gcj02_to_wgs84_np(glon, glat)
    error = np.hypot((back_lon - lon) * METRES_PER_DEGREE, (back_lat - lat) * METRES_PER_DEGREE)
    assert error.max() < 0.5


def test_outside_china_is_identity_and_nulls_stay_null() -> None:
    glon, glat = wgs84_to_gcj02(pa.array([2.35, None]), pa.array([48.85, 31.8]))
    assert glon.to_pylist() == [2.35, None] and glat.to_pylist()[0] == 48.85


def test_bd09_to_wgs84() -> None:
    # BD-09 = GCJ-02 shifted by the Baidu rotation; converting back must land near the GCJ-02 point.
    glon, glat = np.array([117.2272]), np.array([31.8206])
    x, y = glon, glat
    z = np.sqrt(x * x + y * y) + 0.00002 * np.sin(y * np.pi * 3000.0 / 180.0)
    theta = np.arctan2(y, x) + 0.000003 * np.cos(x * np.pi * 3000.0 / 180.0)
    blon, blat = z * np.cos(theta) + 0.0065, z * np.sin(theta) + 0.006
    back = bd09_to_gcj02_np(blon, blat)
    assert abs(back[0][0] - glon[0]) * METRES_PER_DEGREE < 1 and abs(back[1][0] - glat[0]) * METRES_PER_DEGREE < 1
    wlon, _ = to_wgs84(pa.array(blon), pa.array(blat), "BD-09")
    assert abs(wlon[0].as_py() - gcj02_to_wgs84_np(glon, glat)[0][0]) * METRES_PER_DEGREE < 1
    with pytest.raises(ValueError, match="unknown CRS"):
        to_wgs84(pa.array([1.0]), pa.array([1.0]), "EPSG:3857")
