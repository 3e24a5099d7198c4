"""GX Data Docs for engineers, built by GX itself from the suites and the kept validation results.

The GX project lives at ``<lake>/gx`` (a file data context: ``great_expectations.yml``, its stores and
``uncommitted/data_docs/local_site``). Each build updates the suites from ``expectations/`` and imports the
result JSON files ``pipelines.quality.gate`` keeps under ``<lake>/gx/validations`` that the store does not
hold yet, then renders only those pages and the index. The results carry masked keys only, so the pages
show no personal value.

A run id run again (a cleared task) leaves one file per attempt where an artifacts root is set; the store
keeps, per (suite, run name), the newest run time of the files, so the index lists the latest attempt.

With an artifacts root elsewhere than the lake folder (``CITYLAKE_ARTIFACTS_DIR``, ``pipelines.lake.artifacts``)
the gate on any worker puts its results there too, one object per attempt that is never rewritten: the build
first fetches the ones this machine lacks, imports them all, so every worker builds the same index, renders
only the validation pages the shared site lacks and copies the others this machine lacks from there (a fresh
worker does not render the whole history again; GX's index lists only the pages its local site holds), and
puts under ``<artifacts>/gx/data_docs/`` what it rendered, ``index.html`` last.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from pipelines.errors import CitylakeError
from pipelines.lake import artifacts
from pipelines.settings import Settings, load_settings

log = logging.getLogger(__name__)


@dataclass
class DocsBuild:
    index: Path
    suites: int
    new_results: int
    total_results: int
    vendored: bool
    """True when the pages load only the site's own files (no CDN)."""
    published: str | None = None
    """Where the site was put under the artifacts root (None: the artifacts root is the lake folder)."""


def _suite_documents(directory: Path) -> dict[str, list[dict[str, Any]]]:
    """suite name → expectation configurations, the hand-written ``<dataset>.custom.json`` merged in."""
    suites: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(directory.glob("*.json")):
        doc = json.loads(path.read_text(encoding="utf-8"))
        name = path.name.removesuffix(".json").removesuffix(".custom")
        suites.setdefault(name, []).extend(doc.get("expectations", []))
    return suites


def _run_identifier(doc: dict[str, Any], path: Path) -> Any:
    from great_expectations.core.run_identifier import RunIdentifier

    meta = doc.get("meta", {})
    run_time = meta.get("validation_time")
    run = meta.get("run_id", path.stem)
    if isinstance(run, dict):  # GX's shape; older citylake results kept the bare run name
        run_time = run.get("run_time") or run_time
        run = run.get("run_name", path.stem)
    return RunIdentifier(run_name=run, run_time=datetime.fromisoformat(run_time) if run_time else None)


def _run_time(key: Any) -> datetime:
    run_time: datetime = key.run_id.run_time
    return run_time if run_time.tzinfo else run_time.replace(tzinfo=UTC)


def _page(key: Any) -> str:
    """The site path GX renders a validation result's page at (its HtmlSiteStore: ``validations/`` + the key's
    parts joined by ``/`` + ``.html``)."""
    return "validations/" + "/".join(key.to_tuple()) + ".html"


def _batch_identifier(doc: dict[str, Any]) -> str:
    """The index's "Batch ID": the raw batch the run validated (the first and how many more), so an
    engineer can go from a page to ``meta.batches`` and the raw table; the std table for older results."""
    meta = doc.get("meta", {})
    batches = meta.get("batch_spec", {}).get("raw_batches") or []
    if not batches:
        return str(meta.get("std_table", "std"))
    return batches[0] if len(batches) == 1 else f"{batches[0]}+{len(batches) - 1}"


def _prepare_context(context: Any) -> None:
    """No usage analytics and no how-to buttons that link to GX's website: these pages serve engineers
    on the bureau's network."""
    if context.variables.analytics_enabled is not False:
        context.enable_analytics(False)
    site = dict(context.variables.data_docs_sites["local_site"])
    if site.get("show_how_to_buttons", True):
        site["show_how_to_buttons"] = False
        context.update_data_docs_site("local_site", site)


def _stamps(site: Path) -> dict[str, tuple[int, int]]:
    """Each file of the site → (modified in ns, bytes): what a build wrote is what differs afterwards. Compared
    with itself, not with a clock: a margin for coarse clocks took a page the previous build had just written
    (a second before) for one rendered now, and localized and put it again."""
    return {path.relative_to(site).as_posix(): (stat.st_mtime_ns, stat.st_size)
            for path in site.rglob("*") if path.is_file() for stat in [path.stat()]}


def _written(site: Path, before: dict[str, tuple[int, int]]) -> set[str]:
    return {name for name, stamp in _stamps(site).items() if before.get(name) != stamp}


def _localize(site: Path, rendered: set[str]) -> bool:
    """Rewrite the pages just ``rendered`` (every page when the vendored copies are new to the site) to load
    nothing from other hosts; False when no vendored copies exist (the pages keep GX's CDN links)."""
    from pipelines.quality import docs_assets

    assets = docs_assets.default_assets_dir()
    vendored = docs_assets.assets_ready(assets)
    if vendored:
        if docs_assets.install_into_site(site, assets):
            rendered = {page.relative_to(site).as_posix() for page in site.rglob("*.html")}
    else:
        log.warning("Data Docs: no vendored scripts in %s, pages load Bootstrap and jQuery from public CDNs "
                    "(run `citylake quality docs-assets` where the npm registry is reachable)", assets)
    for page in site.rglob("*.html"):
        name = page.relative_to(site)
        if name.parts[0] != "static" and name.as_posix() in rendered:
            docs_assets.localize_page(page, site, vendored)
    return vendored


def build_data_docs(settings: Settings | None = None) -> DocsBuild:
    settings = settings or load_settings()
    import great_expectations as gx
    from great_expectations.core.expectation_validation_result import expectationSuiteValidationResultSchema
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    import pipelines.quality.gx_expectations  # noqa: F401 - registers the custom expectation types to render

    shared = artifacts.open_artifacts(settings)
    published_pages: dict[str, tuple[int, float]] | None = None
    if shared is not None:  # results of runs on other workers; one listing of each prefix per build
        fetched = artifacts.get_folder(shared, artifacts.VALIDATIONS, settings.lake_dir / "gx" / "validations")
        log.info("Data Docs: %d validation result(s) fetched from %s", fetched, shared.where(artifacts.VALIDATIONS))
        published_pages = artifacts.listing(shared, artifacts.DATA_DOCS)
    context = gx.get_context(mode="file", project_root_dir=settings.lake_dir)
    _prepare_context(context)
    suites = _suite_documents(settings.root / "expectations")
    for name, expectations in suites.items():
        suite = gx.ExpectationSuite(name=name, meta={"citylake": "generated from schemas/ by `citylake quality suites`"})
        for e in expectations:
            meta = e.get("meta", {})
            suite.add_expectation_configuration(ExpectationConfiguration(
                type=e["type"], kwargs=e["kwargs"], meta=meta, severity=e.get("severity", "critical"),
                notes=f"{meta.get('description', '')} · {meta.get('dimension', '')} · {meta.get('rule_id', '')}"))
        context.suites.add_or_update(suite)

    from great_expectations.expectations.registry import list_registered_expectation_implementations

    known = set(list_registered_expectation_implementations())
    store = context.validation_results_store
    new: list[Any] = []
    files = sorted((settings.lake_dir / "gx" / "validations").glob("*/*.json"))
    # (suite, run name) → the newest attempt among the files: a run id run again leaves one file per attempt
    # (or, without an artifacts root, rewrites its one file), and the store keeps that run's latest only
    latest: dict[tuple[str, str], tuple[Any, Path, dict[str, Any]]] = {}
    for path in files:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            unknown = {r["expectation_config"]["type"] for r in doc.get("results", [])} - known
            if unknown:  # written before results carried the real expectation types
                log.warning("%s: skipped, unknown expectation types %s", path, sorted(unknown))
                continue
            key = ValidationResultIdentifier(ExpectationSuiteIdentifier(doc["suite_name"]),
                                             _run_identifier(doc, path), _batch_identifier(doc))
        except Exception as exc:  # noqa: BLE001 - one unreadable result must not hide the others
            raise CitylakeError(f"{path}: cannot load as a GX validation result: {exc}") from exc
        run = (key.expectation_suite_identifier.name, key.run_id.run_name)
        if run not in latest or _run_time(key) > _run_time(latest[run][0]):
            latest[run] = (key, path, doc)
    # the store's entries of earlier attempts leave it (GX then drops them from the index)
    by_run: dict[tuple[str, str], list[Any]] = {}
    stored: Any
    for stored in store.list_keys():  # ValidationResultIdentifier (typed as its base class)
        by_run.setdefault((stored.expectation_suite_identifier.name, stored.run_id.run_name), []).append(stored)
    for run, (key, path, doc) in latest.items():
        if store.has_key(key):
            continue
        for earlier in by_run.pop(run, []):
            store.remove_key(earlier)
        try:
            store.set(key, expectationSuiteValidationResultSchema.load(doc))
        except Exception as exc:  # noqa: BLE001 - one unreadable result must not hide the others
            raise CitylakeError(f"{path}: cannot load as a GX validation result: {exc}") from exc
        new.append(key)
    render: list[Any] = new
    copied: list[str] = []
    site = settings.lake_dir / "gx" / "uncommitted" / "data_docs" / "local_site"
    if shared is not None and published_pages is not None:
        # a page this site lacks: fetched when the shared site has it (another worker rendered it; GX's index
        # lists only the pages its site holds), else rendered here; one GET per page, once per worker
        missing = {_page(key): key for key, _path, _doc in latest.values() if not (site / _page(key)).is_file()}
        copied = [page for page in missing if page in published_pages]
        artifacts.get_files(shared, artifacts.DATA_DOCS, copied, site)
        render = [key for page, key in missing.items() if page not in published_pages]
        log.info("Data Docs: %d validation page(s) fetched from %s, %d to render", len(copied),
                 shared.where(artifacts.DATA_DOCS), len(render))
    suite_keys = [ExpectationSuiteIdentifier(name) for name in suites]
    before = _stamps(site)
    sites = context.build_data_docs(resource_identifiers=[*suite_keys, *render])
    index = Path(unquote(sites["local_site"].removeprefix("file://")))
    vendored = _localize(site, _written(site, before))
    published = None
    if shared is not None:  # the pages rendered now, and any the artifacts root lacks; the index last
        sent = artifacts.put_folder(shared, site, artifacts.DATA_DOCS, changed=_written(site, before),
                                    there=published_pages, skip=copied)
        published = shared.where(f"{artifacts.DATA_DOCS}/{artifacts.INDEX}")
        log.info("Data Docs: %d file(s) put under %s", sent, shared.where(artifacts.DATA_DOCS))
    return DocsBuild(index, len(suites), len(new), len(latest), vendored, published)
