"""The synthetic Hefei city: deterministic source systems, file drops, injected defects and their truth.

Same (scale, seed) → same bytes. No clock: the demo's "today" is ``REFERENCE_DATE``.
Every defect is injected on rows chosen from disjoint pools, and recorded in ``seed_manifest.json``
(defect, system, table, column, keys, expected) so later stages can be scored against it.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from faker import Faker

from pipelines.seed.ids import (
    DEV_ZONES,
    HEFEI_DISTRICTS,
    USCC_ALPHABET,
    credit_code,
    resident_id,
    wrong_check,
)

REFERENCE_DATE = date(2026, 11, 20)
DISTRICTS = sorted(HEFEI_DISTRICTS) + sorted(DEV_ZONES)
UNKNOWN_DISTRICTS = ("340199", "340188", "340177")  # not in GB/T 2260 nor the extension
INSURANCE_TYPES = ("110", "310", "210", "410", "510")  # 养老 医疗 失业 工伤 生育
STATUSES = ("存续", "在业", "吊销", "注销", "迁出")
RECORD_TYPES = ("红名单", "黑名单", "重点关注")
POI_CATEGORIES = ("学校", "医院", "公园", "地铁站", "政务服务中心", "图书馆", "体育场馆")
STATIONS = [("340100051", "明珠广场"), ("340100052", "三里街"), ("340100053", "琥珀山庄"), ("340100054", "董铺水库"),
            ("340100055", "长江中路"), ("340100056", "庐阳区"), ("340100057", "瑶海区"), ("340100058", "包河区"),
            ("340100059", "高新区"), ("340100060", "滨湖新区")]
RARE_STATION = ("340100061", "䶮山监测点")  # 䶮 is in GB18030 but not in GBK
FULLWIDTH = {c: chr(ord(c) + 0xFEE0) for c in "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"}
INDUSTRIES = {  # GB/T 4754-2017 大类 → weight: a city's new firms are mostly trade, services, software, building
    "51": 14, "52": 12, "72": 10, "65": 8, "64": 4, "74": 5, "75": 5, "73": 2, "70": 3, "62": 4, "61": 1, "80": 3,
    "81": 1, "82": 2, "48": 3, "50": 3, "47": 2, "49": 1, "54": 2, "58": 2, "59": 1, "88": 1, "87": 1, "86": 1,
    "90": 1, "89": 1, "83": 1, "84": 1, "71": 1, "69": 1, "67": 1, "39": 3, "38": 3, "36": 2, "34": 2, "35": 2,
    "33": 1, "29": 1, "26": 1, "27": 1, "30": 1, "13": 1, "14": 1, "40": 1, "41": 1, "01": 1, "02": 1, "03": 1,
    "05": 1, "44": 1, "77": 1, "78": 1,
}


@dataclass
class Truth:
    """The manifest being built: defects (to be caught) and benign variants (not to be flagged)."""

    defects: dict[tuple[str, str, str, str, str], list[Any]] = field(default_factory=dict)
    extra: dict[tuple[str, str, str, str, str], list[Any]] = field(default_factory=dict)
    benign: dict[tuple[str, str, str, str, str], list[Any]] = field(default_factory=dict)

    def add(self, defect: str, system: str, table: str, column: str, key: Any, expected: str,
            extra: Any = None) -> None:
        k = (defect, system, table, column, expected)
        self.defects.setdefault(k, []).append(key)
        if extra is not None:
            self.extra.setdefault(k, []).append(extra)

    def add_benign(self, kind: str, system: str, table: str, column: str, key: Any) -> None:
        self.benign.setdefault((kind, system, table, column, "none"), []).append(key)

    def to_json(self, scale: float, seed: int) -> dict[str, Any]:
        def entries(d: dict, extra: dict | None = None) -> list[dict[str, Any]]:
            out = []
            for (name, system, table, column, expected), keys in d.items():
                e: dict[str, Any] = {"defect": name, "system": system, "table": table, "column": column,
                                     "keys": keys, "expected": expected}
                if extra and (name, system, table, column, expected) in extra:
                    e["extra"] = extra[(name, system, table, column, expected)]
                out.append(e)
            return out

        return {"reference_date": REFERENCE_DATE.isoformat(), "seed": seed, "scale": scale,
                "defects": entries(self.defects, self.extra), "benign": entries(self.benign)}


class City:
    def __init__(self, scale: float, seed: int):
        self.scale = scale
        self.rng = random.Random(seed)
        self.fake = Faker("zh_CN")
        self.fake.seed_instance(seed)
        self.truth = Truth()

    def n(self, base: int, minimum: int = 40) -> int:
        return max(minimum, int(base * self.scale))

    def pick(self, pool: list[int], rate: float, minimum: int = 2) -> list[int]:
        """Take defect rows out of ``pool`` (so defects never overlap on a row)."""
        k = min(len(pool), max(minimum, round(rate * len(pool))))
        chosen = self.rng.sample(pool, k)
        taken = set(chosen)
        pool[:] = [i for i in pool if i not in taken]
        return sorted(chosen)

    def when(self, start: date = date(2026, 10, 1), end: date = REFERENCE_DATE - timedelta(days=1)) -> str:
        span = int((datetime.combine(end, datetime.min.time()) - datetime.combine(start, datetime.min.time()))
                   .total_seconds())
        t = datetime.combine(start, datetime.min.time()) + timedelta(seconds=self.rng.randrange(span))
        return t.strftime("%Y-%m-%d %H:%M:%S")

    def day(self, start: date, end: date) -> date:
        return start + timedelta(days=self.rng.randrange((end - start).days))


def _db(path: Path, ddl: str, table: str, rows: list[tuple]) -> None:
    con = sqlite3.connect(path)
    con.execute(ddl)
    marks = ",".join("?" * len(rows[0]))
    con.executemany(f'INSERT INTO "{table}" VALUES ({marks})', rows)
    con.commit()
    con.close()


def _fullwidth(text: str) -> str:
    return "".join(FULLWIDTH.get(c, c) for c in text)


# --- relational systems ---------------------------------------------------------------------------


def _population(city: City, out: Path) -> list[dict[str, Any]]:
    n = city.n(20_000)
    people: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(people) < n:
        sex = city.rng.choice("12")
        birth = city.day(date(1935, 1, 1), date(2024, 12, 31))
        district = city.rng.choice(DISTRICTS)
        seq = city.rng.randrange(0, 500) * 2 + (1 if sex == "1" else 0)  # odd = male, even = female
        rid = resident_id(district, birth, seq)
        if rid in seen:
            continue
        seen.add(rid)
        name = city.fake.name_male() if sex == "1" else city.fake.name_female()
        phone = city.fake.phone_number()
        people.append({"resident_id": rid, "name": name, "sex": "男" if sex == "1" else "女",
                       "birth_date": birth.isoformat(), "district_code": district,
                       "address": f"安徽省合肥市{HEFEI_DISTRICTS.get(district, DEV_ZONES.get(district))}{city.fake.street_address()}",
                       "phone": phone, "updated_at": city.when()})
    pool = list(range(n))
    t = city.truth
    for i in city.pick(pool, 0.005):
        people[i]["resident_id"] = wrong_check(people[i]["resident_id"], "0123456789X")
        t.add("resident_id_check_digit", "population", "person", "resident_id", people[i]["resident_id"], "quarantine")
    for i in city.pick(pool, 0.003):
        people[i]["district_code"] = city.rng.choice(UNKNOWN_DISTRICTS)
        t.add("unknown_district_code", "population", "person", "district_code", people[i]["resident_id"], "quarantine")
    for i in city.pick(pool, 0.003):
        people[i]["name"] = None
        t.add("null_required", "population", "person", "name", people[i]["resident_id"], "quarantine")
    for i in city.pick(pool, 0.002):
        people[i]["phone"] = "+86" + people[i]["phone"]
        t.add_benign("phone_prefix", "population", "person", "phone", people[i]["resident_id"])
    dupes = []
    for i in city.pick(pool, 0.003):
        extra = dict(people[i])
        older = datetime.strptime(people[i]["updated_at"], "%Y-%m-%d %H:%M:%S") - timedelta(days=3)
        extra["updated_at"] = older.strftime("%Y-%m-%d %H:%M:%S")
        extra["address"] = extra["address"] + "(旧址)"
        dupes.append(extra)
        t.add("duplicate_key", "population", "person", "resident_id", people[i]["resident_id"], "quarantine",
              extra={"resident_id": people[i]["resident_id"], "updated_at": extra["updated_at"]})
    rows = [tuple(p.values()) for p in people + dupes]
    _db(out / "population.db",
        "CREATE TABLE person (resident_id TEXT, name TEXT, sex TEXT, birth_date DATE, district_code TEXT, "
        "address TEXT, phone TEXT, updated_at DATETIME)", "person", rows)
    # Copies elsewhere only use people whose own record is clean.
    return [people[i] for i in pool]


def _enterprise(city: City, out: Path) -> list[dict[str, Any]]:
    n = city.n(4_000)
    firms: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(firms) < n:
        district = city.rng.choice(DISTRICTS)
        code = credit_code(city.rng, district)
        if code in seen:
            continue
        seen.add(code)
        name = city.fake.company()
        if city.rng.random() < 0.3:  # Latin letters and digits in names make width variants possible
            name = f"合肥{city.rng.choice(['ABC', 'IT', 'K12', 'GPS', '5G'])}{name.removeprefix('合肥')}"
        firms.append({"uscc": code, "name": name, "legal_rep": city.fake.name(),
                      "reg_capital": str(Decimal(city.rng.randrange(10_000, 500_000_000)) / 100),
                      "established_on": city.day(date(1990, 1, 1), REFERENCE_DATE).isoformat(),
                      "district_code": district, "status": city.rng.choice(STATUSES),
                      "industry_code": _industry(code), "updated_at": city.when()})
    pool = list(range(n))
    t = city.truth
    for i in city.pick(pool, 0.005):
        firms[i]["uscc"] = wrong_check(firms[i]["uscc"], USCC_ALPHABET)
        t.add("uscc_check_digit", "enterprise", "enterprise", "uscc", firms[i]["uscc"], "quarantine")
    for i in city.pick(pool, 0.003):
        firms[i]["district_code"] = city.rng.choice(UNKNOWN_DISTRICTS)
        t.add("unknown_district_code", "enterprise", "enterprise", "district_code", firms[i]["uscc"], "quarantine")
    for i in city.pick(pool, 0.003):
        firms[i]["name"] = None
        t.add("null_required", "enterprise", "enterprise", "name", firms[i]["uscc"], "quarantine")
    _db(out / "enterprise.db",
        "CREATE TABLE enterprise (uscc TEXT, name TEXT, legal_rep TEXT, reg_capital NUMERIC(18,2), "
        "established_on DATE, district_code TEXT, status TEXT, industry_code TEXT, updated_at DATETIME)", "enterprise",
        [tuple(f.values()) for f in firms])
    return [firms[i] for i in pool]


def _industry(uscc: str) -> str:
    """A 大类 code drawn from the firm's own code: deterministic per firm without consuming the city's random
    stream, so adding the column left every other seeded value as it was."""
    rng = random.Random(uscc)
    return rng.choices(list(INDUSTRIES), weights=list(INDUSTRIES.values()))[0]


def _social_insurance(city: City, out: Path, people: list[dict], firms: list[dict]) -> None:
    insured = city.rng.sample(people, min(len(people), city.n(12_000)))
    rows = []
    for p in insured:
        for itype in city.rng.sample(INSURANCE_TYPES, city.rng.choice((1, 1, 2))):
            rows.append({"resident_id": p["resident_id"], "insurance_type": itype, "name": p["name"],
                         "employer_uscc": city.rng.choice(firms)["uscc"],
                         "monthly_base": str(Decimal(city.rng.randrange(250_000, 3_500_000)) / 100),
                         "start_date": city.day(date(2000, 1, 1), REFERENCE_DATE).isoformat(),
                         "updated_at": city.when()})
    pool = list(range(len(rows)))
    t = city.truth
    for i in city.pick(pool, 0.005):
        r, original = rows[i], rows[i]["name"]
        while r["name"] == original:
            r["name"] = city.fake.name()
        t.add("source_conflict", "social_insurance", "insured", "name", [r["resident_id"], r["insurance_type"]],
              "conflict")
    for i in city.pick(pool, 0.003):
        rows[i]["name"] = f" {rows[i]['name']} "
        t.add_benign("whitespace", "social_insurance", "insured", "name", [rows[i]["resident_id"], rows[i]["insurance_type"]])
    for i in [j for j in pool if rows[j]["resident_id"].endswith("X")][:max(2, int(10 * city.scale))]:
        pool.remove(i)
        rows[i]["resident_id"] = rows[i]["resident_id"][:-1] + "x"
        t.add_benign("lowercase_x", "social_insurance", "insured", "resident_id",
                     [rows[i]["resident_id"], rows[i]["insurance_type"]])
    _db(out / "social_insurance.db",
        "CREATE TABLE insured (resident_id TEXT, insurance_type TEXT, name TEXT, employer_uscc TEXT, "
        "monthly_base NUMERIC(12,2), start_date DATE, updated_at DATETIME)", "insured",
        [tuple(r.values()) for r in rows])


def _housing_fund(city: City, out: Path, people: list[dict], firms: list[dict]) -> None:
    holders = city.rng.sample(people, min(len(people), city.n(8_000)))
    rows = [{"account_no": f"HF{340100000000 + i:012d}", "resident_id": p["resident_id"], "name": p["name"],
             "employer_uscc": city.rng.choice(firms)["uscc"],
             "balance": str(Decimal(city.rng.randrange(0, 50_000_000)) / 100),
             "opened_on": city.day(date(1995, 1, 1), REFERENCE_DATE).isoformat(), "updated_at": city.when()}
            for i, p in enumerate(holders)]
    pool = list(range(len(rows)))
    for i in city.pick(pool, 0.003):
        rows[i]["resident_id"] = _fullwidth(rows[i]["resident_id"])
        city.truth.add_benign("fullwidth", "housing_fund", "account", "resident_id", rows[i]["account_no"])
    _db(out / "housing_fund.db",
        "CREATE TABLE account (account_no TEXT, resident_id TEXT, name TEXT, employer_uscc TEXT, "
        "balance NUMERIC(14,2), opened_on DATE, updated_at DATETIME)", "account", [tuple(r.values()) for r in rows])


def _credit(city: City, out: Path, firms: list[dict]) -> None:
    rows = []
    for i in range(city.n(3_000)):
        f = city.rng.choice(firms)
        rows.append({"record_id": f"XY{2026000000 + i}", "uscc": f["uscc"], "enterprise_name": f["name"],
                     "record_type": city.rng.choice(RECORD_TYPES),
                     "decided_on": city.day(date(2018, 1, 1), REFERENCE_DATE).isoformat(), "updated_at": city.when()})
    by_code = {f["uscc"]: f["name"] for f in firms}
    pool = list(range(len(rows)))
    t = city.truth
    for i in city.pick(pool, 0.005):
        name = rows[i]["enterprise_name"]
        while rows[i]["enterprise_name"] == name:
            rows[i]["enterprise_name"] = city.fake.company()
        t.add("source_conflict", "credit", "credit_record", "enterprise_name", rows[i]["record_id"], "conflict")
    for i in city.pick(pool, 0.004):
        rows[i]["decided_on"] = (REFERENCE_DATE + timedelta(days=city.rng.randrange(1, 400))).isoformat()
        t.add("future_date", "credit", "credit_record", "decided_on", rows[i]["record_id"], "quarantine")
    latin = [i for i in pool if any(c in FULLWIDTH for c in by_code[rows[i]["uscc"]])]
    for i in latin[:max(2, int(8 * city.scale))]:
        rows[i]["enterprise_name"] = _fullwidth(rows[i]["enterprise_name"])
        t.add_benign("fullwidth", "credit", "credit_record", "enterprise_name", rows[i]["record_id"])
    _db(out / "credit.db",
        "CREATE TABLE credit_record (record_id TEXT, uscc TEXT, enterprise_name TEXT, record_type TEXT, "
        "decided_on DATE, updated_at DATETIME)", "credit_record", [tuple(r.values()) for r in rows])


def _poi(city: City, out: Path) -> None:
    import numpy as np

    from pipelines.quality.geo import wgs84_to_gcj02_np

    n = city.n(2_000)
    wgs = [(city.rng.uniform(116.95, 117.55), city.rng.uniform(31.65, 32.05)) for _ in range(n)]  # urban Hefei
    glon, glat = wgs84_to_gcj02_np(np.array([p[0] for p in wgs]), np.array([p[1] for p in wgs]))
    rows = [(f"POI{i:06d}", f"{city.fake.street_name()}{city.rng.choice(POI_CATEGORIES)}",
             city.rng.choice(POI_CATEGORIES), round(float(glon[i]), 6), round(float(glat[i]), 6),
             city.rng.choice(DISTRICTS), city.when()) for i in range(n)]
    _db(out / "poi.db",
        'CREATE TABLE "兴趣点" ("编号" TEXT, "名称" TEXT, "类别" TEXT, "经度" REAL, "纬度" REAL, "区划代码" TEXT, '
        '"更新时间" DATETIME)', "兴趣点", rows)


# --- file drops -----------------------------------------------------------------------------------


def _air_quality(city: City, drops: Path) -> int:
    folder = drops / "air_quality"
    folder.mkdir(parents=True)
    hours = max(6, int(48 * min(city.scale, 1.0)))
    start = datetime.combine(REFERENCE_DATE, datetime.min.time()) - timedelta(hours=hours)
    bad_hour = hours // 2
    for h in range(hours):
        t = start + timedelta(hours=h)
        stations = STATIONS + ([RARE_STATION] if h == 1 else [])
        lines = ["站点编码,站点名称,监测时间,PM2.5,PM10,AQI"]
        for code, name in stations:
            pm25 = round(city.rng.uniform(8, 160), 1)
            lines.append(f"{code},{name},{t:%Y-%m-%d %H:%M:%S},{pm25},{round(pm25 * 1.6, 1)},{int(pm25 * 1.3)}")
        if h == bad_hour:
            lines.insert(4, "340100099,临时点,数据缺失")  # wrong field count: the whole file is rejected
        encoding = "gb18030" if h == 1 else "gbk"
        (folder / f"aq_{t:%Y%m%d%H}.csv").write_bytes(("\r\n".join(lines) + "\r\n").encode(encoding))
        if h == bad_hour:
            city.truth.add("malformed_file", "air_quality", "hourly", "(file)", f"aq_{t:%Y%m%d%H}.csv", "reject_file")
    return hours


def _bus(city: City, drops: Path) -> int:
    import openpyxl

    folder = drops / "bus_ridership"
    folder.mkdir(parents=True)
    lines = [f"{n}路" for n in (1, 2, 10, 11, 26, 126, 129, 150, 226, 301)]
    days = max(2, int(7 * min(city.scale, 1.0)))
    for d in range(days):
        day = REFERENCE_DATE - timedelta(days=days - d)
        out = []
        for line in lines:
            for hour in range(6, 23):
                for stop in range(1, 4):
                    out.append(json.dumps({"line_id": line, "stop_id": f"{line}-{stop:02d}", "date": day.isoformat(),
                                           "hour": hour, "boardings": city.rng.randrange(0, 400)}, ensure_ascii=False))
        (folder / f"ridership_{day:%Y%m%d}.jsonl").write_text("\n".join(out) + "\n", encoding="utf-8")
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "线路"
    sheet.append(["线路编号", "线路名称", "运营单位", "线路长度"])
    for line in lines:
        sheet.append([line, f"合肥公交{line}", city.rng.choice(["合肥公交集团", "合肥巴士"]),
                      round(city.rng.uniform(8, 40), 1)])
    book.save(folder / "route_master.xlsx")
    return days + 1


def seed_city(data_dir: Path, scale: float = 1.0, seed: int = 20261124,
              progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Wipe and rebuild ``data_dir/sources``, ``data_dir/drops`` and ``data_dir/seed_manifest.json``."""
    say = progress or (lambda _m: None)
    sources, drops = data_dir / "sources", data_dir / "drops"
    for d in (sources, drops):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    city = City(scale, seed)
    say("人口 population")
    people = _population(city, sources)
    say("企业 enterprise")
    firms = _enterprise(city, sources)
    say("社保 social_insurance")
    _social_insurance(city, sources, people, firms)
    say("公积金 housing_fund")
    _housing_fund(city, sources, people, firms)
    say("信用 credit")
    _credit(city, sources, firms)
    say("兴趣点 poi")
    _poi(city, sources)
    say("file drops")
    files = {"air_quality": _air_quality(city, drops), "bus_ridership": _bus(city, drops)}
    manifest = data_dir / "seed_manifest.json"
    manifest.write_text(json.dumps(city.truth.to_json(scale, seed), ensure_ascii=False, indent=1), encoding="utf-8")
    systems: dict[str, dict[str, int]] = {}
    for db in sorted(sources.glob("*.db")):
        con = sqlite3.connect(db)
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        systems[db.stem] = {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
        con.close()
    return {"systems": systems, "files": files, "manifest": str(manifest)}


def corrupt_enterprise_uscc(data_dir: Path, updated_at: str, share: float = 0.6) -> int:
    """A mostly bad re-delivery for the write-audit-publish demo and tests: the check character of ``share``
    of the enterprise credit codes is changed and those rows are re-stamped ``updated_at``."""
    con = sqlite3.connect(data_dir / "sources" / "enterprise.db")
    try:
        cur = con.execute("UPDATE enterprise SET uscc = substr(uscc, 1, 17) || CASE WHEN substr(uscc, 18) = '0' "
                          "THEN '1' ELSE '0' END, updated_at = ? WHERE rowid % 100 < ?",
                          (updated_at, round(share * 100)))
        con.commit()
        return cur.rowcount
    finally:
        con.close()
