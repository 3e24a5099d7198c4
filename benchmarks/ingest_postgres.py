"""PostgreSQL → lake: `citylake ingest` side by side with the COPY floor, pandas and dlt, in one run.

Each method runs as its own process (imports and commit included) and is timed as a whole; peak RSS
is the process tree's, polled every 20 ms. Usage:
    .venv/bin/python benchmarks/ingest_postgres.py [--rows 5000000] [--only citylake,copy] [--keep-data]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
DB = "citylake_bench"
URL = f"postgresql://postgres@127.0.0.1:5432/{DB}"
SA_URL = f"postgresql+psycopg://postgres@127.0.0.1:5432/{DB}"

# 12 columns, id included: Chinese text, a numeric(12,2), dates and timestamps.
CREATE = """
CREATE TABLE resident (
  id bigint PRIMARY KEY, resident_id varchar(18), name text, sex text, birth_date date, district_code varchar(6),
  address text, phone varchar(11), monthly_income numeric(12,2), registered_at timestamp, status smallint,
  updated_at timestamp);
INSERT INTO resident
SELECT g, '340104' || to_char(date '1950-01-01' + (g % 25000), 'YYYYMMDD') || lpad((g % 1000)::text, 3, '0')
         || (g % 10)::text,
  (array['张','王','李','赵','刘','陈'])[1 + g % 6] || (array['伟','芳','娜','敏','静','磊'])[1 + (g / 7) % 6],
  (array['男','女'])[1 + g % 2], date '1950-01-01' + (g % 25000), (array['340102','340103','340104','340111'])[1 + g % 4],
  '安徽省合肥市蜀山区长江西路' || (g % 500) || '号' || (g % 30) || '栋', '138' || lpad((g % 100000000)::text, 8, '0'),
  round((g % 100000) * 1.37, 2), timestamp '2000-01-01' + (g % 100000) * interval '1 hour', (g % 3)::smallint,
  timestamp '2026-01-01' + (g % 1000000) * interval '1 second'
FROM generate_series(1, {rows}) g;
VACUUM ANALYZE resident;
"""

REGISTRY = """\
system: bench_pg
name: 基准测试
department: "340100BM999"  # 测试局 (schemas/departments.yml)
connection: src_bench
tables:
  - code: resident
    source: resident
    primary_key: [id]
"""

PANDAS = f"""
import pandas as pd, pyarrow as pa, pyarrow.parquet as pq, sqlalchemy as sa, sys
engine = sa.create_engine({SA_URL!r})
writer = None
with engine.connect().execution_options(stream_results=True) as conn:
    for chunk in pd.read_sql("SELECT * FROM resident", conn, chunksize=100_000):
        table = pa.Table.from_pandas(chunk, preserve_index=False)
        writer = writer or pq.ParquetWriter(sys.argv[1] + "/resident.parquet", table.schema, compression="zstd")
        writer.write_table(table)
writer.close()
"""

DLT = """
import sys, dlt
from dlt.sources.sql_database import sql_table
backend, out = sys.argv[1], sys.argv[2]
source = sql_table(credentials={url!r}, table="resident", backend=backend, chunk_size=100_000)
pipeline = dlt.pipeline(pipeline_name="bench_" + backend, pipelines_dir=out + "/pipelines",
                        destination=dlt.destinations.filesystem(bucket_url="file://" + out + "/data"),
                        dataset_name="bench")
pipeline.run(source, loader_file_format="parquet")
""".replace("{url!r}", repr(SA_URL))


def psql(sql: str, db: str = "postgres") -> None:
    subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-q", "-v", "ON_ERROR_STOP=1"],
                   input=sql, text=True, check=True, capture_output=True)


def prepare(rows: int) -> None:
    psql(f"DROP DATABASE IF EXISTS {DB} WITH (FORCE)")
    psql(f"CREATE DATABASE {DB}")
    psql(CREATE.format(rows=rows), DB)


def measure(cmd: list[str], env: dict[str, str] | None = None, shell: bool = False) -> tuple[float, float, int, str]:
    """Wall seconds, peak RSS (MB) of the process tree, exit code, stderr tail."""
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen(cmd if not shell else " ".join(cmd), shell=shell, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ps = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    err = proc.stderr.read().decode(errors="replace").strip().splitlines()[-1:] if proc.stderr else []
    return seconds, peak / 2**20, proc.returncode, (err[0] if err else "")


def methods(work: Path) -> dict[str, tuple[list[str], dict[str, str], bool]]:
    py = sys.executable
    lake, reg = work / "lake", work / "registry"
    reg.mkdir(parents=True, exist_ok=True)
    (reg / "bench_pg.yml").write_text(REGISTRY, encoding="utf-8")
    (work / "pandas").mkdir(exist_ok=True)
    return {
        "copy-floor": (["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", DB, "-c",
                        "'COPY (SELECT * FROM resident) TO STDOUT (FORMAT binary)'", ">", "/dev/null"], {}, True),
        "pandas+pyarrow": ([py, "-c", PANDAS, str(work / "pandas")], {}, False),
        "dlt-pyarrow": ([py, "-c", DLT, "pyarrow", str(work / "dlt-pyarrow")], {}, False),
        "dlt-connectorx": ([py, "-c", DLT, "connectorx", str(work / "dlt-connectorx")], {}, False),
        "citylake": ([str(Path(py).with_name("citylake")), "ingest", "bench_pg"],
                     {"CITYLAKE_REGISTRY_DIR": str(reg), "CITYLAKE_LAKE_DIR": str(lake),
                      "CITYLAKE_CONN_SRC_BENCH": URL}, False),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=5_000_000)
    ap.add_argument("--only", default="", help="comma-separated methods")
    ap.add_argument("--keep-data", action="store_true", help="reuse the table if it has --rows rows")
    args = ap.parse_args()
    t = time.perf_counter()
    if not args.keep_data or not _has_rows(args.rows):
        prepare(args.rows)
    print(f"source: {args.rows:,} rows × 12 columns in PostgreSQL ({time.perf_counter() - t:.0f}s to build)")
    work = Path(tempfile.mkdtemp(prefix="citylake-bench-"))
    results = []
    try:
        for name, (cmd, env, shell) in methods(work).items():
            if args.only and name not in args.only.split(","):
                continue
            seconds, rss, rc, err = measure(cmd, env, shell)
            results.append({"method": name, "rows": args.rows, "seconds": round(seconds, 2),
                            "rows_per_s": round(args.rows / seconds), "peak_rss_mb": round(rss),
                            "ok": rc == 0, "error": err if rc else ""})
            print(f"  {name:<16} {seconds:6.2f}s  {'ok' if rc == 0 else 'FAILED: ' + err}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    floor = next((r["seconds"] for r in results if r["method"] == "copy-floor" and r["ok"]), None)
    print(f"\n{'method':<16} {'rows':>10} {'seconds':>8} {'rows/s':>11} {'peak RSS MB':>12} {'× COPY floor':>13}")
    for r in results:
        ratio = f"{floor / r['seconds']:.2f}" if floor and r["ok"] else "-"
        print(f"{r['method']:<16} {r['rows']:>10,} {r['seconds']:>8.2f} {r['rows_per_s']:>11,} "
              f"{r['peak_rss_mb']:>12,} {ratio:>13}")
    by = {r["method"]: r for r in results if r["ok"]}
    if "citylake" in by:
        dlt_best = max((by[m]["rows_per_s"] for m in ("dlt-pyarrow", "dlt-connectorx") if m in by), default=None)
        if dlt_best:
            print(f"\ncitylake / fastest dlt backend: {by['citylake']['rows_per_s'] / dlt_best:.2f}x (target ≥ 2x)")
        print(f"citylake vs best peer measured in the issue (0.61 M rows/s): "
              f"{by['citylake']['rows_per_s'] / 610_000:.2f}x; peak RSS {by['citylake']['peak_rss_mb']} MB (≤ 512)")
    out = ROOT / "benchmarks" / "out"
    out.mkdir(exist_ok=True)
    (out / "ingest_postgres.json").write_text(json.dumps(results, indent=1), encoding="utf-8")


def _has_rows(rows: int) -> bool:
    done = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", DB, "-tAc", "SELECT count(*) FROM resident"],
                          capture_output=True, text=True)
    return done.returncode == 0 and done.stdout.strip() == str(rows)


if __name__ == "__main__":
    main()
