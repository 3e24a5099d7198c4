"""The whole demo nightly chain (issue 13 item 4) at a ``--scale`` that takes about 5 minutes, with the time
and peak RSS of each stage.

    .venv/bin/python benchmarks/nightly_chain.py [--scale 40] [--reps 1] [--work-dir DIR] [--keep]

What runs is ``run_demo`` — what ``citylake demo`` runs — in one fresh process: seed the synthetic city,
migrate Airflow's metadata DB, every ingest DAG (extract, land raw, the write-audit-publish quality gate to
std), the 一数一源 consistency check and the score against the seed, the curate DAGs, the open release, the
sharing deliveries, a held enterprise batch, GX Data Docs and the governance report, each DAG through
Airflow's ``dag.test()``. It runs in a scratch project: the tracked files of this work tree copied to
``<work>/root`` and ``CITYLAKE_ROOT`` pointing there, so the seeded sources, the lake and ``airflow_home``
are all under ``<work>`` and the developer's own demo lake is never touched (every other ``CITYLAKE_*``
and ``AIRFLOW_*`` variable is cleared for the child). The code is this work tree's (the venv's editable
install).

Per stage: wall seconds (``run_demo``'s stage hook) and the peak RSS of the process tree sampled every
20 ms in the child; for the whole process: wall seconds from spawn to exit and the tree's peak RSS
(``common.measure``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common  # noqa: E402

# The scale whose chain takes about 5 minutes on this machine (2 cores), 2026-11-30: the chain is one mostly
# serial process, so its CPU seconds are what a quiet run takes (at load 2-3, after the seed, each stage ran at
# wall ≈ 1.0-1.1 × CPU). run_demo's CPU seconds: scale 1 ≈ 80, 10: 160, 20: 200, 30: 218 (wall 318 s at load
# 2-3), 40: 303 (wall 338 s at load ~3; peak RSS 2.2 GB in curate). Seeding is half of it at this scale.
DEFAULT_SCALE = 40.0
SCRATCH_SKIP = ("tests/", "docs/", "benchmarks/", "lake/", "data/", "airflow_home/")


def scratch_project(work: Path) -> Path:
    """The tracked files of this work tree (as they are on disk) under ``<work>/root``: configuration, DAGs,
    schemas and expectations the demo reads through ``CITYLAKE_ROOT``; tests, docs and benchmarks left out."""
    root = work / "root"
    shutil.rmtree(root, ignore_errors=True)
    files = subprocess.run(["git", "ls-files", "-z"], cwd=common.ROOT, capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        if not name or name.startswith(SCRATCH_SKIP) or not (common.ROOT / name).is_file():
            continue
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(common.ROOT / name, root / name)
    return root


def child_env(root: Path) -> dict[str, str]:
    """The parent's environment without any CITYLAKE_* / AIRFLOW_* setting, and CITYLAKE_ROOT = the scratch."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CITYLAKE_", "AIRFLOW_", "AIRFLOW__"))}
    return {**env, "CITYLAKE_ROOT": str(root)}


# --- the measured child -------------------------------------------------------------------------------------

def child(scale: float, timings: Path, log: Path) -> None:
    """``run_demo(scale)`` with its console into ``log``; each stage's seconds and the process tree's peak RSS
    while it ran into ``timings`` (JSON)."""
    import psutil
    from rich.console import Console

    from pipelines.demo import run_demo

    me = psutil.Process()
    stages: list[dict] = []
    lock = threading.Lock()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                rss = me.memory_info().rss + sum(c.memory_info().rss for c in me.children(recursive=True))
            except psutil.Error:
                rss = 0
            with lock:
                if stages:
                    stages[-1]["peak_rss_mb"] = max(stages[-1]["peak_rss_mb"], rss / 2**20)
            time.sleep(0.02)

    def cpu() -> float:  # this process and its waited-for children (airflow db migrate), user + system
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def on_stage(name: str) -> None:
        now, used = time.perf_counter(), cpu()
        with lock:
            if stages:
                stages[-1]["seconds"] = now - stages[-1].pop("started")
                stages[-1]["cpu_seconds"] = used - stages[-1].pop("cpu_started")
            if name != "done":
                stages.append({"stage": name, "started": now, "cpu_started": used, "peak_rss_mb": 0.0})

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as out:
        run_demo(scale=scale, console=Console(file=out, width=160, force_terminal=False), on_stage=on_stage)
    total = time.perf_counter() - started
    stop.set()
    sampler.join()
    timings.write_text(json.dumps({"stages": stages, "total": total, "rows": _lake_rows()}, indent=1))


def _lake_rows() -> dict[str, int]:
    """Rows per layer after the chain (raw, std, curated), read from the tables' current snapshots."""
    from pipelines.lake.inspect import list_tables
    from pipelines.settings import load_settings

    out: dict[str, int] = {}
    for r in list_tables(load_settings(), ("raw", "std", "curated")):
        layer = r["table"].split(".", 1)[0]
        out[layer] = out.get(layer, 0) + int(r.get("rows") or 0)
    return out


# --- the parent ---------------------------------------------------------------------------------------------

STAGE_TEXT = {
    "seed": "seed the synthetic city (SQLite sources, CSV/JSON drops)",
    "airflow": "airflow db migrate (SQLite metadata)",
    "ingest": "ingest DAGs: extract, land raw, quality gate → std",
    "quality": "一数一源 consistency, score against the seed",
    "curate": "curate DAGs → curated",
    "open release": "publish__open_data",
    "sharing": "publish__sharing",
    "held batch": "a mostly bad enterprise delivery, held",
    "data docs": "GX Data Docs",
    "report": "report__quality (governance site)",
}


def one_run(scale: float, work: Path, rep: int, keep: bool) -> common.Run:
    run_dir = work / f"run-{rep}"
    shutil.rmtree(run_dir, ignore_errors=True)
    root = scratch_project(run_dir)
    timings, log = run_dir / "timings.json", run_dir / "demo.log"
    cmd = [sys.executable, __file__, "--child", str(scale), str(timings), str(log)]
    seconds, rss, rc, err = common.measure(cmd, child_env(root), cwd=run_dir)
    extra = json.loads(timings.read_text()) if rc == 0 and timings.exists() else {}
    if rc and not err:
        err = f"exit {rc}; see {log}"
    if not keep and rc == 0:
        shutil.rmtree(run_dir, ignore_errors=True)
    return common.Run(f"scale {scale:g}", rep, seconds, rss, rc, err, extra)


def report(scale: float, runs: list[common.Run]) -> str:
    good = [r for r in runs if r.ok]
    if not good:
        return "```\n" + "\n".join(f"rep {r.rep}: FAILED {r.error}" for r in runs) + "\n```\n"
    s = common.summarize(good)[good[0].method]
    median_run = min(good, key=lambda r: abs(r.seconds - s.seconds))  # the stages of the median run
    stages = median_run.extra["stages"]
    total = median_run.extra["total"]
    lines = [[x["stage"], STAGE_TEXT.get(x["stage"], ""), round(x["seconds"], 1), f"{100 * x['seconds'] / total:.0f} %",
              round(x["cpu_seconds"], 1), f"{x['peak_rss_mb']:,.0f}"] for x in stages]
    lines.append(["total", "run_demo", round(total, 1), "100 %", round(sum(x["cpu_seconds"] for x in stages), 1),
                  f"{max(x['peak_rss_mb'] for x in stages):,.0f}"])
    text = common.table(["stage", "what", "seconds", "share", "CPU s", "peak RSS MB"], lines)
    rows = median_run.extra.get("rows", {})
    text += (f"\n\nwhole process (spawn to exit, imports included): {s.seconds:.1f} s, peak RSS of the process tree "
             f"{s.peak_rss_mb:,.0f} MB" + (f"; reps {s.reps_text()}" if len(runs) > 1 else "")
             + "\nlake after the chain: " + ", ".join(f"{k} {v:,} rows" for k, v in rows.items()))
    failed = [f"rep {r.rep}: {r.error}" for r in runs if not r.ok]
    if failed:
        text += "\nfailed: " + "; ".join(failed)
    return f"```\n{text}\n```\n"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(float(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=DEFAULT_SCALE,
                    help=f"size of the synthetic city (citylake demo --scale); default {DEFAULT_SCALE:g}: about "
                         "5 minutes on 2 cores")
    ap.add_argument("--reps", type=int, default=1, help="repetitions; the median run's stages are reported")
    ap.add_argument("--work-dir", type=Path, default=None,
                    help="scratch folder (default: a new temporary one); one run-<rep> project copy per repetition")
    ap.add_argument("--keep", action="store_true", help="keep each run's scratch project (sources, lake, airflow_home)")
    args = ap.parse_args()
    work = (args.work_dir or Path(tempfile.mkdtemp(prefix="citylake-nightly-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    info = common.machine()
    print("machine: " + "; ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    print(f"scratch: {work}", flush=True)
    runs = common.interleaved({f"scale {args.scale:g}": lambda rep: one_run(args.scale, work, rep, args.keep)},
                              args.reps)
    body = report(args.scale, runs)
    print("\n" + body, flush=True)
    if not args.work_dir and not args.keep and all(r.ok for r in runs):
        shutil.rmtree(work, ignore_errors=True)
    command = "python benchmarks/nightly_chain.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    md = "\n".join([
        f"## The demo nightly chain at scale {args.scale:g}",
        "",
        f"Command: `{command.strip()}` (reps {args.reps}" + (": one run, no median" if args.reps == 1 else
                                                             ": the median run's stages") + ").",
        "`run_demo` (what `citylake demo` runs) in one fresh process, in a scratch copy of the project "
        "(`CITYLAKE_ROOT`: sources, lake and `airflow_home` of its own); every DAG through Airflow's `dag.test()`. "
        "Stage seconds from the demo's stage hook; peak RSS of the process tree sampled every 20 ms.",
        "",
        *common.machine_lines(info, ["apache-airflow"]),
        "",
        body,
    ])
    path = common.write_section("nightly_chain", md)
    print(f"section written: {path}")


if __name__ == "__main__":
    main()
