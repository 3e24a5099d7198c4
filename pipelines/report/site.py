"""``build_site``: the Chinese governance site, written to a local folder (and, when published, put under the
artifacts root's ``report/``: ``pipelines.lake.artifacts``).

The site is built in a staging folder next to the target and swapped in whole, so a reader never sees half
a build and pages of datasets that left the registry do not linger. A target folder that is not a citylake
report (no marker file) is never replaced. Under the artifacts root every file is put, ``index.html`` last,
and files of an earlier build that this one lacks are deleted after: only those listed when this build
started, so a publish running beside it (the CLI beside the DAG) never loses a page its index links.

The published copy is rendered a second time from the same data, its links to GX Data Docs leading to the
artifacts root's ``gx/data_docs/`` (whichever worker built them); the local copy links this machine's own
Data Docs site (``gx_docs_site``), so both work where they are opened.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import tempfile
import time
from datetime import date, datetime
from pathlib import Path
from typing import Any

from pipelines.errors import CitylakeError
from pipelines.lake import artifacts
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


def _gx_links(settings: Settings, out: Path, data: SiteData, shared: artifacts.Artifacts | None) -> dict[str, Any]:
    """Relative links from the site's pages to GX Data Docs: the index and each dataset's suite page, those
    that exist where this copy is served: the artifacts root for the ``shared`` copy (whichever worker built
    the Data Docs), else this machine's lake folder (``out`` is where the local copy lands)."""
    links: dict[str, Any] = {"index": None, "datasets": {}}
    if shared is not None:
        docs = posixpath.relpath(artifacts.DATA_DOCS, artifacts.REPORT)
        if artifacts.exists(shared, f"{artifacts.DATA_DOCS}/{artifacts.INDEX}"):
            links["index"] = posixpath.join(docs, artifacts.INDEX)
        suites = artifacts.listing(shared, f"{artifacts.DATA_DOCS}/expectations")  # not the validation pages
        for name in data.datasets:
            if f"{name}.html" in suites:
                links["datasets"][name] = posixpath.join("..", docs, "expectations", f"{name}.html")
        return links
    site = gx_docs_site(settings)
    if (site / "index.html").exists():
        links["index"] = _rel(site / "index.html", out)
    for name in data.datasets:
        page = site / "expectations" / f"{name}.html"
        if page.exists():
            links["datasets"][name] = _rel(page, out / "datasets")
    return links


def _write(settings: Settings, stage: Path, final: Path, data: SiteData, shared: artifacts.Artifacts | None) -> None:
    shutil.copytree(ASSETS, stage / "assets")
    gx = _gx_links(settings, final, data, shared)
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


def build_site(settings: Settings | None = None, out_dir: Path | None = None, today: date | None = None,
               publish: bool | None = None) -> Path:
    """Build the site; returns its ``index.html``. Default folder ``<lake>/report``; a past ``today`` that
    is not published defaults to ``<lake>/report-<day>`` instead. ``today`` is the report day
    (Asia/Shanghai). With an artifacts root elsewhere than the lake folder (``CITYLAKE_ARTIFACTS_DIR``; by
    default the warehouse when it is on S3) the site is put under ``<artifacts>/report/`` (replacing what is
    there) only when ``publish``, its links to GX Data Docs then leading to ``<artifacts>/gx/data_docs/``; by
    default (None) only the default build publishes (default folder, today's report), so a preview with
    ``--out`` or a past ``--date`` never overwrites the production site, there or on disk. The DAG passes
    ``publish=True`` (its logical date may be past)."""
    settings = settings or load_settings()
    now = datetime.now(TZ).date()
    if publish is None:
        publish = out_dir is None and today in (None, now)
    today = today or now
    if out_dir is not None:
        out = Path(out_dir).resolve()
    else:  # <lake>/report is the site the DAG serves and the alerts link to: a past-day preview goes beside it
        out = settings.lake_dir / ("report" if publish or today == now else f"report-{today.isoformat()}")
    shared = artifacts.open_artifacts(settings) if publish else None
    # what is there before this build: the only files its publish may delete (a concurrent publish's
    # files put after this are kept, whatever the clocks say)
    before = artifacts.listing(shared, artifacts.REPORT) if shared is not None else None
    started = time.perf_counter()
    data = collect(settings, today)
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.build-", dir=out.parent))
    try:
        _write(settings, stage, out, data, None)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _swap(stage, out)
    log.info("report: %d departments, %d datasets, %d catalog entries in %.1fs → %s", len(data.departments),
             len(data.datasets), len(data.catalog), time.perf_counter() - started, out)
    if shared is not None:  # the same data rendered again with the shared layout's Data Docs links
        published = Path(tempfile.mkdtemp(prefix=f".{out.name}.publish-", dir=out.parent))
        try:
            _write(settings, published, published, data, shared)
            artifacts.put_folder(shared, published, artifacts.REPORT, delete=True, there=before)
        finally:
            shutil.rmtree(published, ignore_errors=True)
        log.info("report put under %s", shared.where(artifacts.REPORT))
    return out / "index.html"
