"""What `make bench` runs: every benchmark script, then ``benchmarks/results.md`` from their sections.

    .venv/bin/python benchmarks/run_all.py [--quick] [--only a,b] [--skip a,b] [--args 'name=--reps 5']

Each script runs as its own process in a fixed order, its output streamed here. A script that calls
``common.write_section`` leaves its section in ``benchmarks/out/<name>.md``; for the older scripts that only
print (validate_resident, open_export, share_delivery) the section is their final table, cut from their
stdout at its header line. A script that fails does not stop the others: its section says so, with the last
lines it printed; a script that is not on disk is reported "not run: missing".

``--quick`` is a smoke run (small row counts, one repetition, each passed as options the script accepts;
figures from it mean nothing); without it every script runs at its own full-size defaults.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

BENCH = common.ROOT / "benchmarks"
RESULTS = BENCH / "results.md"


@dataclass
class Script:
    name: str
    title: str
    quick: list[str]  # options for --quick (only those the script's --help lists are passed)
    marker: str = ""  # scripts without write_section: the final table starts at the last line starting so
    tail: list[str] = field(default_factory=list)


SCRIPTS = [
    Script("ingest_postgres", "PostgreSQL ingest", ["--rows", "200000", "--reps", "1"]),
    Script("ingest_mysql", "MySQL-family ingest", ["--rows", "200000", "--flat-rows", "", "--reps", "1"]),
    Script("scale_curve", "Scale curve", ["--sizes", "100000,200000", "--reps", "1"]),
    Script("nightly_chain", "Nightly chain", ["--scale", "1", "--reps", "1"]),
    Script("validate_resident", "Validation", ["--rows", "200000"], marker="engine "),
    Script("open_export", "Open-data release", ["--rows", "200000", "--repeat", "1"], marker="method "),
    Script("share_delivery", "Departmental sharing", ["--rows", "200000", "--repeat", "1"], marker="delivery "),
]


def accepted(path: Path, options: list[str]) -> tuple[list[str], list[str]]:
    """The options (with their values) that ``path --help`` lists, and those it does not (dropped)."""
    done = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=120)
    keep, dropped = [], []
    i = 0
    while i < len(options):
        opt = options[i]
        has_value = i + 1 < len(options) and not options[i + 1].startswith("--")
        group = options[i:i + 2] if has_value else [opt]
        listed = done.returncode == 0 and re.search(re.escape(opt) + r"(?![\w-])", done.stdout)
        (keep if listed else dropped).extend(group)
        i += len(group)
    return keep, dropped


def run_script(path: Path, args: list[str]) -> tuple[int, float, list[str]]:
    """Run one script, streaming its output (stdout and stderr together); exit code, seconds, every line."""
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-u", str(path), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd=common.ROOT, text=True, errors="replace")
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        lines.append(line.rstrip("\n"))
    return proc.wait(), time.perf_counter() - started, lines


def final_table(lines: list[str], marker: str) -> list[str]:
    """From the last line that starts with ``marker`` (the final table's header) to the end; the last 60 lines
    when there is none."""
    starts = [i for i, x in enumerate(lines) if marker and x.startswith(marker)]
    return lines[starts[-1]:] if starts else lines[-60:]


def section(s: Script, command: str, rc: int | None, seconds: float, lines: list[str], fresh: str | None,
            note: str = "") -> str:
    head = f"## {s.title} (`{s.name}.py`)"
    if rc is None:
        return f"{head}\n\nnot run: {note}\n"
    parts = []
    if rc != 0:
        tail = "\n".join(lines[-30:]) or "(no output)"
        parts.append(f"{head}\n\n**FAILED** (exit {rc}, after {seconds:.0f} s): `{command}`\n\nLast lines of its "
                     f"output:\n\n```\n{tail}\n```\n")
        if fresh:
            parts.append("Its section as written before the failure:\n\n" + fresh)
        return "\n".join(parts)
    if fresh:
        return fresh
    body = "\n".join(final_table(lines, s.marker)).strip("\n")
    return f"{head}\n\nCommand: `{command}` ({seconds:.0f} s). Its final table as printed:\n\n```\n{body}\n```\n"


_KEPT = "*Not run by this `make bench`:"


def kept_section(text: str, where: str) -> str:
    """A section of an earlier run, marked below its heading as not run by this one (once: a section kept
    twice still names the run it came from)."""
    if _KEPT in text:
        return text
    head, _, body = text.partition("\n")
    return f"{head}\n\n{_KEPT} {where}.*\n{body}"


def previous_sections(path: Path) -> tuple[dict[str, str], str]:
    """The sections of an earlier results.md by script (a heading names its script's file or title), and
    when that file says it was generated."""
    if not path.exists():
        return {}, "?"
    text = path.read_text(encoding="utf-8")
    found = {}
    for part in re.split(r"(?m)^(?=## )", text)[1:]:
        heading = part.partition("\n")[0].lower()
        for s in SCRIPTS:
            if s.name not in found and (f"`{s.name}.py`" in heading or s.title.lower() in heading):
                found[s.name] = part.rstrip("\n") + "\n"
                break
    when = re.search(r"^Generated by[^\n]*?(\d{4}-\d\d-\d\d \d\d:\d\d \w+(?: → \d\d:\d\d \w+)?)", text, re.M)
    return found, when.group(1) if when else "date not stated"


def venv_versions() -> dict[str, str]:
    """DuckDB and its extension wheels in each peer venv under benchmarks/.venvs (made by the scripts)."""
    out = {}
    for py in sorted((BENCH / ".venvs").glob("*/bin/python")):
        code = ("from importlib import metadata as m; print(', '.join(sorted(d.metadata['Name'] + ' ' + d.version "
                "for d in m.distributions() if 'duckdb' in d.metadata['Name'].lower())))")
        try:
            out[py.parent.parent.name] = subprocess.run([str(py), "-c", code], capture_output=True, text=True,
                                                        timeout=60).stdout.strip() or "?"
        except (OSError, subprocess.SubprocessError) as exc:
            out[py.parent.parent.name] = f"unreadable: {exc}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = [s.name for s in SCRIPTS]
    ap.add_argument("--quick", action="store_true", help="smoke run: small sizes, one repetition")
    ap.add_argument("--only", default="", help="comma-separated scripts to run, of: " + ", ".join(names))
    ap.add_argument("--skip", default="", help="comma-separated scripts not to run")
    ap.add_argument("--args", action="append", default=[], metavar="NAME=ARGS",
                    help="extra options for one script, e.g. 'ingest_postgres=--reps 5' (repeatable; after --quick's)")
    ap.add_argument("--no-run", action="store_true",
                    help="run nothing: assemble results.md from the sections already in benchmarks/out "
                         "(the load average and versions are then today's, not the runs')")
    ap.add_argument("--output", type=Path, default=RESULTS, help="where to write (default benchmarks/results.md)")
    args = ap.parse_args()
    only = [x for x in args.only.split(",") if x]
    skip = [x for x in args.skip.split(",") if x]
    extra: dict[str, list[str]] = {}
    for item in args.args:
        name, _, rest = item.partition("=")
        extra.setdefault(name, []).extend(shlex.split(rest))
    for name in [*only, *skip, *extra]:
        if name not in names:
            raise SystemExit(f"unknown script {name!r} (known: {', '.join(names)})")

    command = " ".join(["python benchmarks/run_all.py", *(shlex.quote(a) for a in sys.argv[1:])])
    info = common.machine()  # includes the load average at start
    vers_before = common.versions()
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    sections, ledger = [], []
    previous, previous_when = previous_sections(args.output) if only or skip else ({}, "")
    for s in SCRIPTS:
        path = BENCH / f"{s.name}.py"
        if (only and s.name not in only) or s.name in skip:
            # the section of the results.md this run replaces, marked, instead of a hole in the record
            if s.name in previous:
                kept = f"kept from the previous results.md, which was generated {previous_when}"
                ledger.append(f"- `{s.name}`: skipped (--only/--skip); its section {kept}")
                sections.append(kept_section(previous[s.name], kept))
            else:
                ledger.append(f"- `{s.name}`: skipped (--only/--skip)")
                sections.append(section(s, "", None, 0, [], None, "skipped (--only/--skip)"))
            continue
        if args.no_run:
            out_md = common.OUT / f"{s.name}.md"
            if out_md.exists():
                when = time.strftime("%Y-%m-%d %H:%M %Z", time.localtime(out_md.stat().st_mtime))
                ledger.append(f"- `{s.name}`: not run now; its section as written {when}")
                sections.append(out_md.read_text(encoding="utf-8"))
            else:
                ledger.append(f"- `{s.name}`: not run now; no section in benchmarks/out")
                sections.append(section(s, "", None, 0, [], None, "no section in benchmarks/out (--no-run)"))
            continue
        if not path.exists():
            ledger.append(f"- `{s.name}`: not run: missing")
            sections.append(section(s, "", None, 0, [], None, f"missing (no benchmarks/{s.name}.py)"))
            continue
        options, dropped = accepted(path, s.quick) if args.quick else ([], [])
        options += extra.get(s.name, [])
        cmd_text = f"python benchmarks/{s.name}.py " + " ".join(shlex.quote(a) for a in options)
        print(f"\n===== {cmd_text.strip()}" + (f"  (not accepted, dropped: {' '.join(dropped)})" if dropped else ""),
              flush=True)
        mark = time.time()
        rc, seconds, lines = run_script(path, options)
        out_md = common.OUT / f"{s.name}.md"
        fresh = out_md.read_text(encoding="utf-8") if out_md.exists() and out_md.stat().st_mtime >= mark else None
        text = section(s, cmd_text.strip(), rc, seconds, lines, fresh)
        if rc == 0 and not fresh:  # a script that only prints: keep its section for --no-run
            common.write_section(s.name, text)
        sections.append(text)
        ledger.append(f"- `{s.name}`: {'ok' if rc == 0 else f'FAILED (exit {rc})'}, {seconds:.0f} s")

    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    load_before = info.pop("load average at start", "?")
    # the load before the run: afterwards the 1-minute figure still counts the benchmarks' own processes
    busy = float((load_before if load_before != "?" else "0").split()[0]) > (os.cpu_count() or 1)
    info.pop("date", None)
    vers = common.versions()
    moved = {k: f"{vers_before[k]} → {v}" for k, v in vers.items() if vers_before.get(k) != v}
    peers = venv_versions()
    head = [
        "# Benchmark results",
        "",
        f"Generated by `make bench` (`{command.strip()}`), {started} → {time.strftime('%H:%M %Z')}."
        + (" **Quick smoke run: small sizes, one repetition — the figures mean nothing.**" if args.quick else ""),
        "",
        "Every figure in a table comes from the same run on the same machine and the same data as its baselines: "
        "each method is a fresh process timed whole, the methods run in rotating order (interleaved repetitions) "
        "and each figure is the median of its repetitions, every repetition shown beside it. Compare figures "
        "within a table, not across runs or machines.",
        "",
        (f"Load average (1, 5, 15 min): before {load_before}, after {load_after} ({os.cpu_count()} cores: a load "
         f"above {os.cpu_count()} before the run would mean other work shared the machine; the figure after counts "
         "the benchmarks' own processes"
         + ("; **it was: figures are noisy, only large same-run ratios mean something**)." if busy else ").")
         if not args.no_run else "Assembled with --no-run: each section states its own run's load and command."),
        "",
        "Machine: " + "; ".join(f"{k} {v}" for k, v in info.items()) + ".",
        "",
        "Versions (project venv, at the end): " + ", ".join(f"{k} {v}" for k, v in vers.items()) + "."
        + (" **Changed during the run** (someone installed into the venv): "
           + ", ".join(f"{k} {v}" for k, v in moved.items()) + "." if moved else ""),
        "",
        "Peer venvs (benchmarks/.venvs): " + ("; ".join(f"{k}: {v}" for k, v in peers.items()) or "none") + ".",
        "",
        "Scripts:",
        *ledger,
        "",
    ]
    args.output.write_text("\n".join(head) + "\n" + "\n".join(x.rstrip() + "\n" for x in sections), encoding="utf-8")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
