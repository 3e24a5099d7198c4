"""Full refresh cost: a first load of a 5 M-row PostgreSQL table, then, in the same run, a full refresh after
1 % of its rows changed (plus a few deleted and inserted). Each step is a `citylake ingest` process, timed
as a whole (imports and the Iceberg commit included), its peak RSS that of the process tree polled every
20 ms. The full refresh compares source and lake through a spilling DuckDB (`pipelines/lake/changes.py`).
Usage:
    .venv/bin/python benchmarks/full_refresh.py [--rows 5000000] [--reps 3] [--keep-data] [--baseline <git rev>]
``--baseline`` runs the same two steps with the ingest code of another revision (e.g. 6f6c509, which
held every key and hash in memory), each into a fresh lake. Repetitions interleave the codes (current,
baseline; then baseline, current; ...), each starting from the same source (the change is undone between
them), and the table reports the median of each step with every repetition's figure beside it.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import measure, psql  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DB = "citylake_bench_refresh"
URL = f"postgresql://postgres@127.0.0.1:5432/{DB}"

# 12 columns of values that do not repeat: random names from a few hundred characters, random addresses,
# phones and IDs (setseed makes the table the same on every run).
CREATE = """
SELECT setseed(0.42);
CREATE TABLE resident (
  id varchar(14) PRIMARY KEY, resident_id varchar(18), name text, sex text, birth_date date, district_code varchar(6),
  address text, phone varchar(11), monthly_income numeric(12,2), registered_at timestamp, status smallint,
  updated_at timestamp);
WITH c AS (SELECT '赵钱孙李周吴郑王冯陈褚卫蒋沈韩杨朱秦尤许何吕施张孔曹严华金魏陶姜戚谢邹喻柏水窦章云苏潘葛奚范彭郎鲁韦昌马苗凤花方俞任袁柳酆鲍史唐费廉岑薛雷贺倪汤滕殷罗毕郝邬安常乐于时傅皮卞齐康伍余元卜顾孟平黄和穆萧尹'::text AS surnames,
                  '伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红建国志文斌辉宇浩然子轩梓涵一诺欣怡雨桐思远佳琪俊杰晨阳博文雅婷嘉怡梦琪若曦天佑瑞泽奕辰'::text AS given,
                  '长江西黄山望江徽州芜湖宿州合作化金寨马鞍山淮河寿春蒙城阜阳亳州六安桐城潜山安庆繁华习友翡翠天鹅湖祁门休宁'::text AS roads)
INSERT INTO resident
SELECT 'HF' || lpad(g::text, 12, '0'),
  (array['340102','340103','340104','340111','340121','340122','340123','340124','340181'])[1 + floor(random() * 9)::int]
    || to_char(date '1940-01-01' + floor(random() * 30000)::int, 'YYYYMMDD') || lpad(floor(random() * 1000)::text, 3, '0')
    || substr('0123456789X', 1 + floor(random() * 11)::int, 1),
  substr(c.surnames, 1 + floor(random() * length(c.surnames))::int, 1)
    || substr(c.given, 1 + floor(random() * length(c.given))::int, 1)
    || CASE WHEN random() < 0.6 THEN substr(c.given, 1 + floor(random() * length(c.given))::int, 1) ELSE '' END,
  (array['男','女'])[1 + floor(random() * 2)::int], date '1940-01-01' + floor(random() * 30000)::int,
  (array['340102','340103','340104','340111','340121','340122','340123','340124','340181'])[1 + floor(random() * 9)::int],
  '安徽省合肥市' || (array['瑶海区','庐阳区','蜀山区','包河区','长丰县','肥东县','肥西县','庐江县','巢湖市'])[1 + floor(random() * 9)::int]
    || substr(c.roads, 1 + floor(random() * (length(c.roads) - 1))::int, 2) || '路' || floor(random() * 2000)::int || '号'
    || floor(random() * 40)::int || '栋' || floor(random() * 3000)::int || '室',
  '1' || (array['3','5','7','8','9'])[1 + floor(random() * 5)::int] || lpad(floor(random() * 1e9)::bigint::text, 9, '0'),
  round((random() * 50000)::numeric, 2), timestamp '2000-01-01' + random() * interval '9000 days',
  floor(random() * 3)::smallint, timestamp '2026-01-01' + random() * interval '300 days'
FROM generate_series(1, {rows}) g, c;
VACUUM ANALYZE resident;
"""

# 1 % of the rows change (address and income), 0.01 % are deleted and as many inserted. The key is text,
# as the city's identifiers are (a full refresh used to hold every one of them in memory).
CHANGE = """
UPDATE resident SET address = address || '(迁)', monthly_income = monthly_income + 1 WHERE right(id, 2) = '37';
DELETE FROM resident WHERE right(id, 4) = '0005';
INSERT INTO resident SELECT 'HX' || substr(id, 3), resident_id, name, sex, birth_date, district_code, address, phone,
  monthly_income, registered_at, status, updated_at FROM resident WHERE right(id, 4) = '0006';
VACUUM ANALYZE resident;
"""

# What CHANGE touches, saved once after the build, so that every repetition starts from the same source.
SAVE = """
DROP TABLE IF EXISTS bench_removed, bench_changed;
CREATE TABLE bench_removed AS SELECT * FROM resident WHERE right(id, 4) = '0005';
CREATE TABLE bench_changed AS SELECT id, address, monthly_income FROM resident WHERE right(id, 2) = '37';
"""
RESET = """
DELETE FROM resident WHERE id LIKE 'HX%';
INSERT INTO resident SELECT * FROM bench_removed ON CONFLICT (id) DO NOTHING;
UPDATE resident r SET address = o.address, monthly_income = o.monthly_income FROM bench_changed o
  WHERE r.id = o.id AND (r.address, r.monthly_income) IS DISTINCT FROM (o.address, o.monthly_income);
VACUUM ANALYZE resident;
"""

REGISTRY = """\
system: bench_refresh
name: 基准测试
department: "11340100003009991Q"  # 合肥市数据资源局 (schemas/departments.yml)
connection: src_bench_refresh
tables:
  - code: resident
    source: resident
    primary_key: [id]
"""


def prepare(rows: int) -> None:
    psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    psql(f"CREATE DATABASE {DB}")
    psql(CREATE.format(rows=rows), DB)
    psql(SAVE, DB)


def _checkout(rev: str, work: Path) -> Path:
    """The project at ``rev`` (git archive: no checkout of the shared work tree)."""
    out = work / f"rev-{rev}"
    out.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def run(rows: int, work: Path, label: str, code_root: Path, rep: int) -> list[dict]:
    """One repetition of both steps for one code, into a fresh lake, from the unchanged source."""
    psql(RESET, DB)
    lake, reg = work / f"lake-{label}-{rep}", work / f"registry-{label}-{rep}"
    reg.mkdir(parents=True)
    (reg / "bench_refresh.yml").write_text(REGISTRY, encoding="utf-8")
    env = {"CITYLAKE_REGISTRY_DIR": str(reg), "CITYLAKE_LAKE_DIR": str(lake), "CITYLAKE_CONN_SRC_BENCH_REFRESH": URL,
           "PYTHONPATH": str(code_root)}
    script = "import sys; sys.argv = ['citylake', 'ingest', 'bench_refresh']; from pipelines.cli import main; main()"
    cmd = [sys.executable, "-c", script]
    results = []
    for step in ("first load", "full refresh (1 % changed)"):
        if step.startswith("full"):
            psql(CHANGE.format(rows=rows), DB)
        seconds, rss, rc, err = measure(cmd, env)
        results.append({"code": label, "rep": rep, "step": step, "rows": rows, "seconds": round(seconds, 2),
                        "rows_per_s": round(rows / seconds), "peak_rss_mb": round(rss), "ok": rc == 0,
                        "error": err if rc else "", "written": _written(lake)})
        print(f"  rep {rep} {label:<10} {step:<28} {seconds:7.2f}s {rss:5.0f} MB  "
              f"{'ok' if rc == 0 else 'FAILED: ' + err}", flush=True)
    return results


def _written(lake: Path) -> int | None:
    """Rows the last load wrote, from its snapshot summary."""
    try:
        from pyiceberg.catalog.sql import SqlCatalog

        catalog = SqlCatalog("citylake", uri=f"sqlite:///{lake}/catalog.db", warehouse=f"file://{lake}/warehouse")
        snap = catalog.load_table("raw.bench_refresh__resident").current_snapshot()
        return int(snap.summary.get("added-records", 0)) if snap else None
    except Exception:  # noqa: BLE001 - a figure for the table, not a check
        return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--keep-data", action="store_true", help="reuse the source table if it has --rows rows")
    ap.add_argument("--baseline", default="", help="git revision to compare with (e.g. 6f6c509)")
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions per code (median reported)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="citylake-bench-refresh-"))
    results: list[dict] = []
    try:
        codes = [("current", ROOT)]
        if args.baseline:
            codes.append((re.sub(r"\W", "", args.baseline)[:12], _checkout(args.baseline, work)))
        t = time.perf_counter()
        if not (args.keep_data and _has_rows(args.rows)):
            prepare(args.rows)
        print(f"source: {args.rows:,} rows × 12 columns in PostgreSQL ({time.perf_counter() - t:.0f}s to build)",
              flush=True)
        for rep in range(1, args.reps + 1):
            for label, code_root in codes if rep % 2 else codes[::-1]:  # interleaved, alternating order
                results += run(args.rows, work, label, code_root, rep)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nmedian of {args.reps} interleaved repetition(s); every repetition's seconds / peak RSS MB after it")
    print(f"{'code':<10} {'step':<28} {'rows':>10} {'seconds':>8} {'rows/s':>9} {'peak RSS MB':>12} {'written':>9}  reps")
    for label, _ in codes:
        for step in dict.fromkeys(r["step"] for r in results):
            mine = [r for r in results if r["code"] == label and r["step"] == step]
            if not mine:
                continue
            sec, rss = statistics.median(r["seconds"] for r in mine), statistics.median(r["peak_rss_mb"] for r in mine)
            written = mine[-1]["written"]
            each = ", ".join(f"{r['seconds']:.1f}s/{r['peak_rss_mb']}" + ("" if r["ok"] else " FAILED") for r in mine)
            print(f"{label:<10} {step:<28} {mine[0]['rows']:>10,} {sec:>8.2f} {round(mine[0]['rows'] / sec):>9,} "
                  f"{rss:>12,.0f} {(f'{written:,}' if written is not None else '-'):>9}  {each}")
    refresh = [r["peak_rss_mb"] for r in results if r["code"] == "current" and r["step"].startswith("full")]
    if refresh:
        print(f"\nfull refresh peak RSS, worst repetition: {max(refresh)} MB (≤ 512)")
    out = ROOT / "benchmarks" / "out"
    out.mkdir(exist_ok=True)
    (out / "full_refresh.json").write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")


def _has_rows(rows: int) -> bool:
    done = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", DB, "-tAc",
                           f"SELECT (SELECT count(*) FROM resident WHERE id NOT LIKE 'HX%') + (SELECT count(*) "
                           f"FROM bench_removed r WHERE NOT EXISTS (SELECT 1 FROM resident WHERE id = r.id)) = {rows}"],
                          capture_output=True, text=True)
    return done.returncode == 0 and done.stdout.strip() == "t"


if __name__ == "__main__":
    main()
