"""SIGKILL in the middle of a load leaves the table at its previous snapshot; the rerun completes exactly."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from conftest import TEST_DEPARTMENT

from pipelines.lake.catalog import get_catalog
from pipelines.settings import Settings

REGISTRY = """\
system: big
name: 大表
department: """ + TEST_DEPARTMENT + """
connection: src_big
default_url: sqlite:///{db}
tables:
  - code: t
    source: t
    primary_key: [id]
    cursor: updated_at
    batch_rows: 5000
"""


def _source(db: Path, start: int, stop: int, day: int) -> None:
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER, payload TEXT, updated_at DATETIME)")
    con.executemany("INSERT INTO t VALUES (?, ?, ?)",
                    ((i, f"行{i}" * 8, f"2026-11-{day:02d} 08:00:00") for i in range(start, stop)))
    con.commit()
    con.close()


def _ingest(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", "ingest", "big", "--batch-id", "second"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_sigkill_mid_load_then_rerun(lake_settings: Settings, tmp_path: Path) -> None:
    db = tmp_path / "big.db"
    _source(db, 0, 1000, 1)
    (lake_settings.registry_dir / "big.yml").write_text(REGISTRY.format(db=db), encoding="utf-8")
    env = {**os.environ}
    first = subprocess.run([sys.executable, "-m", "pipelines.cli", "ingest", "big", "--batch-id", "first"],
                           env=env, capture_output=True, timeout=120)
    assert first.returncode == 0, first.stderr
    table = get_catalog(lake_settings).load_table("raw.big__t")
    before = table.current_snapshot().snapshot_id

    _source(db, 1000, 400_000, 2)
    data_dir = Path(table.location().removeprefix("file://")) / "data"
    files_before = set(data_dir.glob("*.parquet"))
    proc = _ingest(env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (set(data_dir.glob("second-*.parquet")) - files_before):
        time.sleep(0.05)
    assert proc.poll() is None, "the load finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    table = get_catalog(lake_settings).load_table("raw.big__t")
    assert table.current_snapshot().snapshot_id == before
    assert table.scan().to_arrow().num_rows == 1000

    rerun = _ingest(env)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    data = get_catalog(lake_settings).load_table("raw.big__t").scan(selected_fields=("id",)).to_arrow()
    assert data.num_rows == 400_000
    assert len(set(data.column("id").to_pylist())) == 400_000
