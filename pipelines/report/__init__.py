"""The Chinese governance site: data read from ``meta.*``, the catalog and the lake, rendered with Jinja2
templates and bundled assets into static pages that open with no network."""

from typing import Any

__all__ = ["build_site"]


def __getattr__(name: str) -> Any:
    # Lazy: `citylake` imports the report's CLI module at start; DuckDB and Jinja2 load on the first build.
    if name == "build_site":
        from pipelines.report.site import build_site

        return build_site
    raise AttributeError(name)
