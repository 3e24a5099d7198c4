"""The scale curve (issue 13 item 4): ingest, validation and the open export at 1 M, 5 M and 20 M rows —
rows/s and peak RSS per size, to show that cost grows linearly and memory stays flat.

    .venv/bin/python benchmarks/scale_curve.py [--sizes 1000000,5000000,20000000] [--reps 1]
                                               [--stages ingest,validation,export] [--data-dir DIR]

Stages, each measurement one fresh process (interpreter start, imports and commit included), wall seconds
from spawn to exit and peak RSS from the kernel's accounting of that child (``os.wait4``; this parent stays
on the standard library, since a child's figure starts from the parent's RSS at the fork):
- ``ingest``: ``citylake ingest`` first load of the realistic PostgreSQL table ``resident_real``
  (``common.PG_TABLES``: random names and addresses, ``char(n)``, ``timestamptz``, ``numeric(12,2)``, 12
  columns) into a fresh lake; each size in its own database ``citylake_scale_<size>`` (built once, kept);
- ``validation``: citylake's validation engine (``validate_resident.py``'s citylake child) on N standardized
  resident rows against the committed 20-rule suite ``expectations/person.json``;
- ``export``: the open release (``open_export.py``'s ``citylake release`` child) of a curated ``poi_wgs84``
  with N rows in a scratch lake: de-identify, CSV + JSON Lines + Parquet, SHA-256, leak scan, metadata.
Data generation is not timed; it is cached under ``--data-dir`` (Parquet, scratch lakes) and in PostgreSQL.
With ``--reps`` > 1 the sizes of a stage run interleaved (rotating order) and the median is reported.
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
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402
import open_export  # noqa: E402  (standard library at import time; its data code imports numpy lazily)
from common import Run  # noqa: E402

STAGES = ("ingest", "validation", "export")
PG_TABLE = "resident_real"
REGISTRY = """\
system: bench_scale
name: 规模曲线基准
department: "11340100003009991Q"  # 合肥市数据资源局 (schemas/departments.yml holds no test-only department)
connection: src_bench_scale
tables:
  - code: resident
    source: resident_real
    primary_key: [id]
"""


def label(rows: int) -> str:
    """1000000 → 1m, 5000000 → 5m, 500000 → 500k: the database suffix and the table's size column."""
    for unit, div in (("m", 1_000_000), ("k", 1_000)):
        if rows % div == 0:
            return f"{rows // div}{unit}"
    return str(rows)


def shown(rows: int) -> str:
    return label(rows).replace("m", " M").replace("k", " K")


def spawn(cmd: list[str], env: dict[str, str], log: Path) -> tuple[float, float, int, str]:
    """One child: wall seconds from spawn to exit, its peak RSS in MB (``wait4``), exit code, stderr's last line."""
    with log.open("w") as out, log.with_suffix(".err").open("w") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env={**os.environ, **env})
        _pid, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
    rc = os.waitstatus_to_exitcode(status)
    tail = [x for x in log.with_suffix(".err").read_text(errors="replace").strip().splitlines() if x.strip()]
    return wall, usage.ru_maxrss / 1024, rc, (tail[-1] if tail and rc else "")


# --- the stages: data (not timed) and one measured run --------------------------------------------------

def prepare_ingest(sizes: list[int], work: Path) -> dict[int, str]:
    """``resident_real`` with N rows in ``citylake_scale_<N>`` for each size (built when missing)."""
    notes = {}
    for rows in sizes:
        db = f"citylake_scale_{label(rows)}"
        t0 = time.perf_counter()
        built = common.pg_table(db, PG_TABLE, rows)
        size = common.psql(f"SELECT pg_size_pretty(pg_total_relation_size('{PG_TABLE}'))", db)
        notes[rows] = (f"{db}.{PG_TABLE}: {rows:,} rows, {size} "
                       + (f"built in {time.perf_counter() - t0:.0f} s" if built else "(cached)"))
        print(f"  {notes[rows]}", flush=True)
    (work / "registry").mkdir(parents=True, exist_ok=True)
    (work / "registry" / "bench_scale.yml").write_text(REGISTRY, encoding="utf-8")
    return notes


def run_ingest(rows: int, work: Path, rep: int) -> Run:
    lake = work / f"lake-ingest-{label(rows)}"
    shutil.rmtree(lake, ignore_errors=True)
    env = {"CITYLAKE_REGISTRY_DIR": str(work / "registry"), "CITYLAKE_LAKE_DIR": str(lake),
           "CITYLAKE_CONN_SRC_BENCH_SCALE": f"postgresql://postgres@127.0.0.1:5432/citylake_scale_{label(rows)}"}
    cmd = [str(Path(sys.executable).with_name("citylake")), "ingest", "bench_scale"]
    try:
        seconds, rss, rc, err = spawn(cmd, env, work / f"ingest-{label(rows)}.log")
        extra = {}
        if rc == 0:  # the rows the lake holds: a load that wrote fewer rows is no measurement
            done = subprocess.run([sys.executable, __file__, "--count", str(lake), "raw.bench_scale__resident"],
                                  capture_output=True, text=True, env={**os.environ, **env})
            extra["lake_rows"] = int(done.stdout.strip() or -1)
            if extra["lake_rows"] != rows:
                rc, err = 1, f"lake holds {extra['lake_rows']:,} rows, the source {rows:,}"
    finally:
        shutil.rmtree(lake, ignore_errors=True)
    return Run(shown(rows), rep, seconds, rss, rc, err, extra)


def prepare_validation(sizes: list[int], work: Path) -> dict[int, str]:
    notes = {}
    for rows in sizes:
        path = work / f"person_{rows}.parquet"
        t0 = time.perf_counter()
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            subprocess.run([sys.executable, __file__, "--make-person", str(tmp), str(rows)], check=True)
            tmp.rename(path)
            how = f"generated in {time.perf_counter() - t0:.0f} s"
        else:
            how = "(cached)"
        notes[rows] = f"person_{rows}.parquet: {rows:,} standardized resident rows, " \
                      f"{path.stat().st_size / 1e6:,.0f} MB {how}"
        print(f"  {notes[rows]}", flush=True)
    return notes


def run_validation(rows: int, work: Path, rep: int) -> Run:
    cmd = [sys.executable, str(HERE / "validate_resident.py"), "--child", "citylake", str(work / f"person_{rows}.parquet")]
    log = work / f"validation-{label(rows)}.log"
    seconds, rss, rc, err = spawn(cmd, {}, log)
    extra = {}
    if rc == 0:
        out = json.loads(log.read_text().strip().splitlines()[-1])
        extra = {"inner": out["seconds"], "rules": len(out["counts"]), "failed": sum(out["counts"].values())}
        if extra["rules"] < 20:  # the committed suite has 20 rules: fewer means the engine skipped some
            rc, err = 1, f"only {extra['rules']} rules evaluated"

    return Run(shown(rows), rep, seconds, rss, rc, err, extra)


def prepare_export(sizes: list[int], work: Path) -> dict[int, str]:
    notes = {}
    for rows in sizes:
        data = work / f"poi_wgs84-{rows}"
        facts_path = data / "facts.json"
        facts = json.loads(facts_path.read_text()) if facts_path.exists() else None
        t0 = time.perf_counter()
        if not facts or facts.get("version") != open_export.DATA_VERSION or \
                not all(Path(f).exists() for f in facts["files"]):
            done = subprocess.run([sys.executable, open_export.__file__, "--generate", str(data), str(rows),
                                   "poi_wgs84"], stdout=subprocess.PIPE, text=True, check=True)
            facts = json.loads(done.stdout.strip().splitlines()[-1])
            how = f"generated in {time.perf_counter() - t0:.0f} s"
        else:
            how = "(cached)"
        notes[rows] = f"curated.poi_wgs84: {rows:,} rows, {len(facts['files'])} data files, " \
                      f"{facts['bytes'] / 1e6:,.0f} MB {how}"
        print(f"  {notes[rows]}", flush=True)
    return notes


def run_export(rows: int, work: Path, rep: int, columns: list[str]) -> Run:
    data = work / f"poi_wgs84-{rows}"
    r = open_export.spawn(open_export.RELEASE, data, data / "out" / "release", columns)
    if "failed" in r:
        return Run(shown(rows), rep, 0.0, 0.0, 1, r["failed"])
    status = [d.get("status") for d in r["result"].get("datasets", [])] if isinstance(r["result"], dict) else []
    rc, err = (0, "") if status == ["released"] else (1, f"release status {status}")
    return Run(shown(rows), rep, r["wall"], r["rss_mb"], rc, err, {"inner": r["steps"]["release_open_data"]})


# --- the parent -----------------------------------------------------------------------------------------

def report(stage: str, sizes: list[int], runs: list[Run]) -> str:
    by = common.summarize(runs)
    rows_of = {shown(n): n for n in sizes}
    lines = []
    for name, s in by.items():
        n = rows_of[name]
        inner = [r.extra["inner"] for r in s.each if r.ok and "inner" in r.extra]
        lines.append([f"{n:,}", round(s.seconds, 2) if s.ok else "FAILED", f"{s.rows_per_s(n):,.0f}" if s.ok else "-",
                      f"{s.peak_rss_mb:,.0f}" if s.ok else "-",
                      round(statistics.median(inner), 2) if inner and s.ok else "-", s.reps_text()])
    text = common.table(["rows", "seconds", "rows/s", "peak RSS MB", "in-process s", "reps (s/MB)"], lines)
    ok = [n for n in sizes if by.get(shown(n)) and by[shown(n)].ok]
    if len(ok) >= 2:
        lo, hi = by[shown(ok[0])], by[shown(ok[-1])]
        linear = (hi.seconds / lo.seconds) / (ok[-1] / ok[0])
        text += (f"\nlinearity: seconds({shown(ok[-1])}) / seconds({shown(ok[0])}) ÷ {ok[-1] / ok[0]:g} = {linear:.2f} "
                 "(1 = linear; below 1: the fixed start-up, imports and catalog, is spread over more rows)"
                 f"\nmemory: peak RSS({shown(ok[-1])}) − peak RSS({shown(ok[0])}) = {hi.peak_rss_mb - lo.peak_rss_mb:+,.0f} MB")
        for a, b in zip(ok, ok[1:], strict=False):  # step by step: the marginal rate leaves the fixed cost out
            sa, sb = by[shown(a)], by[shown(b)]
            rate = f"{(b - a) / (sb.seconds - sa.seconds):,.0f} rows/s" if sb.seconds > sa.seconds else \
                "n/a (the larger size ran faster: noise)"
            text += (f"\n{shown(a)} → {shown(b)}: seconds ratio ÷ rows ratio {(sb.seconds / sa.seconds) / (b / a):.2f}, "
                     f"marginal rate {rate}, peak RSS {sb.peak_rss_mb - sa.peak_rss_mb:+,.0f} MB")
    failed = [f"{r.method} rep {r.rep}: {r.error}" for r in runs if not r.ok]
    if failed:
        text += "\nfailed: " + "; ".join(failed)
    return f"### {stage}\n\n```\n{text}\n```\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--make-person":
        from validate_resident import make_table

        make_table(Path(sys.argv[2]), int(sys.argv[3]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--count":  # rows of a lake table (CITYLAKE_LAKE_DIR is set)
        sys.path.insert(0, str(common.ROOT))
        from pipelines.lake.catalog import get_catalog
        from pipelines.settings import load_settings

        table = get_catalog(load_settings()).load_table(sys.argv[3])
        snapshot = table.current_snapshot()
        print(int(snapshot.summary["total-records"]) if snapshot and snapshot.summary else 0)
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000000,5000000,20000000", help="comma-separated row counts")
    ap.add_argument("--reps", type=int, default=1, help="interleaved repetitions per size; the median is reported")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    ap.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "citylake-bench-scale",
                    help="where generated data is cached and the runs write (lakes and exports deleted after each run)")
    args = ap.parse_args()
    sizes = sorted(int(x.replace("_", "")) for x in args.sizes.split(",") if x.strip())
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        ap.error(f"unknown stage(s) {', '.join(unknown)}; expected some of {', '.join(STAGES)}")
    work = args.data_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    info = common.machine()
    print("machine: " + "; ".join(f"{k} {v}" for k, v in info.items()), flush=True)

    sections, notes = [], []
    for stage in stages:
        print(f"\n{stage}: data", flush=True)
        if stage == "ingest":
            made = prepare_ingest(sizes, work)
            methods = {shown(n): (lambda rep, n=n: run_ingest(n, work, rep)) for n in sizes}
        elif stage == "validation":
            made = prepare_validation(sizes, work)
            methods = {shown(n): (lambda rep, n=n: run_validation(n, work, rep)) for n in sizes}
        else:
            made = prepare_export(sizes, work)
            done = subprocess.run([sys.executable, open_export.__file__, "--columns", "poi_wgs84"],
                                  stdout=subprocess.PIPE, text=True, check=True)
            columns = json.loads(done.stdout.strip().splitlines()[-1])
            methods = {shown(n): (lambda rep, n=n, c=columns: run_export(n, work, rep, c)) for n in sizes}
        notes += [f"{stage}: {v}" for v in made.values()]
        print(f"{stage}: runs", flush=True)
        runs = common.interleaved(methods, args.reps)
        section = report(stage, sizes, runs)
        print("\n" + section, flush=True)
        sections.append(section)

    command = "python benchmarks/scale_curve.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    md = "\n".join([
        "## Scale curve: ingest, validation and export at growing row counts",
        "",
        f"Command: `{command.strip()}` (reps {args.reps}" + (": one run per size, no median" if args.reps == 1 else
                                                              ", sizes interleaved, medians") + ").",
        "Each figure is one fresh process timed whole (interpreter start and imports included); peak RSS of that "
        "process from `wait4`. ingest: `citylake ingest` first load of `resident_real` (PostgreSQL on the same "
        "machine) into a fresh lake; validation: citylake's engine, 20 rules of `expectations/person.json`, on "
        "standardized resident rows in Parquet; export: `release_open_data` of a curated `poi_wgs84` (CSV + JSON "
        "Lines + Parquet, SHA-256, leak scan).",
        "",
        *common.machine_lines(info, ["apache-airflow"]),
        "",
        "Data (generated before the runs, not timed):",
        *[f"- {n}" for n in notes],
        "",
        *sections,
    ])
    path = common.write_section("scale_curve", md)
    print(f"section written: {path}")


if __name__ == "__main__":
    main()
