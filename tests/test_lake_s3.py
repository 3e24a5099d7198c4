"""The lake on S3 (moto's server mode over HTTP): warehouse, drops and rejected area all in buckets."""

from __future__ import annotations

import sqlite3
from datetime import datetime
from pathlib import Path

import boto3
from conftest import TEST_DEPARTMENT

from pipelines.ingest import ingest_table
from pipelines.lake.catalog import get_catalog
from pipelines.lake.inspect import list_tables
from pipelines.registry import SourceSystem
from pipelines.settings import TZ, Settings


def test_sql_source_into_s3_warehouse(s3_lake: Settings, tmp_path: Path) -> None:
    db = tmp_path / "src.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (id INTEGER, 名称 TEXT, amount NUMERIC(10,2), updated_at DATETIME)")
    con.executemany("INSERT INTO t VALUES (?,?,?,?)", [(i, f"企业{i}", i + 0.25, "2026-11-01 08:00:00") for i in range(500)])
    con.commit()
    system = SourceSystem.model_validate({
        "system": "biz", "name": "企业", "department": TEST_DEPARTMENT, "connection": "src_biz",
        "default_url": f"sqlite:///{db}",
        "tables": [{"code": "t", "source": "t", "primary_key": ["id"], "cursor": "updated_at",
                    "columns": {"名称": "name"}}],
    })
    res = ingest_table(system, "t", settings=s3_lake, batch_id="b1", extracted_at=datetime(2026, 11, 2, tzinfo=TZ))
    assert res.rows_written == 500
    table = get_catalog(s3_lake).load_table("raw.biz__t")
    assert table.location().startswith("s3://")
    data = table.scan().to_arrow()
    assert data.num_rows == 500 and str(data.schema.field("amount").type) == "decimal128(10, 2)"
    assert {r["table"]: r["rows"] for r in list_tables(s3_lake)}["raw.biz__t"] == 500
    # the streamed reader (gate, change detection) reads S3 data files and applies the row filter
    from pyiceberg.expressions import LessThan

    from pipelines.lake.raw import stream_scan

    streamed = stream_scan(table.scan(row_filter=LessThan("id", 10), selected_fields=("name",))).read_all()
    assert streamed.column_names == ["name"] and sorted(streamed["name"].to_pylist()) == \
        sorted(f"企业{i}" for i in range(10))


def test_s3_drop_lands_and_rejects_into_bucket(s3_lake: Settings, moto_endpoint: str) -> None:
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket="dept-drops")
    s3.put_object(Bucket="dept-drops", Key="bus/ridership_20261120.jsonl",
                  Body=b'{"line_id": "1", "boardings": 10}\n{"line_id": "2", "boardings": 12}\n')
    s3.put_object(Bucket="dept-drops", Key="bus/ridership_20261121.jsonl", Body=b'{"line_id": "1", "boardings": \n')
    system = SourceSystem.model_validate({
        "system": "bus", "name": "公交客流", "department": TEST_DEPARTMENT, "connection": "drop_bus",
        "drop": {"location": "s3://dept-drops/bus", "tables": [
            {"code": "ridership", "glob": "ridership_*.jsonl", "format": "jsonl", "primary_key": ["line_id"]}]},
    })
    res = ingest_table(system, "ridership", settings=s3_lake, batch_id="b1",
                       extracted_at=datetime(2026, 11, 22, tzinfo=TZ))
    assert res.files_loaded == ["ridership_20261120.jsonl"]
    assert res.files_rejected[0]["copied_to"].startswith("s3://")
    bucket, key = res.files_rejected[0]["copied_to"].removeprefix("s3://").split("/", 1)
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read().startswith(b'{"line_id"')
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="dept-drops")["Contents"]}
    assert keys == {"bus/ridership_20261120.jsonl", "bus/ridership_20261121.jsonl"}  # read-only
    assert get_catalog(s3_lake).load_table("raw.bus__ridership").scan().to_arrow().num_rows == 2
