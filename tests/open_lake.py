"""A small curated lake for the open-release tests: the project's curated contracts (two edited to exercise
the year and grid generalisations) and a few hundred realistic rows per dataset written straight into
``curated.<ds>`` with the snapshot summary and ``meta.batches`` event the curate runner writes."""

from __future__ import annotations

import json
import random
import shutil
import warnings
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines.settings import PROJECT_ROOT

DISTRICTS = ["340102", "340103", "340104", "340111", "340121", "340122", "340123", "340124", "340181"]
INPUT_SNAPSHOTS = {"std.poi": 7123456789012345678, "std.enterprise": 6212345678901234567}
"""Input snapshot ids the fake builds name (citylake.inputs): big random-looking ids, as Iceberg's are."""


def project_copy(root: Path) -> Path:
    """The project's schemas under ``root``, with POI coordinates released on a 0.01° grid and enterprises'
    establishment dates generalised to the year (no real contract uses those two yet)."""
    shutil.copytree(PROJECT_ROOT / "schemas", root / "schemas")
    poi = root / "schemas" / "curated" / "poi_wgs84.yml"
    text = poi.read_text(encoding="utf-8")
    for axis in ("longitude", "latitude"):
        text = text.replace(f"- {{name: {axis}, element: {axis}, required: true}}",
                            f"- {{name: {axis}, element: {axis}, required: true, deid: grid, grid: 0.01}}")
    poi.write_text(text, encoding="utf-8")
    glp = root / "schemas" / "curated" / "golden_legal_person.yml"
    text = glp.read_text(encoding="utf-8")
    glp.write_text(text.replace("- {name: established_on, element: established_on}",
                                "- {name: established_on, element: established_on, deid: year}"), encoding="utf-8")
    return root


def rows(dataset: str, rng: random.Random, n: int = 200) -> list[dict[str, Any]]:
    """Realistic rows of one curated dataset (synthetic, but shaped as the curate models make them)."""
    from faker import Faker

    from pipelines.seed.ids import credit_code

    fake = Faker("zh_CN")
    fake.seed_instance(rng.randrange(1 << 30))
    start = date(2026, 10, 1)
    if dataset == "poi_wgs84":
        return [{"poi_id": f"POI{i:06d}", "poi_name": f"{fake.street_name()}{rng.choice(['学校', '医院', '公园'])}",
                 "poi_category": rng.choice(["EDU", "MED", "PRK"]), "longitude": round(rng.uniform(116.95, 117.55), 6),
                 "latitude": round(rng.uniform(31.65, 32.05), 6), "poi_district_code": rng.choice(DISTRICTS),
                 "crs": "WGS-84"} for i in range(n)]
    if dataset == "golden_legal_person":
        out = []
        for _ in range(n):
            d = rng.choice(DISTRICTS)
            uscc = credit_code(rng, d)
            prov = {c: {"system": "enterprise", "table": "enterprise", "dataset": "enterprise",
                        "snapshot": INPUT_SNAPSHOTS["std.enterprise"], "authoritative": True}
                    for c in ("uscc", "enterprise_name", "registered_capital")}
            out.append({"uscc": uscc, "enterprise_name": fake.company(), "legal_representative": fake.name(),
                        "registered_capital": Decimal(rng.randrange(10_000, 50_000_000)) / 100,
                        "established_on": start - timedelta(days=rng.randrange(0, 9000)),
                        "enterprise_district_code": d, "industry_code": rng.choice(["65", "51", "70"]),
                        "enterprise_status": rng.choice(["1", "2"]), "credit_red_count": rng.randrange(0, 3),
                        "credit_black_count": rng.randrange(0, 2), "credit_watch_count": rng.randrange(0, 2),
                        "field_provenance": json.dumps(prov, ensure_ascii=False)})
        return out
    if dataset == "enterprise_registrations_monthly":
        return [{"registration_month": f"2026-{m:02d}", "enterprise_district_code": d, "industry_section": s,
                 "registrations": rng.randrange(0, 30)} for m in range(1, 11) for d in DISTRICTS[:5] for s in "IL"]
    if dataset == "bus_ridership_daily":
        return [{"bus_line_id": f"{line}路", "bus_line_name": f"合肥公交{line}路", "ridership_date": start + timedelta(days=k),
                 "boardings": rng.choice([0, 3, 4, rng.randrange(5, 4000)])} for line in (1, 2, 10, 126, 226)
                for k in range(30)]
    if dataset == "air_quality_daily":
        stations = [("340100051", "明珠广场", "340104"), ("340100052", "三里街", "340102"), ("340100055", "长江中路", "340103")]
        return [{"station_id": sid, "station_name": name, "station_district_code": d, "station_longitude": 117.2,
                 "station_latitude": 31.8, "observed_date": start + timedelta(days=k), "hours_observed": 24,
                 "pm25_24h": round(rng.uniform(8, 120), 1), "pm10_24h": round(rng.uniform(20, 180), 1),
                 "aqi_daily": rng.randrange(20, 160), "aqi_level": "二级", "aqi_category": "良",
                 "primary_pollutant": "PM2.5"} for sid, name, d in stations for k in range(40)]
    if dataset == "air_quality_district_daily":
        return [{"station_district_code": d, "observed_date": start + timedelta(days=k), "stations": 1,
                 "pm25_24h": 35.5, "pm10_24h": 60.0, "aqi_daily": 51, "aqi_level": "二级", "aqi_category": "良",
                 "primary_pollutant": "PM2.5"} for d in DISTRICTS[:3] for k in range(40)]
    if dataset == "golden_resident":
        return [{"resident_id": None, "person_name": fake.name(), "sex_code": "1", "birth_date": date(1990, 1, 1),
                 "residence_district_code": "340104", "residence_address": fake.address(), "mobile_phone": None,
                 "field_provenance": "{}"}
                for _ in range(20)]
    raise KeyError(dataset)


def table_of(contract: Any, standards: Any, data: list[dict[str, Any]]) -> pa.Table:
    from pipelines.curate.runner import target_schema  # the types the curate runner writes

    return pa.Table.from_pylist(data, schema=target_schema(contract, standards))


def write_build(settings: Any, contract: Any, standards: Any, data: list[dict[str, Any]], build_id: str,
                status: str = "published") -> None:
    """Replace ``curated.<ds>`` with ``data`` as build ``build_id`` and record the gate's event."""
    from pipelines.lake.catalog import get_catalog
    from pipelines.lake.meta import append_events
    from pipelines.lake.raw import open_table

    catalog = get_catalog(settings)
    table = table_of(contract, standards, data)
    inputs = {x: INPUT_SNAPSHOTS.get(x, 5000 + i) for i, x in enumerate(contract.inputs)}
    props = {"citylake.build-id": build_id, "citylake.inputs": json.dumps(inputs),
             "citylake.batches": build_id, "citylake.run-id": f"test__{build_id}"}
    existing = open_table(catalog, contract.table)
    if status in ("published", "released"):
        if existing is None:
            existing = catalog.create_table(contract.table, schema=table.schema,
                                            properties={"format-version": "2"})
        with warnings.catch_warnings():  # an overwrite of a table's first snapshot deletes nothing
            warnings.filterwarnings("ignore", message="Delete operation did not match any records")
            existing.overwrite(table, snapshot_properties=props)
    append_events(catalog, [{"dataset": contract.dataset, "raw_batch_id": build_id, "run_id": f"test__{build_id}",
                             "status": status, "extracted": len(data), "published": len(data) if status != "held" else 0,
                             "quarantined": 0, "held": len(data) if status == "held" else 0,
                             "std_snapshot_id": None, "detail": "[]", "reason": None}])
