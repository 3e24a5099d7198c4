"""Serve GX Data Docs without the public internet.

GX 1.x pages load Bootstrap, jQuery, bootstrap-table, Font Awesome and Vega from public CDNs and pull
their logo from GX's S3 bucket with the data context id in the URL. On the bureau's government network
those hosts are unreachable (the index page, a bootstrap-table, renders empty) and the logo request
would tell a third party each time someone opens a page. So the exact files GX asks for are fetched once
at install time from the npm registry (``NPM_CONFIG_REGISTRY`` picks a mirror), checked against their
pinned sha512 integrity, and every page is rewritten to use the copies under ``static/vendor``.

GX offers no hook for this: custom views are looked up after its own templates, so they cannot replace
``page.j2``; the pages are rewritten after rendering instead.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
import re
import shutil
import sys
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import CitylakeError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    integrity: str
    """npm's ``dist.integrity`` of the tarball (sha512), pinned here so a mirror cannot swap files."""
    files: tuple[str, ...]
    """Paths inside the package (below ``package/``); a trailing ``/`` takes the whole folder."""

    @property
    def folder(self) -> str:
        return f"{self.name.replace('@', '').replace('/', '-')}-{self.version}"


# The versions GX 1.x's templates name (``vega@5`` etc. resolve on jsDelivr to the newest release of
# that major, pinned here to the one current when this was written).
PACKAGES = (
    Package("jquery", "3.7.1", "sha512-m4avr8yL8kmFN8psrbFFFmB/If14iN5o9nw/NgnnM+kybDJpRsAynV2BsfpTYrTRysYUdADVD7CkUUizgkpLfg==",
            ("dist/jquery.min.js",)),
    Package("popper.js", "1.12.9",
            "sha512-s0EEi9xiSCdqz9lV4IiVH5yIZnDX/U1t0tCjB+0jXx9jW8lrR7kOpVupiUg175ogqVoudpDXHF1p6dKATCHMeg==",
            ("dist/umd/popper.min.js",)),
    Package("bootstrap", "4.3.1", "sha512-rXqOmH1VilAt2DyPzluTi2blhk17bO7ef+zLLPlWvG494pDxcM234pJ8wTc/6R40UWizAIIMgxjvxZg5kmsbag==",
            ("dist/css/bootstrap.min.css", "dist/js/bootstrap.min.js")),
    Package("bootstrap-table", "1.19.1",
            "sha512-WvV+l1AI/C+zThaKmfHmi/IuayVNB0qdFyEhFx1jyZhO0oLtNJNANkCR3rvJf6Dkh72dsLElxpE/bzK9seEQLA==",
            ("dist/bootstrap-table.min.css", "dist/bootstrap-table.min.js",
             "dist/extensions/filter-control/bootstrap-table-filter-control.css",
             "dist/extensions/filter-control/bootstrap-table-filter-control.min.css",
             "dist/extensions/filter-control/bootstrap-table-filter-control.min.js")),
    Package("bootstrap-datepicker", "1.9.0",
            "sha512-9rYYbaVOheGYxjOr/+bJCmRPihfy+LkLSg4fIFMT9Od8WwWB/MB50w0JO1eBgKUMbb7PFHQD5uAfI3ArAxZRXA==",
            ("dist/css/bootstrap-datepicker.min.css", "dist/js/bootstrap-datepicker.min.js")),
    Package("@fortawesome/fontawesome-free", "6.6.0",
            "sha512-60G28ke/sXdtS9KZCpZSHHkCbdsOGEhIUGlwq6yhY74UpTiToIh8np7A8yphhM4BWsvNFtIvLpi4co+h9Mr9Ow==",
            ("css/all.min.css", "webfonts/")),
    Package("@forevolve/bootstrap-dark", "1.1.0",
            "sha512-A3ucpEpxPoTVO490lZZCfjPXxv832l7mm1IxX3bXyxvgwnPGXDLyh7dWrphXKO8YBAu3EswbBEu3VSW8NRMW3A==",
            ("dist/css/bootstrap-prefers-dark.css",)),
    Package("vega", "5.33.1", "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw==",
            ("build/vega.min.js",)),
    Package("vega-lite", "5.23.0",
            "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA==",
            ("build/vega-lite.min.js",)),
    Package("vega-embed", "6.29.0",
            "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q==",
            ("build/vega-embed.min.js",)),
)
_BY_NAME = {p.name: p for p in PACKAGES}


def _local(name: str, file: str) -> str:
    return f"static/vendor/{_BY_NAME[name].folder}/{file}"


# Every external address GX 1.x's templates use → the vendored file (path below the site root).
CDN_MAP = {
    "https://code.jquery.com/jquery-3.7.1.min.js": _local("jquery", "dist/jquery.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/popper.js/1.12.9/umd/popper.min.js":
        _local("popper.js", "dist/umd/popper.min.js"),
    "https://maxcdn.bootstrapcdn.com/bootstrap/4.3.1/css/bootstrap.min.css":
        _local("bootstrap", "dist/css/bootstrap.min.css"),
    "https://stackpath.bootstrapcdn.com/bootstrap/4.3.1/js/bootstrap.min.js":
        _local("bootstrap", "dist/js/bootstrap.min.js"),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.css":
        _local("bootstrap-table", "dist/bootstrap-table.min.css"),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/bootstrap-table.min.js":
        _local("bootstrap-table", "dist/bootstrap-table.min.js"),
    "https://unpkg.com/bootstrap-table@1.19.1/dist/extensions/filter-control/bootstrap-table-filter-control.min.js":
        _local("bootstrap-table", "dist/extensions/filter-control/bootstrap-table-filter-control.min.js"),
    # GX links the 1.19.0 stylesheet of the 1.19.1 plugin; the 1.19.1 copy serves both.
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.css":
        _local("bootstrap-table", "dist/extensions/filter-control/bootstrap-table-filter-control.css"),
    "https://unpkg.com/bootstrap-table@1.19.0/dist/extensions/filter-control/bootstrap-table-filter-control.min.css":
        _local("bootstrap-table", "dist/extensions/filter-control/bootstrap-table-filter-control.min.css"),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/css/bootstrap-datepicker.min.css":
        _local("bootstrap-datepicker", "dist/css/bootstrap-datepicker.min.css"),
    "https://cdnjs.cloudflare.com/ajax/libs/bootstrap-datepicker/1.9.0/js/bootstrap-datepicker.min.js":
        _local("bootstrap-datepicker", "dist/js/bootstrap-datepicker.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/font-awesome/6.6.0/css/all.min.css":
        _local("@fortawesome/fontawesome-free", "css/all.min.css"),
    "https://cdn.jsdelivr.net/npm/@forevolve/bootstrap-dark@1.1.0/dist/css/bootstrap-prefers-dark.css":
        _local("@forevolve/bootstrap-dark", "dist/css/bootstrap-prefers-dark.css"),
    "https://cdn.jsdelivr.net/npm/vega@5": _local("vega", "build/vega.min.js"),
    "https://cdn.jsdelivr.net/npm/vega-lite@5": _local("vega-lite", "build/vega-lite.min.js"),
    "https://cdn.jsdelivr.net/npm/vega-embed@6": _local("vega-embed", "build/vega-embed.min.js"),
}
# GX's logo, fetched from its S3 bucket with ``?d=<time>&dataContextId=<uuid>`` (a usage beacon); the
# same images ship in the site's own static/images.
_LOGO = re.compile(r"https://great-expectations-web-assets\.s3\.us-east-2\.amazonaws\.com/"
                   r"(?:logo-long|full_logo_dark)\.png(?:\?[^\"')\s]*)?")
_SRI = re.compile(r'\s+(?:integrity="[^"]*"|crossorigin="[^"]*")')
_TAG = re.compile(r"<(?:script|link)\b[^>]*>")
# GX's favicon template climbs three folders on every page, one short of a validation page's depth.
_STATIC = re.compile(r'(\b(?:src|href)=")(?:\./|(?:\.\./)+)static/')
MARKER = ".citylake-assets.json"


def default_assets_dir() -> Path:
    """Where ``citylake quality docs-assets`` keeps the files: beside the installed interpreter."""
    env = os.environ.get("CITYLAKE_DOCS_ASSETS_DIR")
    return Path(env).expanduser().resolve() if env else Path(sys.prefix) / "share" / "citylake" / "datadocs-assets"


def _manifest() -> dict[str, str]:
    return {p.name: p.version for p in PACKAGES}


def assets_ready(directory: Path) -> bool:
    marker = directory / MARKER
    return marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == _manifest()


def _registry() -> str:
    return (os.environ.get("NPM_CONFIG_REGISTRY") or os.environ.get("npm_config_registry")
            or "https://registry.npmjs.org/").rstrip("/")


def fetch_assets(directory: Path | None = None, registry: str | None = None) -> Path:
    """Download the pinned packages' tarballs, verify them and unpack only the files GX pages load."""
    directory = directory or default_assets_dir()
    if assets_ready(directory):
        return directory
    base = (registry or _registry()).rstrip("/")
    staging = directory.with_name(directory.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for p in PACKAGES:
        url = f"{base}/{p.name}/-/{p.name.rsplit('/', 1)[-1]}-{p.version}.tgz"
        try:
            with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - fixed https registry
                blob = response.read()
        except OSError as exc:
            raise CitylakeError(f"Data Docs assets: cannot download {p.name}@{p.version} from {url}: {exc}") from exc
        algo, _, expected = p.integrity.partition("-")
        got = base64.b64encode(hashlib.new(algo, blob).digest()).decode()
        if got != expected:
            raise CitylakeError(f"Data Docs assets: {url} does not match its pinned {algo} integrity; not used")
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            for member in tar.getmembers():
                inner = member.name.split("/", 1)[-1]
                if not member.isfile() or not any(inner == f or (f.endswith("/") and inner.startswith(f))
                                                  for f in p.files):
                    continue
                target = staging / p.folder / inner
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                target.write_bytes(source.read())
        missing = [f for f in p.files if not (staging / p.folder / f).exists()]
        if missing:
            raise CitylakeError(f"Data Docs assets: {p.name}@{p.version} lacks {', '.join(missing)}")
    (staging / MARKER).write_text(json.dumps(_manifest(), indent=1), encoding="utf-8")
    shutil.rmtree(directory, ignore_errors=True)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(directory)
    return directory


def install_into_site(site: Path, assets: Path) -> bool:
    """Copy the vendored files into ``<site>/static/vendor`` once per pinned set; True when copied now."""
    vendor = site / "static" / "vendor"
    if assets_ready(vendor):
        return False
    shutil.rmtree(vendor, ignore_errors=True)
    shutil.copytree(assets, vendor)
    return True


def localize_page(path: Path, site: Path, vendored: bool) -> bool:
    """Point one rendered page at the site's own copies; True when the file changed."""
    text = path.read_text(encoding="utf-8")
    up = "../" * (len(path.relative_to(site).parts) - 1)
    new = _STATIC.sub(lambda m: f"{m.group(1)}{up}static/", _LOGO.sub(f"{up}static/images/logo-long.png", text))
    if vendored:
        def tag(match: re.Match[str]) -> str:
            t = match.group(0)
            for url, local in CDN_MAP.items():
                if f'"{url}"' in t:
                    # SRI with crossorigin makes a browser refuse a file:// script; the copy was
                    # checked against npm's sha512 when it was fetched.
                    return _SRI.sub("", t.replace(f'"{url}"', f'"{up}{local}"'))
            return t

        new = _TAG.sub(tag, new)
    if new != text:
        path.write_text(new, encoding="utf-8")
    return new != text


def external_references(html: str) -> list[str]:
    """Addresses a page would load from another host (scripts, stylesheets, images)."""
    return re.findall(r'<(?:script|link|img)\b[^>]*\b(?:src|href)="(https?://[^"]+)"', html)
