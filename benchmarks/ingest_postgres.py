"""PostgreSQL → Parquet/lake on two tables: `citylake ingest` beside the COPY floor, DuckDB's postgres scanner
(1.4.4 and 1.5.5, each in a venv of its own), ConnectorX, dlt (pyarrow and connectorx backends) and pandas,
all in one run with interleaved repetitions.

    .venv/bin/python benchmarks/ingest_postgres.py [--rows 5000000] [--reps 3] [--tables resident,resident_real]
                                                   [--only citylake,copy-floor] [--db-suffix S]

Tables (benchmarks/common.py PG_TABLES): ``resident`` (the project's first table: names from 36 combinations,
few distinct values) in database ``citylake_bench``, ``resident_real`` (random names and addresses,
``char(n)``, ``timestamptz``, ``numeric(12,2)``) in ``citylake_bench_real``. At a row count other than 5 M the
databases get a suffix (``citylake_bench_200000``) so that a smoke run never rebuilds the shared 5 M tables.

Every method is a fresh process, timed whole (interpreter start, imports, connect, commit), peak RSS of its
process tree polled every 20 ms; the methods of a table run in rotating order for ``--reps`` repetitions and
each figure is the median. Each output is checked afterwards (untimed): the Parquet files' row counts, or the
lake table's snapshot row count; a method that wrote fewer rows than the table holds is FAILED.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

FULL_ROWS = 5_000_000
SLOW = "dlt-pyarrow,dlt-connectorx,pandas+pyarrow".split(",")  # each over 10x the floor: --slow-reps of them
DATABASES = {"resident": "citylake_bench", "resident_real": "citylake_bench_real"}
PG = "postgresql://postgres@127.0.0.1:5432/{db}"
SA = "postgresql+psycopg://postgres@127.0.0.1:5432/{db}"

# DuckDB and its postgres extension come from PyPI wheels (DuckDB cannot download extensions here), each pinning
# its DuckDB, so each peer gets a venv of its own. Both are loaded the same way in the timed process: SET
# extension_directory to a directory in the standard layout, LOAD postgres.
# - duckdb-ext-postgres ships the layout itself (duckdb_ext/extensions/v1.4.4/linux_amd64/
#   postgres_scanner.duckdb_extension; its README: SET extension_directory to duckdb_ext's extensions folder);
# - duckdb-extension-postgres ships a bare file (duckdb_extension_postgres/extensions/v1.5.5/
#   postgres.duckdb_extension) that its helper package INSTALLs from the path; that INSTALL runs once at
#   set-up (untimed) into <venv>/extensions.
DUCKDB_PEERS = {
    "duckdb-1.4.4": ("duckdb-pg-1.4.4", ["duckdb-ext-postgres==1.4.4.20260205"]),
    "duckdb-1.5.5": ("duckdb-pg-1.5.5", ["duckdb-extension-postgres==1.5.5"]),
}

DUCKDB_SETUP = """
import duckdb, os, sys
import duckdb_extension_postgres as pkg
venv = sys.argv[1]
wheel_file = os.path.join(os.path.dirname(pkg.__file__), "extensions", "v" + duckdb.__version__, "postgres.duckdb_extension")
con = duckdb.connect()
con.execute("SET extension_directory = ?", [os.path.join(venv, "extensions")])
con.execute(f"INSTALL '{wheel_file}'")
"""

# DuckDB's defaults: threads = cores, pg_use_binary_copy = true, Parquet compression snappy, 122,880-row groups.
# argv[5] (optional): SET statements separated by ';' (--duckdb-variant), e.g. "threads=1".
DUCKDB = """
import duckdb, os, sys
ext_dir, dsn, table, out = sys.argv[1:5]
con = duckdb.connect()
con.execute("SET autoinstall_known_extensions = false")
con.execute("SET extension_directory = ?", [ext_dir])
con.execute("LOAD postgres")
for setting in filter(None, (sys.argv[5] if len(sys.argv) > 5 else "").split(";")):
    con.execute("SET " + setting)
options = "".join(", " + o for o in filter(None, (sys.argv[6] if len(sys.argv) > 6 else "").split(";")))
con.execute(f"ATTACH '{dsn}' AS db (TYPE postgres, READ_ONLY)")
con.execute(f"COPY (SELECT * FROM db.public.{table}) TO '{out}' (FORMAT parquet{options})")
"""
# citylake's codec for raw files (pipelines.lake.raw.RAW_PARQUET), as DuckDB COPY options: the "zstd" rows write
# what citylake writes, so that the codec's share of a gap shows; the verdict compares with DuckDB's defaults.
SAME_CODEC = "COMPRESSION zstd;COMPRESSION_LEVEL 1"

# ConnectorX 0.4: return_type="arrow_stream" yields Arrow record batches as its workers decode them (two
# partitions on id = two connections and two threads, each running a `COPY … TO STDOUT (FORMAT binary)` of its
# id range); batches go straight to a zstd Parquet writer, so memory stays near one batch per partition.
CONNECTORX = """
import sys, connectorx as cx, pyarrow.parquet as pq
url, table, out = sys.argv[1:4]
reader = cx.read_sql(url, f"SELECT * FROM {table}", return_type="arrow_stream", partition_on="id", partition_num=2,
                     batch_size=100_000)
writer = None
for batch in reader:
    writer = writer or pq.ParquetWriter(out, batch.schema, compression="zstd")
    writer.write_batch(batch)
writer.close()
"""

PANDAS = """
import sys, pandas as pd, pyarrow as pa, pyarrow.parquet as pq, sqlalchemy as sa
url, table, out = sys.argv[1:4]
engine = sa.create_engine(url)
writer = None
with engine.connect().execution_options(stream_results=True) as conn:
    for chunk in pd.read_sql(f"SELECT * FROM {table}", conn, chunksize=100_000):
        t = pa.Table.from_pandas(chunk, preserve_index=False)
        writer = writer or pq.ParquetWriter(out, t.schema, compression="zstd")
        writer.write_table(t)
writer.close()
"""

DLT = """
import sys, dlt
from dlt.sources.sql_database import sql_table
backend, url, table, out = sys.argv[1:5]
source = sql_table(credentials=url, table=table, backend=backend, chunk_size=100_000)
pipeline = dlt.pipeline(pipeline_name="bench_" + backend, pipelines_dir=out + "/pipelines",
                        destination=dlt.destinations.filesystem(bucket_url="file://" + out + "/data"),
                        dataset_name="bench")
pipeline.run(source, loader_file_format="parquet")
"""

REGISTRY = """\
system: bench_pg
name: 基准测试
department: "11340100003009991Q"  # 合肥市数据资源局 (schemas/departments.yml holds no test-only department)
connection: src_bench
tables:
  - code: {table}
    source: {table}
    primary_key: [id]
"""

WHAT = """\
Each method reads the whole table and writes it out, as a fresh process timed whole:
- `copy-floor`: `psql -c "COPY (SELECT * FROM t) TO STDOUT (FORMAT binary)" > /dev/null` — the server's cost
  of producing the rows, one backend, nothing decoded or written;
- `duckdb-1.4.4`, `duckdb-1.5.5`: DuckDB's postgres scanner (`ATTACH … (TYPE postgres, READ_ONLY)`, then
  `COPY (SELECT * FROM db.public.t) TO 'x.parquet' (FORMAT parquet)`) with DuckDB's defaults: threads = the
  cores (2), binary COPY, parallel ctid-range scans, Parquet snappy, 122,880-row groups; each DuckDB from its
  own venv (wheels `duckdb-ext-postgres==1.4.4.20260205`, `duckdb-extension-postgres==1.5.5`);
- `duckdb-1.4.4 zstd`, `duckdb-1.5.5 zstd`: the same with citylake's codec, `COMPRESSION zstd,
  COMPRESSION_LEVEL 1`: how much of a gap is the codec (context; the verdict compares with the defaults);
- `connectorx`: ConnectorX `read_sql(return_type="arrow_stream", partition_on="id", partition_num=2)` (two
  connections, two binary COPYs of id ranges, decoded to Arrow in Rust), batches to a zstd Parquet writer;
- `dlt-pyarrow`, `dlt-connectorx`: dlt `sql_table` (backend pyarrow or connectorx, chunk 100,000) into a
  filesystem destination as Parquet (dlt's extract, normalize and load steps, its state);
- `pandas+pyarrow`: `pd.read_sql` in 100,000-row chunks on a server-side cursor, each chunk to Arrow and a
  zstd Parquet writer;
- `citylake`: `citylake ingest bench_pg` (a first load into a fresh lake: Parquet zstd files registered in
  one Iceberg commit, the catalog, batch and watermark bookkeeping).

`Parquet MB`: the size of the Parquet files a method wrote (citylake: its data files), median.
"""


def database(table: str, rows: int, suffix: str | None) -> str:
    base = DATABASES[table]
    if suffix is None:
        suffix = "" if rows == FULL_ROWS else f"_{rows}"
    return base + suffix


def parquet_rows(path: Path) -> int:
    """Rows in a Parquet file, or in every Parquet file under a folder (footers only)."""
    import pyarrow.parquet as pq

    files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def parquet_mb(folder: Path) -> float:
    """MB of the Parquet files under a method's output folder (citylake: its lake's data files)."""
    return sum(f.stat().st_size for f in folder.rglob("*.parquet")) / 1e6


def lake_rows(env: dict[str, str], table: str) -> int:
    done = subprocess.run([str(Path(sys.executable).with_name("citylake")), "lake", "ls", "--json"],
                          env={**os.environ, **env}, capture_output=True, text=True, check=True)
    return sum(int(t["rows"] or 0) for t in json.loads(done.stdout) if t["table"] == f"raw.bench_pg__{table}")


def prepare_peers() -> dict[str, tuple[Path, Path]]:
    """The python and the extension directory of each DuckDB peer's venv (made once, then reused)."""
    peers = {}
    for name, (venv_name, requirements) in DUCKDB_PEERS.items():
        py = common.bench_venv(venv_name, requirements)
        venv = py.parent.parent
        if name == "duckdb-1.4.4":
            found = list(venv.glob("lib/python*/site-packages/duckdb_ext/extensions"))
            if not found:
                raise SystemExit(f"{venv}: duckdb_ext/extensions not found (duckdb-ext-postgres changed layout?)")
            ext_dir = found[0]
        else:
            ext_dir = venv / "extensions"
            if not list(ext_dir.glob("v*/*/postgres_scanner.duckdb_extension")):
                subprocess.run([str(py), "-c", DUCKDB_SETUP, str(venv)], check=True)
        peers[name] = (py, ext_dir)
    return peers


def methods_for(table: str, db: str, rows: int, work: Path, peers: dict[str, tuple[Path, Path]],
                variants: list[str], timeout: float) -> tuple[dict[str, Callable[[int], common.Run]], Callable[[str, int], None]]:
    """The methods of one table, and the clean-up run before each (untimed): every output folder emptied."""
    py = sys.executable
    pg, sa = PG.format(db=db), SA.format(db=db)
    dsn = f"host=127.0.0.1 port=5432 user=postgres dbname={db}"
    out = {name: work / table / name for name in
           ("duckdb-1.4.4", "duckdb-1.5.5", "connectorx", "dlt-pyarrow", "dlt-connectorx", "pandas+pyarrow", "citylake")}
    reg = work / table / "registry"
    reg.mkdir(parents=True, exist_ok=True)
    (reg / "bench_pg.yml").write_text(REGISTRY.format(table=table), encoding="utf-8")
    lake_env = {"CITYLAKE_REGISTRY_DIR": str(reg), "CITYLAKE_LAKE_DIR": str(out["citylake"]),
                "CITYLAKE_CONN_SRC_BENCH": pg}

    def checked(name: str, cmd: list[str] | str, env: dict[str, str] | None, count: Callable[[], int],
                shell: bool = False) -> Callable[[int], common.Run]:
        def run(rep: int) -> common.Run:
            seconds, rss, rc, err = common.measure(cmd, env, shell=shell, timeout=timeout)
            result = common.Run(name, rep, seconds, rss, rc, err if rc else "")
            if result.ok:
                try:
                    got = count()
                except Exception as exc:  # noqa: BLE001 - whatever broke, the run did not deliver
                    got, result.error = -1, f"output unreadable: {exc}"
                result.extra["rows_out"] = got
                result.extra["out_mb"] = parquet_mb(out[name])
                if got != rows:
                    result.rc = result.rc or 99
                    result.error = result.error or f"wrote {got:,} rows, expected {rows:,}"
            return result

        return run

    copy_sql = f"COPY (SELECT * FROM {table}) TO STDOUT (FORMAT binary)"
    floor_cmd = f"psql -X -h 127.0.0.1 -U postgres -d {db} -c {shlex.quote(copy_sql)} > /dev/null"
    methods: dict[str, Callable[[int], common.Run]] = {
        # psql exits non-zero on any error; its output is not counted (it goes to /dev/null by design).
        "copy-floor": common.command_run("copy-floor", floor_cmd, shell=True, timeout=timeout),
    }
    for peer, (peer_py, ext_dir) in peers.items():
        # DuckDB's defaults first (the verdict only uses those), then citylake's codec, then --duckdb-variant
        for name, setting, options in [(peer, "", ""), (f"{peer} zstd", "", SAME_CODEC),
                                       *((f"{peer} {v}", v, "") for v in variants)]:
            out.setdefault(name, work / table / name.replace(" ", "_").replace(";", "_"))
            target = out[name] / f"{table}.parquet"
            cmd = [str(peer_py), "-c", DUCKDB, str(ext_dir), dsn, table, str(target), setting, options]
            methods[name] = checked(name, cmd, None, lambda t=target: parquet_rows(t))
    cx_target = out["connectorx"] / f"{table}.parquet"
    methods["connectorx"] = checked("connectorx", [py, "-c", CONNECTORX, pg, table, str(cx_target)], None,
                                    lambda: parquet_rows(cx_target))
    for backend in ("pyarrow", "connectorx"):
        name = f"dlt-{backend}"
        methods[name] = checked(name, [py, "-c", DLT, backend, sa, table, str(out[name])], None,
                                lambda d=out[name]: parquet_rows(d / "data"))
    pd_target = out["pandas+pyarrow"] / f"{table}.parquet"
    methods["pandas+pyarrow"] = checked("pandas+pyarrow", [py, "-c", PANDAS, sa, table, str(pd_target)], None,
                                        lambda: parquet_rows(pd_target))
    methods["citylake"] = checked("citylake", [str(Path(py).with_name("citylake")), "ingest", "bench_pg"], lake_env,
                                  lambda: lake_rows(lake_env, table))

    def clean(name: str, rep: int) -> None:  # the previous run's output (a fresh lake for citylake), untimed
        if name in out:
            shutil.rmtree(out[name], ignore_errors=True)
            out[name].mkdir(parents=True)

    return methods, clean


def verdicts(s: dict[str, common.Summary]) -> list[str]:
    lines = []
    city = s.get("citylake")
    duck = [x for x in (s.get("duckdb-1.4.4"), s.get("duckdb-1.5.5")) if x and x.ok]
    floor = s.get("copy-floor")
    if not city:
        return ["citylake: not run — no verdict"]
    if not city.ok:
        return ["citylake: FAILED — no verdict"]
    if duck:
        best = min(duck, key=lambda x: x.seconds)
        others = ", ".join(f"{x.method} {x.seconds:.2f} s" for x in duck)
        ratio = best.seconds / city.seconds
        lines.append(f"citylake / faster DuckDB scanner ({best.method}; {others}): {ratio:.2f}x "
                     f"({'PASS' if ratio > 1 else 'FAIL'}: must be > 1)")
    else:
        lines.append("citylake / faster DuckDB scanner: no DuckDB run succeeded — no verdict")
    same = [x for x in (s.get("duckdb-1.4.4 zstd"), s.get("duckdb-1.5.5 zstd")) if x and x.ok]
    if same:  # context for the verdict above, not a second verdict
        best = min(same, key=lambda x: x.seconds)
        lines.append(f"citylake / faster DuckDB scanner writing citylake's codec, zstd level 1 ({best.method}): "
                     f"{best.seconds / city.seconds:.2f}x (context: the Must compares with DuckDB's defaults)")
    lines.append(f"citylake peak RSS: {city.peak_rss_mb:.0f} MB ({'PASS' if city.peak_rss_mb <= 512 else 'FAIL'}: "
                 "must be ≤ 512 MB)")
    if floor and floor.ok:
        r = floor.seconds / city.seconds
        lines.append(f"citylake × COPY floor: {r:.2f} ({'met' if r >= 0.7 else 'not met'}: aim ≥ 0.7)")
    return lines


def report(table: str, db: str, rows: int, s: dict[str, common.Summary]) -> tuple[str, list[str]]:
    floor = s.get("copy-floor")
    body = []
    for name, m in s.items():
        if m.ok:
            ratio = f"{floor.seconds / m.seconds:.2f}" if floor and floor.ok else "-"
            sizes = [r.extra["out_mb"] for r in m.each if "out_mb" in r.extra]
            body.append([name, rows, round(m.seconds, 2), round(m.rows_per_s(rows)), round(m.peak_rss_mb), ratio,
                         round(statistics.median(sizes)) if sizes else "-", m.reps_text()])
        else:
            err = next((r.error for r in m.each if not r.ok), "")
            body.append([name, rows, "FAILED", "-", "-", "-", "-", m.reps_text() + (f" ({err[:80]})" if err else "")])
    text = common.table(["method", "rows", "median s", "rows/s", "peak RSS MB", "× COPY floor", "Parquet MB",
                         "each rep (s/MB)"], body)
    return text, verdicts(s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=FULL_ROWS)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--slow-reps", type=int, default=1, help="repetitions of the slow peers (dlt-pyarrow,dlt-connectorx,pandas+pyarrow; default 1)")
    ap.add_argument("--tables", default=",".join(DATABASES), help="comma-separated, of: " + ", ".join(DATABASES))
    ap.add_argument("--only", default="", help="comma-separated methods (default: all)")
    ap.add_argument("--db-suffix", default=None,
                    help="database name suffix (default: none at 5 M rows, _<rows> otherwise)")
    ap.add_argument("--duckdb-variant", action="append", default=[], metavar="SETTINGS",
                    help="also run both scanners with these DuckDB settings (';'-separated, e.g. 'threads=1' or "
                         "'pg_use_binary_copy=false'), as extra rows beside the defaults; repeatable")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per process before it is killed")
    args = ap.parse_args()
    tables = [t for t in args.tables.split(",") if t]
    for t in tables:
        if t not in DATABASES:
            raise SystemExit(f"--tables: unknown table {t!r} (known: {', '.join(DATABASES)})")
    command = " ".join(["python benchmarks/ingest_postgres.py", *(shlex.quote(a) for a in sys.argv[1:])])
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.strftime("%Y-%m-%d %H:%M %Z")

    peers = prepare_peers()
    peer_versions = {}
    for name, (peer_py, _) in peers.items():
        peer_versions[name] = subprocess.run(
            [str(peer_py), "-c", "import duckdb; from importlib import metadata as m; "
             "print(duckdb.__version__, *(d.metadata['Name'] + '==' + d.version for d in m.distributions() "
             "if 'postgres' in d.metadata['Name']))"], capture_output=True, text=True, check=True).stdout.strip()

    work = Path(tempfile.mkdtemp(prefix="citylake-bench-pg-"))
    sections, raw = [], {}
    try:
        for table in tables:
            db = database(table, args.rows, args.db_suffix)
            t0 = time.perf_counter()
            built = common.pg_table(db, table, args.rows)
            print(f"\n== {table}: {args.rows:,} rows × 12 columns in database {db} "
                  f"({'built in %.0f s' % (time.perf_counter() - t0) if built else 'existing'})", flush=True)
            methods, clean = methods_for(table, db, args.rows, work, peers, args.duckdb_variant, args.timeout)
            if args.only:
                wanted = args.only.split(",")
                unknown = [m for m in wanted if m not in methods]
                if unknown:
                    raise SystemExit(f"--only: unknown method(s) {unknown} (known: {', '.join(methods)})")
                # a scanner named keeps its --duckdb-variant rows
                methods = {k: v for k, v in methods.items() if k in wanted or k.split(" ")[0] in wanted}
            runs = common.interleaved(methods, args.reps, before_each=clean,
                                       capped={m: args.slow_reps for m in SLOW})
            summary = common.summarize(runs)
            text, verdict = report(table, db, args.rows, summary)
            print("\n" + text + "\n\n" + "\n".join(verdict), flush=True)
            sections.append((table, db, text, verdict))
            raw[table] = {"database": db, "rows": args.rows,
                          "runs": [{"method": r.method, "rep": r.rep, "seconds": round(r.seconds, 3),
                                    "peak_rss_mb": round(r.peak_rss_mb, 1), "rc": r.rc, "error": r.error, **r.extra}
                                   for r in runs]}
            clean("citylake", 0)  # leave no 5 M-row lake behind in the temp folder between tables
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())

    md = ["## PostgreSQL ingest (`ingest_postgres.py`)", "",
          f"Command: `{command}` — started {started}; load average before {load_before}, after {load_after}; "
          f"repetitions: {args.reps}, interleaved, medians; DuckDB peers: "
          + "; ".join(f"{k}: {v}" for k, v in peer_versions.items())
          + ".", ""]
    # Only the load before the run tells of other work: during and right after it, the benchmark's own
    # processes (the PostgreSQL backends, the extract and writer threads) keep the load near the cores.
    if float(load_before.split()[0]) > (os.cpu_count() or 1):
        md += [f"**The load average exceeded the {os.cpu_count()} cores: other work shared the machine, so every "
               "figure here is noisy; only large same-run ratios mean something.**", ""]
    md += [WHAT]
    for table, db, text, verdict in sections:
        md += [f"### `{table}` ({args.rows:,} rows, database `{db}`)", "", "```", text, "", *verdict, "```", ""]
    common.write_section("ingest_postgres", "\n".join(md))
    common.OUT.mkdir(parents=True, exist_ok=True)
    (common.OUT / "ingest_postgres.json").write_text(json.dumps(
        {"command": command, "started": started, "load_before": load_before, "load_after": load_after,
         "duckdb": peer_versions, "tables": raw}, indent=1, ensure_ascii=False),
        encoding="utf-8")


if __name__ == "__main__":
    main()
