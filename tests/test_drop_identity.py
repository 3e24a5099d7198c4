"""File drops are known by their content: a repeat delivery lands nothing, a re-sent file lands only its
changed rows, a file whose header is not in the declared encoding is rejected (the others land), the CLI
says so with exit code 3, and listing never follows a symlink out of the drop folder."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import boto3
import pytest
from conftest import TEST_DEPARTMENT

from pipelines.extract.drops import list_drop_files
from pipelines.ingest import ingest_table
from pipelines.lake.catalog import get_catalog
from pipelines.lake.raw import TableState
from pipelines.privacy import mask_file_name
from pipelines.registry import SourceSystem
from pipelines.settings import TZ, Settings, load_settings

AT = datetime(2026, 11, 20, 4, tzinfo=TZ)
HEADER = "站点编码,监测时间,PM2.5\n"
REGISTRY = """\
system: air
name: 空气质量
department: """ + TEST_DEPARTMENT + """
connection: drop_air
drop:
  location: {drop}
  tables:
    - code: hourly
      glob: "aq_*.csv"
      format: csv
      primary_key: [station_id, observed_at]
      columns: {{站点编码: station_id, 监测时间: observed_at, PM2.5: pm25}}
      types: {{pm25: float64, observed_at: timestamp}}
"""


def _system(location: str, encoding: str = "utf-8", glob: str = "aq_*.csv") -> SourceSystem:
    return SourceSystem.model_validate({
        "system": "air", "name": "空气质量", "department": TEST_DEPARTMENT, "connection": "drop_air",
        "drop": {"location": location, "tables": [{
            "code": "hourly", "glob": glob, "format": "csv", "encoding": encoding,
            "primary_key": ["station_id", "observed_at"],
            "columns": {"站点编码": "station_id", "监测时间": "observed_at", "PM2.5": "pm25"},
            "types": {"pm25": "float64", "observed_at": "timestamp"},
        }]},
    })


def _csv(rows: list[tuple[str, int, float]]) -> bytes:
    return (HEADER + "".join(f"{s},2026-11-20 {h:02d}:00:00,{v}\n" for s, h, v in rows)).encode("utf-8")


def _rows(settings: Settings) -> list[dict]:
    return get_catalog(settings).load_table("raw.air__hourly").scan().to_arrow().to_pylist()


def _ledger(settings: Settings) -> dict:
    return TableState.of(get_catalog(settings).load_table("raw.air__hourly")).ledger


ROWS = [(f"S{i:02d}", h, 30.0 + i + h) for i in range(10) for h in range(5)]  # 50 rows


def test_same_bytes_again_is_a_repeat_not_a_second_load(lake_settings: Settings, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "aq_01.csv").write_bytes(_csv(ROWS))
    system = _system(str(drop))
    first = ingest_table(system, "hourly", settings=lake_settings, batch_id="b1", extracted_at=AT)
    assert first.rows_written == 50 and len(_rows(lake_settings)) == 50

    # The department delivers the same bytes again: copied over the same name (new mtime) ...
    (drop / "aq_01.csv").write_bytes(_csv(ROWS))
    os.utime(drop / "aq_01.csv", ns=(10**18, 10**18))
    # ... and under a new name.
    shutil.copyfile(drop / "aq_01.csv", drop / "aq_01_resent.csv")
    again = ingest_table(system, "hourly", settings=lake_settings, batch_id="b2", extracted_at=AT)
    assert again.files_loaded == [] and again.rows_written == 0
    assert again.files_repeated == [{"file": "aq_01.csv", "of": "aq_01.csv"},
                                    {"file": "aq_01_resent.csv", "of": "aq_01.csv"}]
    assert len(_rows(lake_settings)) == 50
    ledger = _ledger(lake_settings)
    assert ledger["aq_01_resent.csv"]["status"] == "repeat" and ledger["aq_01_resent.csv"]["of"] == "aq_01.csv"
    assert ledger["aq_01.csv"]["status"] == "loaded" and ledger["aq_01.csv"]["repeats"] == ["b2"]
    assert ledger["aq_01.csv"]["content"].startswith("sha256:")

    # Nothing new: no file is read or recorded again.
    quiet = ingest_table(system, "hourly", settings=lake_settings, batch_id="b3", extracted_at=AT)
    assert quiet.files_loaded == quiet.files_repeated == [] and len(_rows(lake_settings)) == 50


def test_resent_file_lands_only_its_changed_rows(lake_settings: Settings, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "aq_01.csv").write_bytes(_csv(ROWS))
    original = (drop / "aq_01.csv").read_bytes()
    system = _system(str(drop))
    ingest_table(system, "hourly", settings=lake_settings, batch_id="b1", extracted_at=AT)

    changed = list(ROWS)
    for i in (3, 17, 41):
        s, h, v = changed[i]
        changed[i] = (s, h, v + 0.5)
    (drop / "aq_01.csv").write_bytes(_csv(changed))
    res = ingest_table(system, "hourly", settings=lake_settings, batch_id="b2", extracted_at=AT)
    assert res.files_loaded == ["aq_01.csv"]
    assert (res.rows_extracted, res.rows_written, res.rows_unchanged) == (50, 3, 47)
    new = [r for r in _rows(lake_settings) if r["_batch_id"] == "b2"]
    assert sorted((r["station_id"], r["pm25"]) for r in new) == sorted((s, v) for s, _h, v in
                                                                          (changed[i] for i in (3, 17, 41)))
    entry = _ledger(lake_settings)["aq_01.csv"]
    assert (entry["status"], entry["rows"], entry["written"], entry["batch"]) == ("loaded", 50, 3, "b2")

    # Rerunning b2 replaces its 3 rows (compared without them), not more.
    rerun = ingest_table(system, "hourly", settings=lake_settings, batch_id="b2", extracted_at=AT)
    assert rerun.rows_written == 3 and len(_rows(lake_settings)) == 53

    # The first version sent again (under another name) is not any file's current content: it is what the
    # department sends now, so it lands, and only its 3 rows that differ from the latest versions.
    (drop / "aq_01_old.csv").write_bytes(original)
    older = ingest_table(system, "hourly", settings=lake_settings, batch_id="b3", extracted_at=AT)
    assert older.files_loaded == ["aq_01_old.csv"] and older.files_repeated == [] and older.rows_written == 3
    assert len(_rows(lake_settings)) == 56


@pytest.mark.parametrize("rows_per_bucket", [3, 4_000_000])
def test_resent_drop_is_compared_in_the_right_buckets(lake_settings: Settings, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, rows_per_bucket: int) -> None:
    """A drop's rows are added before the lake side knows the bucket count; with many buckets (50 lake
    rows, 3 per bucket) unchanged rows must still find their lake version: 0 written, not most of them."""
    monkeypatch.setattr("pipelines.lake.changes.ROWS_PER_BUCKET", rows_per_bucket)
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "aq_01.csv").write_bytes(_csv(ROWS))
    system = _system(str(drop))
    ingest_table(system, "hourly", settings=lake_settings, batch_id="b1", extracted_at=AT)

    # The same rows in another order: new bytes, no new values.
    (drop / "aq_02.csv").write_bytes(_csv(list(reversed(ROWS))))
    same = ingest_table(system, "hourly", settings=lake_settings, batch_id="b2", extracted_at=AT)
    assert same.files_loaded == ["aq_02.csv"]
    assert (same.rows_extracted, same.rows_written, same.rows_unchanged) == (50, 0, 50)
    assert len(_rows(lake_settings)) == 50

    changed = [(s, h, v + 0.5) if (s, h) in {("S00", 0), ("S04", 2), ("S09", 4)} else (s, h, v) for s, h, v in ROWS]
    (drop / "aq_03.csv").write_bytes(_csv(changed))
    res = ingest_table(system, "hourly", settings=lake_settings, batch_id="b3", extracted_at=AT)
    assert (res.rows_written, res.rows_unchanged) == (3, 47)
    assert _ledger(lake_settings)["aq_03.csv"]["written"] == 3


GBK_HEADED = (HEADER + "S01,2026-11-20 01:00:00,35\n").encode("gbk")
"""A file whose header is GBK (Chinese column names) though the table declares UTF-8."""

def _good_and_gbk_drop(tmp_path: Path) -> Path:
    """A drop folder with a good file (aq_01.csv, 5 rows) and one whose header is GBK though UTF-8 is declared."""
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "aq_01.csv").write_bytes(_csv(ROWS[:5]))
    (drop / "aq_02.csv").write_bytes(GBK_HEADED)
    return drop


def test_undeclared_gbk_header_is_rejected_and_the_good_file_lands(lake_settings: Settings, tmp_path: Path) -> None:
    drop = _good_and_gbk_drop(tmp_path)
    res = ingest_table(_system(str(drop)), "hourly", settings=lake_settings, batch_id="b1", extracted_at=AT)
    assert res.files_loaded == ["aq_01.csv"] and len(_rows(lake_settings)) == 5
    (rejected,) = res.files_rejected
    assert rejected["file"] == "aq_02.csv" and rejected["line"] == 1
    assert "UTF-8" in rejected["reason"] and "gb18030" in rejected["reason"]
    copied = Path(rejected["copied_to"])
    assert copied.read_bytes() == GBK_HEADED and copied.parent.name == "b1"
    recorded = json.loads(copied.with_name(copied.name + ".reason.json").read_text(encoding="utf-8"))
    assert recorded["file"] == "aq_02.csv" and "UTF-8" in recorded["reason"]
    assert _ledger(lake_settings)["aq_02.csv"]["status"] == "rejected"


def test_rejection_reason_masks_the_cell_it_quotes(lake_settings: Settings, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    # a resident ID pasted into the PM2.5 column: the reason quotes the cell, masked
    (drop / "aq_01.csv").write_text(HEADER + "S01,2026-11-20 01:00:00,34010419900101123X\n", encoding="utf-8")
    res = ingest_table(_system(str(drop)), "hourly", settings=lake_settings, batch_id="b1", extracted_at=AT)
    (rejected,) = res.files_rejected
    assert "34010419900101123X" not in json.dumps(res.to_dict(), ensure_ascii=False)
    assert "340104********123X" in rejected["reason"]
    copied = Path(rejected["copied_to"])
    assert "34010419900101123X" not in copied.with_name(copied.name + ".reason.json").read_text(encoding="utf-8")


def test_cli_exits_3_and_lists_rejected_files(lake_settings: Settings, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "aq_01.csv").write_bytes(_csv(ROWS[:5]))
    (drop / "aq_02.csv").write_bytes(GBK_HEADED)
    (lake_settings.registry_dir / "air.yml").write_text(REGISTRY.format(drop=drop), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", "ingest", "air"], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, timeout=120)
    assert done.returncode == 3, done.stderr
    assert "aq_02.csv" in done.stderr and "1 file(s) rejected" in done.stderr
    assert len(_rows(load_settings())) == 5
    clean = subprocess.run([sys.executable, "-m", "pipelines.cli", "ingest", "air"], capture_output=True, text=True,
                           timeout=120)
    assert clean.returncode == 0, clean.stderr  # nothing new, nothing rejected this time


def test_listing_does_not_follow_symlinks_out_of_the_drop(lake_settings: Settings, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    (drop / "sub").mkdir(parents=True)
    outside = tmp_path / "secret.csv"
    outside.write_bytes(_csv(ROWS[:1]))
    (drop / "aq_01.csv").write_bytes(_csv(ROWS[:2]))
    (drop / "aq_evil.csv").symlink_to(outside)
    (drop / "aq_dotdot.csv").symlink_to(Path("..") / "secret.csv")
    (drop / "aq_inside.csv").symlink_to(drop / "aq_01.csv")  # inside the drop: listed (a repeat by content)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "aq_9.csv").write_bytes(_csv(ROWS[:1]))
    (drop / "sub" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    system = _system(str(drop), glob="**/aq_*.csv")
    assert system.drop is not None
    names = [f.name for f in list_drop_files(system.drop, system.drop.tables[0], lake_settings)]
    assert names == ["aq_01.csv", "aq_inside.csv"]
    res = ingest_table(system, "hourly", settings=lake_settings, batch_id="b1", extracted_at=AT)
    assert res.files_loaded == ["aq_01.csv"] and res.files_repeated == [{"file": "aq_inside.csv", "of": "aq_01.csv"}]
    assert {r["_source_file"] for r in _rows(lake_settings)} == {"aq_01.csv"}


def test_s3_content_identity(lake_settings: Settings, moto_endpoint: str, aws_env: None) -> None:
    import dataclasses

    settings = dataclasses.replace(lake_settings, s3_endpoint=moto_endpoint)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket="identity-drops")
    body = _csv(ROWS)
    s3.put_object(Bucket="identity-drops", Key="air/aq_01.csv", Body=body)
    system = _system("s3://identity-drops/air")
    first = ingest_table(system, "hourly", settings=settings, batch_id="b1", extracted_at=AT)
    assert first.rows_written == 50
    assert _ledger(settings)["aq_01.csv"]["content"].startswith("md5:")  # one-part ETag: the MD5, no read

    # The same bytes under another key (one-part ETag again): a repeat, recognised without reading it.
    s3.put_object(Bucket="identity-drops", Key="air/aq_02.csv", Body=body)
    # The same bytes uploaded in parts: the ETag is not a content hash, so the object is hashed (sha256);
    # it is a new content id, and the key + row-hash compare lands none of its rows.
    where = {"Bucket": "identity-drops", "Key": "air/aq_03.csv"}
    up = s3.create_multipart_upload(**where)
    part = s3.upload_part(**where, UploadId=up["UploadId"], PartNumber=1, Body=body)
    s3.complete_multipart_upload(**where, UploadId=up["UploadId"],
                                 MultipartUpload={"Parts": [{"ETag": part["ETag"], "PartNumber": 1}]})
    again = ingest_table(system, "hourly", settings=settings, batch_id="b2", extracted_at=AT)
    assert again.files_repeated == [{"file": "aq_02.csv", "of": "aq_01.csv"}]
    assert again.files_loaded == ["aq_03.csv"] and again.rows_written == 0
    ledger = _ledger(settings)
    assert ledger["aq_03.csv"]["content"].startswith("sha256:") and ledger["aq_03.csv"]["written"] == 0
    assert len(_rows(settings)) == 50


def test_dag_load_task_records_the_rejected_count(lake_settings: Settings, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util
    from collections import defaultdict
    from types import SimpleNamespace

    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "aq_01.csv").write_bytes(_csv(ROWS[:5]))
    # people name drop files after the person: the name, the address and the ID must not reach XCom or the log
    (drop / "aq_02_张伟_合肥市蜀山区长江西路100号_340104199001011234.csv").write_bytes(
        GBK_HEADED)
    (lake_settings.registry_dir / "air.yml").write_text(REGISTRY.format(drop=drop), encoding="utf-8")
    spec = importlib.util.spec_from_file_location("ingest_factory_under_test",
                                                  Path(__file__).resolve().parent.parent / "dags" / "ingest_factory.py")
    assert spec is not None and spec.loader is not None
    factory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(factory)
    dag = factory.build_ingest_dag(_system(str(drop)))
    load_table = dag.get_task("load_table").python_callable  # the task's own code, without a scheduler
    events: defaultdict[object, SimpleNamespace] = defaultdict(lambda: SimpleNamespace(add=lambda *a, **k: None))
    with caplog.at_level("INFO"):
        out = load_table(table="hourly", dag_run=SimpleNamespace(run_id="scheduled__2026-11-20T03:00:00+08:00",
                                                                 run_type="scheduled"),
                         data_interval_start=AT, data_interval_end=AT, outlet_events=events)
    assert out["files_rejected_count"] == 1 and out["files_loaded"] == ["aq_01.csv"]
    logged = caplog.text + capsys.readouterr().out  # Airflow's structlog may print instead of propagating
    assert "1 rejected" in logged and "rejected aq_02_张*_合肥市蜀山区***_340104********1234.csv" in logged
    assert out["files_rejected"][0]["file"] == "aq_02_张*_合肥市蜀山区***_340104********1234.csv"
    for shown in (json.dumps(out, ensure_ascii=False), logged):
        assert not any(v in shown for v in ("张伟", "长江西路", "199001011234")), shown
    # the operator's copy in rejected/ keeps the real name
    assert list(Path(lake_settings.rejected_dir).rglob("aq_02_张伟_合肥市蜀山区长江西路100号_340104199001011234.csv"))


def _latest(settings: Settings) -> dict[tuple[str, int], float]:
    """Each key's (station, hour of 2026-11-20 in Shanghai) value in its latest version (by load sequence)."""
    latest: dict[tuple[str, int], tuple[int, float]] = {}
    for r in _rows(settings):
        key = (r["station_id"], r["observed_at"].astimezone(TZ).hour)
        if key not in latest or r["_load_seq"] > latest[key][0]:
            latest[key] = (r["_load_seq"], r["pm25"])
    return {k: v for k, (_seq, v) in latest.items()}


def test_rejected_file_is_retried_once_the_spec_changes(lake_settings: Settings, tmp_path: Path) -> None:
    drop = _good_and_gbk_drop(tmp_path)
    first = ingest_table(_system(str(drop)), "hourly", settings=lake_settings, batch_id="b1", extracted_at=AT)
    assert [r["file"] for r in first.files_rejected] == ["aq_02.csv"] and "gb18030" in first.files_rejected[0]["reason"]

    # Touched, and copied under another name, before the config is fixed: rejected bytes never landed, so
    # they are no one's content to repeat; the same bytes under the same spec are not read again.
    os.utime(drop / "aq_02.csv", ns=(10**18, 10**18))
    shutil.copyfile(drop / "aq_02.csv", drop / "aq_03.csv")
    same = ingest_table(_system(str(drop)), "hourly", settings=lake_settings, batch_id="b2", extracted_at=AT)
    assert same.files_repeated == [] and [r["file"] for r in same.files_rejected] == ["aq_03.csv"]
    assert _ledger(lake_settings)["aq_02.csv"]["status"] == "rejected"

    # The operator declares the encoding the reason asked for: both files are read again and land.
    fixed = ingest_table(_system(str(drop), encoding="gb18030"), "hourly", settings=lake_settings, batch_id="b3",
                         extracted_at=AT)
    assert fixed.files_loaded == ["aq_02.csv"] and fixed.files_rejected == [] and fixed.rows_written == 1
    assert fixed.files_repeated == [{"file": "aq_03.csv", "of": "aq_02.csv"}]  # aq_02's content now
    assert _latest(lake_settings)[("S01", 1)] == 35.0
    assert _ledger(lake_settings)["aq_02.csv"]["status"] == "loaded"


def test_rerun_replaces_only_the_files_it_reread(lake_settings: Settings, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    files = {n: [(f"{n[3:5]}S{i}", h, 10.0 + i + h) for i in range(3) for h in range(2)] for n in
             ("aq_01.csv", "aq_02.csv", "aq_03.csv")}  # 6 rows each, keys of their own
    for name, rows in files.items():
        (drop / name).write_bytes(_csv(rows))
    system = _system(str(drop))
    ingest_table(system, "hourly", settings=lake_settings, batch_id="b1", extracted_at=AT)
    assert len(_rows(lake_settings)) == 18

    # aq_02 is archived (gone from the drop); aq_03 is re-sent with one row changed, which b2 loads.
    (drop / "aq_02.csv").unlink()
    changed = list(files["aq_03.csv"])
    changed[0] = (changed[0][0], changed[0][1], 99.0)
    (drop / "aq_03.csv").write_bytes(_csv(changed))
    assert ingest_table(system, "hourly", settings=lake_settings, batch_id="b2", extracted_at=AT).rows_written == 1

    # b1 is retried: it re-reads only aq_01. aq_02's rows and aq_03's unchanged rows (still the latest
    # versions of their keys, the ledger still says loaded) must stay.
    rerun = ingest_table(system, "hourly", settings=lake_settings, batch_id="b1", extracted_at=AT)
    assert rerun.files_loaded == ["aq_01.csv"] and rerun.rows_written == 6
    rows = _rows(lake_settings)
    assert len(rows) == 19
    by_file = {n: sum(1 for r in rows if r["_source_file"] == n and r["_batch_id"] == "b1") for n in files}
    assert by_file == {"aq_01.csv": 6, "aq_02.csv": 6, "aq_03.csv": 6}
    assert len(_latest(lake_settings)) == 18 and _latest(lake_settings)[("03S0", 0)] == 99.0


def test_a_revert_to_an_older_content_lands(lake_settings: Settings, tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    system = _system(str(drop))
    a = _csv(ROWS)
    b_rows = [(s, h, v + 1.0) if i in (2, 9) else (s, h, v) for i, (s, h, v) in enumerate(ROWS)]
    for batch, body in (("b1", a), ("b2", _csv(b_rows))):
        (drop / "aq_01.csv").write_bytes(body)
        ingest_table(system, "hourly", settings=lake_settings, batch_id=batch, extracted_at=AT)
    assert _latest(lake_settings)[ROWS[2][:2]] == ROWS[2][2] + 1.0

    # The department takes version B back: a.csv delivers the bytes of A again.
    (drop / "aq_01.csv").write_bytes(a)
    back = ingest_table(system, "hourly", settings=lake_settings, batch_id="b3", extracted_at=AT)
    assert back.files_repeated == [] and back.files_loaded == ["aq_01.csv"] and back.rows_written == 2
    latest = _latest(lake_settings)
    assert all(latest[(s, h)] == v for s, h, v in ROWS)

    # Touched again now: that is its current content, so a repeat.
    os.utime(drop / "aq_01.csv", ns=(10**18, 10**18))
    again = ingest_table(system, "hourly", settings=lake_settings, batch_id="b4", extracted_at=AT)
    assert again.files_repeated == [{"file": "aq_01.csv", "of": "aq_01.csv"}] and again.rows_written == 0


def test_a_file_swapped_for_a_link_after_listing_is_not_read(lake_settings: Settings, tmp_path: Path) -> None:
    from pipelines.errors import SourceError
    from pipelines.extract.drops import content_id, read_drop_file, reject_file

    drop = tmp_path / "drop"
    (drop / "sub").mkdir(parents=True)
    (drop / "aq_01.csv").write_bytes(_csv(ROWS[:2]))
    personal = "aq_02_张伟_340104199001011234.csv"  # the error names the file, masked (it reaches logs, alerts)
    (drop / "sub" / personal).write_bytes(_csv(ROWS[:2]))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "aq_01.csv").write_bytes(_csv(ROWS[:1]))
    (outside / personal).write_bytes(_csv(ROWS[:1]))
    system = _system(str(drop), glob="**/aq_*.csv")
    assert system.drop is not None
    spec = system.drop.tables[0]
    top, nested = list_drop_files(system.drop, spec, lake_settings)

    # After listing: the file becomes a link out of the drop, and a folder is swapped for a linked one.
    (drop / "aq_01.csv").unlink()
    (drop / "aq_01.csv").symlink_to(outside / "aq_01.csv")
    (drop / "sub").rename(drop / "sub_old")
    (drop / "sub").symlink_to(outside, target_is_directory=True)
    for f in (top, nested):
        shown = re.escape(str(mask_file_name(f.name)))
        with pytest.raises(SourceError, match=shown):
            list(read_drop_file(f, spec, lake_settings))
        with pytest.raises(SourceError, match=shown) as raised:
            content_id(f, lake_settings)
        assert "张伟" not in str(raised.value) and "199001011234" not in str(raised.value)
        with pytest.raises(SourceError, match=shown):
            reject_file(f, "bad", lake_settings, "air", "hourly", "b1")
    assert nested.name == f"sub/{personal}"


def test_drops_modules_import_no_private_helpers() -> None:
    import ast

    import pipelines.extract.drops as drops

    offenders = []
    for path in sorted(Path(drops.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules = set()  # names bound to sibling modules (``from pipelines.extract.drops import opening``)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pipelines.extract.drops"):
                for alias in node.names:
                    if alias.name.startswith("_"):
                        offenders.append(f"{path.name}: imports {node.module}.{alias.name}")
                    if node.module == "pipelines.extract.drops":
                        modules.add(alias.asname or alias.name)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                    and node.attr.startswith("_")):
                offenders.append(f"{path.name}: uses {node.value.id}.{node.attr}")
    assert offenders == []


def test_rerun_that_now_rejects_its_file_removes_the_earlier_attempts_rows(lake_settings: Settings,
                                                                          tmp_path: Path) -> None:
    drop = tmp_path / "drop"
    drop.mkdir()
    system = _system(str(drop))
    (drop / "aq_01.csv").write_bytes(_csv(ROWS[:5]))
    ingest_table(system, "hourly", settings=lake_settings, batch_id="b0", extracted_at=AT)
    (drop / "aq_02.csv").write_bytes(_csv(ROWS[5:10]))
    ingest_table(system, "hourly", settings=lake_settings, batch_id="b1", extracted_at=AT)
    assert len(_rows(lake_settings)) == 10

    # b1 is retried after aq_02 was overwritten with a bad version: rejected now, so the ledger and the rows
    # agree that b1 landed nothing of it; aq_01 (b0) is untouched.
    (drop / "aq_02.csv").write_text(HEADER + "S01,2026-11-20 01:00:00,not a number\n", encoding="utf-8")
    rerun = ingest_table(system, "hourly", settings=lake_settings, batch_id="b1", extracted_at=AT)
    assert [r["file"] for r in rerun.files_rejected] == ["aq_02.csv"] and rerun.files_loaded == []
    assert _ledger(lake_settings)["aq_02.csv"]["status"] == "rejected"
    assert {r["_source_file"] for r in _rows(lake_settings)} == {"aq_01.csv"} and len(_rows(lake_settings)) == 5
