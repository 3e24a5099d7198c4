"""Departmental sharing: an incremental delivery of a 10 M-row dataset with 1 % changed rows, beside a
full delivery of the same rows, in one run on the same lake.

    .venv/bin/python benchmarks/share_delivery.py [--rows 10000000] [--changed 0.01] [--repeat 1]

Set-up (not timed): 10 M resident rows with realistic values (random names from common surnames and
given-name characters, random street addresses and mobiles, valid check digits) land as one raw batch of
``raw.population__person`` in a scratch lake and go through the write-audit-publish gate to ``std.person``.
Consumer A (市场监督管理局) gets its first (full) delivery. Then 1 % of the residents change address and mobile
and 0.1 % are deleted at the source: a second raw batch, published by the gate (which records the deleted
keys). Timed, each a fresh process (imports, catalog, audit included), peak RSS from ``getrusage``:
- ``incremental``: consumer A's second delivery: only the changed rows (std scan filtered on the new
  batch's ``_batch_id``) plus the deletions file;
- ``full``: consumer B's (住房公积金中心) first delivery of the same std snapshot: every row.
Both grants deliver files (Parquet + CSV + manifest with SHA-256) and de-identify the same way: resident ID
as a keyed pseudonym (HMAC-SHA256), name, address and mobile masked. Target: incremental < 20 s,
peak RSS ≤ 1 GB on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# One grant per (consumer, dataset, delivery): each repetition delivers to departments of its own.
CONSUMERS_A = ["113401000030022204", "11340100003003338T", "11340100003001113F"]  # 市场监管局, 生态环境局, 公安局
CONSUMERS_B = ["123401004850066616", "11340100003004445F", "113401000030055524"]  # 公积金中心, 交通运输局, 发改委
DAY = date(2026, 11, 20)
SURNAMES = list("王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈"
                "姚卢姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤")
GIVEN = list("伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英华玉梅建国红志文斌海波宇浩然子涵欣怡梓萱"
             "一诺雨桐思远嘉懿晨曦俊杰佳琪鑫淼昊天睿泽瑾瑜若曦安琪振华永健德明春生秋菊冬梅晓东雪松立新")
ROADS = ["长江西路", "徽州大道", "金寨路", "望江西路", "黄山路", "繁华大道", "蒙城路", "阜阳路", "马鞍山路", "包河大道",
         "潜山路", "合作化路", "创新大道", "天智路", "习友路", "翡翠路", "紫云路", "宿松路", "芜湖路", "淮河路"]
DISTRICTS = {"340102": "瑶海区", "340103": "庐阳区", "340104": "蜀山区", "340111": "包河区", "340121": "长丰县"}
COLUMNS = ["resident_id", "person_name", "sex_code", "birth_date", "residence_district_code", "residence_address",
           "mobile_phone", "person_updated_at"]
SOURCE_NAMES = {"resident_id": "resident_id", "person_name": "name", "sex_code": "sex", "birth_date": "birth_date",
                "residence_district_code": "district_code", "residence_address": "address", "mobile_phone": "phone",
                "person_updated_at": "updated_at"}


def realistic(batch, rng):  # noqa: ANN001, ANN201 — pyarrow/numpy types, imported lazily
    """Replace validate_resident's few repeated names and addresses with high-cardinality realistic ones."""
    import numpy as np
    import pyarrow as pa

    n = batch.num_rows
    sur = np.array(SURNAMES)[rng.integers(0, len(SURNAMES), n)]
    g1 = np.array(GIVEN)[rng.integers(0, len(GIVEN), n)]
    g2 = np.where(rng.random(n) < 0.7, np.array(GIVEN)[rng.integers(0, len(GIVEN), n)], "")
    names = np.char.add(np.char.add(sur, g1), g2)
    codes = batch.column("residence_district_code").to_numpy(zero_copy_only=False).astype(str)
    district = np.vectorize(lambda c: DISTRICTS.get(c, "蜀山区"))(codes)
    road = np.array(ROADS)[rng.integers(0, len(ROADS), n)]
    number = rng.integers(1, 2000, n).astype(str)
    room = rng.integers(101, 3299, n).astype(str)
    address = np.char.add(np.char.add(np.char.add(np.char.add(np.char.add("安徽省合肥市", district), road), number),
                                      "号"), np.char.add(room, "室"))
    mobile = np.char.add(np.array(["138", "139", "150", "151", "187", "189", "133", "177"])[rng.integers(0, 8, n)],
                         np.char.zfill(rng.integers(0, 10**8, n).astype(str), 8))
    cols = {c: batch.column(c) for c in COLUMNS}
    cols.update(person_name=pa.array(names), residence_address=pa.array(address), mobile_phone=pa.array(mobile))
    return cols


def _writer(catalog, schema, batch_id: str):  # noqa: ANN001, ANN202
    from pipelines.lake.raw import RawWriter, TableState, open_table

    table = open_table(catalog, "raw.population__person")
    state = TableState.of(table) if table is not None else TableState()
    writer = RawWriter(catalog, "raw.population__person", schema, batch_id=batch_id,
                       extracted_at=datetime(2026, 11, 20, tzinfo=UTC), system="population", base=table)
    state.load_seq = writer.allocate_load_seq()
    state.batch_id = batch_id
    state.windows[batch_id] = [None, None]
    return writer, state


def _source(cols: dict):  # noqa: ANN202
    """Standardized columns back to the registry's source names and codes (男/女), as the source holds them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    out = {SOURCE_NAMES[c]: cols[c] for c in COLUMNS}
    out["sex"] = pc.if_else(pc.equal(out["sex"], "1"), "男", "女")
    return pa.table(out)


def land(lake: Path, parquet: Path, changed: float) -> None:
    """Batch 1: every row. With ``changed``: batch 2, that share of rows with a new address and mobile, and a
    tenth of that share deleted at the source."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from pipelines.lake.catalog import get_catalog
    from pipelines.settings import load_settings

    catalog = get_catalog(load_settings())
    rng = np.random.default_rng(11 if changed else 7)
    writer = state = None
    batch_id = "bench-2" if changed else "bench-1"
    for i, batch in enumerate(pq.ParquetFile(parquet).iter_batches(batch_size=1 << 19)):
        cols = realistic(batch, np.random.default_rng(1000 + i))  # the same people in both batches
        if changed:
            pick = rng.random(batch.num_rows)
            upd, gone = pick < changed, (pick >= changed) & (pick < changed * 1.1)
            fresh = realistic(batch, rng)
            cols.update(residence_address=fresh["residence_address"], mobile_phone=fresh["mobile_phone"],
                        person_updated_at=pc.add(cols["person_updated_at"], pa.scalar(86_400_000_000,
                                                                                      pa.duration("us"))))
            table = _source(cols)
            parts = [(table.filter(pa.array(upd)), False), (table.filter(pa.array(gone)), True)]
        else:
            parts = [(_source(cols), False)]
        for part, deleted in parts:
            if writer is None:
                writer, state = _writer(catalog, part.schema, batch_id)
            writer.write(part, deleted=deleted)
    assert writer is not None and state is not None
    writer.commit(state, {"citylake.batch-id": batch_id, "citylake.mode": "full"}, replace_batch=False)


def gate(run_id: str) -> dict:
    from pipelines.quality.gate import run_quality

    r = run_quality("person", reference_date=DAY, run_id=run_id)
    return {"published": r.published, "quarantined": r.quarantined, "deleted": getattr(r, "deleted", 0),
            "status": r.status}


def deliver(grant_id: str, run_id: str) -> dict:
    from pipelines.settings import load_settings
    from pipelines.share.deliver import deliver_grant

    r = deliver_grant(load_settings(), grant_id, delivery_date=DAY, run_id=run_id)
    return {"outcome": r.outcome, "mode": r.mode, "rows": r.rows, "deleted": r.deleted, "target": r.target,
            "detail": r.detail}


GRANT = """\
  - id: bench_{who}
    consumer: "{code}"
    dataset: person
    columns: [resident_id, person_name, sex_code, birth_date, residence_district_code, residence_address,
              mobile_phone, person_updated_at]
    purpose: "基准测试: 按户籍核对登记信息"
    legal_basis: 基准测试 (合成数据)
    delivery: {{method: file}}
    deid: {{resident_id: pseudonym, person_name: mask, residence_address: mask, mobile_phone: mask}}
"""


def child(kind: str, arg: str) -> None:
    started = time.perf_counter()
    if kind == "land":
        land(Path(os.environ["CITYLAKE_LAKE_DIR"]), Path(arg), float(os.environ.get("BENCH_CHANGED", "0")))
        out: dict = {}
    elif kind == "gate":
        out = gate(arg)
    else:
        grant, run_id = arg.split(":", 1)
        out = deliver(grant, run_id)
    print(json.dumps({"seconds": time.perf_counter() - started, **out,
                      "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run(kind: str, arg: str, env: dict, label: str) -> dict:
    began = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", kind, arg], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - began
    if done.returncode:
        sys.exit(f"{label}: FAILED\n{done.stderr.strip()[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {label}: {wall:.1f} s, {out.get('rss_mb', 0):.0f} MB {json.dumps(out, ensure_ascii=False)[:240]}",
          flush=True)
    return {"wall": wall, **out}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--changed", type=float, default=0.01)
    ap.add_argument("--repeat", type=int, default=1, choices=(1, 2, 3),
                    help="timed deliveries per mode (other consumer departments each time)")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (kept; default: a temporary one)")
    args = ap.parse_args()
    from validate_resident import make_table

    with tempfile.TemporaryDirectory(prefix="citylake-share-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        lake, grants = work / "lake", work / "grants"
        for old in (lake, grants, work / "exports"):  # a fresh lake each run; the generated Parquet is kept
            shutil.rmtree(old, ignore_errors=True)
        grants.mkdir()
        env = {**os.environ, "CITYLAKE_LAKE_DIR": str(lake), "CITYLAKE_GRANTS_DIR": str(grants),
               "CITYLAKE_EXPORTS_DIR": str(work / "exports"),
               "CITYLAKE_SHARE_MASTER_KEY": os.environ.get("CITYLAKE_SHARE_MASTER_KEY", "bench-" + "k" * 40)}
        parquet = work / f"person_{args.rows}.parquet"
        print(f"set-up in {work} (not timed)", flush=True)
        if not parquet.exists():
            make_table(parquet, args.rows)
        (grants / "bench.yml").write_text("# benchmark grants (synthetic)\ngrants:\n" + "".join(
            GRANT.format(who=f"{who}{i}", code=codes[i])
            for who, codes in (("a", CONSUMERS_A), ("b", CONSUMERS_B)) for i in range(args.repeat)), encoding="utf-8")
        run("land", str(parquet), {**env, "BENCH_CHANGED": "0"}, "raw batch 1")
        run("gate", "bench-gate-1", env, "gate → std.person")
        for i in range(args.repeat):
            run("deliver", f"bench_a{i}:bench-first-a{i}", env, f"consumer A{i}: first delivery (full)")
        run("land", str(parquet), {**env, "BENCH_CHANGED": str(args.changed)}, "raw batch 2 (changes)")
        run("gate", "bench-gate-2", env, "gate → std.person (changes)")
        inc, full = [], []
        for i in range(args.repeat):  # interleaved, so drift in the machine's speed hits both
            inc.append(run("deliver", f"bench_a{i}:bench-second-a{i}", env, f"consumer A{i}: incremental"))
            full.append(run("deliver", f"bench_b{i}:bench-first-b{i}", env, f"consumer B{i}: full"))
        report(args.rows, inc, full)


def report(rows: int, inc: list[dict], full: list[dict]) -> None:
    def med(xs: list[dict], key: str) -> float:
        return statistics.median(x[key] for x in xs)

    print(f"\n{'delivery':<14} {'rows out':>10} {'deleted':>8} {'process s':>10} {'table rows/s':>13} "
          f"{'peak RSS MB':>12}")
    for label, xs in (("incremental", inc), ("full", full)):
        print(f"{label:<14} {int(med(xs, 'rows')):>10,} {int(med(xs, 'deleted')):>8,} {med(xs, 'wall'):>10.2f} "
              f"{rows / med(xs, 'wall'):>13,.0f} {med(xs, 'rss_mb'):>12,.0f}")
    ok = med(inc, "wall") < 20 and max(x["rss_mb"] for x in inc) <= 1024
    print(f"\nincremental vs full: {med(full, 'wall') / med(inc, 'wall'):.1f}x faster; target < 20 s and ≤ 1 GB: "
          f"{'OK' if ok else 'MISSED'} (medians of {len(inc)}; table rows/s = the dataset's rows over the time)")


if __name__ == "__main__":
    main()
