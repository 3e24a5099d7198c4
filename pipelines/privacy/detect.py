"""What a value is, by its content: resident IDs, mobile numbers, bank cards, personal names, addresses.

Every detector works on a whole Arrow array (RE2 regexes in pyarrow's kernels, check digits in numpy
over the strings' bytes), so a column scan or a leak scan costs one pass, and gives one boolean per
value (null → False). Precision matters as much as recall: a lake full of order numbers and codes
must not read as personal, so every number-shaped kind carries a check:

- resident ID (GB 11643): 18 characters, a province code, a real-looking birth date and the
  ISO 7064 MOD 11-2 check character (the arithmetic of python-stdnum's ``cn.ric``; tests hold the two
  equal); a 15-digit pre-1999 ID by province code and a YYMMDD birth date (it has no check digit).
- mobile: ``1[3-9]`` + 9 digits, optionally ``+86`` / ``0086`` / ``86``, spaces and dashes ignored.
- bank card: 16–19 digits, a known issuer prefix (``CARD_PREFIXES``) AND the Luhn check (Luhn alone
  passes one random number in ten).
- personal name: 2–4 Han characters (or a ``·`` minority name) starting with a Chinese surname
  (Faker's zh_CN table of 399, which covers nearly everyone) and not ending like a place or an org.
- address: Han text naming an administrative unit and a street, building or house number.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from functools import cache
from typing import TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.identifiers import ric_check_characters

Array: TypeAlias = pa.Array | pa.ChunkedArray

RESIDENT_ID, MOBILE, BANK_CARD, PERSON_NAME, ADDRESS = "resident_id", "mobile", "bank_card", "person_name", "address"
KINDS = (RESIDENT_ID, MOBILE, BANK_CARD, PERSON_NAME, ADDRESS)

# GB/T 2260 province-level codes (the first two digits of every resident ID): 11–15, 21–23, 31–37,
# 41–46, 50–54, 61–65, Taiwan 71, Hong Kong 81, Macao 82 (residence permits), 83 (Taiwan residents).
PROVINCES = frozenset({11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46,
                       50, 51, 52, 53, 54, 61, 62, 63, 64, 65, 71, 81, 82, 83})

# Hand-written: no maintained Python library ships an issuer (BIN/IIN) table (python-stdnum has Luhn but
# no card networks). The networks China's banks issue on, plus the domestic pre-UnionPay debit prefixes
# still in circulation. Ranges are inclusive on prefixes of equal length.
CARD_PREFIXES: tuple[tuple[str, str, str], ...] = (
    ("62", "62", "UnionPay 银联"),
    ("81", "81", "UnionPay 银联 (8-series)"),
    ("4", "4", "Visa"),
    ("51", "55", "Mastercard"),
    ("2221", "2720", "Mastercard (2-series)"),
    ("3528", "3589", "JCB"),
    ("6011", "6011", "Discover"),
    ("644", "649", "Discover"),
    ("65", "65", "Discover"),
    ("9558", "9558", "ICBC 工商银行 (legacy debit)"),
    ("95599", "95599", "ABC 农业银行 (legacy debit)"),
    ("601428", "601428", "Bank of Communications 交通银行 (legacy debit)"),
)

_NOT_A_NAME_END = "区县市省州盟旗乡镇村路街巷道站店院馆园场厂所司行部队局委办处科室组团社校"


def _strings(arr: Array) -> pa.StringArray:
    """A flat string array, NFKC-normalised (full-width digits and ＋ become ASCII)."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], pa.string())
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_large_string(arr.type) or pa.types.is_string_view(arr.type):
        arr = arr.cast(pa.string())
    elif pa.types.is_integer(arr.type) or pa.types.is_decimal(arr.type):
        arr = arr.cast(pa.string())  # a mobile or card stored as a number is still one
    elif not pa.types.is_string(arr.type):
        return pa.nulls(len(arr), pa.string())  # dates, floats, booleans, binary: not these kinds
    return pc.utf8_normalize(arr, "NFKC")


def _bool(result: pa.Array) -> np.ndarray:
    return result.fill_null(False).to_numpy(zero_copy_only=False).astype(bool)


def _matrix(arr: pa.StringArray, rows: np.ndarray, width: int) -> np.ndarray:
    """The bytes of ``arr[rows]`` (all exactly ``width`` bytes long) as an (n, width) uint8 matrix."""
    if not len(rows):
        return np.zeros((0, width), np.uint8)
    taken = arr.take(pa.array(rows))
    offsets = np.frombuffer(taken.buffers()[1], dtype=np.int32, count=taken.offset + len(taken) + 1)[taken.offset:]
    raw = np.frombuffer(taken.buffers()[2], dtype=np.uint8)
    return raw[offsets[0]: offsets[0] + len(rows) * width].reshape(len(rows), width)


def _numbers(m: np.ndarray) -> np.ndarray:
    """Digits of a byte matrix read as one integer per row."""
    return (m.astype(np.int64) - 48) @ (10 ** np.arange(m.shape[1] - 1, -1, -1, dtype=np.int64))


def _plausible_date(year: np.ndarray, month: np.ndarray, day: np.ndarray) -> np.ndarray:
    return (month >= 1) & (month <= 12) & (day >= 1) & (day <= 31) & (year >= 1880) & (year <= 2099)


def _province(m: np.ndarray) -> np.ndarray:
    return np.isin(_numbers(m[:, :2]), np.array(sorted(PROVINCES)))


def resident_ids(arr: Array) -> np.ndarray:
    """GB 11643 resident IDs (18 characters with a valid check character, or the old 15 digits)."""
    s = _strings(arr)
    out = np.zeros(len(s), dtype=bool)
    rows = np.flatnonzero(_bool(pc.match_substring_regex(s, r"^\d{17}[\dXx]$")))
    m = _matrix(s, rows, 18)
    check = ric_check_characters(m[:, :17].astype(np.int32) - 48) == np.where(m[:, 17] == ord("x"), ord("X"), m[:, 17])
    birth = _numbers(m[:, 6:14])
    ok = check & _province(m) & _plausible_date(birth // 10_000, birth // 100 % 100, birth % 100)
    out[rows[ok]] = True
    rows = np.flatnonzero(_bool(pc.match_substring_regex(s, r"^\d{15}$")))
    m = _matrix(s, rows, 15)
    birth = _numbers(m[:, 6:12])
    out[rows[_province(m) & _plausible_date(1900 + birth // 10_000, birth // 100 % 100, birth % 100)]] = True
    return out


def mobiles(arr: Array) -> np.ndarray:
    """Mainland mobile numbers, with or without +86 / 0086 / 86, spaces and dashes ignored."""
    s = pc.replace_substring_regex(_strings(arr), r"[\s\-]", "")
    return _bool(pc.match_substring_regex(s, r"^(?:\+?86|0086)?1[3-9]\d{9}$"))


@cache
def _prefix_lookup() -> dict[int, list[tuple[int, int]]]:
    """Prefix length → inclusive (low, high) ranges."""
    table: dict[int, list[tuple[int, int]]] = {}
    for low, high, _name in CARD_PREFIXES:
        table.setdefault(len(low), []).append((int(low), int(high)))
    return table


def known_card_prefix(m: np.ndarray) -> np.ndarray:
    """Rows of a digit matrix whose leading digits are a known issuer's prefix."""
    ok = np.zeros(len(m), dtype=bool)
    for length, ranges in _prefix_lookup().items():
        lead = _numbers(m[:, :length])
        for low, high in ranges:
            ok |= (lead >= low) & (lead <= high)
    return ok


def has_card_prefix(digits: str) -> bool:
    """One digit string: does it start with a known issuer's prefix (``CARD_PREFIXES``)?"""
    return digits.isdigit() and bool(known_card_prefix(np.frombuffer(digits.encode(), np.uint8)[None, :])[0])


def luhn_ok(m: np.ndarray) -> np.ndarray:
    """The Luhn check over each row of a digit matrix (every second digit from the right doubled)."""
    d = m.astype(np.int16) - 48
    doubled = d[:, -2::-2] * 2
    total = d[:, -1::-2].sum(axis=1) + (doubled - 9 * (doubled > 9)).sum(axis=1)
    return total % 10 == 0


def bank_cards(arr: Array) -> np.ndarray:
    """16–19 digits (spaces and dashes ignored) with a known issuer prefix and a valid Luhn check."""
    s = pc.replace_substring_regex(_strings(arr), r"[\s\-]", "")
    out = np.zeros(len(s), dtype=bool)
    lengths = _bool(pc.match_substring_regex(s, r"^\d{16,19}$")) * pc.utf8_length(s).fill_null(0).to_numpy(
        zero_copy_only=False)
    for width in range(16, 20):
        rows = np.flatnonzero(lengths == width)
        m = _matrix(s, rows, width)
        out[rows[known_card_prefix(m) & luhn_ok(m)]] = True
    return out


@cache
def surnames() -> tuple[frozenset[str], frozenset[str]]:
    """(single-character, two-character) Chinese surnames from Faker's zh_CN table."""
    from faker.providers.person.zh_CN import Provider

    names = set(Provider.last_names)
    return frozenset(n for n in names if len(n) == 1), frozenset(n for n in names if len(n) == 2)


def person_names(arr: Array) -> np.ndarray:
    """2–4 Han characters (or Han·Han) beginning with a Chinese surname, not ending like a place or org."""
    s = pc.utf8_trim_whitespace(_strings(arr))
    shape = _bool(pc.match_substring_regex(s, r"^(?:\p{Han}{2,4}|\p{Han}{1,6}·\p{Han}{1,8})$"))
    shape &= ~_bool(pc.match_substring_regex(s, f"[{_NOT_A_NAME_END}]$"))
    single, double = surnames()
    first = _bool(pc.is_in(pc.utf8_slice_codeunits(s, 0, 1), value_set=pa.array(sorted(single))))
    first2 = _bool(pc.is_in(pc.utf8_slice_codeunits(s, 0, 2), value_set=pa.array(sorted(double))))
    return shape & (first | first2 | _bool(pc.match_substring(s, "·")))


_ADDRESS = (r"\p{Han}.*(?:省|市|区|县|旗|镇|乡|街道).*(?:路|街|巷|弄|大道|村|组|号|栋|幢|单元|室|小区|苑|花园|公寓)"
            r"|\p{Han}.*\d+\s*(?:号|栋|幢|单元|室|弄)")


def addresses(arr: Array) -> np.ndarray:
    """Han text naming an administrative unit and a street/village/building, or a house number."""
    s = _strings(arr)
    return _bool(pc.match_substring_regex(s, _ADDRESS)) & (_bool(pc.greater_equal(pc.utf8_length(s), 6)))


DETECTORS: dict[str, Callable[[Array], np.ndarray]] = {
    RESIDENT_ID: resident_ids, MOBILE: mobiles, BANK_CARD: bank_cards, PERSON_NAME: person_names,
    ADDRESS: addresses}


def detect_kinds(arr: Array, kinds: Iterable[str] = KINDS) -> dict[str, np.ndarray]:
    """Kind → one boolean per value (True: the value is that kind)."""
    return {k: DETECTORS[k](arr) for k in kinds}


def value_kinds(arr: Array) -> list[str | None]:
    """The kind of each value, or None (the first matching kind, numbers before text)."""
    found = detect_kinds(arr)
    out: list[str | None] = [None] * len(arr)
    for kind in reversed(KINDS):
        for i in np.flatnonzero(found[kind]):
            out[i] = kind
    return out


def column_kind(arr: Array, *, sample: int = 1000, threshold: float = 0.5) -> str | None:
    """The personal kind most values of a column are (of its first ``sample`` non-null values), or None."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], arr.type)
    values = arr.drop_null().slice(0, sample)
    if not len(values):
        return None
    shares = {k: float(v.mean()) for k, v in detect_kinds(values).items()}
    kind = max(shares, key=lambda k: shares[k])
    return kind if shares[kind] >= threshold else None


def is_resident_id(text: str) -> bool:
    """One value: python-stdnum's check character (``calc_check_digit`` wants the check character
    included and drops it) plus the same province and birth-date plausibility as ``resident_ids``."""
    from stdnum.cn import ric

    t = text.strip().upper()
    if len(t) == 18 and t[:17].isdigit() and t[17] in "0123456789X":
        return ric.calc_check_digit(t) == t[17] and bool(resident_ids(pa.array([t]))[0])
    return bool(resident_ids(pa.array([t]))[0])


def is_bank_card(text: str) -> bool:
    """One value: python-stdnum's Luhn plus a known issuer prefix and length."""
    from stdnum import luhn

    digits = "".join(text.split()).replace("-", "")
    return 16 <= len(digits) <= 19 and digits.isdigit() and luhn.is_valid(digits) and has_card_prefix(digits)


# --- scanning published text (the open release's leak gate) -------------------------------------------

INDIVIDUAL_USCC = "individual_uscc"
LEAK_KINDS = (RESIDENT_ID, MOBILE, BANK_CARD, INDIVIDUAL_USCC, PERSON_NAME, ADDRESS)
"""What the open release's leak gate looks for (``pipelines.publish.leak``)."""

# GB 32100: registration authority 9 (市场监管/工商) + organisation type 2 = 个体工商户, whose code identifies
# the person who runs the business; region (6 digits), organisation code and check from the USCC alphabet.
_INDIVIDUAL_USCC = r"^92\d{6}[0-9A-HJ-NP-RTUWXY]{10}$"

# A house-number address: a street or compound word followed by a number and 号/栋/幢/单元/室/弄
# (长江西路88号, 琥珀山庄3栋, 长江西路八十八号 in Chinese numerals), or a building-unit-room sequence (3栋2单元,
# 三栋二单元, 2单元301室). A district or a street alone names no household: generalised addresses stay clear.
_STREET = r"(?:路|街|巷|弄|道|村|组|里|苑|园|庄|小区|社区|大厦|公寓|花园|新村)"
_HAN_NUMERAL = "零〇一二三四五六七八九十百千两"
HOUSE_NUMBER = (rf"\p{{Han}}{_STREET}\s*(?:\p{{Nd}}{{1,5}}|[{_HAN_NUMERAL}]{{1,6}})\s*(?:号|栋|幢|单元|室|弄)"
                r"|\p{Nd}{1,4}\s*(?:栋|幢|号楼)\s*\p{Nd}{1,3}\s*(?:单元|室)"
                rf"|[{_HAN_NUMERAL}]{{1,4}}(?:栋|幢|号楼)[{_HAN_NUMERAL}]{{1,3}}(?:单元|室)"
                r"|\p{Nd}{1,3}\s*单元\s*\p{Nd}{2,5}")

# What may stand between the digit groups of one written number: whitespace of any kind (no-break space, the
# ideographic space), any dash (\p{Pd}: -, —, －), dots, middle dots and slashes, at most two of them
# (138 1234 5678, 138.1234.5678, 6222—0212…, 138  1234  5678).
_SEP_RAW = r"[\s\p{Z}\p{Pd}.．·・/／]"
_SEP = r"[\s\p{Z}\p{Pd}.·・/]"
"""The same after NFKC (full-width dot and slash become ASCII)."""

# Cheap first pass over every string cell (one RE2 DFA scan of the text as stored, before any normalisation:
# \p{Nd} takes full-width digits too): 11+ digits with up to two separators between digits (a split mobile or
# card), an individual business's USCC head, or a number (Arabic or Chinese) before 号/栋/单元/室. Only the
# cells it finds are NFKC-normalised, tokenised and checked, so a column of names and codes costs one scan.
_CANDIDATE = (rf"\p{{Nd}}(?:{_SEP_RAW}{{0,2}}\p{{Nd}}){{10}}|[9９][2２](?:{_SEP_RAW}{{0,2}}\p{{Nd}}){{6}}"
              rf"|[\p{{Nd}}{_HAN_NUMERAL}]\s*(?:号|栋|幢|单元|室|弄)")


def _raw_strings(arr: Array) -> pa.StringArray:
    """A flat string array as stored (no normalisation); numbers as their decimal text."""
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks() if arr.num_chunks else pa.array([], pa.string())
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_string(arr.type):
        return arr
    if pa.types.is_large_string(arr.type) or pa.types.is_string_view(arr.type) or pa.types.is_integer(arr.type) \
            or pa.types.is_decimal(arr.type):
        return arr.cast(pa.string())
    return pa.nulls(len(arr), pa.string())


def individual_usccs(arr: Array) -> np.ndarray:
    """USCCs of individual businesses (个体工商户: authority 9, type 2) with a valid GB 32100 check character
    (python-stdnum's ``cn.uscc``, asked only for the values of that shape)."""
    from stdnum.cn import uscc

    s = pc.utf8_upper(_strings(arr))
    out = np.zeros(len(s), dtype=bool)
    rows = np.flatnonzero(_bool(pc.match_substring_regex(s, _INDIVIDUAL_USCC)))
    for i, value in zip(rows, s.take(pa.array(rows, pa.int64())).to_pylist(), strict=True):
        out[i] = uscc.is_valid(value)
    return out


def house_numbers(arr: Array) -> np.ndarray:
    """Text holding a house-number address (``HOUSE_NUMBER``) anywhere in it."""
    return _bool(pc.match_substring_regex(_strings(arr), HOUSE_NUMBER))


_GLUE_DATE = re.compile(r"(?:19|20)\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(?:\d{4}|\d{6})?"
                        r"|\d\d(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])")


def _is_glue(rest: str) -> bool:
    """Digits glued to an identifier that do not make it a different number: a date or date-time (20240501,
    240501, 202405011230, 20240501123000). Not any short number: a millisecond timestamp (1714521600000) would
    read as a mobile and a glued digit."""
    return _GLUE_DATE.fullmatch(rest) is not None


def _joinable(groups: list[str]) -> bool:
    """Whether neighbouring digit groups are plausibly one number written apart: groups of three or more digits
    (138 1234 5678, 340104 19900101 1239, 6222 0212 3456 7890 128), the first and last may have two (+86 …,
    … 0112 39); or digits spaced out one or two at a time (1 3 8 1 2 …). Not a date next to a number
    (2024-05-01 20), nor any mix of short and long groups: random numbers side by side join by chance."""
    if all(len(g) <= 2 for g in groups):
        return True
    inner = groups[1:-1]
    return all(len(g) >= 3 for g in inner) and len(groups[0]) >= 2 and len(groups[-1]) >= 2


def _expand(chain: str) -> tuple[set[str], set[str]]:
    """The numbers a chain of digit groups (``|`` between groups written apart) may be: every group on its own
    and every plausible join (``_joinable``) of neighbouring groups of 11–19 digits (138 1234 5678, …),
    and windows inside a long group so that a glued identifier cannot hide: an 18-character ID (its check
    character keeps random digits out) at every position; a mobile, a card or a 15-digit ID (weaker checks:
    prefix, issuer + Luhn, province + date) only at a group's start or end, the rest a date (``_is_glue``).
    A trailing X stays on its group (an ID's check character). Returns (numbers to check as every kind,
    18-character windows to check as IDs only)."""
    runs = chain.split("|")
    out: set[str] = set()
    ids: set[str] = set()
    for i in range(len(runs)):
        total = 0
        for j in range(i, len(runs)):
            total += len(runs[j])
            if total > 19:
                break
            if total >= 11 and (i == j or _joinable(runs[i:j + 1])):
                out.add("".join(runs[i:j + 1]))
    for run in runs:
        n = len(run)
        if n <= 11:
            continue
        if n > 18:
            ids.update(run[k:k + 18] for k in range(n - 17))
        for width in (11, 15, 16, 17, 18, 19):
            if width < n:
                if _is_glue(run[width:]):
                    out.add(run[:width])
                if _is_glue(run[:n - width]):
                    out.add(run[n - width:])
    return out, ids - out


def _digit_tokens(s: pa.StringArray) -> tuple[pa.StringArray, np.ndarray, np.ndarray]:
    """The numbers each text (NFKC) may hold (``_expand``): (tokens of 11–19 characters, the index of the text
    each came from, whether a token is checked as an ID only). Groups are digit runs (an ID's trailing X kept); groups split by up to two separators
    (``_SEP``) form one chain."""
    # An X right after a digit and ending a word is an ID's check character: marked (\x01) so that it survives
    # the removal of everything else, then written back as X.
    marked = pc.replace_substring_regex(s, r"(\d)[Xx]([^0-9A-Za-z]|$)", "\\1\x01\\2")
    for _ in range(2):  # a single-digit group between separators needs a second pass
        marked = pc.replace_substring_regex(marked, rf"([\d\x01]){_SEP}{{1,2}}(\d)", r"\1|\2")
    spaced = pc.replace_substring(pc.replace_substring_regex(marked, "[^0-9\x01|]+", " "), "\x01", "X")
    parts = pc.split_pattern(spaced, " ")
    chains = pc.list_flatten(parts)
    parents = pc.list_parent_indices(parts).to_numpy(zero_copy_only=False)
    long = np.flatnonzero(_bool(pc.greater_equal(pc.utf8_length(chains), 11)))
    tokens: list[str] = []
    owners: list[int] = []
    id_only: list[bool] = []
    seen: set[tuple[int, str]] = set()
    for k, chain in zip(long, chains.take(pa.array(long, pa.int64())).to_pylist(), strict=True):
        owner = int(parents[k])
        numbers, ids = _expand(chain)
        for only, group in ((False, numbers), (True, ids)):
            for token in group:
                if (owner, token) not in seen:
                    seen.add((owner, token))
                    tokens.append(token)
                    owners.append(owner)
                    id_only.append(only)
    return pa.array(tokens, pa.string()), np.array(owners, dtype=np.int64), np.array(id_only, dtype=bool)


def _usccs_in(upper: pa.StringArray) -> list[tuple[int, str]]:
    """Individual-business USCCs inside upper-case texts: the words as written, and the words with separators
    between letters and digits removed (9234 0100 MA2N 1234 XP), where every 18-character window starting at
    92 and holding a letter is checked (a split code glued to a neighbouring word). ``(text index, code)``."""
    merged = upper
    for _ in range(2):
        merged = pc.replace_substring_regex(merged, rf"([0-9A-Z]){_SEP}{{1,2}}([0-9A-Z])", r"\1\2")
    found: set[tuple[int, str]] = set()
    for text in (upper, merged):
        words = pc.split_pattern_regex(text, r"[^0-9A-Z]+")
        flat = pc.list_flatten(words)
        parents = pc.list_parent_indices(words).to_numpy(zero_copy_only=False)
        for t in np.flatnonzero(individual_usccs(flat)):
            found.add((int(parents[t]), flat[int(t)].as_py()))
        long = np.flatnonzero(_bool(pc.match_substring_regex(flat, r"^.{19,}$")) & _bool(pc.match_substring(flat, "92")))
        for t, word in zip(long, flat.take(pa.array(long, pa.int64())).to_pylist(), strict=True):
            windows = [word[k:k + 18] for k in range(len(word) - 17)
                       if word.startswith("92", k) and not word[k:k + 18].isdigit()]
            for k, ok in enumerate(individual_usccs(pa.array(windows, pa.string())) if windows else ()):
                if ok:
                    found.add((int(parents[t]), windows[k]))
    return sorted(found)


def identifiers_in_text(arr: Array) -> list[tuple[int, str, str]]:
    """Every resident ID, mobile, bank card, individual-business USCC and house-number address anywhere
    inside each text value (a free-text column whose name says nothing): ``(row, kind, found text)``.

    Vectorised: one candidate scan over all values (``_CANDIDATE``), then on the candidates only the digit
    runs are cut out and checked with the whole-value detectors (check digit, province and birth date;
    Luhn and issuer prefix; mobile prefixes), USCC-shaped words with the GB 32100 check, and the
    house-number pattern. A resident ID must pass its check character: a random 18-digit order number
    does not read as one."""
    raw = _raw_strings(arr)
    rows = np.flatnonzero(_bool(pc.match_substring_regex(raw, _CANDIDATE)))
    if not len(rows):
        return []
    cand = _strings(raw.take(pa.array(rows, pa.int64())))
    found: list[tuple[int, str, str]] = []
    tokens, parents, id_only = _digit_tokens(cand)
    if len(tokens):
        numbers: dict[int, list[tuple[str, str]]] = {}
        for kind, detector in ((RESIDENT_ID, resident_ids), (BANK_CARD, bank_cards), (MOBILE, mobiles)):
            for t in np.flatnonzero(detector(tokens) & (~id_only if kind != RESIDENT_ID else True)):
                numbers.setdefault(int(parents[t]), []).append((kind, tokens[int(t)].as_py()))
        for i, hits in numbers.items():  # one number is one hit: not also the windows inside it (+86 138…)
            for kind, token in hits:
                if not any(len(other) > len(token) and token in other for _k, other in hits):
                    found.append((int(rows[i]), kind, token))
    for j, code in _usccs_in(pc.utf8_upper(cand)):
        found.append((int(rows[j]), INDIVIDUAL_USCC, code))
    for h in np.flatnonzero(house_numbers(cand)):
        found.append((int(rows[h]), ADDRESS, cand[int(h)].as_py()))
    return sorted(found)


def identifiers_in_numbers(arr: Array, *, mobile: bool = True) -> list[tuple[int, str, str]]:
    """Resident IDs, bank cards and (``mobile``) mobile numbers stored as integers: ``(row, kind, digits)``.
    Only values of 11+ digits are looked at (one comparison over the column)."""
    a = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
    big = pc.fill_null(pc.greater_equal(pc.abs(a.cast(pa.int64())), 10_000_000_000), False)
    rows = np.flatnonzero(_bool(big))
    if not len(rows):
        return []
    text = a.take(pa.array(rows, pa.int64())).cast(pa.string())
    found = []
    kinds = ((RESIDENT_ID, resident_ids), (BANK_CARD, bank_cards), *(((MOBILE, mobiles),) if mobile else ()))
    for kind, detector in kinds:
        for t in np.flatnonzero(detector(text)):
            found.append((int(rows[t]), kind, text[int(t)].as_py()))
    return sorted(found)
