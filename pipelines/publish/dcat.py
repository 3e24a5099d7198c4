"""``catalog.jsonld``: one DCAT-AP 3.0 catalog per release date, JSON-LD.

dcat:Catalog (title, description, publisher — DCAT-AP 3's mandatory three — issued, modified, language, theme
taxonomy) → dcat:Dataset per dataset ``open/latest.json`` points to (title and description, mandatory;
identifier = 信息资源代码, publisher, contact point, theme, keywords, temporal and spatial coverage, update
frequency, access rights, provenance) → dcat:Distribution per data file (accessURL, mandatory; downloadURL,
IANA media type, EU file type, byte size, SHA-256 checksum, licence, issued, the datapackage.json it conforms to).

Controlled vocabularies are the EU Publications Office authority tables DCAT-AP names (frequency, access-right,
data-theme, file-type, language); licences are SPDX licence IRIs; districts are GB/T 2260 codes and names
(``dct:Location`` with ``dct:identifier`` and ``skos:prefLabel``: GB/T 2260 has no IRIs of its own).

Where the files are: ``base_url`` (``settings.open_base_url``, ``CITYLAKE_OPEN_BASE_URL``: the public URL the
portal serves ``<exports>`` at, e.g. ``https://data.hefei.gov.cn/exports/``) + the release folder + the file
name. Without one, every link is RELATIVE to the catalog (``open/<date>/catalog.jsonld`` → ``../<date>/<ds>/
<ds>.csv``): JSON-LD resolves a relative IRI against the document's own URL, so the catalog is right wherever the
folder tree is served (the S3 bucket, the portal's copy) and never names the lake's local paths or bucket. A
reader that parses it from a string passes that URL as the base (rdflib: ``publicID=``).
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Mapping
from datetime import date
from pathlib import Path
from typing import Any

from pipelines.publish.datapackage import LICENCES, keywords
from pipelines.publish.model import DatasetRelease, FileInfo
from pipelines.settings import Settings

BASE_URL_ENV = "CITYLAKE_OPEN_BASE_URL"
EU = "http://publications.europa.eu/resource/authority/"
CONTEXT = {
    "dcat": "http://www.w3.org/ns/dcat#",
    "dct": "http://purl.org/dc/terms/",
    "foaf": "http://xmlns.com/foaf/0.1/",
    "vcard": "http://www.w3.org/2006/vcard/ns#",
    "adms": "http://www.w3.org/ns/adms#",
    "spdx": "http://spdx.org/rdf/terms#",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
    "skos": "http://www.w3.org/2004/02/skos/core#",
    "rdfs": "http://www.w3.org/2000/01/rdf-schema#",
}
LANG = "zh"
FREQUENCY = {"实时": "CONT", "每小时": "HOURLY", "每日": "DAILY", "每周": "WEEKLY", "每月": "MONTHLY",
             "每季度": "QUARTERLY", "每半年": "BIANNUAL", "每年": "ANNUAL"}
"""更新周期 → EU frequency authority code (BIANNUAL is twice a year)."""
ACCESS_RIGHTS = {"无条件开放": "PUBLIC", "有条件开放": "RESTRICTED", "不予开放": "NON_PUBLIC"}
"""开放类型 → EU access-right code (STANDARDS.md's map)."""
THEMES = {"population": "SOCI", "legal_person": "ECON", "environment": "ENVI", "transport": "TRAN", "geo": "REGI"}
"""Curated domain → EU data-theme code; another domain is GOVE (government and public sector)."""
MEDIA_TYPES = {"text/csv", "application/json", "application/ld+json", "application/vnd.apache.parquet"}
"""IANA-registered media types written as dcat:mediaType; JSON Lines has no registered type, so its
distribution says what it is through dct:format alone."""
FILE_TYPES = {"csv": EU + "file-type/CSV", "parquet": EU + "file-type/PARQUET", "json": EU + "file-type/JSON",
              "jsonl": "https://jsonlines.org/"}
"""Format → dct:format IRI: the EU file-type table, and the JSON Lines specification for JSON Lines (not
plain JSON, and not in the table)."""
PUBLISHER_ENV = "CITYLAKE_OPEN_PUBLISHER"
PUBLISHER_NAME = "合肥市数据资源局"
"""The body that runs the open-data portal, looked up by name in schemas/departments.yml unless
``CITYLAKE_OPEN_PUBLISHER`` names another department (its code or its name)."""
CATALOG_TITLE = "合肥市公共数据开放目录"


def open_publisher(departments: Mapping[str, Any] | None = None) -> tuple[str, str]:
    """(code, name) of the catalog's publisher: ``CITYLAKE_OPEN_PUBLISHER`` (a department code or name) or
    合肥市数据资源局, found in the department registry (schemas/departments.yml) so the code is never written
    twice."""
    from pipelines.errors import CitylakeError

    if departments is None:
        from pipelines.departments import load_departments

        departments = load_departments()
    wanted = (os.environ.get(PUBLISHER_ENV) or "").strip() or PUBLISHER_NAME
    for code, department in departments.items():
        name = str(getattr(department, "name", ""))
        if wanted in (code, name):
            return code, name
    raise CitylakeError(f"{PUBLISHER_ENV}={wanted!r}: no such department code or name in schemas/departments.yml")


def open_base_url(source: Settings | str | Path | None = None) -> str | None:
    """The public base URL of ``<exports>`` (ending in ``/``), or None for links relative to the catalog:
    ``settings.open_base_url`` for a Settings, else ``CITYLAKE_OPEN_BASE_URL``. The exports location itself
    (a local folder, an ``s3://`` prefix) is never used as a base: it is no address the public can open, and
    it would publish the lake's internal layout."""
    configured = source.open_base_url if isinstance(source, Settings) else os.environ.get(BASE_URL_ENV)
    configured = (configured or "").strip()
    return configured.rstrip("/") + "/" if configured else None


class _Links:
    """IRIs of the release files: absolute under ``base_url``, or relative to the catalog document."""

    def __init__(self, base_url: str | None, release_date: date) -> None:
        self.base = base_url.rstrip("/") + "/" if base_url else None
        self.here = f"open/{release_date.isoformat()}/"  # the folder catalog.jsonld is written to

    def __call__(self, path: str) -> str:
        """The IRI of ``path`` (relative to ``<exports>``, e.g. ``open/2026-11-30/poi/poi.csv``)."""
        if self.base is not None:
            return self.base + path
        rel = posixpath.relpath(path, self.here)
        return rel + "/" if path.endswith("/") and not rel.endswith("/") else rel


def _text(value: str) -> dict[str, str]:
    return {"@value": value, "@language": LANG}


def _date(value: date) -> dict[str, str]:
    return {"@value": value.isoformat(), "@type": "xsd:date"}


def _agent(code: str, name: str) -> dict[str, Any]:
    return {"@type": "foaf:Agent", "foaf:name": _text(name), "dct:identifier": code}


def _contact(code: str, name: str, departments: Mapping[str, Any]) -> dict[str, Any]:
    """vcard:Organization of the publishing department: its name and the governance contact's mail/phone
    (a role address from schemas/departments.yml, never a person's own)."""
    out: dict[str, Any] = {"@type": "vcard:Organization", "vcard:fn": name}
    department = departments.get(code)
    contact = getattr(department, "contact", None)
    if contact is not None:
        if contact.email:
            out["vcard:hasEmail"] = {"@id": f"mailto:{contact.email}"}
        if contact.phone:
            out["vcard:hasTelephone"] = {"@id": "tel:" + "".join(ch for ch in contact.phone if ch.isdigit() or ch == "+")}
    return out


def _licence(spdx: str) -> dict[str, Any]:
    out: dict[str, Any] = {"@id": f"http://spdx.org/licenses/{spdx}", "@type": "dct:LicenseDocument",
                           "dct:title": LICENCES.get(spdx, ("", spdx))[1]}
    if spdx in LICENCES:
        out["rdfs:seeAlso"] = {"@id": LICENCES[spdx][0]}
    return out


def _distribution(release: DatasetRelease, file: FileInfo, link: _Links, licence: dict[str, Any]) -> dict[str, Any]:
    url = link(f"{release.folder}{file.name}")
    out: dict[str, Any] = {
        "@id": url, "@type": "dcat:Distribution",
        "dct:title": _text(f"{release.contract.name}（{file.format.upper()}）"),
        # a direct download: DCAT-AP asks for accessURL in any case, the same URL when there is no landing page
        "dcat:accessURL": {"@id": url}, "dcat:downloadURL": {"@id": url},
        "dcat:byteSize": {"@value": str(file.bytes), "@type": "xsd:nonNegativeInteger"},
        "spdx:checksum": {"@type": "spdx:Checksum", "spdx:algorithm": {"@id": "spdx:checksumAlgorithm_sha256"},
                          "spdx:checksumValue": {"@value": file.sha256, "@type": "xsd:hexBinary"}},
        "dct:license": licence,
        "dct:issued": _date(release.release_date),
        "dct:conformsTo": {"@id": link(f"{release.folder}datapackage.json"), "@type": "dct:Standard"},
    }
    if file.media_type in MEDIA_TYPES:
        out["dcat:mediaType"] = {"@id": f"https://www.iana.org/assignments/media-types/{file.media_type}",
                                 "@type": "dct:MediaType"}
    if file.format in FILE_TYPES:
        out["dct:format"] = {"@id": FILE_TYPES[file.format], "@type": "dct:MediaTypeOrExtent"}
    return out


def _dataset(release: DatasetRelease, link: _Links, names: Mapping[str, str],
             departments: Mapping[str, Any]) -> dict[str, Any]:
    c = release.contract
    code, name = release.publisher
    licence = _licence(c.licence)
    out: dict[str, Any] = {
        # the dataset's identity is its entry in the pointer file: the same IRI in every release
        "@id": link(f"open/latest.json#{release.dataset}"), "@type": "dcat:Dataset",
        "dct:identifier": c.resource_code,
        "dct:title": _text(c.name),
        "dct:description": _text(c.description),
        "dct:publisher": _agent(code, name),
        "dcat:contactPoint": _contact(code, name, departments),
        "dcat:theme": {"@id": EU + "data-theme/" + THEMES.get(c.domain, "GOVE")},
        "dcat:keyword": [_text(w) for w in keywords(release)],
        "dct:accrualPeriodicity": {"@id": EU + "frequency/" + FREQUENCY[c.update_cycle], "@type": "dct:Frequency"},
        "dct:accessRights": {"@id": EU + "access-right/" + ACCESS_RIGHTS[c.open.type], "@type": "dct:RightsStatement"},
        **_rights(c),
        "dct:modified": _date(release.release_date),
        "dcat:version": f"{release.release_date.year}.{release.release_date.month}.{release.release_date.day}",
        "dct:language": {"@id": EU + "language/ZHO", "@type": "dct:LinguisticSystem"},
        "dct:provenance": {"@type": "dct:ProvenanceStatement", "rdfs:label": _text(
            "由 " + "、".join(f"{k}（快照 {v}）" for k, v in sorted(release.inputs.items())) +
            f" 构建（构建号 {release.build_id}）")},
        "dcat:distribution": [_distribution(release, f, link, licence) for f in release.data_files],
    }
    if release.temporal is not None:
        start, end = release.temporal
        out["dct:temporal"] = {"@type": "dct:PeriodOfTime", "dcat:startDate": _date(start),
                               "dcat:endDate": _date(end)}
    if release.spatial:
        out["dct:spatial"] = [{"@type": "dct:Location", "dct:identifier": d,
                               **({"skos:prefLabel": _text(names[d])} if d in names else {})}
                              for d in sorted(release.spatial)]
    pages = [f for f in release.files if f.name in ("dictionary.csv", "card.md")]
    if pages:
        out["foaf:page"] = [{"@id": link(f"{release.folder}{f.name}"), "@type": "foaf:Document"} for f in pages]
    return out


def _rights(contract: Any) -> dict[str, Any]:
    """dct:rights of a 有条件开放 dataset: access rights stay RESTRICTED (STANDARDS.md's mapping of the
    catalogue entry), and this statement says why the released derivative is a public download: the open
    condition and how the release meets it (``met_by``)."""
    if contract.open.type != "有条件开放":
        return {}
    text = (f"有条件开放：{contract.open.condition or '见开放条件'}。本次发布的是已满足该条件的衍生数据"
            f"（{contract.open.met_by}），可公开下载。")
    return {"dct:rights": {"@type": "dct:RightsStatement", "rdfs:label": _text(text)}}


def division_names(root: Path | None = None) -> dict[str, str]:
    """GB/T 2260 code → name from the project's division code list, with the development zones."""
    from pipelines.code_lists import DEV_ZONES, load_code_list

    if root is None:
        from pipelines.settings import load_settings

        root = load_settings().root
    return {**load_code_list(root / "schemas" / "standards" / "code_lists" / "division.csv").codes, **DEV_ZONES}


def dcat_catalog(releases: Iterable[DatasetRelease], release_date: date, base_url: str | None, *,
                 names: Mapping[str, str] | None = None, departments: Mapping[str, Any] | None = None,
                 publisher: tuple[str, str] | None = None) -> dict[str, Any]:
    """The DCAT-AP 3 JSON-LD catalog of ``releases`` (every dataset the pointer names after this release's
    date, each at its own folder). ``names``: district code → name (default: the project's division code
    list); ``departments``: the registry, for contact points (default: the project's). ``base_url`` None:
    links relative to the catalog (see the module docstring)."""
    if names is None:
        names = division_names()
    if departments is None:
        from pipelines.departments import load_departments

        departments = load_departments()
    if publisher is None:
        publisher = open_publisher(departments)
    link = _Links(base_url, release_date)
    datasets = [_dataset(r, link, names, departments) for r in sorted(releases, key=lambda r: r.dataset)]
    return {
        "@context": CONTEXT,
        "@id": link(f"open/{release_date.isoformat()}/catalog.jsonld"),
        "@type": "dcat:Catalog",
        "dct:title": _text(CATALOG_TITLE),
        "dct:description": _text(f"{CATALOG_TITLE}：{release_date.isoformat()} 发布的开放数据集（经脱敏处理的"
                                 "治理后数据集），每个数据集含 CSV、JSON Lines、Parquet 三种格式及其元数据。"),
        "dct:publisher": _agent(*publisher),
        "dct:issued": _date(release_date),
        "dct:modified": _date(release_date),
        "dct:language": {"@id": EU + "language/ZHO", "@type": "dct:LinguisticSystem"},
        "dct:spatial": {"@type": "dct:Location", "dct:identifier": "340100", "skos:prefLabel": _text("合肥市")},
        "dcat:themeTaxonomy": {"@id": EU + "data-theme", "@type": "skos:ConceptScheme",
                               "dct:title": _text("EU 数据主题词表")},
        "dcat:dataset": datasets,
    }
