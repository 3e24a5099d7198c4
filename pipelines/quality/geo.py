"""Coordinate reference systems of Chinese maps, vectorised (numpy over Arrow float64 arrays).

GCJ-02 is WGS-84 with the published obfuscation (a = 6378245.0, ee = 0.00669342162296594323); its
inverse has no closed form and is solved iteratively. BD-09 is Baidu's further rotation of GCJ-02.
CGCS2000, the national datum, equals WGS-84 at metre scale. No maintained Python library does this
vectorised, so it is written here (the formulas are the widely published ones).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

A = 6378245.0
EE = 0.00669342162296594323
_X_PI = np.pi * 3000.0 / 180.0


def _np(arr: pa.Array | pa.ChunkedArray | np.ndarray | list[float]) -> tuple[np.ndarray, np.ndarray | None]:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if isinstance(arr, pa.Array):
        mask = arr.is_null().to_numpy(zero_copy_only=False) if arr.null_count else None
        return arr.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False), mask
    return np.asarray(arr, dtype=np.float64), None


def _out(values: np.ndarray, mask: np.ndarray | None) -> pa.Array:
    return pa.array(values, type=pa.float64(), mask=mask)


def _out_of_china(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    return (lon < 72.004) | (lon > 137.8347) | (lat < 0.8293) | (lat > 55.8271)


def _delta(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = lon - 105.0, lat - 35.0
    common = (20.0 * np.sin(6.0 * x * np.pi) + 20.0 * np.sin(2.0 * x * np.pi)) * 2.0 / 3.0
    dlat = (-100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * np.sqrt(np.abs(x)) + common
            + (20.0 * np.sin(y * np.pi) + 40.0 * np.sin(y / 3.0 * np.pi)) * 2.0 / 3.0
            + (160.0 * np.sin(y / 12.0 * np.pi) + 320.0 * np.sin(y * np.pi / 30.0)) * 2.0 / 3.0)
    dlon = (300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * np.sqrt(np.abs(x)) + common
            + (20.0 * np.sin(x * np.pi) + 40.0 * np.sin(x / 3.0 * np.pi)) * 2.0 / 3.0
            + (150.0 * np.sin(x / 12.0 * np.pi) + 300.0 * np.sin(x / 30.0 * np.pi)) * 2.0 / 3.0)
    rad = lat / 180.0 * np.pi
    magic = 1 - EE * np.sin(rad) ** 2
    sq = np.sqrt(magic)
    dlat = (dlat * 180.0) / ((A * (1 - EE)) / (magic * sq) * np.pi)
    dlon = (dlon * 180.0) / (A / sq * np.cos(rad) * np.pi)
    outside = _out_of_china(lon, lat)
    return np.where(outside, 0.0, dlon), np.where(outside, 0.0, dlat)


def wgs84_to_gcj02_np(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dlon, dlat = _delta(lon, lat)
    return lon + dlon, lat + dlat


def gcj02_to_wgs84_np(lon: np.ndarray, lat: np.ndarray, iterations: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-point inverse: converges to well under a millimetre in a few steps inside China."""
    wlon, wlat = lon.copy(), lat.copy()
    for _ in range(iterations):
        glon, glat = wgs84_to_gcj02_np(wlon, wlat)
        wlon, wlat = wlon - (glon - lon), wlat - (glat - lat)
    return wlon, wlat


def bd09_to_gcj02_np(lon: np.ndarray, lat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = lon - 0.0065, lat - 0.006
    z = np.sqrt(x * x + y * y) - 0.00002 * np.sin(y * _X_PI)
    theta = np.arctan2(y, x) - 0.000003 * np.cos(x * _X_PI)
    return z * np.cos(theta), z * np.sin(theta)


def to_wgs84(lon: pa.Array, lat: pa.Array, crs: str) -> tuple[pa.Array, pa.Array]:
    """Convert coordinates declared in ``crs`` (WGS-84, CGCS2000, GCJ-02, BD-09) to WGS-84/CGCS2000."""
    x, mx = _np(lon)
    y, my = _np(lat)
    mask = mx if my is None else (my if mx is None else mx | my)
    if crs in ("WGS-84", "CGCS2000"):
        rx, ry = x, y
    elif crs == "GCJ-02":
        rx, ry = gcj02_to_wgs84_np(x, y)
    elif crs == "BD-09":
        rx, ry = gcj02_to_wgs84_np(*bd09_to_gcj02_np(x, y))
    else:
        raise ValueError(f"unknown CRS {crs!r}: declare WGS-84, CGCS2000, GCJ-02 or BD-09")
    return _out(rx, mask), _out(ry, mask)


def wgs84_to_gcj02(lon: pa.Array, lat: pa.Array) -> tuple[pa.Array, pa.Array]:
    x, mx = _np(lon)
    y, my = _np(lat)
    gx, gy = wgs84_to_gcj02_np(x, y)
    return _out(gx, mx), _out(gy, my)
