"""The open-data release of a 10 M-row curated dataset beside DuckDB's own ``COPY … TO`` of the same rows.

    .venv/bin/python benchmarks/open_export.py [--rows 10000000] [--repeat 1] [--data-dir DIR]

Data (generated once per row count and cached under ``--data-dir``, not timed): ``curated.golden_legal_person``
in a scratch lake, shaped as its curated contract (uscc, enterprise_name, legal_representative,
registered_capital, established_on, enterprise_district_code, industry_code, enterprise_status, three credit
counts, field_provenance), with realistic values: unique USCCs (authority 9 + type 1, a Hefei district, a
GB 11714 organisation code, check characters as python-stdnum computes them), company names composed from a
few hundred trade-name characters, Hefei or Anhui prefixes, industry wording per GB/T 4754 门类 and
organisation forms; legal representatives' names from Faker's zh_CN surnames and given-name characters;
registered capital as round 万元 amounts or arbitrary cents; establishment dates skewed to recent years. It is
written through the product's own Iceberg writer (``pipelines.lake.tables.append``) in one commit carrying the
curated build's snapshot summary keys, and its build is recorded ``published`` in ``meta.batches``.

Each row below is one fresh process, timed whole (interpreter start and imports included), peak RSS from the
kernel's accounting of that child (``os.wait4``):
- ``duckdb COPY + sha256``: DuckDB reads the table's own Parquet data files (``read_parquet``), selects the
  released columns and runs three ``COPY … TO``: CSV (HEADER, CRLF), JSON (newline-delimited), Parquet (zstd);
  then the sha256 of the three files (hashlib, streamed) — the release's work except de-identification
  beyond dropping columns, the metadata and the leak scan;
- ``duckdb COPY``: the three COPYs alone;
- ``citylake release``: ``release_open_data(datasets=[golden_legal_person])`` against the scratch lake with
  ``CITYLAKE_EXPORTS_DIR`` in a scratch folder: stream the curated table, de-identify, write the three formats,
  sha256, leak scan, metadata, move into place, ``latest.json``, ``meta.releases``.
Target (issue 10): the release under 60 s on 2 cores with peak RSS ≤ 1 GB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RELEASE_DATE = date(2026, 11, 30)
CHUNK_ROWS = 1_000_000
DATA_VERSION = 2  # bump when the generated data changes: a cached lake of another version is regenerated
TARGET_SECONDS, TARGET_RSS_MB = 60.0, 1024

USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
ORG_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
ORG_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)
USCC_WEIGHTS = [pow(3, i, 31) for i in range(17)]

# Trade-name (字号) characters of the kind registered in Hefei. Deliberately none of 路街巷弄村组号栋幢室苑 or
# 省市区县镇乡: a name with an administrative unit and a street word reads as an address to the leak scan, and
# real enterprise names seldom carry both.
TRADE_CHARS = (
    "华鑫瑞泰恒达兴盛宏源丰德嘉信诚通科创智联合安康顺明辉耀金银天和美佳优品汇聚博远航海洋中东西南北新世纪龙凤"
    "祥云星光阳晨曦春秋夏青绿蓝彩虹宇宙乾坤元亨利贞福禄喜庆吉如意万千百亿众志成广厚弘毅立义仁礼勤俭朴实精工匠艺"
    "巧思维力量能动势基石峰岭川江河湖泉溪林森松柏竹梅兰菊荷莲桂樟榕杨柳枫桐楠樱桃杏橙徽皖淝庐巢包蜀肥瑶滨润泽"
    "鸿鹏鹰骏腾跃驰骋翔凌霄云飞扬帆启航锦绣韵雅致尚品卓越领先锐捷迅敏睿哲慧灵秀清澄朗晴旭昊昕晟昱曜炜烨焱鼎"
    "盈裕隆昌茂荣旺富贵豪杰英俊贤良善友邦域际环球亚欧美澳非"
)
REGION_PREFIXES = (("合肥", 0.72), ("安徽", 0.2), ("", 0.08))
ORG_FORMS = (("有限公司", 0.62), ("有限责任公司", 0.2), ("股份有限公司", 0.04), ("有限公司蜀山分公司", 0.03),
             ("有限公司包河分公司", 0.03), ("有限公司高新分公司", 0.03), ("有限公司经开分公司", 0.02),
             ("有限公司庐阳分公司", 0.02), ("有限公司瑶海分公司", 0.01))
# GB/T 4754-2017 门类: (大类 codes, share of Hefei's registered enterprises (rough), wording in names).
SECTIONS = {
    "A": (range(1, 6), 2.0, ("农业科技", "生态农业", "种植专业", "养殖", "农业开发", "苗木")),
    "B": (range(6, 13), 0.2, ("矿业", "石材")),
    "C": (range(13, 44), 9.0, ("机械制造", "电子科技", "新材料", "食品", "汽车零部件", "塑胶制品", "服饰", "家具",
                               "医疗器械", "光电科技", "智能装备", "包装材料")),
    "D": (range(44, 47), 0.8, ("新能源", "电力工程", "燃气", "水务")),
    "E": (range(47, 51), 7.0, ("建筑工程", "建设工程", "装饰工程", "安装工程", "劳务")),
    "F": (range(51, 53), 36.0, ("商贸", "贸易", "电子商务", "医药", "五金", "建材", "食品销售", "汽车销售", "百货")),
    "G": (range(53, 61), 4.0, ("物流", "运输", "供应链管理", "货运代理", "快递")),
    "H": (range(61, 63), 4.0, ("餐饮管理", "酒店管理", "餐饮服务")),
    "I": (range(63, 66), 6.0, ("信息技术", "软件", "网络科技", "数据科技", "通信技术")),
    "J": (range(66, 70), 1.5, ("投资管理", "融资担保", "商业保理")),
    "K": (range(70, 71), 3.0, ("房地产开发", "物业管理", "房地产经纪")),
    "L": (range(71, 73), 13.0, ("企业管理咨询", "广告", "人力资源", "商务咨询", "会务服务", "文化传媒")),
    "M": (range(73, 76), 9.0, ("科技", "检测技术", "设计", "工程技术咨询", "生物科技")),
    "N": (range(76, 80), 1.0, ("环保科技", "园林绿化", "水利工程")),
    "O": (range(80, 83), 2.5, ("家政服务", "美容美发", "汽车维修", "保洁服务")),
    "P": (range(83, 84), 1.0, ("教育科技", "文化艺术培训")),
    "Q": (range(84, 86), 0.8, ("健康管理", "医疗")),
    "R": (range(86, 91), 3.0, ("文化传播", "影视", "体育发展", "旅游发展")),
    "S": (range(91, 97), 0.1, ("服务",)),
}
STATUSES = (("1", 0.60), ("2", 0.20), ("3", 0.05), ("4", 0.13), ("5", 0.02))  # code_lists/enterprise_status.csv
CAPITAL_WAN = ((1, 2), (3, 3), (5, 5), (10, 12), (20, 6), (30, 5), (50, 10), (100, 20), (200, 8), (300, 5),
               (500, 9), (1000, 8), (2000, 3), (5000, 2), (10000, 2))  # 万元, weight
DATA_COLUMNS = ["uscc", "enterprise_name", "legal_representative", "registered_capital", "established_on",
                "enterprise_district_code", "industry_code", "enterprise_status", "credit_red_count",
                "credit_black_count", "credit_watch_count"]


# --- data -------------------------------------------------------------------------------------------

def _weights(pairs: tuple) -> tuple[list, list[float]]:
    values = [v for v, _ in pairs]
    total = sum(w for _, w in pairs)
    return values, [w / total for _, w in pairs]


def _usccs(rng, n: int, districts: list[str], district_p):  # noqa: ANN001, ANN202
    """n unique USCCs as an (n, 18) byte matrix, sorted (the curated build orders rows by its primary key):
    ``91`` + a district + an organisation code (8 characters by an affine permutation of the row number, so
    unique without a set) + its GB 11714 check + the GB 32100 check (python-stdnum's arithmetic)."""
    import numpy as np

    space = 31 ** 8
    x = (rng.permutation(n).astype(np.int64) * 387_420_489 + 123_456_789) % space  # 3^18: coprime to 31
    body = np.empty((n, 8), dtype=np.int64)  # values in the USCC alphabet
    for j in range(7, -1, -1):
        body[:, j] = x % 31
        x //= 31
    alphabet = np.frombuffer(USCC_ALPHABET.encode(), np.uint8)
    chars = alphabet[body]
    del body
    org_values = np.where(chars <= ord("9"), chars - ord("0"), chars - ord("A") + 10)  # 36-character alphabet
    check = 11 - (org_values @ np.array(ORG_WEIGHTS)) % 11
    del org_values
    out = np.empty((n, 18), dtype=np.uint8)
    out[:, :2] = np.frombuffer(b"91", np.uint8)
    district_idx = rng.choice(len(districts), n, p=district_p)
    out[:, 2:8] = np.frombuffer("".join(districts).encode(), np.uint8).reshape(-1, 6)[district_idx]
    out[:, 8:16] = chars
    out[:, 16] = np.where(check == 10, ord("X"), np.where(check == 11, ord("0"), check + ord("0")))
    lookup = np.full(256, -1, dtype=np.int64)
    lookup[alphabet] = np.arange(31)
    for lo in range(0, n, CHUNK_ROWS):  # int64 values of 17 columns at once would be 1.4 GB at 10 M rows
        part = out[lo:lo + CHUNK_ROWS]
        part[:, 17] = alphabet[(31 - (lookup[part[:, :17]] @ np.array(USCC_WEIGHTS)) % 31) % 31]
    return np.sort(out.view("S18").ravel()).view(np.uint8).reshape(n, 18)


def _pick(rng, values: list, p: list[float] | None, n: int):  # noqa: ANN001, ANN202
    import pyarrow as pa

    return pa.array(values).take(pa.array(rng.choice(len(values), n, p=p)))


def _null_where(mask, arr):  # noqa: ANN001, ANN202
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.if_else(pa.array(mask), pa.scalar(None, arr.type), arr)


def make_chunk(rng, codes, provenance: list[str], schema, build_id: str):  # noqa: ANN001, ANN202
    """Golden legal-person rows for a slice of the sorted USCCs (see the module docstring), in ``schema``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    from faker.providers.person.zh_CN import Provider as Names

    n = len(codes)
    uscc = pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(np.arange(0, 18 * n + 1, 18, dtype=np.int32)),
                                                  pa.py_buffer(np.ascontiguousarray(codes).tobytes())])
    district = pc.utf8_slice_codeunits(uscc, 2, 8)  # the registration authority's district
    sections = list(SECTIONS)
    section_p = np.array([SECTIONS[s][1] for s in sections])
    section_idx = rng.choice(len(sections), n, p=section_p / section_p.sum())
    industry = np.empty(n, dtype=np.int64)
    phrase = np.empty(n, dtype=object)
    for k, s in enumerate(sections):
        mask = section_idx == k
        codes_in, _share, words = SECTIONS[s]
        industry[mask] = rng.choice(np.array(list(codes_in)), int(mask.sum()))
        phrase[mask] = np.array(words, dtype=object)[rng.integers(0, len(words), int(mask.sum()))]
    industry_code = _null_where(rng.random(n) < 0.01, pa.array(np.char.zfill(industry.astype(str), 2)))

    length = rng.choice([2, 3, 4], n, p=[0.8, 0.15, 0.05])
    parts = [_pick(rng, *_weights(REGION_PREFIXES), n)]
    for position in range(4):
        parts.append(_null_where(length <= position, _pick(rng, list(TRADE_CHARS), None, n)))
    parts += [pa.array(phrase, pa.string()), _pick(rng, *_weights(ORG_FORMS), n)]
    name = pc.binary_join_element_wise(*parts, "", null_handling="skip")

    surnames = list(Names.last_names)[:120]  # the common ones, Faker's order
    given = list(Names.first_names)
    legal_rep = pc.binary_join_element_wise(
        _pick(rng, surnames, None, n), _pick(rng, given, None, n),
        _null_where(rng.random(n) >= 0.7, _pick(rng, given, None, n)), "", null_handling="skip")

    wan, wan_p = _weights(CAPITAL_WAN)
    round_cents = np.array(wan, dtype=np.int64)[rng.choice(len(wan), n, p=wan_p)] * 1_000_000
    odd_cents = np.exp(rng.normal(np.log(3e8), 2.0, n)).astype(np.int64).clip(10_000, 10**15)
    cents = np.where(rng.random(n) < 0.75, round_cents, odd_cents)
    words = np.zeros((n, 2), dtype=np.int64)  # decimal128 storage: little-endian 128-bit unscaled value
    words[:, 0] = cents
    capital = pa.Array.from_buffers(pa.decimal128(18, 2), n, [None, pa.py_buffer(words.tobytes())])
    capital = _null_where(rng.random(n) < 0.02, capital)

    end = np.datetime64("2026-11-29")
    age = np.minimum(rng.exponential(6.0 * 365, n).astype(np.int64), (end - np.datetime64("1984-01-01")).astype(int))
    established = _null_where(rng.random(n) < 0.005, pa.array(end - age.astype("timedelta64[D]")).cast(pa.date32()))

    # provenance (golden_legal_person.sql): the registration everywhere (0), the name from the credit copy where
    # the registration has none (1), a legal person only the credit records know (2: registration fields null)
    draw = rng.random(n)
    kind = np.where(draw < 0.005, 2, np.where(draw < 0.015, 1, 0))
    credit_only = kind == 2
    columns = {
        "uscc": uscc,
        "enterprise_name": name,
        "legal_representative": _null_where(credit_only, legal_rep),
        "registered_capital": _null_where(credit_only, capital),
        "established_on": _null_where(credit_only, established),
        "enterprise_district_code": _null_where(credit_only, district),
        "industry_code": _null_where(credit_only, industry_code),
        "enterprise_status": _null_where(credit_only, _pick(rng, *_weights(STATUSES), n)),
        "credit_red_count": pa.array(rng.poisson(0.06, n).astype(np.int64) + credit_only),
        "credit_black_count": pa.array((rng.random(n) < 0.004).astype(np.int64) * rng.integers(1, 3, n)),
        "credit_watch_count": pa.array(rng.poisson(0.02, n).astype(np.int64)),
        "field_provenance": pa.array(provenance).take(pa.array(kind)),
        "_batch_id": pa.repeat(pa.scalar(build_id), n),
        "_warnings": pa.nulls(n, pa.list_(pa.string())),
    }
    return pa.table({f.name: columns[f.name].cast(f.type) for f in schema}, schema=schema)


def _provenance(inputs: dict[str, int]) -> list[str]:
    """field_provenance as golden_legal_person.sql writes it (DuckDB ``to_json`` of a struct: compact, struct
    order), for the three kinds of row ``make_chunk`` draws."""
    def source(table: str, column: str) -> dict:
        system = {"enterprise": "enterprise", "credit_record": "credit"}[table]
        authoritative = table == "enterprise" or column == "credit_record_type"
        return {"system": system, "table": table, "dataset": table, "snapshot": inputs[f"std.{table}"],
                "authoritative": authoritative}

    registration = DATA_COLUMNS[:8]
    counts = {c: source("credit_record", "credit_record_type") for c in DATA_COLUMNS[8:]}
    base = {**{c: source("enterprise", c) for c in registration}, **counts}
    name = {**base, "enterprise_name": source("credit_record", "enterprise_name")}
    credit_only = {**dict.fromkeys(registration), "uscc": source("credit_record", "uscc"),
                   "enterprise_name": source("credit_record", "enterprise_name"), **counts}
    return [json.dumps(v, ensure_ascii=False, separators=(",", ":")) for v in (base, name, credit_only)]


def golden_chunks(rng, rows: int, schema, build_id: str, inputs: dict[str, int]):  # noqa: ANN001, ANN201
    import numpy as np

    from pipelines.seed.ids import DEV_ZONES, HEFEI_DISTRICTS

    provenance = _provenance(inputs)
    districts = [*HEFEI_DISTRICTS, *DEV_ZONES]  # registrations by district, roughly Hefei's
    district_p = np.array([9, 8, 12, 11, 3, 4, 4, 2, 2, 14, 8, 5], dtype=float)[:len(districts)]
    codes = _usccs(rng, rows, districts, district_p / district_p.sum())
    for start in range(0, rows, CHUNK_ROWS):
        yield make_chunk(rng, codes[start:start + CHUNK_ROWS], provenance, schema, build_id)


# POI names: a place-like stem (an area or road name without the road word) and a category's wording.
PLACE_STEMS = (
    "长江", "翡翠", "天鹅湖", "政务", "琥珀", "南七", "三孝口", "四牌楼", "逍遥津", "包公", "滨湖", "大蜀山", "董铺",
    "大圩", "义城", "烟墩", "骆岗", "双岗", "杏花", "亳州", "淮河", "金寨", "黄山", "芜湖", "宁国", "望江", "繁华",
    "锦绣", "云谷", "创新", "科学", "习友", "玉兰", "枫林", "香樟", "梅山", "稻香", "花冲", "青阳", "紫蓬", "三河",
    "上派", "桃花", "撮镇", "店埠", "水湖", "双墩", "下塘", "庐城", "汤池", "柘皋", "槐林", "中垾", "黄麓", "烔炀",
    "高刘", "姚公", "马鞍", "安居", "和平", "胜利", "光明", "幸福", "红星", "曙光", "明珠", "望湖", "临湖", "望岳",
    "海恒", "莲花", "芙蓉", "丹霞", "碧桂", "万达", "新城", "北城", "南岗", "西园", "东方", "徽州", "铜陵", "寿春",
)
POI_WORDING = {  # code_lists/poi_category.csv: code → (share, wording)
    "EDU": (30, ("小学", "中学", "幼儿园", "实验学校", "第一小学", "第二中学", "职业技术学校", "外国语学校", "实验小学")),
    "MED": (18, ("社区卫生服务中心", "医院", "中医院", "口腔医院", "妇幼保健院", "卫生院", "康复医院", "门诊部")),
    "PRK": (14, ("公园", "湿地公园", "游园", "森林公园", "口袋公园", "生态园")),
    "MTR": (3, ("站", "东站", "西站", "南站", "北站")),
    "GOV": (8, ("政务服务中心", "便民服务中心", "社区服务中心", "政务服务站")),
    "LIB": (7, ("图书馆", "图书馆分馆", "城市阅读空间", "书房", "社区图书室")),
    "SPT": (20, ("体育馆", "体育中心", "游泳馆", "羽毛球馆", "全民健身中心", "篮球馆", "网球中心", "足球场")),
}
DISTRICT_CENTRES = {  # WGS-84 (lon, lat, spread in degrees) of each Hefei district's built-up area, rough
    "340102": (117.34, 31.87, 0.04), "340103": (117.25, 31.90, 0.04), "340104": (117.21, 31.84, 0.05),
    "340111": (117.31, 31.79, 0.06), "340121": (117.17, 32.48, 0.10), "340122": (117.47, 31.88, 0.12),
    "340123": (117.16, 31.72, 0.12), "340124": (117.29, 31.26, 0.12), "340181": (117.87, 31.62, 0.12),
    "340171": (117.13, 31.83, 0.03), "340172": (117.21, 31.77, 0.03), "340173": (117.37, 31.93, 0.03),
}


def poi_chunks(rng, rows: int, schema, build_id: str, inputs: dict[str, int]):  # noqa: ANN001, ANN201
    """Points of interest in Hefei: ids sorted (the build orders by key), place-like names of the category,
    WGS-84 coordinates around each district's centre (6 decimals), the district code the point lies in."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = np.sort((rng.permutation(rows).astype(np.int64) * 7_368_787 + 1_000_003) % 10**9)  # unique, gapped
    centres = list(DISTRICT_CENTRES.values())
    weights = np.array([12, 10, 13, 13, 4, 6, 6, 4, 4, 12, 8, 8], dtype=float)
    codes = list(POI_WORDING)
    code_p = np.array([POI_WORDING[c][0] for c in codes], dtype=float)
    short = {"340102": "瑶海", "340103": "庐阳", "340104": "蜀山", "340111": "包河", "340121": "长丰", "340122": "肥东",
             "340123": "肥西", "340124": "庐江", "340181": "巢湖", "340171": "高新", "340172": "经开", "340173": "新站"}
    for start in range(0, rows, CHUNK_ROWS):
        n = min(CHUNK_ROWS, rows - start)
        district = rng.choice(len(centres), n, p=weights / weights.sum())
        lon0, lat0, spread = (np.array([c[k] for c in centres])[district] for k in range(3))
        category = rng.choice(len(codes), n, p=code_p / code_p.sum())
        wording = np.empty(n, dtype=object)
        for k, c in enumerate(codes):
            mask = category == k
            wording[mask] = np.array(POI_WORDING[c][1], dtype=object)[rng.integers(0, len(POI_WORDING[c][1]), int(mask.sum()))]
        prefix = np.array(["合肥", "合肥市", ""] + [short[d] for d in DISTRICT_CENTRES], dtype=object)
        prefix_idx = np.where(rng.random(n) < 0.5, 2, np.where(rng.random(n) < 0.5,
                                                               rng.integers(0, 2, n), 3 + district))
        branch = np.where(rng.random(n) < 0.08, rng.choice(np.array(["（东区）", "（西区）", "（南校区）", "（北校区）",
                                                                      "（分院）", "（二期）"], dtype=object), n), "")
        name = pc.binary_join_element_wise(
            pa.array(prefix[prefix_idx], pa.string()), _pick(rng, list(PLACE_STEMS), None, n),
            pa.array(wording, pa.string()), pa.array(branch, pa.string()), "")
        table = {
            "poi_id": pa.array(np.char.add("P", np.char.zfill(ids[start:start + n].astype(str), 9))),
            "poi_name": name,
            "poi_category": _null_where(rng.random(n) < 0.01, pa.array(np.array(codes)[category])),
            "longitude": pa.array(np.round(lon0 + rng.normal(0, 1, n) * spread, 6)),
            "latitude": pa.array(np.round(lat0 + rng.normal(0, 1, n) * spread * 0.8, 6)),
            "poi_district_code": _null_where(rng.random(n) < 0.005, pa.array(np.array(list(DISTRICT_CENTRES))[district])),
            "crs": pa.repeat(pa.scalar("WGS-84"), n),
            "_batch_id": pa.repeat(pa.scalar(build_id), n),
            "_warnings": pa.nulls(n, pa.list_(pa.string())),
        }
        yield pa.table({f.name: table[f.name].cast(f.type) for f in schema}, schema=schema)


SHAPES = {"golden_legal_person": golden_chunks, "poi_wgs84": poi_chunks}


def generate(data: Path, rows: int, dataset: str) -> dict:
    """``curated.<dataset>`` in a scratch lake under ``data`` as the curate runner leaves it after a passing
    build (same schema, key order, table properties, snapshot summary and ``meta.batches`` event), and the facts
    the runs need."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from stdnum.cn import uscc

    os.environ["CITYLAKE_LAKE_DIR"] = str(data / "lake")
    from pipelines.config import load_all
    from pipelines.curate.runner import (
        BUILD_ID,
        CURATED_PROPS,
        DEFINITION,
        INPUTS,
        build_id_of,
        definition_hash,
        model_sql,
        target_schema,
    )
    from pipelines.lake.catalog import get_catalog
    from pipelines.lake.meta import append_events
    from pipelines.lake.raw import PUBLISHED_BATCHES, open_table
    from pipelines.lake.tables import append
    from pipelines.settings import load_settings

    shutil.rmtree(data / "lake", ignore_errors=True)
    data.mkdir(parents=True, exist_ok=True)
    settings = load_settings()
    config = load_all(settings)
    contract = config.curated[dataset]
    schema = target_schema(contract, config.standards) \
        .append(pa.field("_batch_id", pa.string())).append(pa.field("_warnings", pa.list_(pa.string())))
    rng = np.random.default_rng(20261130)
    inputs = {name: int(rng.integers(10**17, 9 * 10**18)) for name in sorted(contract.inputs)}
    definition = definition_hash(settings, contract, model_sql(contract))
    build_id = build_id_of(inputs, definition)
    run_id = "bench__open_export"
    staged = data / "staged.parquet"
    writer = None
    for chunk in SHAPES[dataset](rng, rows, schema, build_id, inputs):
        if writer is None and "uscc" in chunk.column_names:  # the check characters are stdnum's
            sample = chunk.column("uscc").to_pylist()[::500]
            assert all(uscc.is_valid(c) for c in sample), "generated USCC fails python-stdnum"
        writer = writer or pq.ParquetWriter(staged, chunk.schema, compression="lz4")
        writer.write_table(chunk, row_group_size=128 * 1024)
    assert writer is not None
    writer.close()
    catalog = get_catalog(settings)
    props = {BUILD_ID: build_id, INPUTS: json.dumps(inputs, sort_keys=True),
             DEFINITION: definition, PUBLISHED_BATCHES: json.dumps([build_id]),
             "citylake.run-id": run_id}
    append(catalog, contract.table, staged, props=props, properties=CURATED_PROPS)
    staged.unlink()
    table = open_table(catalog, contract.table)
    assert table is not None
    snapshot = table.current_snapshot()
    append_events(catalog, [{"dataset": dataset, "raw_batch_id": build_id, "run_id": run_id, "status": "published",
                             "extracted": rows, "published": rows, "quarantined": 0, "held": 0,
                             "std_snapshot_id": snapshot.snapshot_id, "detail": "[]", "reason": None}])
    files = [task.file.file_path.removeprefix("file://") for task in table.scan().plan_files()]
    facts = {"version": DATA_VERSION, "dataset": dataset, "rows": rows, "files": files,
             "columns": table.schema().column_names, "build_id": build_id, "snapshot_id": snapshot.snapshot_id,
             "bytes": sum(Path(f).stat().st_size for f in files)}
    (data / "facts.json").write_text(json.dumps(facts, indent=1))
    return facts


def released_columns(dataset: str) -> list[str]:
    """The columns the release writes: the curated contract's open columns (``deid`` other than drop)."""
    from pipelines.config import load_curated
    from pipelines.settings import load_settings

    return [c.name for c in load_curated(load_settings())[dataset].open_columns()]


# --- the measured children ----------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def run_duckdb(data: Path, out: Path, columns: list[str], checksums: bool) -> dict:
    import duckdb

    facts = json.loads((data / "facts.json").read_text())
    dataset = facts["dataset"]
    files = "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in facts["files"]) + "]"
    select = f"SELECT {', '.join(chr(34) + c + chr(34) for c in columns)} FROM read_parquet({files})"
    con = duckdb.connect()
    steps: dict[str, float] = {}
    rows: dict[str, int] = {}
    targets = {"csv": (out / f"{dataset}.csv", "FORMAT csv, HEADER, NEW_LINE '\\r\\n'"),
               "jsonl": (out / f"{dataset}.jsonl", "FORMAT json"),
               "parquet": (out / f"{dataset}.parquet", "FORMAT parquet, COMPRESSION zstd")}
    for name, (path, options) in targets.items():
        t0 = time.perf_counter()
        rows[name] = con.execute(f"COPY ({select}) TO '{path}' ({options})").fetchone()[0]
        steps[name] = time.perf_counter() - t0
    if checksums:
        t0 = time.perf_counter()
        for path, _ in targets.values():
            _sha256(path)
        steps["sha256"] = time.perf_counter() - t0
    return {"steps": steps, "rows": rows["csv"], "files": {k: p.stat().st_size for k, (p, _) in targets.items()},
            "status": "ok" if len(set(rows.values())) == 1 else f"row counts differ {rows}"}


def run_release(data: Path, out: Path) -> dict:
    from pipelines.publish.release import release_open_data

    dataset = json.loads((data / "facts.json").read_text())["dataset"]
    t0 = time.perf_counter()
    result = release_open_data(datasets=[dataset], release_date=RELEASE_DATE, run_id=f"bench__{out.name}")
    seconds = time.perf_counter() - t0
    files = {p.suffix.lstrip("."): p.stat().st_size for p in out.rglob(f"{dataset}.*") if p.is_file()}
    return {"steps": {"release_open_data": seconds}, "result": _plain(result), "files": files}


def _plain(value: object) -> object:
    """The release's result as JSON-able data, whatever its shape."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "__dataclass_fields__"):
        import dataclasses

        return _plain(dataclasses.asdict(value))  # type: ignore[call-overload]
    return value if isinstance(value, int | float | str | bool | type(None)) else str(value)


def child(kind: str, data: Path, out: Path, columns: list[str]) -> None:
    started = time.perf_counter()
    if kind == RELEASE:
        result = run_release(data, out)
    else:
        result = run_duckdb(data, out, columns, checksums=kind == DUCKDB_SUM)
    print(json.dumps({**result, "inner": time.perf_counter() - started}, default=str))


# --- the parent -----------------------------------------------------------------------------------------

DUCKDB_SUM, DUCKDB, RELEASE = "duckdb COPY + sha256", "duckdb COPY", "citylake release"


def spawn(kind: str, data: Path, out: Path, columns: list[str]) -> dict:
    """One child process: wall seconds from spawn to exit, its own peak RSS (``wait4``), its JSON line."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, "CITYLAKE_LAKE_DIR": str(data / "lake"), "CITYLAKE_EXPORTS_DIR": str(out)}
    log = out.parent / f"{out.name}.log"
    with log.open("w") as stdout, (out.parent / f"{out.name}.err").open("w") as stderr:
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, __file__, "--child", kind, str(data), str(out), json.dumps(columns)],
                                stdout=stdout, stderr=stderr, env=env)
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    shutil.rmtree(out, ignore_errors=True)  # gigabytes per run
    if proc.returncode:
        tail = (out.parent / f"{out.name}.err").read_text().strip().splitlines()[-3:]
        return {"failed": " | ".join(tail)}
    result = json.loads(log.read_text().strip().splitlines()[-1])
    return {**result, "wall": wall, "rss_mb": usage.ru_maxrss / 1024}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), json.loads(sys.argv[5]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--generate":
        print(json.dumps(generate(Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4])))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--columns":
        print(json.dumps(released_columns(sys.argv[2])))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--dataset", choices=sorted(SHAPES), default="poi_wgs84")
    ap.add_argument("--repeat", type=int, default=1, help="interleaved repetitions; the median is reported")
    ap.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "citylake-bench-open-export",
                    help="where the generated lake is cached (one folder per dataset and row count) and the runs "
                         "write (their output is deleted after each run)")
    ap.add_argument("--skip", action="append", default=[], choices=[DUCKDB_SUM, DUCKDB, RELEASE],
                    help="leave a method out (repeatable)")
    args = ap.parse_args()
    data = args.data_dir.resolve() / f"{args.dataset}-{args.rows}"
    facts_path = data / "facts.json"
    facts = json.loads(facts_path.read_text()) if facts_path.exists() else None
    if not facts or facts.get("version") != DATA_VERSION or not all(Path(f).exists() for f in facts["files"]):
        # In a process of its own: a child's peak RSS (wait4) starts from the parent's at the fork, so the
        # parent stays small (standard library only).
        t0 = time.perf_counter()
        done = subprocess.run([sys.executable, __file__, "--generate", str(data), str(args.rows), args.dataset],
                              stdout=subprocess.PIPE, text=True, check=True)
        facts = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"generated curated.{args.dataset}: {args.rows:,} rows, {len(facts['files'])} data files, "
              f"{facts['bytes'] / 1e6:,.0f} MB in {time.perf_counter() - t0:.0f} s ({data})", flush=True)
    else:
        print(f"reusing curated.{args.dataset}: {facts['rows']:,} rows, {len(facts['files'])} data files, "
              f"{facts['bytes'] / 1e6:,.0f} MB ({data})", flush=True)
    done = subprocess.run([sys.executable, __file__, "--columns", args.dataset], stdout=subprocess.PIPE, text=True,
                          check=True)
    columns = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"released columns (schemas/curated/{args.dataset}.yml): {', '.join(columns)}", flush=True)

    methods = [m for m in (DUCKDB_SUM, DUCKDB, RELEASE) if m not in args.skip]
    runs: dict[str, list[dict]] = {m: [] for m in methods}
    for rep in range(args.repeat):
        order = methods[rep % len(methods):] + methods[:rep % len(methods)]  # rotate: no side always first
        for kind in order:
            r = spawn(kind, data, data / "out" / kind.replace(" ", "_").replace("+", "and"), columns)
            runs[kind].append(r)
            shown = r.get("failed") or f"{r['wall']:.2f} s, {r['rss_mb']:.0f} MB"
            print(f"  rep {rep + 1} {kind}: {shown}", flush=True)
    report(runs, facts["rows"])
    parent = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"(peak RSS of this parent process: {parent:.0f} MB, the floor of every child's figure)")


def report(runs: dict[str, list[dict]], rows: int) -> None:
    ok = {k: [r for r in v if "failed" not in r] for k, v in runs.items()}
    median = {k: (statistics.median(r["wall"] for r in v), statistics.median(r["rss_mb"] for r in v))
              for k, v in ok.items() if v}
    base = median.get(DUCKDB_SUM, (None,))[0]
    print(f"\n{'method':<22} {'rows':>11} {'seconds':>8} {'rows/s':>11} {'peak RSS MB':>12} {'× DuckDB':>9}  reps")
    for kind, v in runs.items():
        if kind not in median:
            print(f"{kind:<22} FAILED: {v[0]['failed']}")
            continue
        seconds, rss = median[kind]
        ratio = f"{base / seconds:>9.2f}" if base else f"{'':>9}"
        reps = ", ".join(f"{r['wall']:.1f}s/{r['rss_mb']:.0f}" for r in v) if len(v) > 1 else ""
        print(f"{kind:<22} {rows:>11,} {seconds:>8.2f} {rows / seconds:>11,.0f} {rss:>12,.0f} {ratio}  {reps}")
    print()
    for kind, v in ok.items():
        last = v[-1]
        steps = ", ".join(f"{k} {s:.2f}" for k, s in last["steps"].items())
        sizes = ", ".join(f"{k} {b / 1e6:,.0f} MB" for k, b in sorted(last.get("files", {}).items()))
        print(f"{kind}: {steps} s (in-process {last['inner']:.2f} s of {last['wall']:.2f}); files {sizes}")
        if kind == RELEASE:
            for d in last["result"].get("datasets", []):
                steps = ", ".join(f"{k} {v:.2f}" for k, v in d.get("seconds", {}).items())
                print(f"  {d['dataset']}: {d['status']}, {d['rows']:,} rows, leak hits {d.get('leak_counts') or 0}; "
                      f"steps (s): {steps}" + (f"; {d['reason']}" if d.get("reason") else ""))
    if RELEASE in median:
        seconds, rss = median[RELEASE]
        verdict = "OK" if seconds < TARGET_SECONDS and rss <= TARGET_RSS_MB else "MISSED"
        print(f"\ntarget: release of {rows:,} rows < {TARGET_SECONDS:.0f} s on 2 cores, peak RSS ≤ 1 GB: "
              f"{seconds:.1f} s, {rss:,.0f} MB — {verdict}")


if __name__ == "__main__":
    main()
