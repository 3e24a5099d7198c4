"""The open release's metadata against its reference validators: ``frictionless validate`` on datapackage.json
beside real CSV (BOM, CRLF), JSON Lines and Parquet files; rdflib parses the DCAT-AP 3 catalog and SPARQL finds
every mandatory property; the dictionary opens as UTF-8 with BOM; change_summary's counts on hand-made
files; the manifest's checksums are hashlib's."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import sys
from datetime import date, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from pipelines.config import load_config
from pipelines.contracts import CuratedContract
from pipelines.publish.card import card
from pipelines.publish.datapackage import datapackage, schema_version
from pipelines.publish.dcat import dcat_catalog, open_base_url
from pipelines.publish.dictionary import HEADERS, dictionary_csv, write_dictionary
from pipelines.publish.diff import change_summary
from pipelines.publish.manifest import manifest
from pipelines.publish.model import DatasetRelease, FileInfo, open_columns
from pipelines.settings import load_settings

DATASET = "poi_sample"
CONTRACT: dict[str, Any] = {
    "dataset": DATASET, "name": "兴趣点样例", "description": "兴趣点名称、类别与网格化坐标（测试用）",
    "owner": "11340100003007777F", "resource_category": "自然资源和空间地理",
    "catalog": {"class": "1", "item": "03", "category": "001", "subcategory": "001", "sequence": 90},
    "classification": {"level": "一般数据", "grade": 1},
    "sharing": {"type": "无条件共享", "condition": "无条件"},
    "open": {"type": "有条件开放", "condition": "按网格汇总后开放", "met_by": "坐标泛化到 0.01° 网格"},
    "update_cycle": "每周", "domain": "geo", "inputs": ["std.poi"], "primary_key": ["poi_id"],
    "columns": [
        {"name": "poi_id", "element": "poi_id", "required": True},
        {"name": "poi_name", "element": "poi_name", "required": True},
        {"name": "poi_category", "element": "poi_category"},
        {"name": "longitude", "element": "longitude", "deid": "grid"},
        {"name": "latitude", "element": "latitude", "deid": "grid"},
        {"name": "poi_district_code", "element": "poi_district_code"},
        {"name": "established_on", "element": "established_on", "deid": "year"},
        {"name": "registered_capital", "element": "registered_capital"},
        {"name": "boardings", "element": "boardings", "deid": "suppress"},
        {"name": "legal_representative", "element": "legal_representative", "deid": "drop"},
        {"name": "observed_at", "element": "observed_at"},
    ],
    "card": {"intended_use": "城市兴趣点分布的空间分析与模型训练", "limitations": "坐标为网格西南角，不可用于精确定位"},
}
ROWS = [  # the released (already de-identified) values
    {"poi_id": "P001", "poi_name": "合肥市第一中学", "poi_category": "EDU", "longitude": 117.28, "latitude": 31.86,
     "poi_district_code": "340103", "established_on": 1902, "registered_capital": 1250000.5, "boardings": 12,
     "observed_at": datetime(2026, 11, 29, 8, 0)},
    {"poi_id": "P002", "poi_name": "安徽省立医院", "poi_category": "MED", "longitude": 117.29, "latitude": 31.85,
     "poi_district_code": "340104", "established_on": 1898, "registered_capital": None, "boardings": None,
     "observed_at": datetime(2026, 11, 29, 9, 30)},
    {"poi_id": "P003", "poi_name": "天鹅湖公园", "poi_category": "PRK", "longitude": 117.22, "latitude": 31.82,
     "poi_district_code": "340104", "established_on": None, "registered_capital": 0.0, "boardings": 5,
     "observed_at": datetime(2026, 11, 30, 0, 0)},
    {"poi_id": "P004", "poi_name": "合肥市图书馆", "poi_category": "LIB", "longitude": 117.25, "latitude": 31.87,
     "poi_district_code": "340171", "established_on": 1950, "registered_capital": None, "boardings": 40,
     "observed_at": datetime(2026, 11, 30, 23, 59, 59)},
]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _file(path: Path, fmt: str, media_type: str, rows: int | None) -> FileInfo:
    return FileInfo(path.name, media_type, fmt, path.stat().st_size, _sha256(path), rows)


def _write_data(folder: Path, rows: list[dict[str, Any]]) -> list[FileInfo]:
    """The three formats as the release writes them: CSV with BOM and CRLF, JSON Lines, Parquet."""
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows)
    with (folder / f"{DATASET}.csv").open("wb") as fh:
        fh.write(b"\xef\xbb\xbf")
        pacsv.write_csv(table, fh, pacsv.WriteOptions(eol="\r\n"))
    with (folder / f"{DATASET}.jsonl").open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, default=lambda v: v.isoformat()) + "\n")
    pq.write_table(table, folder / f"{DATASET}.parquet")
    return [_file(folder / f"{DATASET}.csv", "csv", "text/csv", len(rows)),
            _file(folder / f"{DATASET}.jsonl", "jsonl", "application/jsonl", len(rows)),
            _file(folder / f"{DATASET}.parquet", "parquet", "application/vnd.apache.parquet", len(rows))]


@pytest.fixture(scope="module")
def config() -> Any:
    standards, systems, contracts = load_config(load_settings())
    return SimpleNamespace(standards=standards, systems=systems, contracts=contracts, curated={})


@pytest.fixture(scope="module")
def contract() -> CuratedContract:
    return CuratedContract.model_validate(CONTRACT)


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory, config: Any, contract: CuratedContract) -> DatasetRelease:
    exports = tmp_path_factory.mktemp("exports")
    folder = f"open/2026-11-30/{DATASET}/"
    files = _write_data(exports / folder, ROWS)
    return DatasetRelease(
        dataset=DATASET, contract=contract, columns=open_columns(contract, config.standards),
        release_date=date(2026, 11, 30), folder=folder, files=files, rows=len(ROWS), build_id="build__0123456789abcdef",
        inputs={"std.poi": 42}, latest_event_time=datetime(2026, 11, 30, 23, 59, 59),
        temporal=(date(2026, 11, 29), date(2026, 11, 30)), spatial=["340104", "340103", "340171"],
        quality_score=0.99871, changes={"added": 4, "changed": 0, "removed": 0, "previous": None},
        publisher=("11340100003007777F", "合肥市自然资源和规划局"), extra={"exports": exports})


def test_open_columns_type_the_released_values(release: DatasetRelease) -> None:
    cols = {c.name: c for c in release.columns}
    assert "legal_representative" not in cols  # deid drop never reaches the release
    assert [c.name for c in release.columns][:3] == ["poi_id", "poi_name", "poi_category"]
    assert (cols["established_on"].type, cols["longitude"].type, cols["registered_capital"].type) == ("year", "number", "number")
    assert (cols["boardings"].type, cols["observed_at"].type, cols["poi_id"].type) == ("integer", "datetime", "string")
    assert cols["poi_category"].enum == ("EDU", "MED", "PRK", "MTR", "GOV", "LIB", "SPT")
    assert cols["poi_district_code"].pattern == r"^\d{6}$" and cols["poi_district_code"].enum is None  # 270+ codes
    assert (cols["longitude"].title, cols["longitude"].unit, cols["poi_id"].grade) == ("经度", "度", 1)


def test_frictionless_validates_all_three_formats(release: DatasetRelease) -> None:
    folder = release.extra["exports"] / release.folder
    package = datapackage(release)
    (folder / "datapackage.json").write_text(json.dumps(package, ensure_ascii=False, indent=2), encoding="utf-8")
    assert package["name"] == DATASET and package["title"] == "兴趣点样例" and package["version"] == "2026.11.30"
    assert package["licenses"] == [{"name": "CC-BY-4.0", "path": "https://creativecommons.org/licenses/by/4.0/",
                                    "title": "Creative Commons Attribution 4.0 International"}]
    schema = package["resources"][0]["schema"]
    assert schema["primaryKey"] == ["poi_id"]
    assert schema["fields"][0]["constraints"] == {"required": True, "unique": True}
    assert [f["title"] for f in schema["fields"][:3]] == ["兴趣点编号", "兴趣点名称", "兴趣点类别"]  # from the elements
    frictionless = Path(sys.executable).with_name("frictionless")
    done = subprocess.run([str(frictionless), "validate", "--json", "datapackage.json"], cwd=folder,
                          capture_output=True, text=True, timeout=120)
    report = json.loads(done.stdout)
    assert report["valid"], [(t["name"], [e["message"] for e in t["errors"]]) for t in report["tasks"]]
    tasks = {t["name"]: t for t in report["tasks"]}
    assert {name: t["type"] for name, t in tasks.items()} == {
        f"{DATASET}-csv": "table", f"{DATASET}-jsonl": "table", f"{DATASET}-parquet": "file"}
    for fmt in ("csv", "jsonl"):  # every row read against the Table Schema
        assert (tasks[f"{DATASET}-{fmt}"]["stats"]["rows"], tasks[f"{DATASET}-{fmt}"]["stats"]["fields"]) == (len(ROWS), 10)
    for fmt in ("csv", "jsonl", "parquet"):  # and the declared size and hash against the bytes it read
        stats, info = tasks[f"{DATASET}-{fmt}"]["stats"], release.file(fmt)
        assert info is not None and (stats["sha256"], stats["bytes"]) == (info.sha256, info.bytes)
    assert pq.read_schema(folder / f"{DATASET}.parquet").names == [f["name"] for f in schema["fields"]]


def test_frictionless_catches_a_tampered_file_and_a_wrong_value(release: DatasetRelease, tmp_path: Path) -> None:
    from frictionless import validate

    src = release.extra["exports"] / release.folder
    package = datapackage(release)
    csv_bytes = (src / f"{DATASET}.csv").read_bytes()
    (tmp_path / f"{DATASET}.csv").write_bytes(csv_bytes.replace(b"P003", b"P009"))  # same size, new hash
    (tmp_path / f"{DATASET}.jsonl").write_bytes((src / f"{DATASET}.jsonl").read_bytes().replace(b'"EDU"', b'"XYZ"'))
    (tmp_path / f"{DATASET}.parquet").write_bytes((src / f"{DATASET}.parquet").read_bytes() + b"\0")
    (tmp_path / "datapackage.json").write_text(json.dumps(package, ensure_ascii=False), encoding="utf-8")
    report = validate(str(tmp_path / "datapackage.json"))
    errors = {t.name: sorted({e.type for e in t.errors}) for t in report.tasks}
    assert errors == {f"{DATASET}-csv": ["hash-count"], f"{DATASET}-jsonl": ["constraint-error", "hash-count"],
                      f"{DATASET}-parquet": ["byte-count", "hash-count"]}


def test_dcat_parses_with_rdflib_and_has_the_mandatory_properties(release: DatasetRelease) -> None:
    from rdflib import Graph

    doc = dcat_catalog([release], date(2026, 11, 30), "https://data.example.org/exports")
    g = Graph().parse(data=json.dumps(doc, ensure_ascii=False), format="json-ld")
    prefixes = """PREFIX dcat: <http://www.w3.org/ns/dcat#> PREFIX dct: <http://purl.org/dc/terms/>
        PREFIX foaf: <http://xmlns.com/foaf/0.1/> PREFIX spdx: <http://spdx.org/rdf/terms#>
        PREFIX vcard: <http://www.w3.org/2006/vcard/ns#> PREFIX skos: <http://www.w3.org/2004/02/skos/core#>"""

    def rows(query: str) -> list[tuple[str, ...]]:
        return [tuple(str(v) for v in r) for r in g.query(prefixes + query)]  # type: ignore[union-attr]

    # Catalog: title, description, publisher (an Agent with a name) — DCAT-AP 3's mandatory ones
    assert rows("""SELECT ?t ?n WHERE { ?c a dcat:Catalog ; dct:title ?t ; dct:description ?d ;
                   dct:publisher [ a foaf:Agent ; foaf:name ?n ] ; dct:issued ?i ; dct:modified ?m ;
                   dcat:dataset ?ds }""") == [("合肥市公共数据开放目录", "合肥市数据资源局")]
    # Dataset: title and description (mandatory) and the recommended properties the issue asks for
    (ds,) = rows("""SELECT ?id ?t ?freq ?rights ?start ?end ?theme ?pub WHERE { ?d a dcat:Dataset ;
                   dct:identifier ?id ; dct:title ?t ; dct:description ?desc ; dct:accrualPeriodicity ?freq ;
                   dct:accessRights ?rights ; dcat:theme ?theme ; dct:publisher [ foaf:name ?pub ] ;
                   dct:temporal [ a dct:PeriodOfTime ; dcat:startDate ?start ; dcat:endDate ?end ] ;
                   dcat:contactPoint [ vcard:fn ?fn ; vcard:hasEmail ?mail ] }""")
    eu = "http://publications.europa.eu/resource/authority/"
    assert ds == (release.contract.resource_code, "兴趣点样例", eu + "frequency/WEEKLY", eu + "access-right/RESTRICTED",
                  "2026-11-29", "2026-11-30", eu + "data-theme/REGI", "合肥市自然资源和规划局")
    assert sorted(rows("SELECT ?code ?name WHERE { ?d a dcat:Dataset ; dct:spatial [ a dct:Location ; dct:identifier ?code ; "
                       "skos:prefLabel ?name ] }")) == [("340103", "庐阳区"), ("340104", "蜀山区"), ("340171", "高新区")]
    assert {"兴趣点样例", "自然资源和空间地理", "有条件开放"} <= {r[0] for r in rows("SELECT ?k WHERE { ?d dcat:keyword ?k }")}
    # RESTRICTED (STANDARDS.md) yet a public download: dct:rights says which condition the derivative meets
    ((label,),) = rows("""SELECT ?l WHERE { ?d a dcat:Dataset ; dct:rights [ a dct:RightsStatement ;
                   <http://www.w3.org/2000/01/rdf-schema#label> ?l ] }""")
    assert "有条件开放" in label and str(release.contract.open.met_by) in label and "可公开下载" in label
    # Distribution: accessURL (mandatory) on every one, checksum = the file's sha256, licence, size
    dists = rows("""SELECT ?url ?dl ?sum ?alg ?size ?lic WHERE { ?d a dcat:Dataset ; dcat:distribution ?x .
                   ?x a dcat:Distribution ; dcat:accessURL ?url ; dcat:downloadURL ?dl ; dct:license ?lic ;
                   dcat:byteSize ?size ; dct:format ?f ; dct:issued ?i ;
                   spdx:checksum [ spdx:algorithm ?alg ; spdx:checksumValue ?sum ] }""")
    base = f"https://data.example.org/exports/{release.folder}"
    assert sorted(dists) == sorted((base + f.name, base + f.name, f.sha256, "http://spdx.org/rdf/terms#checksumAlgorithm_sha256",
                                    str(f.bytes), "http://spdx.org/licenses/CC-BY-4.0") for f in release.data_files)
    media = rows("SELECT ?m WHERE { ?x dcat:mediaType ?m }")
    assert sorted(m for (m,) in media) == ["https://www.iana.org/assignments/media-types/application/vnd.apache.parquet",
                                            "https://www.iana.org/assignments/media-types/text/csv"]  # no IANA type for JSON Lines
    assert not rows("SELECT ?x WHERE { ?x a dcat:Distribution . FILTER NOT EXISTS { ?x dcat:accessURL ?u } }")


def test_dcat_links_are_relative_to_the_catalog_without_a_base_url(release: DatasetRelease) -> None:
    """No CITYLAKE_OPEN_BASE_URL: links relative to open/<date>/catalog.jsonld, so the catalog read from where
    the portal serves it is the catalog an absolute base gives, and names no local path."""
    from rdflib import Graph
    from rdflib.compare import isomorphic

    older = DatasetRelease(**{**release.__dict__, "folder": f"open/2026-11-28/{DATASET}/"})  # pointer kept an older release
    relative = json.dumps(dcat_catalog([older], date(2026, 11, 30), None), ensure_ascii=False)
    assert "file:" not in relative and "/tmp" not in relative and f'"../2026-11-28/{DATASET}/{DATASET}.csv"' in relative
    served = Graph().parse(data=relative, format="json-ld",
                           publicID="https://portal.example.org/exports/open/2026-11-30/catalog.jsonld")
    absolute = Graph().parse(data=json.dumps(dcat_catalog([older], date(2026, 11, 30), "https://portal.example.org/exports/"),
                                             ensure_ascii=False), format="json-ld")
    assert len(served) == len(absolute) > 50 and isomorphic(served, absolute)
    urls = {str(o) for o in served.objects(None, served.namespace_manager.expand_curie("dcat:downloadURL"))}
    assert f"https://portal.example.org/exports/open/2026-11-28/{DATASET}/{DATASET}.parquet" in urls


def test_catalog_publisher_comes_from_the_department_registry(release: DatasetRelease,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.errors import CitylakeError
    from pipelines.publish.dcat import open_publisher

    monkeypatch.delenv("CITYLAKE_OPEN_PUBLISHER", raising=False)
    assert open_publisher() == ("11340100003009991Q", "合肥市数据资源局")  # looked up by name
    monkeypatch.setenv("CITYLAKE_OPEN_PUBLISHER", "11340100003007777F")
    doc = dcat_catalog([release], date(2026, 11, 30), None)
    assert doc["dct:publisher"]["dct:identifier"] == "11340100003007777F"
    monkeypatch.setenv("CITYLAKE_OPEN_PUBLISHER", "不存在的局")
    with pytest.raises(CitylakeError, match="CITYLAKE_OPEN_PUBLISHER='不存在的局'"):
        open_publisher()


def test_open_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """The configured public URL, else None (relative links): never the exports folder or bucket itself."""
    from dataclasses import replace

    monkeypatch.delenv("CITYLAKE_OPEN_BASE_URL", raising=False)
    settings = load_settings()
    assert open_base_url(settings.exports) is None and open_base_url(replace(settings, open_base_url=None)) is None
    assert open_base_url(replace(settings, open_base_url="https://data.example.org/x")) == "https://data.example.org/x/"
    monkeypatch.setenv("CITYLAKE_OPEN_BASE_URL", "https://data.example.org/exports/")
    assert open_base_url("s3://city-open/exports") == "https://data.example.org/exports/"


def test_dictionary_csv_opens_as_utf8_with_bom(release: DatasetRelease, tmp_path: Path) -> None:
    raw = dictionary_csv(release)
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw
    path = write_dictionary(release, tmp_path)
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == HEADERS == ["字段名", "中文名", "类型", "单位", "说明", "数据元", "分级", "脱敏处理", "是否主键"]
        by_name = {r["字段名"]: r for r in reader}
    assert list(by_name) == [c.name for c in release.columns]
    assert by_name["poi_id"]["是否主键"] == "是" and by_name["poi_name"]["是否主键"] == "否"
    assert by_name["longitude"]["脱敏处理"] == "泛化到网格（0.01°）" and by_name["longitude"]["单位"] == "度"
    assert by_name["established_on"]["脱敏处理"] == "泛化到年" and by_name["established_on"]["类型"] == "年份（year）"
    assert by_name["boardings"]["脱敏处理"] == "小于5抑制（1≤n<5的计数留空，0照常公布）" and by_name["poi_name"]["脱敏处理"] == "原样"
    assert by_name["poi_category"]["分级"] == "1级" and by_name["poi_category"]["数据元"] == "poi_category"


def test_manifest_checksums_are_hashlibs(release: DatasetRelease) -> None:
    folder = release.extra["exports"] / release.folder
    m = manifest(release, schema_version(release))
    json.dumps(m, ensure_ascii=False)  # plain JSON
    assert {f["name"]: (f["sha256"], f["bytes"], f["rows"]) for f in m["files"]} == {
        p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size, len(ROWS))
        for p in folder.glob(f"{DATASET}.*")}
    assert m["cutoff"] == {"inputs": {"std.poi": 42}, "latest_event_time": "2026-11-30T23:59:59"}
    assert m["coverage"] == {"temporal": ["2026-11-29", "2026-11-30"], "spatial": ["340103", "340104", "340171"]}
    assert (m["build_id"], m["release_date"], m["quality_score"], m["rows"]) == ("build__0123456789abcdef", "2026-11-30", 0.99871, 4)
    assert m["changes"]["added"] == 4 and m["generator"]["name"] == "citylake" and m["generator"]["version"]
    assert m["schema_version"].startswith("sha256:") and len(m["schema_version"]) == 23


def test_schema_version_follows_the_columns_not_the_data(release: DatasetRelease, config: Any, tmp_path: Path) -> None:
    other = DatasetRelease(**{**release.__dict__, "files": _write_data(tmp_path, ROWS[:2]), "rows": 2,
                              "release_date": date(2026, 12, 1)})
    assert schema_version(other) == schema_version(release)
    fewer = CONTRACT | {"columns": [c for c in CONTRACT["columns"] if c["name"] != "boardings"]}
    contract = CuratedContract.model_validate(fewer)
    changed = DatasetRelease(**{**release.__dict__, "contract": contract,
                                "columns": open_columns(contract, config.standards)})
    assert schema_version(changed) != schema_version(release)


def test_card_states_provenance_deid_licence_and_use(release: DatasetRelease, config: Any) -> None:
    md, data = card(release, config)
    assert data["provenance"]["inputs"] == [{"input": "std.poi", "snapshot": 42, "title": "地名地址兴趣点",
                                             "systems": [{"system": "poi", "name": config.systems["poi"].name}],
                                             "departments": [{"code": "11340100003007777F", "name": "合肥市自然资源和规划局"}]}]
    assert data["time_span"] == {"start": "2026-11-29", "end": "2026-11-30"}
    deid = {d["column"]: d["method"] for d in data["deidentification"]}
    assert deid["legal_representative"] == "删除" and deid["established_on"] == "泛化到年"
    assert deid["latitude"] == "泛化到网格（0.01°）" and deid["poi_id"] == "原样"
    assert data["licence"]["name"] == "CC-BY-4.0" and data["intended_use"].startswith("城市兴趣点")
    for text in ("## 预期用途", "城市兴趣点分布的空间分析", "## 局限与注意事项", "## 数据来源", "`std.poi`",
                 "合肥市自然资源和规划局", "2026-11-29 至 2026-11-30", "99.87%", "## 去标识化处理", "泛化到年",
                 "CC-BY-4.0", "开放条件：按网格汇总后开放（坐标泛化到 0.01° 网格）", release.files[0].sha256):
        assert text in md, text


def _parquet(path: Path, rows: list[dict[str, Any]], schema: pa.Schema) -> Path:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return path


def test_change_summary_by_primary_key(tmp_path: Path) -> None:
    schema = pa.schema([("line", pa.string()), ("day", pa.date32()), ("boardings", pa.int64()), ("note", pa.string())])
    d1, d2 = date(2026, 11, 29), date(2026, 11, 30)
    old = _parquet(tmp_path / "old.parquet", [
        {"line": "1", "day": d1, "boardings": 10, "note": None},    # unchanged (null = null)
        {"line": "1", "day": d2, "boardings": 11, "note": "a"},     # changed: value
        {"line": "2", "day": d1, "boardings": None, "note": "b"},   # changed: null → value
        {"line": "2", "day": d2, "boardings": 13, "note": "c"},     # changed: value → null
        {"line": "3", "day": d1, "boardings": 14, "note": "d"},     # removed
        {"line": "4", "day": d1, "boardings": 15, "note": "e"},     # unchanged
    ], schema)
    new = _parquet(tmp_path / "new.parquet", [
        {"line": "1", "day": d1, "boardings": 10, "note": None},
        {"line": "1", "day": d2, "boardings": 99, "note": "a"},
        {"line": "2", "day": d1, "boardings": 12, "note": "b"},
        {"line": "2", "day": d2, "boardings": 13, "note": None},
        {"line": "4", "day": d1, "boardings": 15, "note": "e"},
        {"line": "3", "day": d2, "boardings": 14, "note": "d"},     # added (same line, new day)
        {"line": "5", "day": d1, "boardings": 1, "note": "f"},      # added
    ], schema)
    keys = ["line", "day"]
    assert change_summary(new, old, keys) == {"rows": 7, "previous_rows": 6, "added": 2, "changed": 3, "removed": 1,
                                              "unchanged": 2, "columns_added": [], "columns_removed": []}
    assert change_summary(new, None, keys)["added"] == 7
    assert change_summary(old, old, keys, memory_limit="64MB", threads=1)["unchanged"] == 6
    wider = pa.Table.from_pylist([{**r, "extra": 1} for r in pq.read_table(new).to_pylist()])
    pq.write_table(wider, tmp_path / "wider.parquet")
    got = change_summary(tmp_path / "wider.parquet", new, keys)
    assert (got["changed"], got["unchanged"], got["columns_added"]) == (0, 7, ["extra"])  # compared on shared columns
    with pytest.raises(ValueError, match="key column"):
        change_summary(new, old, ["nope"])


def test_json_outputs_are_plain_json(release: DatasetRelease) -> None:
    """Everything the writers return serialises with the standard library (the release writes it as is)."""
    for doc in (datapackage(release), dcat_catalog([release], date(2026, 11, 30), "file:///tmp/x/"),
                manifest(release, "sha256:0"), card(release, SimpleNamespace(contracts={}, systems={}, curated={}))[1]):
        assert json.loads(json.dumps(doc, ensure_ascii=False)) == doc
    assert io.StringIO(card(release, SimpleNamespace(contracts={}, systems={}, curated={}))[0]).read().startswith("# 兴趣点样例")
