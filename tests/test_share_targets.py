"""Share delivery targets against real services: a file drop on local disk and on a moto S3 server, and a real
PostgreSQL schema. Each gets a full delivery, then an incremental one with an update, an insert and a deletion,
read back (pyarrow for files, psycopg for the database); a delivery whose rows iterator fails mid-way leaves
the previous delivery complete and current."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from pipelines.errors import ConfigError
from pipelines.settings import Settings
from pipelines.share.targets import (
    Delivery,
    FileTarget,
    NeedsFull,
    PostgresTarget,
    TargetError,
    libpq_url,
    open_target,
    read_latest,
)

CONSUMER = "11340100003009991Q"
DATASET = "person"
SCHEMA = pa.schema([("person_id", pa.string()), ("name", pa.string()), ("age", pa.int32()),
                    ("income", pa.decimal128(12, 2)), ("born", pa.date32()),
                    ("updated_at", pa.timestamp("us", tz="UTC")), ("active", pa.bool_()), ("score", pa.float64())])
KEYS = ["person_id"]
KEY_SCHEMA = pa.schema([("person_id", pa.string())])


def _row(pid: str, age: int, name: str = "", income: str = "1000.50") -> dict[str, Any]:
    return {"person_id": pid, "name": name or f"名{pid}", "age": age, "income": Decimal(income),
            "born": date(1990, 1, int(pid[1:]) % 28 + 1), "updated_at": datetime(2026, 11, 20, 1, 2, 3, tzinfo=UTC),
            "active": age % 2 == 0, "score": age / 3}


FULL = [_row(f"p{i}", 20 + i) for i in range(1, 6)] + [_row("p9", 40, name='引号"与,逗号\n换行')]
CHANGES = [_row("p2", 99, income="-3.25"), _row("p6", 26)]   # p2 updated, p6 new
DELETED = ["p3"]
AFTER = {r["person_id"]: r for r in FULL if r["person_id"] not in DELETED} | {r["person_id"]: r for r in CHANGES}


def _delivery(mode: str, day: str = "2026-11-20", snapshot: int = 1, schema: pa.Schema = SCHEMA) -> Delivery:
    return Delivery(consumer=CONSUMER, dataset=DATASET, grant_id="g-test", delivery_date=day, mode=mode, keys=KEYS,
                    schema=schema, columns={n: "keep" for n in schema.names} | {"name": "pseudonym"},
                    std_snapshot_id=snapshot, batches=[f"b{snapshot}"])


def _batches(rows: list[dict[str, Any]], size: int = 2, schema: pa.Schema = SCHEMA) -> Iterator[pa.RecordBatch]:
    for i in range(0, len(rows), size):
        yield pa.RecordBatch.from_pylist(rows[i:i + size], schema=schema)


def _failing(rows: list[dict[str, Any]]) -> Iterator[pa.RecordBatch]:
    yield from _batches(rows[:2])
    raise RuntimeError("source scan broke mid-way")


def _deletions(keys: list[str]) -> pa.Table:
    return pa.table({"person_id": pa.array(keys, pa.string())})


NO_DELETIONS = _deletions([])


# --- files ---------------------------------------------------------------------------------------------------


def _check_folder(read: Callable[[str], bytes | None], folder: str, *, mode: str, rows: list[dict[str, Any]],
                  deleted: list[str], previous: str | None, checksum: str) -> dict[str, Any]:
    """A delivery folder read back: manifest (its SHA-256 is the delivery's checksum) lists every file with
    size and SHA-256; data.parquet and data.csv (BOM, CRLF) hold ``rows``; deletions files hold ``deleted``."""
    raw = read(f"{folder}/manifest.json")
    assert raw is not None and hashlib.sha256(raw).hexdigest() == checksum
    manifest = json.loads(raw)
    assert manifest["mode"] == mode and manifest["rows"] == len(rows) and manifest["deleted"] == len(deleted)
    assert manifest["previous"] == previous and manifest["keys"] == KEYS and manifest["grant_id"] == "g-test"
    assert manifest["columns"]["name"] == "pseudonym" and manifest["consumer"] == CONSUMER
    names = {f["name"] for f in manifest["files"]}
    assert names == {"data.parquet", "data.csv"} | ({"deletions.parquet", "deletions.csv"} if deleted else set())
    blobs: dict[str, bytes] = {}
    for f in manifest["files"]:
        data = read(f"{folder}/{f['name']}")
        assert data is not None and len(data) == f["bytes"] and hashlib.sha256(data).hexdigest() == f["sha256"]
        blobs[f["name"]] = data
    table = pq.read_table(io.BytesIO(blobs["data.parquet"]))
    assert table.schema.names == SCHEMA.names
    assert pq.ParquetFile(io.BytesIO(blobs["data.parquet"])).metadata.row_group(0).column(0).compression == "ZSTD"
    assert sorted(table.to_pylist(), key=lambda r: r["person_id"]) == sorted(rows, key=lambda r: r["person_id"])
    csv = blobs["data.csv"]
    assert csv.startswith(b"\xef\xbb\xbf") and b"\r\n" in csv and csv.count(b"\r\n") == len(rows) + 1
    parsed = pcsv.read_csv(io.BytesIO(csv[3:]), convert_options=pcsv.ConvertOptions(
        column_types={n: pa.string() for n in SCHEMA.names}))
    assert sorted(parsed.column("person_id").to_pylist()) == sorted(r["person_id"] for r in rows)
    assert '引号"与,逗号\n换行' in parsed.column("name").to_pylist() or all(r["person_id"] != "p9" for r in rows)
    if deleted:
        assert pq.read_table(io.BytesIO(blobs["deletions.parquet"])).column("person_id").to_pylist() == deleted
        assert blobs["deletions.csv"] == b"\xef\xbb\xbf" + b"\r\n".join(
            [b'"person_id"', *(f'"{k}"'.encode() for k in deleted)]) + b"\r\n"
    return manifest


def _file_scenario(settings: Settings, read: Callable[[str], bytes | None], list_dir: Callable[[], set[str]],
                   base_url: str) -> None:
    """Full, incremental, same-day rerun (→ ``~2``) and a failing delivery, through one FileTarget."""
    target = FileTarget(settings)
    base = f"share/{CONSUMER}/{DATASET}"
    assert read_latest(settings, CONSUMER, DATASET) is None

    first = target.deliver(_delivery("full", "2026-11-20", 1), _batches(FULL), NO_DELETIONS)
    assert (first.rows, first.deleted) == (len(FULL), 0)
    assert first.target.rstrip("/") == f"{base_url}{base}/2026-11-20"
    latest = read_latest(settings, CONSUMER, DATASET)
    assert latest is not None and latest["folder"] == "2026-11-20" and latest["mode"] == "full"
    assert latest["std_snapshot_id"] == 1 and latest["manifest"] == first.checksum
    _check_folder(read, f"{base}/2026-11-20", mode="full", rows=FULL, deleted=[], previous=None,
                  checksum=first.checksum)

    second = target.deliver(_delivery("incremental", "2026-11-21", 2), _batches(CHANGES), _deletions(DELETED))
    assert (second.rows, second.deleted) == (2, 1)
    latest = read_latest(settings, CONSUMER, DATASET)
    assert latest is not None and latest["folder"] == "2026-11-21" and latest["mode"] == "incremental"
    _check_folder(read, f"{base}/2026-11-21", mode="incremental", rows=CHANGES, deleted=DELETED,
                  previous="2026-11-20", checksum=second.checksum)

    # the same date again: a new folder, the first one untouched
    third = target.deliver(_delivery("incremental", "2026-11-21", 3), _batches(CHANGES[:1]), NO_DELETIONS)
    assert third.target.rstrip("/").endswith("2026-11-21~2")
    assert (read_latest(settings, CONSUMER, DATASET) or {})["folder"] == "2026-11-21~2"
    _check_folder(read, f"{base}/2026-11-21", mode="incremental", rows=CHANGES, deleted=DELETED,
                  previous="2026-11-20", checksum=second.checksum)
    before = list_dir()
    latest_before = read(f"{base}/latest.json")

    with pytest.raises(TargetError, match="mid-way"):
        target.deliver(_delivery("incremental", "2026-11-22", 4), _failing(CHANGES + FULL), _deletions(DELETED))
    assert list_dir() == before   # no new folder, no stage, no marker left in sight
    assert read(f"{base}/latest.json") == latest_before
    _check_folder(read, f"{base}/2026-11-21~2", mode="incremental", rows=CHANGES[:1], deleted=[],
                  previous="2026-11-21", checksum=third.checksum)



def test_file_delivery_on_local_disk(lake_settings: Settings) -> None:
    root = Path(lake_settings.exports)

    def read(rel: str) -> bytes | None:
        path = root / rel
        return path.read_bytes() if path.is_file() else None

    def list_dir() -> set[str]:
        return {str(p.relative_to(root)) for p in root.rglob("*") if not p.name.endswith(".lock")}

    _file_scenario(lake_settings, read, list_dir, f"{root}/")
    dataset_dir = root / "share" / CONSUMER / DATASET
    assert sorted(p.name for p in dataset_dir.iterdir() if not p.name.startswith(".")) == [
        "2026-11-20", "2026-11-21", "2026-11-21~2", "latest.json"]
    assert not [p for p in dataset_dir.rglob(".*") if p.name.startswith((".stage-", ".tmp-", ".old-"))]
    assert oct((dataset_dir / "2026-11-20").stat().st_mode & 0o777) == "0o755"


def test_file_delivery_on_s3(lake_settings: Settings, moto_endpoint: str, aws_env: None) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket="share-drop")
    settings = dataclasses.replace(lake_settings, exports_dir="s3://share-drop/city", s3_endpoint=moto_endpoint)

    def read(rel: str) -> bytes | None:
        try:
            return bytes(s3.get_object(Bucket="share-drop", Key=f"city/{rel}")["Body"].read())
        except s3.exceptions.NoSuchKey:
            return None

    def list_dir() -> set[str]:
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket="share-drop", Prefix="city/")
        return {o["Key"] for page in pages for o in page.get("Contents", [])}

    _file_scenario(settings, read, list_dir, "s3://share-drop/city/")
    assert not [k for k in list_dir() if k.endswith(".incomplete")]
    head = s3.head_object(Bucket="share-drop", Key=f"city/share/{CONSUMER}/{DATASET}/2026-11-20/data.csv",
                          ChecksumMode="ENABLED")
    assert head.get("ChecksumSHA256")  # uploaded with checksums, as the open release does


# --- PostgreSQL ----------------------------------------------------------------------------------------------


def _pg_rows(url: str) -> dict[str, dict[str, Any]]:
    import psycopg
    from psycopg import sql

    with psycopg.connect(libpq_url(url)) as conn:
        cur = conn.execute(sql.SQL("SELECT * FROM {}").format(sql.Identifier(f"share_{CONSUMER.lower()}", DATASET)))
        names = [c.name for c in cur.description or []]
        return {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}


def _ledger(url: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(libpq_url(url)) as conn:
        return conn.execute(f'SELECT dataset, grant_id, mode, std_snapshot_id, rows, deleted, checksum '
                            f'FROM "share_{CONSUMER.lower()}"._deliveries ORDER BY delivered_at').fetchall()


def _pg_types(url: str) -> dict[str, str]:
    import psycopg

    with psycopg.connect(libpq_url(url)) as conn:
        return dict(conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = %s AND "
            "table_name = %s", [f"share_{CONSUMER.lower()}", DATASET]).fetchall())


def test_postgres_full_incremental_and_rollback(pg_url: str) -> None:
    target = PostgresTarget(pg_url)
    first = target.deliver(_delivery("full"), _batches(FULL), NO_DELETIONS)
    assert first.target == f"share_{CONSUMER.lower()}.{DATASET}" and (first.rows, first.deleted) == (6, 0)
    got = _pg_rows(pg_url)
    assert got == {r["person_id"]: r for r in FULL}   # every type round-trips (decimal, date, timestamptz, …)
    assert _pg_types(pg_url) == {"person_id": "text", "name": "text", "age": "integer", "income": "numeric",
                                 "born": "date", "updated_at": "timestamp with time zone", "active": "boolean",
                                 "score": "double precision"}

    second = target.deliver(_delivery("incremental", "2026-11-21", 2), _batches(CHANGES), _deletions(DELETED))
    assert (second.rows, second.deleted) == (2, 1)
    got = _pg_rows(pg_url)
    assert "p3" not in got and got == AFTER and got["p2"]["age"] == 99 and got["p2"]["income"] == Decimal("-3.25")
    ledger = _ledger(pg_url)
    assert ledger == [(DATASET, "g-test", "full", 1, 6, 0, first.checksum),
                      (DATASET, "g-test", "incremental", 2, 2, 1, second.checksum)]
    assert first.checksum != second.checksum and len(first.checksum) == 64

    # a failure mid-way rolls back everything: rows, deletions, ledger
    with pytest.raises(TargetError, match="mid-way"):
        target.deliver(_delivery("incremental", "2026-11-22", 3), _failing([_row("p1", 77), _row("p4", 77)]),
                       _deletions(["p5"]))
    assert _pg_rows(pg_url) == AFTER and len(_ledger(pg_url)) == 2
    with pytest.raises(TargetError, match="mid-way"):
        target.deliver(_delivery("full", "2026-11-22", 3), _failing(FULL), NO_DELETIONS)
    assert _pg_rows(pg_url) == AFTER and len(_ledger(pg_url)) == 2

    # a full delivery with another column set replaces the table; an incremental one against it is refused
    narrow = pa.schema([f for f in SCHEMA if f.name in ("person_id", "age")])
    third = target.deliver(_delivery("full", "2026-11-23", 4, narrow),
                           _batches([{"person_id": "p1", "age": 1}], schema=narrow), NO_DELETIONS)
    assert third.rows == 1 and _pg_rows(pg_url) == {"p1": {"person_id": "p1", "age": 1}}
    with pytest.raises(NeedsFull, match="deliver in full"):
        target.deliver(_delivery("incremental", "2026-11-24", 5), _batches(CHANGES), NO_DELETIONS)
    assert _pg_rows(pg_url) == {"p1": {"person_id": "p1", "age": 1}}


def test_postgres_error_never_shows_the_password(pg_url: str) -> None:
    url = "postgresql+psycopg://postgres:Sekret-Pa55word@127.0.0.1:1/nowhere"
    with pytest.raises(TargetError) as info:
        PostgresTarget(url).deliver(_delivery("full"), _batches(FULL), NO_DELETIONS)
    assert "Sekret-Pa55word" not in str(info.value) and "g-test" in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_open_target_by_delivery_method(lake_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    def grant(method: str, conn_id: str | None) -> Any:
        return SimpleNamespace(id="g1", file="schemas/grants/x.yml", line=3,
                               delivery=SimpleNamespace(method=method, conn_id=conn_id))

    assert isinstance(open_target(lake_settings, grant("file", None)), FileTarget)
    monkeypatch.setenv("CITYLAKE_CONN_SHARE_DB", "postgresql+psycopg://u:pw-xyz-123@127.0.0.1:5432/d")
    target = open_target(lake_settings, grant("database", "share_db"))
    assert isinstance(target, PostgresTarget) and target.url == "postgresql://u:pw-xyz-123@127.0.0.1:5432/d"
    monkeypatch.delenv("CITYLAKE_CONN_SHARE_DB")
    monkeypatch.setenv("AIRFLOW_CONN_SHARE_DB", "postgres://u:pw@db:5432/d")
    target = open_target(lake_settings, grant("database", "share_db"))
    assert isinstance(target, PostgresTarget) and target.url == "postgresql://u:pw@db:5432/d"
    with pytest.raises(ConfigError, match=r"grant g1 \(schemas/grants/x.yml:3\): connection 'other' is not set"):
        open_target(lake_settings, grant("database", "other"))
    monkeypatch.setenv("CITYLAKE_CONN_MYSQL_DB", "mysql+pymysql://u:secret-pw@h/d")
    with pytest.raises(ConfigError, match="not PostgreSQL") as info:
        open_target(lake_settings, grant("database", "mysql_db"))
    assert "secret-pw" not in str(info.value)


def test_postgres_types_empty_delivery_and_no_snapshot(pg_url: str) -> None:
    """Every Arrow type a contract can produce lands as its PostgreSQL type with its value; a full delivery of
    0 rows empties the table; a curated delivery has no std snapshot (NULL in the ledger)."""
    schema = pa.schema([("k", pa.int64()), ("small", pa.int8()), ("u32", pa.uint32()), ("u64", pa.uint64()),
                        ("blob", pa.binary()), ("code", pa.dictionary(pa.int32(), pa.string())),
                        ("naive", pa.timestamp("ms")), ("f32", pa.float32())])
    row = {"k": 1, "small": -3, "u32": 4_000_000_000, "u64": 18_000_000_000_000_000_000, "blob": b"\x00\xff",
           "code": "340102", "naive": datetime(2026, 11, 20, 8, 30), "f32": 1.5}
    d = dataclasses.replace(_delivery("full", schema=schema), keys=["k"], std_snapshot_id=None)
    target = PostgresTarget(pg_url)
    placed = target.deliver(d, _batches([row], schema=schema), pa.table({"k": pa.array([], pa.int64())}))
    assert placed.rows == 1
    assert _pg_rows(pg_url) == {1: row}
    assert _pg_types(pg_url) == {"k": "bigint", "small": "smallint", "u32": "bigint", "u64": "numeric",
                                 "blob": "bytea", "code": "text", "naive": "timestamp without time zone",
                                 "f32": "real"}
    empty = target.deliver(d, iter([]), pa.table({"k": pa.array([], pa.int64())}))
    assert empty.rows == 0 and _pg_rows(pg_url) == {}
    assert [r[3] for r in _ledger(pg_url)] == [None, None]


# --- round 2: fingerprint, dataset info, destination/last_record, NeedsFull, races, swaps, masked errors ------

INFO = {"name": "人员基本信息", "columns": {"person_id": {"title": "人员编号", "type": "string"}},
        "purpose": "社保待遇核验", "legal_basis": "社会保险法第八十一条", "expires": "2027-12-31"}


def _round2(mode: str, day: str, snapshot: int, **kw: Any) -> Delivery:
    return dataclasses.replace(_delivery(mode, day, snapshot), fingerprint="f" * 16, info=INFO, **kw)


def _bad_cast(value: str) -> Iterator[pa.RecordBatch]:
    """The rows iterator failing the way a de-identification cast does: Arrow quotes the value."""
    yield pa.RecordBatch.from_pylist(FULL[:2], schema=SCHEMA)
    pa.array([value]).cast(pa.int32())
    yield pa.RecordBatch.from_pylist(FULL[2:], schema=SCHEMA)  # pragma: no cover


def _assert_safe(exc: BaseException, value: str, masked: str) -> None:
    text = str(exc)
    assert type(exc) is TargetError and "\n" not in text and "g-test" in text and "ArrowInvalid" in text
    assert value not in text and f"'{masked}'" in text
    assert exc.__cause__ is None and exc.__suppress_context__


def test_file_manifest_fingerprint_info_last_record_and_needs_full(lake_settings: Settings) -> None:
    """manifest.json carries the fingerprint, ``dataset_info`` and the Chinese/English ``how_to_apply``;
    latest.json the fingerprint; ``last_record`` merges both; an incremental against another record (expected
    snapshot, fingerprint, or no delivery at all) is NeedsFull and changes nothing; a failing cast leaves as
    one masked TargetError."""
    target = FileTarget(lake_settings)
    root = Path(lake_settings.exports)
    assert target.destination(CONSUMER, DATASET) == f"{root}/share/{CONSUMER}/{DATASET}"
    assert target.last_record(CONSUMER, DATASET) is None
    with pytest.raises(NeedsFull, match="no record of a previous delivery"):
        target.deliver(_round2("incremental", "2026-11-20", 1, expect={"std_snapshot_id": 0}), _batches(CHANGES),
                       NO_DELETIONS)
    assert not (root / "share" / CONSUMER / DATASET / "2026-11-20").exists()

    placed = target.deliver(_round2("full", "2026-11-20", 1), _batches(FULL), NO_DELETIONS)
    manifest = json.loads((Path(placed.target) / "manifest.json").read_bytes())
    assert manifest["fingerprint"] == "f" * 16 and manifest["dataset_info"] == INFO
    assert set(manifest["how_to_apply"]) == {"full", "incremental"}
    assert "deletions" in manifest["how_to_apply"]["incremental"]["en"] and "主键" in \
        manifest["how_to_apply"]["incremental"]["zh"]
    assert (read_latest(lake_settings, CONSUMER, DATASET) or {})["fingerprint"] == "f" * 16
    last = target.last_record(CONSUMER, DATASET)
    assert last is not None and {k: last[k] for k in ("folder", "grant_id", "std_snapshot_id", "fingerprint",
                                                      "mode", "keys")} == {
        "folder": "2026-11-20", "grant_id": "g-test", "std_snapshot_id": 1, "fingerprint": "f" * 16,
        "mode": "full", "keys": KEYS}

    latest_before = (root / "share" / CONSUMER / DATASET / "latest.json").read_bytes()
    for bad in ({"std_snapshot_id": 7}, {"fingerprint": "other"}):
        with pytest.raises(NeedsFull, match="last delivery differs"):
            target.deliver(_round2("incremental", "2026-11-21", 2, expect=bad), _batches(CHANGES), NO_DELETIONS)
    with pytest.raises(NeedsFull, match="fingerprint"):
        target.deliver(dataclasses.replace(_round2("incremental", "2026-11-21", 2), fingerprint="0" * 16),
                       _batches(CHANGES), NO_DELETIONS)
    with pytest.raises(TargetError) as info:
        target.deliver(_round2("incremental", "2026-11-21", 2), _bad_cast("张伟"), NO_DELETIONS)
    _assert_safe(info.value, "张伟", "张*")
    assert (root / "share" / CONSUMER / DATASET / "latest.json").read_bytes() == latest_before
    assert not (root / "share" / CONSUMER / DATASET / "2026-11-21").exists()

    ok = target.deliver(_round2("incremental", "2026-11-21", 2, expect={"std_snapshot_id": 1,
                                                                       "fingerprint": "f" * 16}),
                        _batches(CHANGES), _deletions(DELETED))
    assert ok.target.rstrip("/").endswith("2026-11-21")


def test_s3_latest_is_a_conditional_write(lake_settings: Settings, moto_endpoint: str, aws_env: None,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """latest.json on S3: another writer's change between read and write (a 412 on ``If-Match``) is retried;
    another host's delivery that moved latest.json to its own folder meanwhile stays current: this delivery
    fails and its folder goes, latest.json never moves back."""
    import boto3

    from pipelines.publish.store import S3Store

    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket="share-race")
    settings = dataclasses.replace(lake_settings, exports_dir="s3://share-race/city", s3_endpoint=moto_endpoint)
    key = f"city/share/{CONSUMER}/{DATASET}/latest.json"
    target = FileTarget(settings)
    assert target.destination(CONSUMER, DATASET) == f"s3://share-race/city/share/{CONSUMER}/{DATASET}/"
    target.deliver(_round2("full", "2026-11-20", 1), _batches(FULL), NO_DELETIONS)

    # a writer rewrites latest.json (same folder) right after this delivery read it: the PUT gets 412, retried
    real_read = S3Store.read_versioned
    calls: list[str] = []

    def read_then_touch(self: S3Store, rel: str) -> tuple[bytes | None, str | None]:
        got = real_read(self, rel)
        if rel.endswith("latest.json") and not calls:
            calls.append(rel)
            s3.put_object(Bucket="share-race", Key=key, Body=(got[0] or b"") + b"\n")
        return got

    monkeypatch.setattr(S3Store, "read_versioned", read_then_touch)
    second = target.deliver(_round2("incremental", "2026-11-21", 2), _batches(CHANGES), NO_DELETIONS)
    monkeypatch.setattr(S3Store, "read_versioned", real_read)
    assert calls and json.loads(s3.get_object(Bucket="share-race", Key=key)["Body"].read())["folder"] == "2026-11-21"
    assert second.target.endswith("/2026-11-21/")

    # another host places 2026-11-23 and points latest.json at it while this delivery uploads 2026-11-22
    real_place = S3Store.place
    newer = json.dumps({"folder": "2026-11-23", "mode": "incremental", "std_snapshot_id": 9}).encode()

    def place_and_race(self: S3Store, stage: Path, folder: str, expected: Any) -> None:
        real_place(self, stage, folder, expected)
        s3.put_object(Bucket="share-race", Key=key, Body=newer)

    monkeypatch.setattr(S3Store, "place", place_and_race)
    with pytest.raises(TargetError, match="2026-11-23 stays current"):
        target.deliver(_round2("incremental", "2026-11-22", 3), _batches(CHANGES), NO_DELETIONS)
    assert s3.get_object(Bucket="share-race", Key=key)["Body"].read() == newer
    listed = s3.list_objects_v2(Bucket="share-race", Prefix=f"city/share/{CONSUMER}/{DATASET}/2026-11-22")
    assert not listed.get("Contents")   # the loser's folder is removed


def _pg(url: str, statement: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        cur = conn.execute(statement)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def test_postgres_swap_ledger_fingerprint_last_record_and_needs_full(pg_url: str) -> None:
    """A full delivery loads ``person__load_*`` while the old table stays readable (a reader with a 1 s lock
    timeout reads it mid-load), then swaps it in (index ``person_pkey``, the department role's SELECT kept, no
    load table left); a ledger made before fingerprints gets the column; ``last_record`` is the newest
    ledger row; incrementals against another shape or record are NeedsFull; a dependent view blocks the swap
    (one line, previous state kept); a failing cast is one masked line."""
    schema = f"share_{CONSUMER.lower()}"
    target = PostgresTarget(pg_url)
    assert target.destination(CONSUMER, DATASET) == f"127.0.0.1:5432/{pg_url.rsplit('/', 1)[1]}/{schema}.{DATASET}"
    assert target.last_record(CONSUMER, DATASET) is None
    with pytest.raises(NeedsFull, match="table missing"):
        target.deliver(_round2("incremental", "2026-11-19", 1), _batches(CHANGES), NO_DELETIONS)

    target.deliver(_delivery("full"), _batches(FULL), NO_DELETIONS)
    _pg(pg_url, f'ALTER TABLE "{schema}"._deliveries DROP COLUMN fingerprint')   # as an old ledger was
    role = f"share_reader_{pg_url.rsplit('_', 1)[1]}"
    _pg(pg_url, f'CREATE ROLE "{role}"')
    try:
        _pg(pg_url, f'GRANT SELECT ON "{schema}"."{DATASET}" TO "{role}"')
        seen: list[int] = []

        def read_during_load() -> Iterator[pa.RecordBatch]:
            yield from _batches(FULL[:2])
            import psycopg

            with psycopg.connect(libpq_url(pg_url), autocommit=True) as conn:
                conn.execute("SET lock_timeout = '1s'")
                seen.append(conn.execute(f'SELECT count(*) FROM "{schema}"."{DATASET}"').fetchone()[0])  # type: ignore[index]
            yield from _batches(FULL[2:])

        placed = target.deliver(_round2("full", "2026-11-20", 2), read_during_load(), NO_DELETIONS)
        assert seen == [len(FULL)] and placed.rows == len(FULL) and _pg_rows(pg_url) == {r["person_id"]: r for r in FULL}
        assert _pg(pg_url, f"SELECT has_table_privilege('{role}', '{schema}.{DATASET}', 'SELECT')") == [(True,)]
    finally:
        _pg(pg_url, f'REVOKE ALL ON ALL TABLES IN SCHEMA "{schema}" FROM "{role}"')
        _pg(pg_url, f'DROP ROLE "{role}"')
    assert _pg(pg_url, f"SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                       f"WHERE nspname = '{schema}' AND relname LIKE '%load%'") == []
    assert _pg(pg_url, f"SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = "
                       f"'\"{schema}\".\"{DATASET}\"'::regclass AND indisprimary") == [(f"{schema}.{DATASET}_pkey",)]
    last = target.last_record(CONSUMER, DATASET)
    assert last is not None and (last["mode"], last["std_snapshot_id"], last["fingerprint"], last["rows"],
                                 last["delivery_date"], last["keys"]) == ("full", 2, "f" * 16, 6, "2026-11-20", KEYS)
    assert last["checksum"] == placed.checksum

    for bad in ({"std_snapshot_id": 1}, {"fingerprint": "0" * 16}):
        with pytest.raises(NeedsFull, match="last delivery differs"):
            target.deliver(_round2("incremental", "2026-11-21", 3, expect=bad), _batches(CHANGES), NO_DELETIONS)
    narrow = pa.schema([f for f in SCHEMA if f.name != "score"])
    with pytest.raises(NeedsFull, match="columns, types or key differ"):
        target.deliver(dataclasses.replace(_round2("incremental", "2026-11-21", 3), schema=narrow),
                       _batches([{k: v for k, v in r.items() if k != "score"} for r in CHANGES], schema=narrow),
                       NO_DELETIONS)
    with pytest.raises(TargetError) as info:
        target.deliver(_round2("incremental", "2026-11-21", 3), _bad_cast("13812345678"), NO_DELETIONS)
    _assert_safe(info.value, "13812345678", "138****5678")
    with pytest.raises(TargetError) as info:
        target.deliver(_round2("full", "2026-11-21", 3), _bad_cast("李秀英"), NO_DELETIONS)
    _assert_safe(info.value, "李秀英", "李**")
    target.deliver(_round2("incremental", "2026-11-21", 3, expect={"std_snapshot_id": 2, "fingerprint": "f" * 16}),
                   _batches(CHANGES), _deletions(DELETED))
    assert _pg_rows(pg_url) == AFTER

    _pg(pg_url, f'CREATE VIEW "{schema}".adults AS SELECT person_id FROM "{schema}"."{DATASET}" WHERE age >= 18')
    with pytest.raises(TargetError, match="depend") as info:
        target.deliver(_round2("full", "2026-11-22", 4), _batches(FULL), NO_DELETIONS)
    assert "\n" not in str(info.value) and f"{schema}.{DATASET}" in str(info.value)
    assert _pg_rows(pg_url) == AFTER and len(_ledger(pg_url)) == 3
    assert _pg(pg_url, f'SELECT count(*) FROM "{schema}".adults') == [(len(AFTER),)]
