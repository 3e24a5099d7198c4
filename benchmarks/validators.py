"""Bulk identifier checks vs python-stdnum, side by side in one run (values/s, peak RSS).

    .venv/bin/python benchmarks/validators.py [--rows 10000000]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import pyarrow as pa
from stdnum.cn import ric

from pipelines.quality import validators as v


def ids(n: int) -> pa.Array:
    rng = np.random.default_rng(1)
    digits = rng.integers(0, 10, size=(n, 18), dtype=np.uint8) + 48
    digits[:, 17] = np.where(rng.random(n) < 0.1, ord("X"), digits[:, 17])
    return pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(np.arange(0, 18 * n + 1, 18, dtype=np.int32)),
                                                  pa.py_buffer(digits.tobytes())])


def _stdnum_is_valid(x: str) -> bool:
    try:
        return ric.is_valid(x)
    except KeyError:  # stdnum 2.2 raises on a province with no county entry (seen on random IDs)
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=10_000_000)
    n = ap.parse_args().rows
    arr = ids(n)
    rows = []
    for name, fn in (("resident_id_check_digit", v.resident_id_check_digit), ("resident_id_format", v.resident_id_format),
                     ("uscc_valid", v.uscc_valid)):
        t = time.perf_counter()
        fn(arr)
        rows.append((name, n, time.perf_counter() - t))
    sample = arr.slice(0, 100_000).to_pylist()
    t = time.perf_counter()
    [ric.calc_check_digit(x) == x[17] for x in sample]
    rows.append(("stdnum cn.ric check digit", len(sample), time.perf_counter() - t))
    t = time.perf_counter()
    [_stdnum_is_valid(x) for x in sample]
    rows.append(("stdnum cn.ric is_valid", len(sample), time.perf_counter() - t))
    print(f"{'check':<28} {'values':>11} {'seconds':>8} {'values/s':>13}")
    for name, count, sec in rows:
        print(f"{name:<28} {count:>11,} {sec:>8.2f} {count / sec:>13,.0f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
