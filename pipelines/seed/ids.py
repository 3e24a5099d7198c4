"""National identifiers for the synthetic city, with check characters from python-stdnum.

GB 11714 organisation-code check characters are computed here by hand: stdnum has no module for
them (``stdnum.cn.uscc`` checks only the USCC's own 18th character).
"""

from __future__ import annotations

import random
from datetime import date

from stdnum.cn import ric, uscc

USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_ORG_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ORG_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)

# GB/T 2260 codes of Hefei (合肥市) plus the development zones the city configures as an extension.
HEFEI_DISTRICTS = {
    "340102": "瑶海区", "340103": "庐阳区", "340104": "蜀山区", "340111": "包河区",
    "340121": "长丰县", "340122": "肥东县", "340123": "肥西县", "340124": "庐江县", "340181": "巢湖市",
}
DEV_ZONES = {"340171": "高新区", "340172": "经开区", "340173": "新站区"}


def resident_id(district: str, birth: date, seq: int) -> str:
    """GB 11643: address code + birth date + 3-digit sequence (odd male, even female) + check."""
    body = f"{district}{birth:%Y%m%d}{seq:03d}"
    return body + ric.calc_check_digit(body + "?")  # stdnum drops the last character (the check)


def wrong_check(value: str, alphabet: str) -> str:
    """The same identifier with a different (so invalid) last character."""
    return value[:-1] + next(c for c in alphabet if c != value[-1])


def org_code(rng: random.Random) -> str:
    """GB 11714 organisation code: 8 characters + check (11 − Σ mod 11; 10 → X, 11 → 0)."""
    body = "".join(rng.choice("0123456789ABCDEFGHJKLMNPQRTUWXY") for _ in range(8))
    total = sum(_ORG_ALPHABET.index(c) * w for c, w in zip(body, _ORG_WEIGHTS, strict=True))
    check = 11 - total % 11
    return body + {10: "X", 11: "0"}.get(check, str(check))


def credit_code(rng: random.Random, district: str) -> str:
    """GB 32100: authority 9 (市场监管) + type 1 (企业) + region + organisation code + check."""
    body = "91" + district + org_code(rng)
    return body + uscc.calc_check_digit(body)
