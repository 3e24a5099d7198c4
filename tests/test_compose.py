"""docker-compose.yml is for users' machines (no Docker engine here): parse it and check its shape."""

from __future__ import annotations

import re

import yaml

from pipelines.settings import PROJECT_ROOT


def test_compose_parses_and_wires_the_stack() -> None:
    text = (PROJECT_ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    spec = yaml.safe_load(text)
    services = spec["services"]
    assert {"postgres", "redis", "minio", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
            "airflow-worker"} <= set(services)
    worker = services["airflow-worker"]
    env = worker["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["CITYLAKE_CATALOG_URI"].startswith("postgresql+psycopg://")
    assert env["CITYLAKE_WAREHOUSE"].startswith("s3://") and env["CITYLAKE_S3_ENDPOINT"] == "http://minio:9000"
    assert set(worker["depends_on"]) == {"postgres", "redis", "minio"}
    # No literal secret: every password comes from the user's environment.
    for match in re.finditer(r"^\s*[A-Z_]*(PASSWORD|SECRET)[A-Z_]*:\s*(\S+)", text, re.M):
        assert match.group(2).startswith("${"), match.group(0)
    for url in re.findall(r"://[^:/\s]+:([^@\s]+)@", text):
        assert url.startswith("${"), url
