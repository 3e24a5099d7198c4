"""What every benchmark shares: whole-process measurement, interleaved repetitions with medians, the
machine and versions, and the sections `make bench` assembles into ``benchmarks/results.md``.

A figure is only compared with a baseline measured in the same run on the same data (README.md): each
script runs its methods in rotating order for ``reps`` repetitions and reports the median of each, with
every repetition's figure beside it, and writes its section to ``benchmarks/out/<name>.md``.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass
class Run:
    """One process: wall seconds, peak RSS of its process tree (MB), exit code, the last stderr line."""

    method: str
    rep: int
    seconds: float
    peak_rss_mb: float
    rc: int
    error: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.rc == 0


def measure(cmd: Sequence[str] | str, env: dict[str, str] | None = None, *, shell: bool = False,
            cwd: Path | None = None, timeout: float | None = None) -> tuple[float, float, int, str]:
    """Wall seconds, peak RSS (MB) of the process tree polled every 20 ms, exit code, stderr's last line."""
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen(cmd, shell=shell, env={**os.environ, **(env or {})}, cwd=cwd,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ps = psutil.Process(proc.pid)
    peak = 0

    tail: list[bytes] = []

    def drain() -> None:  # a chatty child must never block on a full stderr pipe
        assert proc.stderr is not None
        for line in proc.stderr:
            tail.append(line)
            del tail[:-20]

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
            peak = max(peak, rss)
        except psutil.Error:
            pass
        if timeout and time.perf_counter() - started > timeout:
            proc.kill()
        time.sleep(0.02)
    seconds = time.perf_counter() - started
    reader.join(timeout=5)
    lines = [x.decode(errors="replace").strip() for x in tail if x.strip()]
    return seconds, peak / 2**20, proc.returncode, (lines[-1] if lines else "")


def interleaved(methods: dict[str, Callable[[int], Run]], reps: int,
                before_each: Callable[[str, int], None] | None = None, log: bool = True,
                capped: dict[str, int] | None = None) -> list[Run]:
    """Run every method ``reps`` times, rotating the order each repetition (rep 1: a b c, rep 2: b c a, …)
    so that no method always runs first (cold caches) or last (a warmed machine). ``capped``: methods run
    only in their first N repetitions (peers many times slower than the rest, whose one figure is enough to
    place them and whose repetitions would take most of the run); their row says how many ran."""
    names = list(methods)
    runs: list[Run] = []
    for rep in range(1, reps + 1):
        k = (rep - 1) % len(names)
        for name in names[k:] + names[:k]:
            if capped and rep > capped.get(name, reps):
                continue
            if before_each:
                before_each(name, rep)
            run = methods[name](rep)
            runs.append(run)
            if log:
                state = "ok" if run.ok else f"FAILED: {run.error}"
                print(f"  rep {rep} {name:<22} {run.seconds:8.2f}s {run.peak_rss_mb:7.0f} MB  {state}", flush=True)
    return runs


def command_run(name: str, cmd: Sequence[str] | str, env: dict[str, str] | None = None, *, shell: bool = False,
                timeout: float | None = None) -> Callable[[int], Run]:
    """A method that is one command, measured whole."""

    def run(rep: int) -> Run:
        seconds, rss, rc, err = measure(cmd, env, shell=shell, timeout=timeout)
        return Run(name, rep, seconds, rss, rc, err if rc else "")

    return run


@dataclass
class Summary:
    method: str
    seconds: float  # median over the successful repetitions
    peak_rss_mb: float  # median
    each: list[Run]

    @property
    def ok(self) -> bool:
        return bool(self.each) and all(r.ok for r in self.each)

    def rows_per_s(self, rows: int) -> float:
        return rows / self.seconds if self.seconds else 0.0

    def reps_text(self) -> str:
        return ", ".join(f"{r.seconds:.1f}s/{r.peak_rss_mb:.0f}" + ("" if r.ok else " FAILED") for r in self.each)


def summarize(runs: list[Run]) -> dict[str, Summary]:
    out: dict[str, Summary] = {}
    for name in dict.fromkeys(r.method for r in runs):
        mine = [r for r in runs if r.method == name]
        good = [r for r in mine if r.ok] or mine
        out[name] = Summary(name, statistics.median(r.seconds for r in good),
                            statistics.median(r.peak_rss_mb for r in good), mine)
    return out


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A fixed-width text table (numbers right-aligned), as printed and as put in results.md."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in cells)) if cells else len(str(h)) for i, h in enumerate(header)]
    right = [all(_numeric(r[i]) for r in cells) for i in range(len(header))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right, strict=True)).rstrip()

    return "\n".join([line([str(h) for h in header])] + [line(r) for r in cells])


def _cell(v: object) -> str:
    if isinstance(v, float):
        return f"{v:,.2f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return str(v)


def _numeric(s: str) -> bool:
    return s.replace(",", "").replace(".", "", 1).replace("x", "").replace("-", "", 1).strip().isdigit() or s == "-"


def psql(sql: str, db: str = "postgres", *, capture: bool = True) -> str:
    done = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-q", "-X", "-v", "ON_ERROR_STOP=1",
                           "-tA"], input=sql, text=True, check=True, capture_output=capture)
    return (done.stdout or "").strip()


def versions(packages: Sequence[str] = ()) -> dict[str, str]:
    names = ["pyarrow", "pyiceberg", "duckdb", "adbc-driver-postgresql", "sqlalchemy", "pymysql",
             "great-expectations", "connectorx", "dlt", "pandas", *packages]
    out = {}
    for n in dict.fromkeys(names):
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "not installed"
    return out


def machine() -> dict[str, str]:
    """What a reader needs to compare a figure: CPU, cores, memory, OS, Python and the servers' versions."""
    info = {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "python": platform.python_version(),
            "os": platform.platform(), "cores": str(os.cpu_count())}
    try:
        model = next(x.split(":", 1)[1].strip() for x in Path("/proc/cpuinfo").read_text().splitlines()
                     if x.startswith("model name"))
        info["cpu"] = model
    except (OSError, StopIteration):
        info["cpu"] = platform.processor() or "unknown"
    try:
        kb = next(int(x.split()[1]) for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal"))
        info["memory"] = f"{kb / 2**20:.1f} GiB"
    except (OSError, StopIteration):
        pass
    try:
        info["postgresql"] = psql("SHOW server_version")
    except (OSError, subprocess.CalledProcessError):
        info["postgresql"] = "not reachable"
    try:
        info["mariadb"] = subprocess.run(["mariadb", "-h", "127.0.0.1", "-u", "root", "-N", "-e", "SELECT VERSION()"],
                                         capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        info["mariadb"] = "not reachable"
    try:
        info["load average at start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        pass
    return info


def machine_lines(info: dict[str, str], packages: Sequence[str] = ()) -> list[str]:
    """A section's "Machine: …" and "Versions: …" lines, with the load average at the end of its run."""
    return ["Machine: " + "; ".join(f"{k} {v}" for k, v in info.items())
            + "; load average at end " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + ".",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in versions(packages).items() if v != "not installed") + "."]


def write_section(name: str, markdown: str) -> Path:
    """One script's section of results.md (``benchmarks/out/<name>.md``); `make bench` assembles them."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.md"
    path.write_text(markdown.rstrip() + "\n", encoding="utf-8")
    return path


def python() -> str:
    return sys.executable


# The two PostgreSQL ingest tables (issue 13): ``resident`` is the project's first benchmark table (names
# from 36 combinations, few distinct values: compresses and decodes unrealistically well); ``resident_real``
# has the values a city system holds: random names and addresses that rarely repeat, ``char(n)`` codes,
# ``timestamptz``, ``numeric(12,2)``. setseed makes every build the same table.
PG_TABLES = {
    "resident": """
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
""",
    "resident_real": """
SELECT setseed(0.42);
CREATE TABLE resident_real (
  id bigint PRIMARY KEY, resident_id char(18), name varchar(20), sex char(1), birth_date date, district_code char(6),
  address varchar(100), phone char(11), monthly_income numeric(12,2), registered_at timestamptz, status smallint,
  updated_at timestamptz);
WITH c AS (SELECT '赵钱孙李周吴郑王冯陈褚卫蒋沈韩杨朱秦尤许何吕施张孔曹严华金魏陶姜戚谢邹喻柏水窦章云苏潘葛奚范彭郎鲁韦昌马苗凤花方俞任袁柳酆鲍史唐费廉岑薛雷贺倪汤滕殷罗毕郝邬安常乐于时傅皮卞齐康伍余元卜顾孟平黄和穆萧尹'::text AS surnames,
                  '伟芳娜敏静丽强磊军洋勇艳杰娟涛明超秀霞平刚桂英华玉兰萍红建国志文斌辉宇浩然子轩梓涵一诺欣怡雨桐思远佳琪俊杰晨阳博文雅婷嘉怡梦琪若曦天佑瑞泽奕辰'::text AS given,
                  '长江西黄山望江徽州芜湖宿州合作化金寨马鞍山淮河寿春蒙城阜阳亳州六安桐城潜山安庆繁华习友翡翠天鹅湖祁门休宁'::text AS roads)
INSERT INTO resident_real
SELECT g,
  (array['340102','340103','340104','340111','340121','340122','340123','340124','340181'])[1 + floor(random() * 9)::int]
    || to_char(date '1940-01-01' + floor(random() * 30000)::int, 'YYYYMMDD') || lpad(floor(random() * 1000)::text, 3, '0')
    || substr('0123456789X', 1 + floor(random() * 11)::int, 1),
  substr(c.surnames, 1 + floor(random() * length(c.surnames))::int, 1)
    || substr(c.given, 1 + floor(random() * length(c.given))::int, 1)
    || CASE WHEN random() < 0.6 THEN substr(c.given, 1 + floor(random() * length(c.given))::int, 1) ELSE '' END,
  (array['1','2'])[1 + floor(random() * 2)::int], date '1940-01-01' + floor(random() * 30000)::int,
  (array['340102','340103','340104','340111','340121','340122','340123','340124','340181'])[1 + floor(random() * 9)::int],
  '安徽省合肥市' || (array['瑶海区','庐阳区','蜀山区','包河区','长丰县','肥东县','肥西县','庐江县','巢湖市'])[1 + floor(random() * 9)::int]
    || substr(c.roads, 1 + floor(random() * (length(c.roads) - 1))::int, 2) || '路' || floor(random() * 2000)::int || '号'
    || floor(random() * 40)::int || '栋' || floor(random() * 3000)::int || '室',
  '1' || (array['3','5','7','8','9'])[1 + floor(random() * 5)::int] || lpad(floor(random() * 1e9)::bigint::text, 9, '0'),
  round((random() * 50000)::numeric, 2), timestamptz '2000-01-01 00:00+08' + random() * interval '9000 days',
  floor(random() * 3)::smallint, timestamptz '2026-01-01 00:00+08' + random() * interval '300 days'
FROM generate_series(1, {rows}) g, c;
VACUUM ANALYZE resident_real;
""",
}


def pg_table(db: str, table: str, rows: int) -> bool:
    """Make sure ``db`` holds ``table`` (one of PG_TABLES) with exactly ``rows`` rows; True if it was built.
    A table of another size is dropped and rebuilt; the database is created when missing."""
    if not psql(f"SELECT 1 FROM pg_database WHERE datname = '{db}'"):
        psql(f"CREATE DATABASE {db}")
    exists = psql(f"SELECT to_regclass('{table}') IS NOT NULL", db) == "t"
    if exists and psql(f"SELECT count(*) FROM {table}", db) == str(rows):
        return False
    psql(f"DROP TABLE IF EXISTS {table}", db)
    psql(PG_TABLES[table].format(rows=rows), db)
    return True


def bench_venv(name: str, requirements: Sequence[str]) -> Path:
    """The python of a venv of its own under ``benchmarks/.venvs/<name>`` holding exactly ``requirements``
    (a peer whose wheel pins another DuckDB than the project's, say); made with the project's uv, remade
    when the requirements change."""
    venv = ROOT / "benchmarks" / ".venvs" / name
    stamp, py = venv / ".requirements", venv / "bin" / "python"
    wanted = "\n".join(requirements)
    if py.exists() and stamp.exists() and stamp.read_text() == wanted:
        return py
    uv = ROOT / ".venv" / "bin" / "uv"
    subprocess.run([str(uv), "venv", "-q", "--clear", "--python", sys.executable, str(venv)], check=True)
    subprocess.run([str(uv), "pip", "install", "-q", "--python", str(py), *requirements], check=True)
    stamp.write_text(wanted)
    return py
