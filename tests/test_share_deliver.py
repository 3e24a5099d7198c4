"""Departmental sharing end to end on a small synthetic lake: std.person (seeded city, scale 0.01) published
through the gate, a file grant and a database grant (real PostgreSQL, scratch database) of person with
pseudonymised resident IDs to two departments. The first delivery is full; after a source change (names
updated, one key deleted) ingested and published, the second delivery carries only the changed rows and the
deletion (a deletions file; the row gone in PostgreSQL); ungranted columns are absent; pseudonyms differ between
the two departments and stay stable across deliveries; a retry of the same run delivers nothing twice. Refused
grants (expired, unknown column, unknown dataset) are audited and deliver nothing; a missing master key fails
the delivery with nothing delivered and no clear value anywhere; a file delivery to S3 (moto server) works.
Round 2: moving a grant to another database starts in full; the consumer side's record is reconciled with the
audit (a lost ledger → full; a delivery whose audit append failed → 补记, not delivered twice; a reshaped table →
NeedsFull → full); a rotated master key re-bases the consumer; failures are audited and raised masked; a broken
grant file stops only its own grants."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from share_lake import AT, MASTER, share_lake

from pipelines.settings import PROJECT_ROOT, Settings

D1, D2, D3 = date(2026, 11, 20), date(2026, 11, 21), date(2026, 11, 22)
RSJ = "113401000030088844"   # 合肥市人力资源和社会保障局: file grant
GJJ = "123401004850066616"   # 合肥住房公积金管理中心: database grant
SCJG = "113401000030022204"  # 合肥市市场监督管理局: an expired grant
ZRZY = "11340100003007777F"  # 合肥市自然资源和规划局: a grant naming a column person does not have
JTYS = "11340100003004445F"  # 合肥市交通运输局: a grant of an unknown dataset
GRANTED = ["resident_id", "person_name", "sex_code", "residence_district_code"]
UNGRANTED = ["birth_date", "residence_address", "mobile_phone", "person_updated_at", "_batch_id"]
PG_CONN = "share_pg_test"


def _grant(gid: str, consumer: str, method: str, *, dataset: str = "person", columns: list[str] | None = None,
           **extra: Any) -> dict[str, Any]:
    delivery: dict[str, Any] = {"method": method}
    if method == "database":
        delivery["conn_id"] = PG_CONN
    return {"id": gid, "consumer": consumer, "dataset": dataset, "columns": columns or GRANTED,
            "purpose": "社保待遇资格认证（测试）", "deid": {"resident_id": "pseudonym"}, "delivery": delivery, **extra}


GRANTS = {
    RSJ: [_grant("rsj-person-file", RSJ, "file")],
    GJJ: [_grant("gjj-person-db", GJJ, "database")],
    SCJG: [_grant("scjg-person-expired", SCJG, "database", expires="2026-01-01")],
    ZRZY: [_grant("zrzy-person-salary", ZRZY, "database", columns=["resident_id", "salary"])],
    JTYS: [_grant("jtys-unknown", JTYS, "database", dataset="no_such_dataset", columns=["id"], deid={})],
}


@dataclasses.dataclass
class City:
    settings: Settings
    env: dict[str, str]
    exports: Path
    source: Path

    def std_ids(self) -> list[str]:
        from pipelines.lake.catalog import get_catalog

        table = get_catalog(self.settings).load_table("std.person")
        return table.scan(selected_fields=("resident_id",)).to_arrow()["resident_id"].to_pylist()

    def publish(self, run_id: str) -> None:
        from pipelines.quality.gate import run_quality

        run_quality("person", settings=self.settings, reference_date=AT.date(), run_id=run_id)


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Iterator[City]:
    """The project's schemas, the seeded city's population system ingested and std.person published; the test grants; a master key."""
    base = tmp_path_factory.mktemp("share")
    assert "file" in yaml.safe_load((PROJECT_ROOT / "schemas" / "datasets" / "person.yml").read_text(encoding="utf-8"))[
        "sharing"]["methods"]  # the contract offers file drops: the file grant below is not refused for its method
    with share_lake(base, GRANTS) as (settings, env):
        c = City(settings, env, base / "exports", settings.data_dir / "sources" / "population.db")
        c.publish("first")
        yield c


def _pseudonyms(ids: list[str], consumer: str) -> list[str]:
    from pipelines.privacy.pseudonym import consumer_key, master_key, pseudonymize

    return pseudonymize(pa.array(ids, pa.string()), consumer_key(master_key(), consumer)).to_pylist()


def _audit(settings: Settings) -> list[dict[str, Any]]:
    from pipelines.lake.catalog import get_catalog
    from pipelines.share.audit import read_audit

    return read_audit(get_catalog(settings))


def _pg_rows(pg_url: str) -> dict[str, dict[str, Any]]:
    import psycopg

    with psycopg.connect(pg_url.replace("+psycopg", "")) as con:
        cur = con.execute(f'SELECT * FROM "share_{GJJ.lower()}"."person"')
        names = [d.name for d in cur.description or []]
        return {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}


def _folder(city: City, consumer: str, day: date) -> Path:
    return city.exports / "share" / consumer / "person" / day.isoformat()


def _results(results: list[Any]) -> dict[str, Any]:
    return {r.grant_id: r for r in results}


def test_full_then_incremental_to_a_folder_and_a_database(city: City, pg_url: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.share.deliver import deliver_all

    monkeypatch.setenv(f"CITYLAKE_CONN_{PG_CONN.upper()}", pg_url)
    ids = city.std_ids()
    assert len(ids) > 20
    first = _results(deliver_all(city.settings, delivery_date=D1, run_id="run1"))
    assert {g: r.outcome for g, r in first.items()} == {
        "rsj-person-file": "delivered", "gjj-person-db": "delivered", "scjg-person-expired": "refused",
        "zrzy-person-salary": "refused", "jtys-unknown": "refused"}
    assert first["scjg-person-expired"].reason == "expired"
    assert first["zrzy-person-salary"].reason == "unknown_column"
    assert first["jtys-unknown"].reason == "unknown_dataset"
    for gid in ("rsj-person-file", "gjj-person-db"):
        assert (first[gid].mode, first[gid].rows, first[gid].deleted) == ("full", len(ids), 0)

    # the file drop: only the granted columns, resident IDs as this department's pseudonyms, names masked
    folder = _folder(city, RSJ, D1)
    data = pq.read_table(folder / "data.parquet")
    assert data.column_names == GRANTED and not set(UNGRANTED) & set(data.column_names)
    rsj = dict(zip(ids, _pseudonyms(ids, RSJ), strict=True))
    assert sorted(data["resident_id"].to_pylist()) == sorted(rsj.values())
    assert all(len(p) == 64 and int(p, 16) >= 0 for p in rsj.values())
    assert all(n is None or n.endswith("*") for n in data["person_name"].to_pylist())
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert (manifest["mode"], manifest["rows"], manifest["columns"]["resident_id"]) == ("full", len(ids), "pseudonym")
    assert not (folder / "deletions.parquet").exists()
    # the database: the same rows under the other department's pseudonyms; the two never join
    gjj = dict(zip(ids, _pseudonyms(ids, GJJ), strict=True))
    pg = _pg_rows(pg_url)
    assert set(pg) == set(gjj.values()) and not set(pg) & set(rsj.values())
    assert set(next(iter(pg.values()))) == set(GRANTED)

    # the source changes: five names updated, one person deleted; ingested and published
    from pipelines.ingest import ingest_table
    from pipelines.registry import get_system

    con = sqlite3.connect(city.source)
    (latest,) = con.execute("SELECT max(updated_at) FROM person").fetchone()
    later = (datetime.fromisoformat(str(latest)) + timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")
    live = [r for (r,) in con.execute("SELECT resident_id FROM person ORDER BY rowid") if r in rsj]
    changed, gone = live[:5], live[5]
    con.executemany("UPDATE person SET name = '测' || substr(name, 2), updated_at = ? WHERE resident_id = ?",
                    [(later, k) for k in changed])
    con.execute("DELETE FROM person WHERE resident_id = ?", (gone,))
    con.commit()
    system = get_system(city.settings.registry_dir, "population")
    ingest_table(system, "person", settings=city.settings, batch_id="b2", extracted_at=AT + timedelta(days=1))
    ingest_table(system, "person", settings=city.settings, mode="deletions", batch_id="d2",
                 extracted_at=AT + timedelta(days=1, hours=1))
    city.publish("second")
    assert gone not in city.std_ids()

    second = _results(deliver_all(city.settings, delivery_date=D2, run_id="run2"))
    for gid in ("rsj-person-file", "gjj-person-db"):
        assert (second[gid].outcome, second[gid].mode, second[gid].rows, second[gid].deleted) == \
            ("delivered", "incremental", 5, 1), second[gid]
    folder2 = _folder(city, RSJ, D2)
    data2 = pq.read_table(folder2 / "data.parquet")
    assert data2.column_names == GRANTED
    assert sorted(data2["resident_id"].to_pylist()) == sorted(rsj[k] for k in changed)  # stable pseudonyms
    assert all(n.startswith("测") for n in data2["person_name"].to_pylist())
    deletions = pq.read_table(folder2 / "deletions.parquet")
    assert deletions.column_names == ["resident_id"] and deletions["resident_id"].to_pylist() == [rsj[gone]]
    manifest2 = json.loads((folder2 / "manifest.json").read_text(encoding="utf-8"))
    assert manifest2["previous"] == D1.isoformat() and manifest2["mode"] == "incremental"
    pg2 = _pg_rows(pg_url)
    assert gjj[gone] not in pg2 and set(pg2) == set(gjj.values()) - {gjj[gone]}
    assert all(pg2[gjj[k]]["person_name"].startswith("测") for k in changed)

    # an Airflow retry of the same run (and a later day with nothing published) delivers nothing twice
    again = _results(deliver_all(city.settings, delivery_date=D2, run_id="run2"))
    assert {again[g].outcome for g in ("rsj-person-file", "gjj-person-db")} == {"nothing_new"}
    assert sorted(p.name for p in (city.exports / "share" / RSJ / "person").iterdir() if p.is_dir()) == \
        [D1.isoformat(), D2.isoformat()]
    assert len(_pg_rows(pg_url)) == len(pg2)

    # refusals deliver nothing and are on record with their reason; every attempt is audited
    for code in (SCJG, ZRZY, JTYS):
        assert not (city.exports / "share" / code).exists()
    audit = _audit(city.settings)
    refused = {(r["grant_id"], r["reason"]) for r in audit if r["outcome"] == "refused"}
    assert {("scjg-person-expired", "expired"), ("zrzy-person-salary", "unknown_column"),
            ("jtys-unknown", "unknown_dataset")} <= refused
    delivered = [r for r in audit if r["outcome"] == "delivered"]
    assert sorted((r["grant_id"], r["mode"], r["rows"]) for r in delivered) == [
        ("gjj-person-db", "full", len(ids)), ("gjj-person-db", "incremental", 5),
        ("rsj-person-file", "full", len(ids)), ("rsj-person-file", "incremental", 5)]
    file_rows = [r for r in delivered if r["grant_id"] == "rsj-person-file"]
    assert file_rows[-1]["checksum"] == hashlib.sha256((folder2 / "manifest.json").read_bytes()).hexdigest()
    # what went, column by column: personal columns not named in deid are masked; a code-list element's mask
    # leaves it clear, so it is recorded as kept; the district code is clear
    assert json.loads(file_rows[-1]["columns"]) == {"resident_id": "pseudonym", "person_name": "mask",
                                                    "sex_code": "keep", "residence_district_code": "keep"}
    assert json.loads(file_rows[-1]["batches"]) == ["b2", "d2"] and file_rows[-1]["std_snapshot_id"] is not None
    text = json.dumps(audit, ensure_ascii=False, default=str)
    assert not any(k in text for k in ids)  # no clear resident ID in the audit trail


def test_missing_master_key_fails_and_delivers_nothing(city: City, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.errors import CitylakeError
    from pipelines.share.deliver import deliver_grant

    before = sorted(str(p) for p in city.exports.rglob("*")) if city.exports.exists() else []
    monkeypatch.delenv("CITYLAKE_SHARE_MASTER_KEY")
    with pytest.raises(CitylakeError, match="CITYLAKE_SHARE_MASTER_KEY") as err:
        deliver_grant(city.settings, "rsj-person-file", delivery_date=D3, run_id="nokey")
    assert "\n" not in str(err.value)
    after = sorted(str(p) for p in city.exports.rglob("*")) if city.exports.exists() else []
    assert after == before  # no folder, no stage, no latest.json change
    rows = [r for r in _audit(city.settings) if r["run_id"] == "nokey"]
    assert [(r["outcome"], r["reason"], r["rows"]) for r in rows] == [("failed", "missing_key", 0)]
    ids = set(city.std_ids())
    for path in city.exports.rglob("*"):  # nowhere a clear resident ID, in any delivery
        if path.is_file():
            body = path.read_bytes()
            assert not any(k.encode() in body for k in ids), path


def test_file_delivery_to_s3(city: City, moto_endpoint: str, aws_env: None) -> None:
    import io

    import boto3

    from pipelines.share.deliver import deliver_grant

    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket="share-test")
    settings = dataclasses.replace(city.settings, exports_dir="s3://share-test/exports", s3_endpoint=moto_endpoint)
    result = deliver_grant(settings, "rsj-person-file", delivery_date=D3, run_id="s3run")
    ids = city.std_ids()
    # another destination: its own first (full) delivery, whatever was delivered to the local folder
    assert (result.outcome, result.mode, result.rows) == ("delivered", "full", len(ids)), result
    prefix = f"exports/share/{RSJ}/person/{D3.isoformat()}/"
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="share-test", Prefix=prefix)["Contents"]}
    assert {prefix + n for n in ("data.parquet", "data.csv", "manifest.json")} <= keys
    assert not any(k.endswith(".incomplete") for k in keys)
    data = pq.read_table(io.BytesIO(s3.get_object(Bucket="share-test", Key=prefix + "data.parquet")["Body"].read()))
    assert data.column_names == GRANTED
    assert sorted(data["resident_id"].to_pylist()) == sorted(_pseudonyms(ids, RSJ))
    latest = json.loads(s3.get_object(Bucket="share-test", Key=f"exports/share/{RSJ}/person/latest.json")["Body"].read())
    assert latest["folder"] == D3.isoformat()
    assert result.target and result.target.startswith("s3://share-test/exports/share/")


def _ledger(pg_url: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(pg_url.replace("+psycopg", "")) as con:
        return con.execute(f'SELECT mode, std_snapshot_id, fingerprint FROM "share_{GJJ.lower()}"."_deliveries" '
                           "ORDER BY delivered_at").fetchall()


def _pg(pg_url: str, statement: str) -> None:
    import psycopg

    with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as con:
        con.execute(statement)


def _rename_one(city: City, batch: str, run: str) -> None:
    """One person renamed at the source, ingested as ``batch`` and published by run ``run``."""
    from pipelines.ingest import ingest_table
    from pipelines.registry import get_system

    con = sqlite3.connect(city.source)
    (latest,) = con.execute("SELECT max(updated_at) FROM person").fetchone()
    later = (datetime.fromisoformat(str(latest)) + timedelta(hours=1)).strftime("%Y-%m-%d %H:%M:%S")
    con.execute("UPDATE person SET name = '改' || substr(name, 2), updated_at = ? "
                "WHERE rowid = (SELECT min(rowid) FROM person)", (later,))
    con.commit()
    con.close()
    ingest_table(get_system(city.settings.registry_dir, "population"), "person", settings=city.settings,
                 batch_id=batch, extracted_at=AT + timedelta(days=3))
    city.publish(run)


def test_database_moves_reconciles_and_recovers_a_lost_audit_row(city: City, pg_url: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.errors import CitylakeError
    from pipelines.lake import changes
    from pipelines.share import audit
    from pipelines.share.deliver import deliver_grant

    monkeypatch.setenv(f"CITYLAKE_CONN_{PG_CONN.upper()}", pg_url)
    n = len(city.std_ids())
    db = pg_url.rsplit("/", 1)[-1]

    # another database (this test's scratch one): the grant starts again in full there
    first = deliver_grant(city.settings, "gjj-person-db", delivery_date=D3, run_id="move")
    assert (first.outcome, first.mode, first.rows) == ("delivered", "full", n), first
    row = [r for r in _audit(city.settings) if r["run_id"] == "move"][-1]
    assert row["target"] == f"127.0.0.1:5432/{db}/share_{GJJ.lower()}.person"  # where, never who
    assert json.loads(row["batches"]) == []  # a full delivery is its snapshot, not the table's batch history
    basis = json.loads(row["grant_basis"])
    assert basis["purpose"] == "社保待遇资格认证（测试）" and len(basis["grant_sha256"]) == 64
    assert row["fingerprint"] == _ledger(pg_url)[-1][2] and len(row["fingerprint"]) == 16

    # nothing new, and the consumer side agrees with the audit: nothing delivered
    same = deliver_grant(city.settings, "gjj-person-db", delivery_date=D3, run_id="same")
    assert same.outcome == "nothing_new", same
    # a publish not yet recorded in meta.batches is named in the detail
    real = changes.std_changes

    def blocked(catalog: Any, dataset: str, since: int | None) -> Any:
        found = real(catalog, dataset, since)
        found.blocked = "批次 b9（运行 r9）已写入 std 但未记入 meta.batches，交付停在它之前"
        return found

    monkeypatch.setattr(changes, "std_changes", blocked)
    held = deliver_grant(city.settings, "gjj-person-db", delivery_date=D3, run_id="held")
    assert held.outcome == "nothing_new" and "批次 b9" in str(held.detail), held
    monkeypatch.setattr(changes, "std_changes", real)

    # the consumer's ledger lost its record: the audit's last delivery is not shown there → full again
    _pg(pg_url, f'DELETE FROM "share_{GJJ.lower()}"."_deliveries"')
    again = deliver_grant(city.settings, "gjj-person-db", delivery_date=D3, run_id="lost")
    assert (again.outcome, again.mode, again.rows) == ("delivered", "full", n), again
    assert "接收方的交付记录与审计的上次交付不符" in str(again.detail)

    # the delivery commits at the target, then the audit append fails: reported as such, not as a target failure
    real_record = audit.record
    monkeypatch.setattr("pipelines.share.deliver.time.sleep", lambda s: None)

    def no_delivered_rows(catalog: Any, rows: Any) -> None:
        rows = list(rows)
        if any(r["outcome"] == "delivered" for r in rows):
            raise OSError("catalog unavailable")
        real_record(catalog, rows)

    _rename_one(city, "b3", "third")  # a new std snapshot to deliver incrementally
    monkeypatch.setattr(audit, "record", no_delivered_rows)
    with pytest.raises(CitylakeError, match="审计行未能写入") as err:
        deliver_grant(city.settings, "gjj-person-db", delivery_date=D3, run_id="crash")
    assert "已交付" in str(err.value)
    assert not [r for r in _audit(city.settings) if r["run_id"] == "crash"]  # no false "failed" row
    landed = _ledger(pg_url)
    assert [m for m, _, _ in landed] == ["full", "incremental"]
    monkeypatch.setattr(audit, "record", real_record)

    # the next run finds the delivery at the target, records it (补记) and does not deliver it again
    recovered = deliver_grant(city.settings, "gjj-person-db", delivery_date=D3, run_id="recover")
    assert recovered.outcome == "nothing_new", recovered
    rows = [r for r in _audit(city.settings) if r["run_id"] == "recover"]
    assert [r["outcome"] for r in rows] == ["delivered", "nothing_new"]
    assert "补记" in rows[0]["detail"] and rows[0]["std_snapshot_id"] == landed[-1][1]
    assert _ledger(pg_url) == landed

    # a re-base at the already-audited snapshot (a rotated master key) lands and loses its audit row: the next
    # run finds it by (snapshot, fingerprint) — 补记 — and does not deliver the full copy again
    monkeypatch.setenv("CITYLAKE_SHARE_MASTER_KEY", MASTER[::-1])
    monkeypatch.setattr(audit, "record", no_delivered_rows)
    with pytest.raises(CitylakeError, match="审计行未能写入"):
        deliver_grant(city.settings, "gjj-person-db", delivery_date=D3, run_id="full-crash")
    monkeypatch.setattr(audit, "record", real_record)
    assert [m for m, _, _ in _ledger(pg_url)] == ["full", "incremental", "full"]
    again = deliver_grant(city.settings, "gjj-person-db", delivery_date=D3, run_id="full-recover")
    assert again.outcome == "nothing_new", again
    rows = [r for r in _audit(city.settings) if r["run_id"] == "full-recover"]
    assert [r["outcome"] for r in rows] == ["delivered", "nothing_new"] and "补记" in rows[0]["detail"]
    assert len(_ledger(pg_url)) == 3  # not delivered twice
    monkeypatch.setenv("CITYLAKE_SHARE_MASTER_KEY", MASTER)
    back = deliver_grant(city.settings, "gjj-person-db", delivery_date=D3, run_id="key-back")
    assert (back.outcome, back.mode) == ("delivered", "full"), back  # the old key's pseudonyms again: re-based

    # the table changed under the consumer: the target refuses the incremental and it is redone in full once
    _pg(pg_url, f'ALTER TABLE "share_{GJJ.lower()}"."person" ADD COLUMN note text')
    _rename_one(city, "b4", "fourth")
    redone = deliver_grant(city.settings, "gjj-person-db", delivery_date=D3, run_id="redo")
    assert (redone.outcome, redone.mode, redone.rows) == ("delivered", "full", n), redone
    assert "接收方无法应用增量" in str(redone.detail)
    assert "note" not in next(iter(_pg_rows(pg_url).values()))


def test_master_key_rotation_rebases_the_consumer(city: City, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.share.deliver import deliver_grant

    ids = city.std_ids()
    before = [r for r in _audit(city.settings) if r["grant_id"] == "rsj-person-file" and r["outcome"] == "delivered"
              and str(r["target"]).startswith(str(city.exports))][-1]
    monkeypatch.setenv("CITYLAKE_SHARE_MASTER_KEY", "rotated-share-master-key-fedcba9876543210")
    result = deliver_grant(city.settings, "rsj-person-file", delivery_date=D3, run_id="rotate")
    # nothing new was published, yet every row goes again under the new key: old and new pseudonyms never mix
    assert (result.outcome, result.mode, result.rows) == ("delivered", "full", len(ids)), result
    assert "交付指纹已变更" in str(result.detail)
    data = pq.read_table(_folder(city, RSJ, D3) / "data.parquet")
    new = _pseudonyms(ids, RSJ)
    assert sorted(data["resident_id"].to_pylist()) == sorted(new)
    monkeypatch.setenv("CITYLAKE_SHARE_MASTER_KEY", MASTER)
    assert not set(new) & set(_pseudonyms(ids, RSJ))
    row = [r for r in _audit(city.settings) if r["run_id"] == "rotate"][-1]
    assert row["fingerprint"] != before["fingerprint"]
    manifest = json.loads((_folder(city, RSJ, D3) / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["fingerprint"] == row["fingerprint"]


def test_failures_are_audited_and_raised_masked(city: City, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.errors import CitylakeError
    from pipelines.share import policy
    from pipelines.share.deliver import deliver_grant
    from pipelines.share.targets import FileTarget

    resident = city.std_ids()[0]

    def quoting(self: Any, d: Any, rows: Any, deletions: Any) -> Any:
        raise pa.ArrowInvalid(f"Failed to parse string: '{resident}' as a scalar of type int64")

    monkeypatch.setattr(FileTarget, "deliver", quoting)
    with pytest.raises(CitylakeError) as err:
        deliver_grant(city.settings, "rsj-person-file", delivery_date=D3, run_id="quoting", full=True)
    assert resident not in str(err.value) and "\n" not in str(err.value) and "rsj-person-file" in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__
    row = [r for r in _audit(city.settings) if r["run_id"] == "quoting"][-1]
    assert (row["outcome"], row["reason"]) == ("failed", "target_failed") and resident not in row["detail"]

    def broken(*args: Any, **kw: Any) -> Any:
        raise RuntimeError("policy exploded")

    monkeypatch.setattr(policy, "decide", broken)
    with pytest.raises(CitylakeError, match="policy exploded"):
        deliver_grant(city.settings, "rsj-person-file", delivery_date=D3, run_id="decide")
    row = [r for r in _audit(city.settings) if r["run_id"] == "decide"][-1]
    assert (row["outcome"], row["reason"]) == ("failed", "error") and json.loads(row["grant_basis"])["grant_sha256"]


def test_a_broken_grant_file_stops_only_its_own_grants(city: City) -> None:
    from pipelines.errors import ConfigError
    from pipelines.share.deliver import deliver_all, deliver_grant

    broken = Path(city.env["CITYLAKE_GRANTS_DIR"]) / "11340100003000000X.yml"
    broken.write_text("grants:\n  - id: broken-grant\n    consumer: 11340100003000000X\n    bogus: 1\n",
                      encoding="utf-8")
    try:
        with pytest.raises(ConfigError, match="11340100003000000X.yml"):
            deliver_grant(city.settings, "broken-grant", delivery_date=D3, run_id="broken")
        results = _results(deliver_all(city.settings, delivery_date=D3, run_id="broken-all"))
        assert results["rsj-person-file"].outcome in ("delivered", "nothing_new")
        failed = [r for g, r in results.items() if g.endswith("11340100003000000X.yml")]
        assert [r.outcome for r in failed] == ["failed"] and "bogus" in str(failed[0].detail)
    finally:
        broken.unlink()
