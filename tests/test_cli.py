"""The citylake CLI: JSON-only stdout for `lake ls --json`, backfill flags, one-line errors."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from conftest import TEST_DEPARTMENT

from pipelines.settings import Settings

CLI = [sys.executable, "-m", "pipelines.cli"]

REGISTRY = """\
system: shop
name: 测试商户系统
department: """ + TEST_DEPARTMENT + """
connection: src_shop
default_url: sqlite:///{db}
tables:
  - code: orders
    source: 订单
    primary_key: [order_id]
    cursor: updated_at
    columns: {{编号: order_id, 金额: amount, 更新时间: updated_at}}
"""


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=120)


def _source(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute('CREATE TABLE "订单" ("编号" INTEGER, "金额" NUMERIC(10,2), "更新时间" DATETIME)')
    con.executemany('INSERT INTO "订单" VALUES (?,?,?)',
                    [(i, i * 1.1, f"2026-11-{1 + i % 10:02d} 12:00:00") for i in range(100)])
    con.commit()


def test_backfill_window_then_ls_json(lake_settings: Settings, tmp_path: Path) -> None:
    _source(tmp_path / "shop.db")
    (lake_settings.registry_dir / "shop.yml").write_text(REGISTRY.format(db=tmp_path / "shop.db"), encoding="utf-8")
    done = _run("ingest", "shop", "--since", "2026-11-03", "--until", "2026-11-05")
    assert done.returncode == 0, done.stderr
    listed = _run("lake", "ls", "--json")
    assert listed.returncode == 0
    rows = json.loads(listed.stdout)  # stdout is only JSON
    (orders,) = [r for r in rows if r["table"] == "raw.shop__orders"]
    assert orders["rows"] == 20  # days 3 and 4 only
    # a window on an empty table sets no watermark: the next incremental run must still load days 1-2
    assert orders["watermark"] is None
    assert orders["committed_at"].endswith("+08:00") and isinstance(orders["snapshot_id"], int)
    full = _run("ingest", "shop")  # incremental from the start: nothing before the window is skipped
    assert full.returncode == 0, full.stderr
    rows = {r["table"]: r for r in json.loads(_run("lake", "ls", "--json").stdout)}
    assert rows["raw.shop__orders"]["rows"] == 20 + 20 + 60  # days 1-2 and 5..10 added; days 3-4 not duplicated
    assert rows["raw.shop__orders"]["watermark"] == "2026-11-10T12:00:00+08:00"
    shown = _run("lake", "show", "raw.shop__orders", "--limit", "3")
    assert shown.returncode == 0 and "order_id" in shown.stdout


def test_errors_are_one_line(lake_settings: Settings) -> None:
    missing = _run("ingest", "nosuch")
    assert missing.returncode == 1
    assert len(missing.stderr.strip().splitlines()) == 1 and "nosuch" in missing.stderr
    (lake_settings.registry_dir / "bad.yml").write_text("system: bad\nname: x\ndepartment: " + TEST_DEPARTMENT + "\nconnection: c\n"
                                                        "tables:\n  - code: t\n    source: t\n", encoding="utf-8")
    bad = _run("ingest", "bad")
    assert bad.returncode == 1
    line = bad.stderr.strip()
    assert len(line.splitlines()) == 1 and "bad.yml:6" in line and "primary_key" in line
    half = _run("ingest", "bad", "--since", "2026-11-01")
    assert half.returncode == 1 and "--until" in half.stderr


def test_sources_ls_shows_department_names(lake_settings: Settings, tmp_path: Path) -> None:
    (lake_settings.registry_dir / "shop.yml").write_text(REGISTRY.format(db=tmp_path / "shop.db"), encoding="utf-8")
    listed = _run("sources", "ls")
    assert listed.returncode == 0, listed.stderr
    assert "合肥市数据资源局" in listed.stdout and TEST_DEPARTMENT not in listed.stdout
    (lake_settings.registry_dir / "shop.yml").write_text(
        REGISTRY.format(db=tmp_path / "shop.db").replace(TEST_DEPARTMENT, "市商务局"), encoding="utf-8")
    broken = _run("sources", "ls")
    assert broken.returncode == 1
    assert "shop.yml:3: department: unknown department code '市商务局'" in broken.stderr


def test_quality_run_all_warns_on_a_copy_compared_on_zero_rows(monkeypatch) -> None:  # noqa: ANN001
    """A copy whose keys matched none of the authority's says 0 条可比 (a warning, as the report does),
    never a 0.00 % conflict rate that reads as fully consistent."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    import pipelines.cli as cli
    import pipelines.config
    import pipelines.quality.consistency
    import pipelines.quality.gate

    summary = {"element": "person_name", "authoritative_system": "population", "other_system": "housing_fund",
               "other_table": "account", "compared": 0, "conflicts": 0, "rate": 0.0}
    monkeypatch.setattr(cli, "load_settings", lambda: None)
    monkeypatch.setattr(pipelines.config, "load_config", lambda settings: (None, {}, {}))
    monkeypatch.setattr(pipelines.quality.gate, "run_quality", lambda *a, **k: SimpleNamespace())
    monkeypatch.setattr(pipelines.quality.consistency, "run_consistency", lambda **k: [
        summary, {**summary, "other_table": "other", "compared": 200, "conflicts": 0}])
    result = CliRunner().invoke(cli.app, ["quality", "run", "all"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    zero = next(line for line in lines if "housing_fund.account" in line and "│" in line)
    assert "0 条可比" in zero and "0.00%" not in zero
    assert "0.00%" in next(line for line in lines if "housing_fund.other" in line)
    assert any("warning" in line and "housing_fund.account" in line for line in lines)


def test_importing_pipelines_keeps_openblas_to_one_thread_unless_told() -> None:
    """numpy's OpenBLAS worker spun ~0.1 s of CPU after import, on a core a load needs: ``pipelines`` sets
    OPENBLAS_NUM_THREADS=1 before numpy loads; a value in the environment wins."""
    probe = ("import os, pipelines, numpy; "
             "print(os.environ['OPENBLAS_NUM_THREADS'], len(os.listdir('/proc/self/task')))")
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    default = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert default.stdout.split() == ["1", "1"]  # no OpenBLAS worker thread beside the main one
    told = subprocess.run([sys.executable, "-c", probe], env={**env, "OPENBLAS_NUM_THREADS": "2"},
                          capture_output=True, text=True, check=True)
    assert told.stdout.split()[0] == "2"


def test_importing_pipelines_makes_arrow_allocate_from_jemalloc_unless_told() -> None:
    """mimalloc, pyarrow's default pool, kept the pages a load's phases freed (a 5 M-row full refresh 465-502 MB
    against 428-434 MB): ``pipelines`` picks jemalloc before Arrow's first allocation; the environment wins."""
    probe = "import pipelines, pyarrow as pa; pa.array([1]); print(pa.default_memory_pool().backend_name)"
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    default = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    has_jemalloc = sys.platform.startswith("linux") and os.uname().machine == "x86_64"  # pyarrow's wheels
    assert (default.stdout.strip(), default.stderr) == ("jemalloc" if has_jemalloc else "mimalloc", "")
    told = subprocess.run([sys.executable, "-c", probe], env={**env, "ARROW_DEFAULT_MEMORY_POOL": "system"},
                          capture_output=True, text=True, check=True)
    assert told.stdout.strip() == "system"
