"""GX results, Data Docs and the report on shared storage (``CITYLAKE_ARTIFACTS_DIR``): under the CeleryExecutor
the gate, the Data Docs build and the report build may each run on another machine, each with its own local
lake folder; what one writes the others must see, and the built sites must be reachable by users."""

from __future__ import annotations

import json
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
    s3.create_bucket(Bucket="city-lake")  # (moto's server lives for the session: empty what a test before left)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket="city-lake"):
        for o in page.get("Contents", []):
            s3.delete_object(Bucket="city-lake", Key=o["Key"])
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
    (local,) = (a.lake_dir / "gx" / "validations" / "person").glob("night_a__*.json")  # this attempt's own name
    assert _body(s3, f"artifacts/gx/validations/person/{local.name}") == local.read_text(encoding="utf-8")

    # worker B: GX Data Docs from the results in the artifacts store, put back there
    b = _worker(monkeypatch, tmp_path / "worker-b")
    put: list[str] = []
    real_put = artifacts.put_file
    monkeypatch.setattr(artifacts, "put_file", lambda store, path, rel: (put.append(rel), real_put(store, path, rel)))
    built = build_data_docs(b)
    assert built.new_results == built.total_results == 1 and built.published == "s3://city-lake/artifacts/gx/data_docs/index.html"
    assert (b.lake_dir / "gx" / "validations" / "person" / local.name).read_bytes() == local.read_bytes()
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
    assert put[-1] == "report/index.html"
    # C has no Data Docs of its own: its local copy links none, the published one those in the bucket
    assert "data_docs" not in index.read_text(encoding="utf-8")
    assert "expectations/person.html" not in (index.parent / "datasets" / "person.html").read_text(encoding="utf-8")
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
    """A shared folder (an NFS mount): put replaces whole files, a fetch takes only the files missing here
    (never replacing one of the same name, whatever its size or time), a site's files that a new build lacks
    are deleted with the folders they leave empty."""
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
    (fetched / "person" / "night.json").write_text('{"run": 1, "here": 1}', encoding="utf-8")
    os.utime(fetched / "person" / "night.json", (time.time() - 3600, time.time() - 3600))
    assert artifacts.get_folder(store, "gx/validations", fetched) == 0  # other size, older: still kept
    result.write_text('{"run": 2}', encoding="utf-8")  # the run id rerun elsewhere: another attempt's name
    artifacts.put_file(store, result, "gx/validations/person/night__2.json")
    assert artifacts.get_folder(store, "gx/validations", fetched) == 1
    assert (fetched / "person" / "night__2.json").read_text(encoding="utf-8") == '{"run": 2}'
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


def _links(html: str, pattern: str) -> list[str]:
    return re.findall(rf'href="([^"]*{pattern})"', html)


def test_report_links_local_data_docs_locally_and_shared_ones_when_published(
        shared_s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker that built Data Docs and then the report: its local report links its local GX site
    (``<lake>/gx/uncommitted/data_docs/local_site``), the published copy the shared ``gx/data_docs``."""
    from pipelines.ingest import ingest_table
    from pipelines.quality.docs import build_data_docs
    from pipelines.quality.gate import run_quality
    from pipelines.registry import get_system
    from pipelines.report import build_site
    from pipelines.seed import seed_city

    s3 = shared_s3
    a = _worker(monkeypatch, tmp_path / "worker-a")
    seed_city(a.data_dir, scale=0.01)
    ingest_table(get_system(a.registry_dir, "population"), "person", settings=a, batch_id="b1", extracted_at=AT)
    run_quality("person", settings=a, reference_date=AT.date(), run_id="night_a")
    build_data_docs(a)
    index = build_site(a)
    for page, pattern in ((index, r"(?:data_docs|local_site)/index\.html"),
                          (index.parent / "datasets" / "person.html", r"expectations/person\.html")):
        (link,) = set(_links(page.read_text(encoding="utf-8"), pattern))
        assert (page.parent / link).resolve().is_file(), link  # resolves on this machine's disk
        rel = "artifacts/" + page.relative_to(index.parent.parent).as_posix()
        (shared_link,) = set(_links(_body(s3, rel), pattern))
        assert posixpath.normpath(posixpath.join(posixpath.dirname(rel), shared_link)) in _keys(s3, "artifacts/gx/")


def test_a_rerun_on_another_worker_and_a_retry_racing_a_build(shared_s3: Any, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Results are immutable objects, one per attempt: a rerun of the run id on another worker switches every
    worker's index to it; a retry's gate writing while a Data Docs build on the same worker fetches keeps its
    result (the build does not put an older attempt over it, the gate's put sends the retry's); a fresh worker
    imports every result but renders and puts no validation page the shared site has."""
    from pipelines.ingest import ingest_table
    from pipelines.quality.docs import build_data_docs
    from pipelines.quality.gate import run_quality
    from pipelines.registry import get_system
    from pipelines.seed import seed_city

    s3 = shared_s3
    prefix = "artifacts/gx/validations/person/"

    def pages(settings: Settings | None = None) -> set[str]:
        """The run times of night's validation pages the (shared, else local) index links."""
        html = (_body(s3, "artifacts/gx/data_docs/index.html") if settings is None else
                (settings.lake_dir / "gx/uncommitted/data_docs/local_site/index.html").read_text(encoding="utf-8"))
        return set(re.findall(r"validations/person/night/([0-9T.]+Z)/", html))

    def run_time(body: str) -> str:
        from pipelines.quality.docs import _run_identifier

        return str(_run_identifier(json.loads(body), Path("x")).to_tuple()[1])

    a = _worker(monkeypatch, tmp_path / "worker-a")
    seed_city(a.data_dir, scale=0.01)
    ingest_table(get_system(a.registry_dir, "population"), "person", settings=a, batch_id="b1", extracted_at=AT)
    from pipelines.quality import gate

    real_write = gate.write_gx_result

    def died(*args: Any, **kwargs: Any) -> None:
        real_write(*args, **kwargs)
        raise RuntimeError("the worker died")

    with monkeypatch.context() as m:  # the first attempt dies after writing its result: the retry validates again
        m.setattr(gate, "write_gx_result", died)
        with pytest.raises(RuntimeError, match="died"):
            run_quality("person", settings=a, reference_date=AT.date(), run_id="night")
    (first,) = _keys(s3, prefix)
    # the first attempt's result as another size (another failing-key list): the old rule fetched any object
    # of another size over the local file
    s3.put_object(Bucket="city-lake", Key=first, Body=_body(s3, first) + "\n" * 7)
    b = _worker(monkeypatch, tmp_path / "worker-b")
    build_data_docs(b)
    assert pages() == pages(b) == {run_time(_body(s3, first))}

    # the retry on worker B: its gate writes the result, B's Data Docs build runs before the gate's put
    real_put = artifacts.put_file
    raced: list[str] = []

    def put_after_a_build(store: Any, path: Path, rel: str) -> None:
        if rel.startswith(artifacts.VALIDATIONS) and not raced:
            raced.append(path.read_text(encoding="utf-8"))
            build_data_docs(b)
        real_put(store, path, rel)

    monkeypatch.setattr(artifacts, "put_file", put_after_a_build)
    assert run_quality("person", settings=b, reference_date=AT.date(), run_id="night").status == "published"
    monkeypatch.setattr(artifacts, "put_file", real_put)
    (retry,) = raced
    assert retry != _body(s3, first).rstrip("\n")
    (second,) = _keys(s3, prefix) - {first}
    assert _body(s3, second) == retry  # the retry's result, not the first attempt's, went to the store
    (mine,) = [p for p in (b.lake_dir / "gx" / "validations" / "person").glob("*.json")
               if p.read_text(encoding="utf-8") == retry]
    assert posixpath.basename(second) == mine.name
    assert pages(b) == {run_time(retry)}  # the build that raced already listed the retry, not the first

    # worker C (fresh, or kept from before): the shared index names the retry only
    build_data_docs(b)
    assert pages() == {run_time(retry)}
    c = _worker(monkeypatch, tmp_path / "worker-c")
    put: list[str] = []
    monkeypatch.setattr(artifacts, "put_file", lambda store, path, rel: (put.append(rel), real_put(store, path, rel)))
    built = build_data_docs(c)
    assert built.total_results == built.new_results == 1 and pages(c) == {run_time(retry)}
    assert not [x for x in put if "/validations/" in x], put  # B rendered and put that page already
    assert put[-1] == "gx/data_docs/index.html"
    (page,) = _keys(s3, f"artifacts/gx/data_docs/validations/person/night/{run_time(retry)}/")
    local_page = c.lake_dir / "gx/uncommitted/data_docs/local_site" / page.removeprefix("artifacts/gx/data_docs/")
    assert local_page.read_text(encoding="utf-8") == _body(s3, page)  # copied from the shared site, not rendered


def test_a_publish_deletes_only_what_was_there_when_it_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two report publishes at once (the CLI beside the DAG): a file another build put after this one listed
    the folder is not deleted by it."""
    monkeypatch.setenv("CITYLAKE_LAKE_DIR", str(tmp_path / "lake"))
    monkeypatch.setenv("CITYLAKE_ARTIFACTS_DIR", str(tmp_path / "shared"))
    store = artifacts.open_artifacts(load_settings())
    assert store is not None
    site = tmp_path / "site"
    for name in ("index.html", "datasets/gone.html"):
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(name, encoding="utf-8")
    artifacts.put_folder(store, site, "report", delete=True)
    before = artifacts.listing(store, "report")  # this build starts
    other = tmp_path / "other"  # a concurrent build puts a page this one lacks
    (other / "datasets").mkdir(parents=True)
    (other / "datasets" / "new.html").write_text("new", encoding="utf-8")
    artifacts.put_file(store, other / "datasets" / "new.html", "report/datasets/new.html")
    (site / "datasets" / "gone.html").unlink()
    artifacts.put_folder(store, site, "report", delete=True, there=before)
    root = tmp_path / "shared" / "report"
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.html")) == ["datasets/new.html", "index.html"]


def test_deleting_races_and_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, moto_endpoint: str,
                                     aws_env: None) -> None:
    """A local folder emptied by this delete while a concurrent put (or delete) touches it is no error; an S3
    delete failing is one CitylakeError naming the location; a ``file://`` setting is URL-decoded."""
    monkeypatch.setenv("CITYLAKE_LAKE_DIR", str(tmp_path / "lake"))
    monkeypatch.setenv("CITYLAKE_ARTIFACTS_DIR", (tmp_path / "shared dir").as_uri())
    store = artifacts.open_artifacts(load_settings())
    assert store is not None and store.root == (tmp_path / "shared dir").as_posix()
    page = tmp_path / "page.html"
    page.write_text("x", encoding="utf-8")
    artifacts.put_file(store, page, "report/retired/x.html")
    real_rmdir = Path.rmdir

    def concurrent_put(self: Path) -> None:
        (self / "y.html").write_text("y", encoding="utf-8")  # another build put a page here just now
        real_rmdir(self)

    monkeypatch.setattr(Path, "rmdir", concurrent_put)
    artifacts._delete(store, "report", ["retired/x.html"])
    monkeypatch.setattr(Path, "rmdir", real_rmdir)
    assert (tmp_path / "shared dir" / "report" / "retired" / "y.html").is_file()

    monkeypatch.setenv("CITYLAKE_S3_ENDPOINT", moto_endpoint)
    monkeypatch.setenv("CITYLAKE_ARTIFACTS_DIR", "s3://no-such-bucket/artifacts")
    s3_store = artifacts.open_artifacts(load_settings())
    assert s3_store is not None
    with pytest.raises(CitylakeError, match=r"^artifacts: cannot delete under s3://no-such-bucket/artifacts/report: "
                                            r".*NoSuchBucket[^\n]*$"):
        artifacts._delete(s3_store, "report", ["index.html"])


def test_one_s3_client_factory(moto_endpoint: str, aws_env: None) -> None:
    """The exports' store uses the lake's S3 client: standard retries, path style on a custom endpoint."""
    from pipelines.lake.s3 import s3_client
    from pipelines.publish import store

    assert store.s3_client is s3_client
    client = s3_client(moto_endpoint)
    assert client.meta.endpoint_url == moto_endpoint
    assert client.meta.config.s3["addressing_style"] == "path"
    assert client.meta.config.retries["mode"] == "standard"
    assert s3_client(None).meta.config.s3 is None
