"""The Chinese governance site: data read from ``meta.*``, the catalog and the lake, rendered with Jinja2
templates and bundled assets into static pages that open with no network."""
