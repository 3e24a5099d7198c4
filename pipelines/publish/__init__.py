"""The open-data release (开放数据发布): curated datasets exported to ``<exports>/open/<YYYY-MM-DD>/<dataset>/``.

Each released dataset folder holds the data in three formats (CSV with BOM, JSON Lines, Parquet) and its
metadata: a Frictionless ``datapackage.json`` (Table Schema with Chinese titles), a ``dictionary.csv``
(数据字典), a ``manifest.json`` (SHA-256 and rows of every file, schema version, quality score, data
cut-off), ``changes.json`` (rows added/changed/removed by primary key against the previous release) and,
for a 高质量数据集, ``card.md`` + ``card.json``. One DCAT-AP 3 JSON-LD ``catalog.jsonld`` per release date
describes every dataset ``open/latest.json`` points to.

``model`` is the description the release orchestration builds and the metadata writers read
(``datapackage``, ``dcat``, ``dictionary``, ``manifest``, ``card``, ``diff``).
"""
