"""GX results, Data Docs and the report on shared storage (``CITYLAKE_ARTIFACTS_DIR``): under the CeleryExecutor
the gate, the Data Docs build and the report build may each run on another machine, each with its own local
lake folder; what one writes the others must see, and the built sites must be reachable by users."""

from __future__ import annotations

import os
import posixpath
import re
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import boto3
import pytest

from pipelines.errors import CitylakeError
from pipelines.lake import artifacts
from pipelines.settings import PROJECT_ROOT, TZ, Settings, load_settings

AT = datetime(2026, 11, 20, 2, tzinfo=TZ)


def _worker(monkeypatch: pytest.MonkeyPatch, lake: Path) -> Settings:
    """Settings of a worker whose local lake folder is ``lake`` (catalog, warehouse and artifacts shared)."""
    monkeypatch.setenv("CITYLAKE_LAKE_DIR", str(lake))
    return load_settings()


@pytest.fixture
def shared_s3(tmp_path: Path, moto_endpoint: str, aws_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """One catalog (a SQLite file every "worker" opens), the warehouse and the artifacts in one bucket."""
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket="city-lake")
    for key, value in {"CITYLAKE_CATALOG_URI": f"sqlite:///{tmp_path / 'catalog.db'}",
                       "CITYLAKE_WAREHOUSE": "s3://city-lake/warehouse", "CITYLAKE_S3_ENDPOINT": moto_endpoint,
                       "CITYLAKE_ARTIFACTS_DIR": "s3://city-lake/artifacts/",
                       "CITYLAKE_REJECTED_DIR": "s3://city-lake/rejected",
                       "CITYLAKE_REGISTRY_DIR": str(PROJECT_ROOT / "schemas" / "sources"),
                       "CITYLAKE_DATA_DIR": str(tmp_path / "data"), "CITYLAKE_ROOT": str(PROJECT_ROOT)}.items():
        monkeypatch.setenv(key, value)
    yield s3


def _keys(s3: Any, prefix: str) -> set[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="city-lake", Prefix=prefix)
    return {o["Key"] for page in pages for o in page.get("Contents", [])}


def _body(s3: Any, key: str) -> str:
    return str(s3.get_object(Bucket="city-lake", Key=key)["Body"].read().decode("utf-8"))


def test_gate_on_one_worker_docs_and_report_on_others(shared_s3: Any, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.ingest import ingest_table
    from pipelines.quality.docs import build_data_docs
    from pipelines.quality.gate import run_quality
    from pipelines.registry import get_system
    from pipelines.report import build_site
    from pipelines.seed import seed_city

    s3 = shared_s3
    # worker A: ingest and the gate (the population system alone, a small city)
    a = _worker(monkeypatch, tmp_path / "worker-a")
    seed_city(a.data_dir, scale=0.01)
    ingest_table(get_system(a.registry_dir, "population"), "person", settings=a, batch_id="b1", extracted_at=AT)
    assert run_quality("person", settings=a, reference_date=AT.date(), run_id="night_a").status == "published"
    local = a.lake_dir / "gx" / "validations" / "person" / "night_a.json"
    assert _body(s3, "artifacts/gx/validations/person/night_a.json") == local.read_text(encoding="utf-8")

    # worker B: GX Data Docs from the results in the artifacts store, put back there
    b = _worker(monkeypatch, tmp_path / "worker-b")
    put: list[str] = []
    real_put = artifacts.put_file
    monkeypatch.setattr(artifacts, "put_file", lambda store, path, rel: (put.append(rel), real_put(store, path, rel)))
    built = build_data_docs(b)
    assert built.new_results == built.total_results == 1 and built.published == "s3://city-lake/artifacts/gx/data_docs/index.html"
    assert (b.lake_dir / "gx" / "validations" / "person" / "night_a.json").read_bytes() == local.read_bytes()
    docs = _keys(s3, "artifacts/gx/data_docs/")
    assert "artifacts/gx/data_docs/expectations/person.html" in docs
    assert any(re.fullmatch(r"artifacts/gx/data_docs/validations/person/night_a/.+\.html", k) for k in docs)
    assert "night_a" in _body(s3, "artifacts/gx/data_docs/index.html")  # the index lists A's validation
    assert put[-1] == "gx/data_docs/index.html"  # the entry page last: never one linking pages not there yet
    rendered = len(put)
    assert any("/validations/person/" in x for x in put) and any("/static/vendor/" in x for x in put)
    assert build_data_docs(b).new_results == 0
    again = put[rendered:]  # what GX rewrote (index, suite pages, its static files); not the pages kept
    assert again[-1] == "gx/data_docs/index.html" and not [x for x in again if "/validations/" in x or "/vendor/" in x]

    # worker C: the report; it links the Data Docs the artifacts store has, though C never built them
    put.clear()
    c = _worker(monkeypatch, tmp_path / "worker-c")
    index = build_site(c)
    assert index == c.lake_dir / "report" / "index.html" and not (c.lake_dir / "gx").exists()
    report = _keys(s3, "artifacts/report/")
    assert report == {"artifacts/report/" + p.relative_to(index.parent).as_posix()
                      for p in index.parent.rglob("*") if p.is_file()}
    assert _body(s3, "artifacts/report/index.html") == index.read_text(encoding="utf-8")
    assert put[-1] == "report/index.html"
    page = _body(s3, "artifacts/report/datasets/person.html")
    link = re.search(r'href="([^"]*expectations/person\.html)"', page)
    assert link, "the person page links to its GX suite page"
    assert posixpath.normpath(posixpath.join("artifacts/report/datasets", link.group(1))) in docs
    gx_index = re.search(r'href="([^"]*data_docs/index\.html)"', _body(s3, "artifacts/report/index.html"))
    assert gx_index and posixpath.normpath(posixpath.join("artifacts/report", gx_index.group(1))) in docs


def test_default_settings_copy_nothing(lake_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded default: the artifacts root is the lake folder, nothing is copied anywhere."""
    from pipelines.report import build_site

    monkeypatch.setenv("CITYLAKE_REGISTRY_DIR", str(PROJECT_ROOT / "schemas" / "sources"))
    lake_settings = load_settings()
    assert lake_settings.artifacts == str(lake_settings.lake_dir) and artifacts.open_artifacts(lake_settings) is None

    def refuse(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("nothing is put anywhere with the default settings")

    monkeypatch.setattr(artifacts, "put_file", refuse)
    build_site(lake_settings)
    assert sorted(p.name for p in lake_settings.lake_dir.iterdir()) == ["catalog.db", "report", "warehouse"]
    # the artifacts root named as the lake folder itself is the same thing
    monkeypatch.setenv("CITYLAKE_ARTIFACTS_DIR", str(lake_settings.lake_dir) + "/")
    assert artifacts.open_artifacts(load_settings()) is None


def test_artifacts_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CITYLAKE_LAKE_DIR", str(tmp_path / "lake"))
    monkeypatch.delenv("CITYLAKE_ARTIFACTS_DIR", raising=False)
    monkeypatch.delenv("CITYLAKE_WAREHOUSE", raising=False)
    assert load_settings().artifacts == str(tmp_path / "lake")
    # an S3 warehouse: beside it, where the report went before the setting existed (alerts link there)
    monkeypatch.setenv("CITYLAKE_WAREHOUSE", "s3://lake/warehouse/")
    assert load_settings().artifacts == "s3://lake/warehouse"
    monkeypatch.setenv("CITYLAKE_ARTIFACTS_DIR", "s3://shared/citylake/")
    assert load_settings().artifacts == "s3://shared/citylake"
    monkeypatch.setenv("CITYLAKE_ARTIFACTS_DIR", "gs://shared/citylake")
    with pytest.raises(CitylakeError, match="CITYLAKE_ARTIFACTS_DIR 'gs://shared/citylake'"):
        artifacts.open_artifacts(load_settings())


def test_a_local_artifacts_folder_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shared folder (an NFS mount): put replaces whole files, a rerun's rewrite is fetched again, a site's
    files that a new build lacks are deleted with the folders they leave empty."""
    monkeypatch.setenv("CITYLAKE_LAKE_DIR", str(tmp_path / "lake"))
    monkeypatch.setenv("CITYLAKE_ARTIFACTS_DIR", str(tmp_path / "shared"))
    store = artifacts.open_artifacts(load_settings())
    assert store is not None and store.local
    result = tmp_path / "a" / "night.json"
    result.parent.mkdir()
    result.write_text('{"run": 1}', encoding="utf-8")
    artifacts.put_file(store, result, "gx/validations/person/night.json")
    fetched = tmp_path / "b"
    assert artifacts.get_folder(store, "gx/validations", fetched) == 1
    assert artifacts.get_folder(store, "gx/validations", fetched) == 0  # nothing new
    result.write_text('{"run": 2}', encoding="utf-8")  # the run id rerun elsewhere: same size, newer
    shared = tmp_path / "shared" / "gx" / "validations" / "person" / "night.json"
    artifacts.put_file(store, result, "gx/validations/person/night.json")
    os.utime(shared, (time.time() + 5, time.time() + 5))
    assert artifacts.get_folder(store, "gx/validations", fetched) == 1
    assert (fetched / "person" / "night.json").read_text(encoding="utf-8") == '{"run": 2}'
    assert not [p for p in (tmp_path / "shared").rglob("*") if ".tmp-" in p.name]

    site = tmp_path / "site"
    for name in ("index.html", "datasets/old.html", "datasets/kept.html", "retired/x.html"):
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(name, encoding="utf-8")
    assert artifacts.put_folder(store, site, "report", delete=True) == 4
    (site / "datasets" / "old.html").unlink()
    (site / "retired" / "x.html").unlink()
    (site / "retired").rmdir()
    assert artifacts.put_folder(store, site, "report", delete=True) == 2
    root = tmp_path / "shared" / "report"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == ["datasets", "datasets/kept.html", "index.html"]
