"""``build_site``: the Chinese governance site, written to a local folder (and uploaded beside an S3 lake).

The site is built in a staging folder next to the target and swapped in whole, so a reader never sees half
a build and pages of datasets that left the registry do not linger. A target folder that is not a citylake
report (no marker file) is never replaced.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import shutil
import tempfile
import time
from datetime import date, datetime
from pathlib import Path
from typing import Any

from pipelines.errors import CitylakeError
from pipelines.publish.store import s3_client, s3_etag
from pipelines.report.data import SiteData, collect
from pipelines.report.pages import ASSETS, page_name, render
from pipelines.settings import TZ, Settings, load_settings

log = logging.getLogger(__name__)
MARKER = ".citylake-report"


def gx_docs_site(settings: Settings) -> Path:
    """Where ``pipelines.quality.docs`` renders GX Data Docs (the engineers' pages the site links to)."""
    return settings.lake_dir / "gx" / "uncommitted" / "data_docs" / "local_site"


def _rel(target: Path, page_dir: Path) -> str:
    return Path(os.path.relpath(target, page_dir)).as_posix()


def _gx_links(settings: Settings, out: Path, data: SiteData) -> dict[str, Any]:
    """Relative links from the site's pages to GX Data Docs: the index and each dataset's suite page."""
    site = gx_docs_site(settings)
    links: dict[str, Any] = {"index": None, "datasets": {}}
    if (site / "index.html").exists():
        links["index"] = _rel(site / "index.html", out)
    for name in data.datasets:
        page = site / "expectations" / f"{name}.html"
        if page.exists():
            links["datasets"][name] = _rel(page, out / "datasets")
    return links


def _write(settings: Settings, stage: Path, final: Path, data: SiteData) -> None:
    shutil.copytree(ASSETS, stage / "assets")
    gx = _gx_links(settings, final, data)
    common = {"generated_at": data.generated_at, "today": data.today, "gx_index": gx["index"]}
    departments = {code: page_name(code) for code in data.departments}
    ctx = {**common, "department_pages": departments}
    render("index.html", stage / "index.html", root="", title="总览", overview=data.overview, **ctx)
    for code, dept in data.departments.items():
        render("department.html", stage / "departments" / f"{departments[code]}.html", root="../",
               title=dept["name"], dept=dept, **ctx)
    for name, ds in data.datasets.items():
        gx_page = gx["datasets"].get(name)
        render("dataset.html", stage / "datasets" / f"{name}.html", root="../", title=f"{ds['name']}（{name}）",
               ds=ds, gx_page=gx_page, **ctx)
    render("conflicts.html", stage / "conflicts.html", root="", title="一数一源冲突", conflicts=data.conflicts, **ctx)
    render("open.html", stage / "open.html", root="", title="开放数据", open=data.open, **ctx)
    render("share.html", stage / "share.html", root="", title="数据共享", share=data.share, **ctx)
    facets = _facets(data.catalog)
    render("catalog.html", stage / "catalog.html", root="", title="数据资源目录（一本账）", entries=data.catalog,
           facets=facets, **ctx)
    for entry in data.catalog:
        render("catalog_entry.html", stage / "catalog" / f"{page_name(entry['identifier'])}.html", root="../",
               title=entry["name"], e=entry, dataset_page=entry.get("dataset") in data.datasets, **ctx)
    from pipelines.catalog.export import write_catalog

    write_catalog(data.catalog_entries, stage)  # also when empty: catalog.html links to both files
    (stage / MARKER).write_text(f"citylake report {data.generated_at.isoformat()}\n", encoding="utf-8")


def _facets(entries: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Filter options per row attribute of catalog.html; a filter is kept when choosing an option narrows the
    rows (more than one value, counting rows without one), so 未登记 alone still hides the raw tables ("—")."""
    kept: dict[str, list[str]] = {}
    for key, fn in {"layer": lambda e: e.get("layer"),
                    "department": lambda e: (e.get("provider") or e.get("department") or {}).get("name"),
                    "sharing": lambda e: (e.get("sharing") or {}).get("type"),
                    "status": lambda e: e.get("status"),
                    "registration": lambda e: e.get("registration_status")}.items():
        seen = {fn(e) or None for e in entries}
        options = sorted(v for v in seen if v and v != "—")
        if options and len(seen) > 1:
            kept[key] = options
    return kept


def _swap(stage: Path, out: Path) -> None:
    """Replace ``out`` with ``stage`` (rename, so readers see the old or the new site)."""
    if out.exists():
        if not (out / MARKER).exists() and any(out.iterdir()):
            shutil.rmtree(stage, ignore_errors=True)
            raise CitylakeError(f"report: {out} exists and is not a citylake report (no {MARKER}); "
                                "choose an empty folder with --out")
        old = out.with_name(f".{out.name}.old-{time.time_ns()}")
        out.rename(old)
        stage.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        stage.rename(out)


def _s3(settings: Settings) -> tuple[Any, str, str]:
    bucket, _, prefix = settings.warehouse.removeprefix("s3://").partition("/")
    return s3_client(settings.s3_endpoint), bucket, prefix.strip("/")


def _sync(s3: Any, folder: Path, bucket: str, prefix: str, *, delete: bool, changed_only: bool) -> int:
    """Upload ``folder`` under ``prefix`` (``changed_only``: files whose content differs, by ETag, or that
    are missing: a same-size edit is sent too); ``delete``: remove objects under the prefix the folder no
    longer has. Returns files uploaded."""
    existing: dict[str, str] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        existing.update({o["Key"]: o["ETag"].strip('"') for o in page.get("Contents", [])})
    written, sent = set(), 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        key = prefix + path.relative_to(folder).as_posix()
        written.add(key)
        if changed_only and existing.get(key) == s3_etag(path):
            continue
        kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind in ("application/javascript", "application/json"):
            kind += "; charset=utf-8"
        s3.upload_file(str(path), bucket, key, ExtraArgs={"ContentType": kind})
        sent += 1
    stale = [{"Key": k} for k in existing if k not in written] if delete else []
    for i in range(0, len(stale), 1000):
        s3.delete_objects(Bucket=bucket, Delete={"Objects": stale[i:i + 1000]})
    return sent


def upload(folder: Path, settings: Settings, with_docs: bool = True) -> str:
    """Copy the site to ``<warehouse>/report/`` on S3 (beside the lake's tables), removing pages of an
    earlier build that this one no longer has; with ``with_docs`` also GX Data Docs to
    ``<warehouse>/gx/uncommitted/data_docs/local_site/`` (new or changed files only), where the site's
    relative links to them lead. Returns the s3:// prefix of the site."""
    s3, bucket, base = _s3(settings)
    prefix = f"{base}/report/".lstrip("/")
    _sync(s3, folder, bucket, prefix, delete=True, changed_only=False)
    docs = gx_docs_site(settings)
    if with_docs and docs.is_dir():
        rel = docs.relative_to(settings.lake_dir).as_posix()
        _sync(s3, docs, bucket, f"{base}/{rel}/".lstrip("/"), delete=False, changed_only=True)
    return f"s3://{bucket}/{prefix}"


def build_site(settings: Settings | None = None, out_dir: Path | None = None, today: date | None = None,
               publish: bool | None = None) -> Path:
    """Build the site; returns its ``index.html``. Default folder ``<lake>/report``; a past ``today`` that
    is not published defaults to ``<lake>/report-<day>`` instead. ``today`` is the report day
    (Asia/Shanghai). With an s3:// warehouse the site is uploaded to ``<warehouse>/report/`` (replacing
    what is there) only when ``publish``; by default (None) only the default build publishes (default
    folder, today's report), so a preview with ``--out`` or a past ``--date`` never overwrites the
    production site, on S3 or on disk. The DAG passes ``publish=True`` (its logical date may be past)."""
    settings = settings or load_settings()
    now = datetime.now(TZ).date()
    if publish is None:
        publish = out_dir is None and today in (None, now)
    today = today or now
    if out_dir is not None:
        out = Path(out_dir).resolve()
    else:  # <lake>/report is the site the DAG serves and the alerts link to: a past-day preview goes beside it
        out = settings.lake_dir / ("report" if publish or today == now else f"report-{today.isoformat()}")
    started = time.perf_counter()
    data = collect(settings, today)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
    try:
        _write(settings, stage, out, data)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _swap(stage, out)
    log.info("report: %d departments, %d datasets, %d catalog entries in %.1fs → %s", len(data.departments),
             len(data.datasets), len(data.catalog), time.perf_counter() - started, out)
    if publish and settings.warehouse.startswith("s3://"):
        # the Data Docs links are relative to the lake folder: they hold on S3 only for the default folder
        log.info("report uploaded to %s", upload(out, settings, with_docs=out_dir is None))
    return out / "index.html"
