"""The open-data release end to end on a small curated lake (tests/open_lake.py): complete verified folders
whose three formats read back identically through pyarrow, pandas and DuckDB; de-identification applied; a
resident ID planted in free text blocks only its dataset; a release killed between datasets (an injected
exception, and a real SIGKILL) leaves every pointer on a complete release; reruns are idempotent; retention
keeps every referenced folder; an S3 release (moto) has the same files and checksums as the local one; an
independent check (python-stdnum and a plain regex, not the privacy module) finds no ID or mobile anywhere."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from conftest import scoped_env
from open_lake import project_copy, rows, table_of, write_build

from pipelines.settings import TZ, Settings, load_settings

D1, D2, D3 = date(2026, 11, 20), date(2026, 11, 21), date(2026, 11, 22)
OPEN = ["air_quality_daily", "air_quality_district_daily", "bus_ridership_daily", "enterprise_registrations_monthly",
        "golden_legal_person", "poi_wgs84"]
CARDS = {"air_quality_daily", "golden_legal_person"}
DATA = ("csv", "jsonl", "parquet")
PLANTED = "340104199001011239"  # a valid GB 11643 ID (checked below with python-stdnum)


@dataclasses.dataclass
class Lake:
    settings: Settings
    config: Any
    env: dict[str, str]
    clean: dict[str, list[dict[str, Any]]]
    builds: int = 0

    def build(self, dataset: str, data: list[dict[str, Any]] | None = None, status: str = "published") -> str:
        """A new build of ``dataset`` (its clean rows unless ``data``), recorded as passing the gate."""
        self.builds += 1
        build_id = f"build__{self.builds:04d}"
        write_build(self.settings, self.config.curated[dataset], self.config.standards,
                    self.clean[dataset] if data is None else data, build_id, status)
        return build_id

    def exports(self, path: Path, **changes: Any) -> Settings:
        return dataclasses.replace(self.settings, exports_dir=str(path), **changes)


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lake]:
    base = tmp_path_factory.mktemp("open")
    root = project_copy(base / "root")
    env = {"CITYLAKE_ROOT": str(root), "CITYLAKE_REGISTRY_DIR": str(root / "schemas" / "sources"),
           "CITYLAKE_LAKE_DIR": str(base / "lake"), "CITYLAKE_DATA_DIR": str(base / "data"),
           "CITYLAKE_EXPORTS_DIR": str(base / "exports")}
    with scoped_env(env):
        from pipelines.config import load_all

        settings = load_settings()
        config = load_all(settings)
        rng = random.Random(20261120)
        lake = Lake(settings, config, env, {ds: rows(ds, rng) for ds in sorted(config.curated)})
        for ds in sorted(config.curated):
            lake.build(ds)
        yield lake


def _release(settings: Settings, day: date, **kw: Any) -> Any:
    from pipelines.publish.release import release_open_data

    return release_open_data(settings, release_date=day, **kw)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _pointer(exports: Path) -> dict[str, Any]:
    return json.loads((exports / "open" / "latest.json").read_text(encoding="utf-8"))


def assert_complete(exports: Path) -> dict[str, Any]:
    """Every folder latest.json names is complete: its manifest is the one the pointer names, and every file
    the manifest lists is there with its size and SHA-256 (hashlib), and nothing else."""
    pointer = _pointer(exports)
    for ds, entry in pointer["datasets"].items():
        folder = exports / entry["path"]
        manifest = folder / "manifest.json"
        assert _sha(manifest) == entry["manifest"], ds
        listed = json.loads(manifest.read_text(encoding="utf-8"))["files"]
        assert {f["name"] for f in listed} | {"manifest.json"} == {p.name for p in folder.iterdir()}, ds
        for f in listed:
            path = folder / f["name"]
            assert path.stat().st_size == f["bytes"] and _sha(path) == f["sha256"], (ds, f["name"])
    return pointer


def assert_frictionless_valid(folder: Path) -> None:
    """frictionless (the Frictionless reference implementation) validates the folder's datapackage.json against
    the files: types, constraints (required, unique, pattern, enum), primary key, encoding, row counts."""
    from frictionless import Package, system

    with system.use_context(trusted=True):
        report = Package(str(folder / "datapackage.json")).validate()
    problems = [f"{e.type}: {e.message}" for task in report.tasks for e in task.errors][:5]
    assert sum(task.stats.get("rows") or 0 for task in report.tasks) > 0, folder.name  # rows were read
    assert report.valid, (folder.name, [f"{e.type}: {e.message}" for e in report.errors][:5] or problems)


def _stages(exports: Path) -> list[Path]:
    return [p for p in (exports / "open").rglob(".*") if p.name.startswith((".stage-", ".old-", ".tmp-"))]


def _events(settings: Settings) -> list[dict[str, Any]]:
    from pipelines.lake.catalog import get_catalog

    return get_catalog(settings).load_table("meta.releases").scan().to_arrow().to_pylist()


# --- a complete release -----------------------------------------------------------------------------------


def test_release_writes_complete_folders_that_read_back_identically(lake: Lake, tmp_path: Path) -> None:
    from pipelines.lake.catalog import get_catalog

    exports = tmp_path / "exports"
    result = _release(lake.exports(exports), D1)
    status = {o.dataset: o.status for o in result.outcomes}
    assert status == {**{ds: "released" for ds in OPEN}, "golden_resident": "not_open"}
    not_open = next(o.reason for o in result.outcomes if o.dataset == "golden_resident")
    assert re.search(r"\(schemas/curated/golden_resident\.yml:\d+\)", not_open or ""), not_open  # not the server's path
    assert result.folder == f"{exports}/open/{D1}/" and result.catalog == f"open/{D1}/catalog.jsonld"
    pointer = assert_complete(exports)
    assert set(pointer["datasets"]) == set(OPEN) and pointer["catalog"] == result.catalog
    assert not (exports / "open" / str(D1) / "golden_resident").exists()  # 不予开放: never exported
    for ds in OPEN:
        folder = exports / "open" / str(D1) / ds
        expected = {f"{ds}.{x}" for x in DATA} | {"datapackage.json", "dictionary.csv", "manifest.json", "changes.json"}
        assert {p.name for p in folder.iterdir()} == expected | ({"card.md", "card.json"} if ds in CARDS else set())
        raw = (folder / f"{ds}.csv").read_bytes()
        assert raw.startswith(b"\xef\xbb\xbf") and raw.endswith(b"\r\n") and raw.count(b"\n") == raw.count(b"\r\n")
        assert (folder / "dictionary.csv").read_bytes().startswith(b"\xef\xbb\xbf")
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        # the cut-off is a snapshot commit time (here the build's: the fake inputs name no real snapshot), not
        # midnight of the data's last date
        built = get_catalog(lake.settings).load_table(f"curated.{ds}").current_snapshot().timestamp_ms
        assert round(datetime.fromisoformat(manifest["cutoff"]["latest_event_time"]).timestamp() * 1000) == built
        assert manifest["rows"] == len(lake.clean[ds]) and manifest["build_id"] == pointer["datasets"][ds]["build_id"]
        _same_values(folder, ds)
        assert_frictionless_valid(folder)
    events = [e for e in _events(lake.settings) if e["run_id"] == result.run_id]
    assert {e["dataset"]: e["status"] for e in events} == status


def _canon(v: Any) -> Any:
    """One value as comparable across readers: NA → None, Timestamp → date, Decimal/numpy → float/int."""
    import pandas as pd

    if v is None or (not isinstance(v, str | bytes) and pd.isna(v)):
        return None
    if isinstance(v, pd.Timestamp):
        return v.date()
    if isinstance(v, Decimal):
        return float(v)
    if hasattr(v, "item"):
        v = v.item()
    return float(v) if isinstance(v, float) else v


def _same_values(folder: Path, ds: str) -> None:
    """Parquet, CSV and JSON Lines hold the same rows and values, read by pandas and by DuckDB."""
    import duckdb
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(folder / f"{ds}.parquet")
    dates = [f.name for f in schema if pa.types.is_date(f.type)]
    text = {f.name: str for f in schema if pa.types.is_string(f.type)}
    ref = pq.read_table(folder / f"{ds}.parquet").to_pandas()
    csv = pd.read_csv(folder / f"{ds}.csv", encoding="utf-8-sig", dtype=text, parse_dates=dates)
    jsonl = pd.read_json(folder / f"{ds}.jsonl", lines=True, dtype=False)
    for col in dates:
        jsonl[col] = pd.to_datetime(jsonl[col])
    expected = [[_canon(v) for v in row] for row in ref.itertuples(index=False)]
    for name, df in (("csv", csv), ("jsonl", jsonl)):
        assert list(df.columns) == schema.names, (ds, name)
        assert [[_canon(v) for v in row] for row in df.itertuples(index=False)] == expected, (ds, name, "pandas")
    con = duckdb.connect()
    types = dict(con.sql(f"DESCRIBE SELECT * FROM read_parquet('{folder / ds}.parquet')").fetchall()[i][:2]
                 for i in range(len(schema)))
    columns = "{" + ", ".join(f"'{k}': '{v}'" for k, v in types.items()) + "}"
    ref_rows = con.sql(f"SELECT * FROM read_parquet('{folder / ds}.parquet')").fetchall()
    for reader in (f"read_csv('{folder / ds}.csv', header = true, columns = {columns})",
                   f"read_json('{folder / ds}.jsonl', format = 'newline_delimited', columns = {columns})"):
        got = con.sql(f"SELECT * FROM {reader}").fetchall()
        assert got == ref_rows, (ds, reader[:9], "duckdb")


# --- de-identification --------------------------------------------------------------------------------------


def test_deid_drops_generalises_and_suppresses(lake: Lake, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    exports = tmp_path / "exports"
    result = _release(lake.exports(exports), D1, datasets=["golden_legal_person", "poi_wgs84", "bus_ridership_daily"],
                      finish=False)
    day = exports / "open" / str(D1)
    glp = pq.read_table(day / "golden_legal_person" / "golden_legal_person.parquet")
    assert "legal_representative" not in glp.column_names and "credit_watch_count" not in glp.column_names
    assert "legal_representative" not in (day / "golden_legal_person" / "golden_legal_person.csv").read_text("utf-8-sig")
    years = dict(zip(glp["uscc"].to_pylist(), glp["established_on"].to_pylist(), strict=True))
    assert {r["uscc"]: r["established_on"].year for r in lake.clean["golden_legal_person"]} == years
    assert str(glp.schema.field("established_on").type) == "int32"
    poi = {r["poi_id"]: r for r in pq.read_table(day / "poi_wgs84" / "poi_wgs84.parquet").to_pylist()}
    for r in lake.clean["poi_wgs84"]:  # floored to the 0.01° cell's south-west corner
        for axis in ("longitude", "latitude"):
            cell = poi[r["poi_id"]][axis]
            assert cell == round(cell, 2) and 0 <= r[axis] - cell < 0.01 + 1e-9, (r["poi_id"], axis)
    bus = pq.read_table(day / "bus_ridership_daily" / "bus_ridership_daily.parquet").to_pylist()
    source = lake.clean["bus_ridership_daily"]
    small = sum(1 for r in source if 1 <= r["boardings"] < 5)  # zeros are published (GB/T 37964 practice)
    assert small > 10 and any(r["boardings"] == 0 for r in source)
    assert [r["boardings"] for r in bus] == [None if 1 <= r["boardings"] < 5 else r["boardings"] for r in source]
    outcome = {o.dataset: o for o in result.outcomes}["bus_ridership_daily"]
    assert outcome.suppressed == {"boardings": small}


# --- the leak gate ------------------------------------------------------------------------------------------


def test_planted_resident_id_blocks_only_its_dataset(lake: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from stdnum.cn import ric
    from typer.testing import CliRunner

    from pipelines.cli import app

    assert ric.is_valid(PLANTED)
    exports = tmp_path / "exports"
    settings = lake.exports(exports)
    _release(settings, D1)
    leaky = [dict(r) for r in lake.clean["poi_wgs84"]]
    leaky[17]["poi_name"] = f"社区服务点(联系人证件{PLANTED}请勿外传)"  # a free-text column whose name says nothing
    lake.build("poi_wgs84", leaky)
    lake.build("bus_ridership_daily", [{**r, "boardings": r["boardings"] + 1} for r in lake.clean["bus_ridership_daily"]])
    try:
        monkeypatch.setenv("CITYLAKE_EXPORTS_DIR", str(exports))
        cli = CliRunner().invoke(app, ["open", "release", "--date", str(D2)])
        assert cli.exit_code == 1, cli.output  # blocked: the others released all the same
        assert PLANTED not in cli.output and "340104********1239" in cli.output
        pointer = assert_complete(exports)
        assert pointer["datasets"]["poi_wgs84"]["path"] == f"open/{D1}/poi_wgs84/"  # stays on the previous release
        assert pointer["datasets"]["bus_ridership_daily"]["path"] == f"open/{D2}/bus_ridership_daily/"
        assert not (exports / "open" / str(D2) / "poi_wgs84").exists() and not _stages(exports)
        blocked = [e for e in _events(settings) if e["dataset"] == "poi_wgs84" and e["status"] == "blocked"]
        assert len(blocked) == 1 and PLANTED not in json.dumps(blocked[0], default=str)
        hits = json.loads(blocked[0]["leak_hits"])
        assert {(h["file"], h["column"], h["row"], h["kind"], h["value"]) for h in hits} == {
            (f"poi_wgs84.{x}", "poi_name", 18, "resident_id", "340104********1239") for x in DATA}
        assert blocked[0]["folder"] == f"open/{D1}/poi_wgs84/"
    finally:
        lake.build("poi_wgs84")
        lake.build("bus_ridership_daily")
    assert_no_identifiers(exports)


def test_a_detector_change_changes_every_release_fingerprint(lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    """LEAK_VERSION is part of the fingerprint: a detector fix re-releases (re-scans) unchanged builds."""
    from pipelines.publish import leak
    from pipelines.publish.release import fingerprint

    contract = lake.config.curated["poi_wgs84"]
    before = fingerprint(contract)
    monkeypatch.setattr(leak, "LEAK_VERSION", leak.LEAK_VERSION + 1)
    assert fingerprint(contract) != before


def test_glued_and_split_identifiers_in_free_text_block_the_dataset(lake: Lake, tmp_path: Path) -> None:
    """An ID after a date, an ID written in groups, a mobile written with dots, a card after a date: each a
    hit in every format (the same free-text column), and the dataset blocked."""
    from stdnum import luhn

    card = "622202123456789012"
    card += luhn.calc_check_digit(card)
    planted = {3: f"登记日期2024-05-01 {PLANTED}", 5: f"证件 {PLANTED[:6]} {PLANTED[6:14]} {PLANTED[14:]}",
               7: "来电 138.1234.5678", 9: "2024-05-01 " + " ".join(card[i:i + 4] for i in range(0, 19, 4)),
               11: f"第3{PLANTED}号"}
    leaky = [dict(r) for r in lake.clean["poi_wgs84"]]
    for i, text in planted.items():
        leaky[i]["poi_name"] = text
    lake.build("poi_wgs84", leaky)
    try:
        result = _release(lake.exports(tmp_path / "exports"), D1, datasets=["poi_wgs84"], finish=False)
        outcome = {o.dataset: o for o in result.outcomes}["poi_wgs84"]
        assert outcome.status == "blocked"
        kinds = {4: "resident_id", 6: "resident_id", 8: "mobile", 10: "bank_card", 12: "resident_id"}
        assert {(h["file"], h["row"], h["kind"]) for h in outcome.leak_hits} == {
            (f"poi_wgs84.{x}", row, kind) for x in DATA for row, kind in kinds.items()}
        assert PLANTED not in json.dumps(outcome.leak_hits) and card not in json.dumps(outcome.leak_hits)
    finally:
        lake.build("poi_wgs84")


def test_snapshot_ids_are_exempt_only_under_snapshot_in_provenance(tmp_path: Path) -> None:
    """A snapshot id that reads as a card is the lake's bookkeeping only as a provenance column's "snapshot"
    value: the same digits in another column, or under another key, are a hit."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines.publish.leak import ScanColumn, scan_file

    snap = "6222021234567890128"  # issuer 62 + Luhn: a card by every check
    table = pa.table({"note": ["正常", f"流水{snap}"],
                      "field_provenance": [json.dumps({"poi_name": {"snapshot": int(snap)}}),
                                           json.dumps({"poi_name": {"snapshot": 1, "batch": int(snap)}})]})
    pq.write_table(table, tmp_path / "t.parquet")
    columns = [ScanColumn("note", pa.string()), ScanColumn("field_provenance", pa.string(), provenance=True)]
    scan = scan_file(tmp_path / "t.parquet", "parquet", columns, exempt=frozenset({snap}))
    assert {(h.column, h.row) for h in scan.hits} == {("note", 2), ("field_provenance", 2)}
    with (tmp_path / "t.jsonl").open("w", encoding="utf-8") as f:
        for row in table.to_pylist():
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    scan = scan_file(tmp_path / "t.jsonl", "jsonl", columns, exempt=frozenset({snap}))
    assert {(h.column, h.row) for h in scan.hits} == {("note", 2), ("field_provenance", 2)}
    plain = [ScanColumn("note", pa.string()), ScanColumn("field_provenance", pa.string())]
    scan = scan_file(tmp_path / "t.parquet", "parquet", plain, exempt=frozenset({snap}))
    assert {(h.column, h.row) for h in scan.hits} == {("note", 2), ("field_provenance", 1), ("field_provenance", 2)}


ID_TOKEN = re.compile(r"[0-9Xx]{18,}")
MOBILE = re.compile(r"(?<![0-9A-Za-z])(?:\+?86)?1[3-9][0-9]{9}(?![0-9A-Za-z])")
"""A mobile number not inside a longer word: the metadata's SHA-256 hex digests hold digit runs."""


def assert_no_identifiers(exports: Path) -> None:
    """Independent of the privacy module: every 18-character window of every digit run in every open file
    (Parquet values as text) is not a valid resident ID by python-stdnum, and no mobile number appears."""
    import pyarrow.parquet as pq
    from stdnum.cn import ric

    files = [p for p in exports.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert files
    for path in files:
        text = "\n".join(str(v) for row in pq.read_table(path).to_pylist() for v in row.values()) \
            if path.suffix == ".parquet" else path.read_text(encoding="utf-8-sig", errors="replace")
        for run in ID_TOKEN.findall(text):
            for i in range(len(run) - 17):
                assert not ric.is_valid(run[i:i + 18]), f"{path.name}: a resident ID"
        assert not MOBILE.search(text), f"{path.name}: a mobile number"


# --- kills, reruns, retention ---------------------------------------------------------------------------------


def test_release_interrupted_after_a_pointer_moved_leaves_every_pointer_complete(
        lake: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception that escapes the release (KeyboardInterrupt: not one dataset's failure) right after the
    first dataset's pointer moved: that dataset is on the new release, the others on the previous one, every
    folder complete, nothing staged left; the rerun completes the release."""
    from pipelines.publish import release

    exports = tmp_path / "exports"
    settings = lake.exports(exports)
    some = OPEN[:3]
    _release(settings, D1, datasets=some)
    for ds in some:
        lake.build(ds)
    moved = []
    original = release.move_dataset

    def move_then_die(store: Any, dataset: str, entry: dict[str, Any]) -> Any:
        original(store, dataset, entry)
        moved.append(dataset)
        raise KeyboardInterrupt  # the kill lands between two datasets

    monkeypatch.setattr(release, "move_dataset", move_then_die)
    started = datetime.now(UTC)
    with pytest.raises(KeyboardInterrupt):
        _release(settings, D2, datasets=some)
    monkeypatch.setattr(release, "move_dataset", original)
    pointer = assert_complete(exports)
    assert moved == [some[0]]
    assert {ds: e["release_date"] for ds, e in pointer["datasets"].items()} == {
        ds: str(D2 if ds == some[0] else D1) for ds in some}
    assert not _stages(exports)
    # the interrupted run still records what it did: the dataset whose pointer moved is released
    assert [(e["dataset"], e["status"]) for e in _events(settings) if e["recorded_at"] > started] == [
        (some[0], "released")]
    again = _release(settings, D2, datasets=some)
    assert {o.dataset: o.status for o in again.outcomes} == {
        ds: "unchanged" if ds == some[0] else "released" for ds in some}
    assert {e["release_date"] for e in assert_complete(exports)["datasets"].values()} == {str(D2)}


KILL_SCRIPT = """
import os, signal, sys
from datetime import UTC, date, datetime
from pipelines.publish import writers
from pipelines.publish.release import release_open_data
original = writers.HashingSink.write
def write(self, data):
    # SIGKILL in the middle of the second dataset's CSV: no cleanup, no finally, nothing flushed
    if self.path.name == sys.argv[2] + ".csv" and self.size > 0:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, data)
writers.HashingSink.write = write
release_open_data(release_date=date.fromisoformat(sys.argv[1]), datasets=sys.argv[3:])
"""


def test_release_sigkilled_mid_write_leaves_every_pointer_complete(lake: Lake, tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    settings = lake.exports(exports)
    first, second = OPEN[2], OPEN[3]
    _release(settings, D1, datasets=[first, second])
    lake.build(first)
    lake.build(second)
    env = {**os.environ, **lake.env, "CITYLAKE_EXPORTS_DIR": str(exports)}
    done = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(D2), second, first, second], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    pointer = assert_complete(exports)
    assert pointer["datasets"][first]["release_date"] == str(D2)
    assert pointer["datasets"][second]["release_date"] == str(D1)  # its half-written folder is staged only
    assert [p.name.split("-")[0] for p in _stages(exports)] == [".stage"]
    assert not (exports / "open" / str(D2) / second).exists()
    rerun = _release(settings, D2, datasets=[first, second])
    assert [o.status for o in rerun.outcomes] == ["unchanged", "released"]
    assert not _stages(exports)  # the killed run's staging swept
    assert {e["release_date"] for e in assert_complete(exports)["datasets"].values()} == {str(D2)}


def test_rerun_is_idempotent_and_a_same_day_rebuild_gets_a_new_folder(lake: Lake, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    exports = tmp_path / "exports"
    settings = lake.exports(exports)
    ds = "bus_ridership_daily"
    _release(settings, D1, datasets=[ds])
    lake.build(ds, [{**r, "boardings": r["boardings"] + (100 if i < 7 else 0)} for i, r in
                    enumerate(lake.clean[ds])])
    _release(settings, D2, datasets=[ds])
    folder = exports / "open" / str(D2) / ds
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}
    pointer_bytes = (exports / "open" / "latest.json").read_bytes()
    again = _release(settings, D2, datasets=[ds])
    assert again.outcomes[0].status == "unchanged"
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()} == before
    assert (exports / "open" / "latest.json").read_bytes() == pointer_bytes
    changes = json.loads((folder / "changes.json").read_text(encoding="utf-8"))
    assert (changes["previous"], changes["changed"], changes["added"], changes["removed"]) == (
        f"open/{D1}/{ds}/", 7, 0, 0)
    try:
        build = lake.build(ds, [{**r, "boardings": r["boardings"] + (100 if i < 9 else 0)} for i, r in
                                enumerate(lake.clean[ds])])
        new = f"open/{D2}/{ds}~{build.removeprefix('build__')[:8]}/"
        with _watch_pointer_moves(monkeypatch) as seen:  # same day, new build: a new folder, the old one intact
            rebuilt = _release(settings, D2, datasets=[ds])
        assert rebuilt.outcomes[0].status == "released" and rebuilt.outcomes[0].folder == new
        assert seen == [(new, before)]  # when the pointer moved: the old folder untouched, the new one complete
        entry = _pointer(exports)["datasets"][ds]
        assert entry["path"] == new and entry["manifest"] != json.loads(pointer_bytes)["datasets"][ds]["manifest"]
        changes = json.loads((exports / new / "changes.json").read_text(encoding="utf-8"))
        assert (changes["previous"], changes["changed"]) == (f"open/{D1}/{ds}/", 9)  # still against yesterday's
        assert_complete(exports)
        assert rebuilt.removed == [f"open/{D2}/{ds}/"]  # superseded and unreferenced: retention removed it
        assert not folder.exists() and not _stages(exports)
    finally:
        lake.build(ds)


@contextlib.contextmanager
def _watch_pointer_moves(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, Any]]]:
    """Record, at each pointer move, the new path and the (inode, mtime) of every file of the folder the pointer
    named until then, after checking that the new folder is complete (assert_complete on the moved entry)."""
    from pipelines.publish import pointer, release

    seen: list[tuple[str, Any]] = []
    real = pointer.move_dataset

    def move(store: Any, dataset: str, entry: dict[str, Any]) -> dict[str, Any]:
        root = Path(store.location)
        old = root / _pointer(root)["datasets"][dataset]["path"]
        new = root / entry["path"]
        listed = json.loads((new / "manifest.json").read_text(encoding="utf-8"))["files"]
        assert _sha(new / "manifest.json") == entry["manifest"]
        assert all(_sha(new / f["name"]) == f["sha256"] for f in listed)
        seen.append((entry["path"], {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in old.iterdir()}))
        return real(store, dataset, entry)

    monkeypatch.setattr(release, "move_dataset", move)
    yield seen


def test_retention_keeps_every_referenced_folder(lake: Lake, tmp_path: Path) -> None:
    exports = tmp_path / "exports"
    settings = lake.exports(exports, open_keep=2)
    keep = ["poi_wgs84", "air_quality_district_daily"]
    _release(settings, D1, datasets=keep)
    leaky = [dict(r) for r in lake.clean["poi_wgs84"]]
    leaky[3]["poi_name"] = f"{PLANTED}"
    try:
        for day in (D2, D3):
            lake.build("poi_wgs84", leaky)
            lake.build("air_quality_district_daily")
            out = _release(settings, day, datasets=keep)
            assert [o.status for o in out.outcomes] == ["blocked", "released"]
        assert out.removed == [f"open/{D1}/air_quality_district_daily/"]
        assert sorted(p.name for p in (exports / "open" / str(D1)).iterdir()) == ["catalog.jsonld", "poi_wgs84"]
        assert assert_complete(exports)["datasets"]["poi_wgs84"]["path"] == f"open/{D1}/poi_wgs84/"
    finally:
        lake.build("poi_wgs84")


def test_not_passed_and_unknown_dataset(lake: Lake, tmp_path: Path) -> None:
    from pipelines.errors import CitylakeError

    exports = tmp_path / "exports"
    settings = lake.exports(exports)
    contract = lake.config.curated["air_quality_district_daily"]
    write_build(settings, contract, lake.config.standards, lake.clean[contract.dataset], "build__held", "held")
    out = _release(settings, D1, datasets=[contract.dataset])
    assert out.outcomes[0].status == "released"  # the table still holds the last build that passed
    from pipelines.lake.catalog import get_catalog
    from pipelines.lake.meta import append_events

    current = get_catalog(settings).load_table(contract.table).current_snapshot().summary["citylake.build-id"]
    append_events(get_catalog(settings), [{"dataset": contract.dataset, "raw_batch_id": current, "run_id": "later",
                                           "status": "held", "extracted": 0, "published": 0, "quarantined": 0,
                                           "held": 0, "std_snapshot_id": None, "detail": "[]", "reason": None}])
    try:
        held = _release(settings, D2, datasets=[contract.dataset])
        assert held.outcomes[0].status == "not_passed" and "held" in (held.outcomes[0].reason or "")
        assert _pointer(exports)["datasets"][contract.dataset]["release_date"] == str(D1)
    finally:
        lake.build(contract.dataset)
    with pytest.raises(CitylakeError, match="no curated contract nope"):
        _release(settings, D1, datasets=["nope"])


def _catalogued(exports: Path) -> set[str]:
    """The datasets the pointer's catalog lists (dcat:Dataset ids)."""
    doc = json.loads((exports / _pointer(exports)["catalog"]).read_text(encoding="utf-8"))
    return {d["@id"].split("#")[-1] for d in doc.get("dcat:dataset", [])}


def test_withdrawal_when_not_open_or_uncontracted_and_by_hand(lake: Lake, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from pipelines.cli import app
    from pipelines.publish.release import finish_release

    exports = tmp_path / "exports"
    settings = lake.exports(exports)
    some = ["air_quality_district_daily", "bus_ridership_daily", "poi_wgs84"]
    _release(settings, D1, datasets=some)
    assert _catalogued(exports) == set(some)
    # 1. the contract becomes 不予开放: the entry goes (catalog rewritten), the folder is left to retention
    bus = lake.config.curated["bus_ridership_daily"]
    monkeypatch.setitem(lake.config.curated, bus.dataset,
                        bus.model_copy(update={"open": bus.open.model_copy(update={"type": "不予开放"})}))
    out = _release(settings, D1, datasets=["bus_ridership_daily"], finish=False)
    assert (out.outcomes[0].status, out.outcomes[0].folder) == ("withdrawn", f"open/{D1}/bus_ridership_daily/")
    assert "bus_ridership_daily" not in assert_complete(exports)["datasets"]
    assert _catalogued(exports) == {"air_quality_district_daily", "poi_wgs84"}
    assert (exports / "open" / str(D1) / "bus_ridership_daily" / "manifest.json").exists()
    again = _release(settings, D1, datasets=["bus_ridership_daily"], finish=False)
    assert again.outcomes[0].status == "not_open"  # withdrawn once
    # 2. the contract is deleted: finish_release withdraws it
    monkeypatch.delitem(lake.config.curated, "air_quality_district_daily")
    finish_release(settings, release_date=D1)
    assert set(_pointer(exports)["datasets"]) == {"poi_wgs84"} and _catalogued(exports) == {"poi_wgs84"}
    monkeypatch.undo()
    # 3. by hand, e.g. a leak found after the release: the folder the pointer named is deleted too
    monkeypatch.setenv("CITYLAKE_EXPORTS_DIR", str(exports))
    cli = CliRunner().invoke(app, ["open", "withdraw", "poi_wgs84", "--reason", f"发现证件号 {PLANTED}"])
    assert cli.exit_code == 0, cli.output
    assert _pointer(exports)["datasets"] == {} and not (exports / "open" / str(D1) / "poi_wgs84").exists()
    assert _catalogued(exports) == set()
    missing = CliRunner().invoke(app, ["open", "withdraw", "poi_wgs84", "--reason", "again"])
    assert missing.exit_code == 1 and "not in" in missing.output
    events = {e["dataset"]: e for e in _events(settings) if e["status"] == "withdrawn"
              and e["release_date"] in (str(D1), str(datetime.now(TZ).date()))}  # a withdrawal is dated in Shanghai
    assert set(events) >= {"bus_ridership_daily", "air_quality_district_daily", "poi_wgs84"}
    assert PLANTED not in (events["poi_wgs84"]["reason"] or "") and "人工撤回" in events["poi_wgs84"]["reason"]
    listed = CliRunner().invoke(app, ["open", "ls", "--json"])  # the latest event per dataset, nothing older
    assert listed.exit_code == 0, listed.output
    latest = json.loads(listed.stdout)["latest_events"]
    assert latest["poi_wgs84"]["status"] == "withdrawn" and latest["bus_ridership_daily"]["status"] == "not_open"


# --- S3 ---------------------------------------------------------------------------------------------------------


def test_s3_release_has_the_local_files_and_checksums(lake: Lake, tmp_path: Path, moto_endpoint: str,
                                                        aws_env: None) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket="open-exports")
    local = tmp_path / "local"
    some = ["air_quality_daily", "bus_ridership_daily", "golden_legal_person"]  # a card, a suppression, a drop
    _release(lake.exports(local), D1, datasets=some)
    result = _release(lake.exports("s3://open-exports/city", s3_endpoint=moto_endpoint), D1,  # type: ignore[arg-type]
                      datasets=some)
    assert result.ok and result.folder == f"s3://open-exports/city/open/{D1}/"
    objects = {o["Key"].removeprefix("city/"): o for o in s3.list_objects_v2(Bucket="open-exports")["Contents"]}
    local_files = {p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()
                   and not p.name.startswith(".")}
    assert set(objects) == local_files
    remote_pointer = json.loads(s3.get_object(Bucket="open-exports", Key="city/open/latest.json")["Body"].read())
    assert {ds: e["path"] for ds, e in remote_pointer["datasets"].items()} == \
        {ds: e["path"] for ds, e in _pointer(local)["datasets"].items()}
    for ds, entry in remote_pointer["datasets"].items():
        body = s3.get_object(Bucket="open-exports", Key=f"city/{entry['path']}manifest.json")["Body"].read()
        assert hashlib.sha256(body).hexdigest() == entry["manifest"]
        for f in json.loads(body)["files"]:
            data = s3.get_object(Bucket="open-exports", Key=f"city/{entry['path']}{f['name']}")["Body"].read()
            assert len(data) == f["bytes"] and hashlib.sha256(data).hexdigest() == f["sha256"], (ds, f["name"])
            if f["rows"] is not None:  # the data files are byte for byte the local release's
                assert f["sha256"] == _sha(local / entry["path"] / f["name"]), (ds, f["name"])
    try:  # retention on S3: yesterday's folder of a re-released dataset goes, the referenced ones stay
        lake.build("bus_ridership_daily")
        later = _release(lake.exports("s3://open-exports/city", s3_endpoint=moto_endpoint, open_keep=1),  # type: ignore[arg-type]
                         D2, datasets=["bus_ridership_daily"])
        assert later.removed == [f"open/{D1}/bus_ridership_daily/"]
        keys = {o["Key"] for o in s3.list_objects_v2(Bucket="open-exports")["Contents"]}
        assert not any(k.startswith(f"city/open/{D1}/bus_ridership_daily/") for k in keys)
        assert f"city/open/{D2}/bus_ridership_daily/manifest.json" in keys
        assert f"city/open/{D1}/golden_legal_person/manifest.json" in keys
    finally:
        lake.build("bus_ridership_daily")


def test_s3_same_day_rebuild_failed_upload_and_pointer_race(lake: Lake, tmp_path: Path, moto_endpoint: str,
                                                             aws_env: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """On S3: a same-day rebuild goes to a new prefix (the old one untouched until the pointer moved); an upload
    that fails midway leaves nothing (its .incomplete prefix deleted) and the pointer where it was; a killed
    upload's marked prefix is never listed and sweep removes it once stale; objects carry SHA-256 checksums;
    a pointer changed by another host between read and write is re-read and the change retried."""
    import boto3

    from pipelines.publish import release as release_mod
    from pipelines.publish import store as store_mod

    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket="open-race")
    settings = lake.exports("s3://open-race/city", s3_endpoint=moto_endpoint)  # type: ignore[arg-type]
    ds = "air_quality_district_daily"

    def keys(prefix: str) -> dict[str, str]:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket="open-race", Prefix=f"city/{prefix}")
        return {o["Key"].removeprefix("city/"): o["ETag"] for p in pages for o in p.get("Contents", [])}

    def remote_pointer() -> dict[str, Any]:
        return json.loads(s3.get_object(Bucket="open-race", Key="city/open/latest.json")["Body"].read())

    first = _release(settings, D1, datasets=[ds])
    old = f"open/{D1}/{ds}/"
    assert first.outcomes[0].folder == old
    head = s3.head_object(Bucket="open-race", Key=f"city/{old}{ds}.csv", ChecksumMode="ENABLED")
    assert head.get("ChecksumSHA256")  # uploaded with a SHA-256 checksum, verified against it
    old_objects = keys(old)
    # a same-day rebuild: at the moment the pointer moves the old prefix is as it was, the new one complete
    build = lake.build(ds, [{**r, "stations": r["stations"] + 1} for r in lake.clean[ds]])
    new = f"open/{D1}/{ds}~{build.removeprefix('build__')[:8]}/"
    real_move = release_mod.move_dataset
    seen = []

    def move(store: Any, dataset: str, entry: dict[str, Any]) -> dict[str, Any]:
        listed = keys(entry["path"])
        manifest = json.loads(s3.get_object(Bucket="open-race", Key=f"city/{entry['path']}manifest.json")["Body"].read())
        seen.append((entry["path"], keys(old) == old_objects,
                     set(listed) == {f"{entry['path']}{f['name']}" for f in manifest["files"]} | {f"{entry['path']}manifest.json"}))
        # another host's release moves the pointer between our read and our write: the PUT must not win blindly
        other = {**remote_pointer(), "other_host": True}
        s3.put_object(Bucket="open-race", Key="city/open/latest.json", Body=json.dumps(other).encode())
        return real_move(store, dataset, entry)

    monkeypatch.setattr(release_mod, "move_dataset", move)
    try:
        rebuilt = _release(settings, D1, datasets=[ds])
        assert rebuilt.outcomes[0].status == "released" and seen == [(new, True, True)]
        after = remote_pointer()
        # both changes kept: the stale If-Match PUT failed (412) and the read-modify-write was retried
        assert after["datasets"][ds]["path"] == new and after["other_host"] is True
        assert rebuilt.removed == [old] and not keys(old)  # superseded: retention removed it
        monkeypatch.setattr(release_mod, "move_dataset", real_move)
        # an upload failing midway (the third file): the new prefix is deleted, the pointer stays
        real_upload = boto3.s3.inject.upload_file  # type: ignore[attr-defined]
        calls = []

        def flaky(client: Any, filename: str, bucket: str, key: str, **kw: Any) -> Any:
            calls.append(key)
            if len(calls) == 3:
                raise OSError("connection reset (injected)")
            return real_upload(client, filename, bucket, key, **kw)

        store = release_mod.store_for(settings)
        monkeypatch.setattr(store.client, "upload_file", lambda *a, **kw: flaky(store.client, *a, **kw))
        monkeypatch.setattr(release_mod, "store_for", lambda _settings: store)
        lake.build(ds)
        failed = _release(settings, D1, datasets=[ds])
        assert failed.outcomes[0].status == "failed" and "injected" in (failed.outcomes[0].reason or "")
        assert len(calls) == 3 and not keys(calls[0].removeprefix("city/").rsplit("/", 1)[0] + "/")
        assert remote_pointer()["datasets"][ds]["path"] == new
        # a killed upload (marker left): not listed, not catalogued, swept once stale
        killed = f"open/{D1}/poi_wgs84/"
        for name in (".incomplete", "poi_wgs84.csv"):
            s3.put_object(Bucket="open-race", Key=f"city/{killed}{name}", Body=b"x")
        assert "poi_wgs84" not in store.folders(str(D1))
        store.sweep()
        assert keys(killed)  # young: may be another host's upload in progress
        monkeypatch.setattr(store_mod, "STALE_SECONDS", -1)
        store.sweep()
        assert not keys(killed)
    finally:
        lake.build(ds)


# --- the DAG ----------------------------------------------------------------------------------------------------


def test_dag_parses_light_and_follows_policy(lake: Lake, tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    script = (
        "import sys, time, runpy, airflow.sdk\n"
        "before = set(sys.modules); t = time.perf_counter(); g = runpy.run_path('dags/publish_open_data.py')\n"
        "heavy = [m for m in ('duckdb', 'pyiceberg', 'pyarrow', 'pipelines.publish.release', 'pipelines.publish.leak')\n"
        "         if m in sys.modules and m not in before]\n"
        "print(time.perf_counter() - t, ','.join(heavy) or '-')\n")
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "af")}
    out = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=True, env=env)
    seconds, heavy = out.stdout.split()
    assert heavy == "-" and float(seconds) < 1.0, out.stdout
    with scoped_env({"AIRFLOW_HOME": str(tmp_path / "af"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}):
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=str(root / "dags" / "publish_open_data.py"))
    assert bag.import_errors == {}
    dag = bag.dags["publish__open_data"]
    assert type(dag.timetable).__name__ == "CronTriggerTimetable"
    assert dag.timetable.expression == "30 6 * * *" and str(dag.timetable.timezone) == "Asia/Shanghai"
    assert {"publish", "open-data", "合肥市数据资源局"} <= set(dag.tags) and "06:30" in (dag.doc_md or "")
    assert {t.task_id for t in dag.tasks} == set(lake.config.curated) | {"catalog"}
    for t in dag.tasks:
        assert t.trigger_rule == "all_done" and t.retries == 3 and t.owner == "合肥市数据资源局"
    ordered = sorted(lake.config.curated)
    for before, after in zip(ordered, ordered[1:], strict=False):
        assert dag.get_task(after).upstream_task_ids == {before}
    assert dag.get_task("catalog").upstream_task_ids == {ordered[-1]}


def test_table_of_matches_contract_types(lake: Lake) -> None:
    """The fixture's rows carry the element types the curate runner writes (a guard for the tests above)."""
    from pipelines.curate.runner import element_type

    for ds, data in lake.clean.items():
        contract = lake.config.curated[ds]
        table = table_of(contract, lake.config.standards, data)
        assert table.num_rows == len(data) and table.column_names == [c.name for c in contract.columns]
        assert [table.schema.field(c.name).type for c in contract.columns] == [
            element_type(lake.config.standards.element(c.element)) for c in contract.columns]


def test_an_empty_dataset_releases_as_an_empty_valid_folder(lake: Lake, tmp_path: Path) -> None:
    """0 rows (e.g. no station-day reached 20 hours): released, not failed: a CSV with its header only, an
    empty JSON Lines file, a Parquet file with the schema; frictionless finds the package valid; checksums
    right; no temporal coverage; the change summary counts every previous row as removed. The folder and
    its files are readable by other users (a web server): 0755 / 0644."""
    import pyarrow.parquet as pq
    from frictionless import Package, system

    ds = "air_quality_district_daily"
    exports = tmp_path / "exports"
    settings = lake.exports(exports)
    _release(settings, D1, datasets=[ds])
    try:
        lake.build(ds, [])
        result = _release(settings, D2, datasets=[ds])
        outcome = result.outcomes[0]
        assert (outcome.status, outcome.rows, outcome.folder) == ("released", 0, f"open/{D2}/{ds}/"), outcome.reason
        folder = exports / outcome.folder
        assert_complete(exports)
        header = (folder / f"{ds}.csv").read_bytes()
        assert header.startswith(b'\xef\xbb\xbf"station_district_code",') and header.count(b"\r\n") == 1
        assert (folder / f"{ds}.jsonl").read_bytes() == b""
        table = pq.read_table(folder / f"{ds}.parquet")
        assert table.num_rows == 0 and table.column_names[0] == "station_district_code"
        with system.use_context(trusted=True):
            report = Package(str(folder / "datapackage.json")).validate()
        assert report.valid, [f"{e.type}: {e.message}" for task in report.tasks for e in task.errors][:5]
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        assert manifest["rows"] == 0 and not (manifest.get("coverage") or {}).get("temporal")
        changes = json.loads((folder / "changes.json").read_text(encoding="utf-8"))
        assert (changes["added"], changes["changed"], changes["removed"]) == (0, 0, len(lake.clean[ds]))
        assert folder.stat().st_mode & 0o777 == 0o755
        assert {p.stat().st_mode & 0o777 for p in folder.iterdir()} == {0o644}
        assert (exports / "open" / "latest.json").stat().st_mode & 0o777 == 0o644
        lake.build("air_quality_daily", [])  # a dataset with a card: the card of 0 rows too
        carded = _release(settings, D2, datasets=["air_quality_daily"]).outcomes[0]
        assert (carded.status, carded.rows) == ("released", 0), carded.reason
        assert (exports / carded.folder / "card.md").stat().st_size > 0
        assert_complete(exports)
    finally:
        lake.build(ds)
        lake.build("air_quality_daily")


def test_a_resident_id_in_metadata_text_blocks_the_dataset(lake: Lake, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The metadata files and the catalog entry are scanned as text: a resident ID in a (test copy of a)
    contract's description, or in its card's text, blocks the dataset like a data value; the digests and
    snapshot ids the metadata quotes do not."""
    import pipelines.config

    config = lake.config
    curated = dict(config.curated)
    air = curated["air_quality_daily"]
    curated["bus_ridership_daily"] = curated["bus_ridership_daily"].model_copy(
        update={"description": f"公交客流（联系人证件 {PLANTED}）"})
    curated["air_quality_daily"] = air.model_copy(
        update={"card": air.card.model_copy(update={"intended_use": f"研究用途，申请人 {PLANTED}"})})
    monkeypatch.setattr(pipelines.config, "load_all", lambda settings: config._replace(curated=curated))
    exports = tmp_path / "exports"
    result = _release(lake.exports(exports), D1, datasets=["bus_ridership_daily", "air_quality_daily", "poi_wgs84"])
    status = {o.dataset: o for o in result.outcomes}
    assert status["poi_wgs84"].status == "released"  # its metadata quotes digests and snapshot ids: no hit
    for ds, files in (("bus_ridership_daily", {"datapackage.json", "catalog.jsonld"}),
                      ("air_quality_daily", {"card.md", "card.json"})):
        outcome = status[ds]
        assert outcome.status == "blocked" and outcome.leak_counts.get("resident_id"), (ds, outcome.reason)
        hits = {h["file"] for h in outcome.leak_hits}
        assert files <= hits, (ds, hits)
        assert all(h["value"] == "340104********1239" for h in outcome.leak_hits)
        assert not (exports / "open" / str(D1) / ds).exists()
    assert set(_pointer(exports)["datasets"]) == {"poi_wgs84"} and not _stages(exports)


def test_a_month_column_gives_temporal_coverage(lake: Lake, tmp_path: Path) -> None:
    """registration_month (YYYY-MM text, element format ^\\d{4}-(0[1-9]|1[0-2])$): coverage from the first day
    of its first month to the last day of its last month, in the manifest and as dct:temporal."""
    from pipelines.publish.release import is_month_element

    ds = "enterprise_registrations_monthly"
    standards = lake.config.standards
    assert is_month_element(standards.element("registration_month"))
    assert not is_month_element(standards.element("industry_section"))
    months = sorted(r["registration_month"] for r in lake.clean[ds])
    first, last = months[0], months[-1]
    year, month = (int(p) for p in last.split("-"))
    end = (date(year + month // 12, month % 12 + 1, 1) - date.resolution).isoformat()
    exports = tmp_path / "exports"
    result = _release(lake.exports(exports), D1, datasets=[ds])
    assert result.outcomes[0].status == "released", result.outcomes[0].reason
    manifest = json.loads((exports / result.outcomes[0].folder / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["coverage"]["temporal"] == [f"{first}-01", end]
    catalog = (exports / "open" / str(D1) / "catalog.jsonld").read_text(encoding="utf-8")
    assert f"{first}-01" in catalog and end in catalog and "dct:temporal" in catalog
