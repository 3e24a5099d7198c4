"""Bulk validators agree with python-stdnum on large samples and never raise on bad values."""

from __future__ import annotations

import random
from datetime import date, datetime

import pyarrow as pa
import pytest
from stdnum.cn import ric, uscc

from pipelines.quality import validators as v
from pipelines.seed.ids import credit_code, org_code


def _ids(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        body = "".join(rng.choice("0123456789") for _ in range(17))
        out.append(body + (ric.calc_check_digit(body + "?") if rng.random() < 0.5 else rng.choice("0123456789X")))
    return out


def test_resident_id_check_digit_agrees_with_stdnum() -> None:
    rng = random.Random(7)
    ids = _ids(rng, 300_000)  # crosses a validator chunk boundary (262,144 rows)
    got = v.resident_id_check_digit(pa.array(ids)).to_pylist()
    assert got == [ric.calc_check_digit(i) == i[17] for i in ids]
    assert sum(got) > 140_000  # about half are valid


def test_uscc_agrees_with_stdnum_and_org_code_is_checked() -> None:
    rng = random.Random(11)
    codes = []
    for _ in range(100_000):
        c = credit_code(rng, "340104")
        if rng.random() < 0.5:
            i = rng.randrange(18)
            c = c[:i] + rng.choice(v.USCC_ALPHABET) + c[i + 1:]
        codes.append(c)
    assert v.uscc_valid(pa.array(codes)).to_pylist() == [uscc.is_valid(c) for c in codes]
    good = [credit_code(rng, "340104") for _ in range(1000)]
    assert all(v.uscc_org_code_valid(pa.array(good)).to_pylist())
    broken = [c[:16] + ("1" if c[16] != "1" else "2") + c[17] for c in good]  # org check char changed
    assert not any(v.uscc_org_code_valid(pa.array(broken)).to_pylist())
    assert org_code(random.Random(1))[-1] in "0123456789X"


@pytest.mark.parametrize("fn", [v.resident_id_check_digit, v.uscc_valid, v.uscc_org_code_valid, v.resident_id_format])
def test_bad_values_never_raise(fn) -> None:  # noqa: ANN001
    arr = pa.array(["", "x", "３４０１０４１９９００１０１１２３４", "340104199001011234567", None, "中" * 6,
                    "91340100MA2N0000X"])
    out = fn(arr).to_pylist()
    assert out[4] is None and out[:4] == [False] * 4 and out[5] is False
    sliced = fn(pa.chunked_array([arr.slice(2), arr.slice(0, 2)])).to_pylist()
    assert len(sliced) == len(arr)


def test_birth_date_region_sex() -> None:
    ids = pa.array(["34010419920229123X", "340104199302291234", "340104203001011234", "999999199001011234", None])
    ref = date(2026, 11, 20)
    assert v.resident_id_birth_date(ids, ref).to_pylist() == [True, False, False, True, None]
    assert v.resident_id_region(ids, v.division_codes()).to_pylist()[:4] == [True, True, True, False]
    sex = pa.array(["1", "1", "2", "9", "1"])
    assert v.resident_id_sex(ids, sex).to_pylist()[:4] == [True, True, False, True]  # 17th digit 3: male


def test_pair_checks_leave_malformed_and_missing_to_their_own_rules() -> None:
    ids = pa.array(["340104199001011234", "340104199001011234", "3401041990010112", None, "340104199001011234"])
    sex = pa.array(["1", "2", "1", "1", None])
    assert v.resident_id_sex(ids, sex).to_pylist() == [True, False, None, None, None]
    for dates in (pa.array([date(1990, 1, 1), date(1990, 1, 2), date(1990, 1, 1), date(1990, 1, 1), None]),
                  pa.array(["1990-01-01", "1990-01-02", "1990-01-01", "1990-01-01", None]),
                  pa.array([datetime(1990, 1, 1), datetime(1990, 1, 2), None, None, None], pa.timestamp("us"))):
        assert v.resident_id_birth_date_agrees(ids, dates).to_pylist() == [True, False, None, None, None]
    assert v.resident_id_birth_date_agrees(ids, pa.array(["1990-1-1x"] * 5)).to_pylist() == [None] * 5
    chunked = pa.chunked_array([ids.slice(0, 2), ids.slice(2)])
    assert v.resident_id_region(chunked, v.division_codes()).to_pylist() == [True, True, False, None, True]


def test_codes_mobile_dates_bounds() -> None:
    codes = v.division_codes()
    assert {"340102", "340104", "340181", "340171", "340172", "340173"} <= codes and "340199" not in codes
    assert "340111" in codes and "110103" in codes  # historical 崇文区 stays valid
    assert v.mobile_valid(pa.array(["13812345678", "12812345678", "1381234567", None])).to_pylist() == \
        [True, False, False, None]
    assert v.mobile_valid(pa.array(["13812345678", "19912345678"]), prefixes=["138"]).to_pylist() == [True, False]
    ref = date(2026, 11, 20)
    assert v.date_not_future(pa.array([date(2026, 11, 20), date(2026, 11, 21), None]), ref).to_pylist() == \
        [True, False, None]
    assert v.date_not_future(pa.array(["2026-11-20", "2027-01-01", "not a date", None]), ref).to_pylist() == \
        [True, False, False, None]
    assert v.in_bounds(pa.array([117.27, 120.0]), pa.array([31.86, 31.86])).to_pylist() == [True, False]
