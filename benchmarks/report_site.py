"""The governance site for 100 datasets × 30 days of history: wall seconds and peak RSS of ``build_site``.

Generates, in a scratch project root and lake (nothing of the repo's own lake is touched):
- source systems ``bench<k>`` (one per department) with 100 tables and 100 dataset contracts over them (owners cycled over the
  department registry), on top of the project's own registry, standards and contracts;
- per dataset: a raw table with one snapshot per day (30), a std table, a quarantine table with failing rows
  (``_rules``, resident IDs in them so the masking path runs);
- 30 days of ``meta.quality_results`` (10–24 rules per dataset over the six GB/T 36344 dimensions, some
  failing, one consistency rule on every fifth), ``meta.batches`` (published, partly quarantined, held,
  released), ``meta.standardization_log`` and ``meta.conflicts``: written with the schemas of
  ``pipelines.lake.meta``, one commit per table per night (``recorded_at`` is each night's time, which
  ``meta.replace_run`` would stamp with the wall clock).

Then builds the site in a fresh process (imports included) and prints wall seconds and peak RSS against the
target (< 30 s on 2 cores). Usage: ``.venv/bin/python benchmarks/report_site.py [--datasets 100] [--days 30]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 30.0
DIMENSION_RULES = {"规范性": ("format", "length", "code_list"), "完整性": ("required",),
                   "准确性": ("check_digit", "range", "known_division"), "一致性": ("unique",),
                   "时效性": ("not_future",)}


def _project(base: Path, n: int) -> Path:
    """A scratch project root: the repo's schemas and suites plus a 100-table system and its contracts."""
    root = base / "root"
    shutil.copytree(ROOT / "schemas", root / "schemas")
    shutil.copytree(ROOT / "expectations", root / "expectations")
    import yaml

    departments = [d["code"] for d in yaml.safe_load((root / "schemas" / "departments.yml").read_text(encoding="utf-8"))["departments"]]
    # One bench system per department (a contract's provider is its source system's department), tables
    # dealt round-robin: dataset i is table t<i> of system bench<i mod m>, owned by department i mod m.
    m = max(1, len(departments) - 2)
    for k in range(m):
        tables = "\n".join(
            f"  - code: t{i:03d}\n    source: t{i:03d}\n    primary_key: [poi_id]\n    crs: GCJ-02\n"
            f"    columns: {{编号: poi_id, 名称: name, 类别: category, 区划代码: district_code, 更新时间: updated_at}}"
            for i in range(k, n, m))
        (root / "schemas" / "sources" / f"bench{k}.yml").write_text(
            f'system: bench{k}\nname: 基准测试系统{k}\ndepartment: "{departments[k]}"\nconnection: src_bench{k}\n'
            f"default_url: sqlite:///{{data_dir}}/sources/bench{k}.db\nschedule: \"0 2 * * *\"\ntables:\n{tables}\n",
            encoding="utf-8")
    poi = (root / "schemas" / "datasets" / "poi.yml").read_text(encoding="utf-8")
    for i in range(n):
        owner = departments[i % m]
        text = (poi.replace("dataset: poi", f"dataset: bench_{i:03d}")
                .replace("name: 地名地址兴趣点", f"name: 基准数据集{i:03d}")
                .replace("source: {system: poi, table: poi}", f"source: {{system: bench{i % m}, table: t{i:03d}}}")
                .replace("sequence: 1", f"sequence: {100 + i}"))
        text = "\n".join(line for line in text.splitlines()
                         if not line.startswith(("- {name: longitude", "- {name: latitude"))) + "\n"
        text = text.replace('owner: "11340100003007777F"', f'owner: "{owner}"')
        (root / "schemas" / "datasets" / f"bench_{i:03d}.yml").write_text(text, encoding="utf-8")
    return root


def _generate(settings, n: int, days: int, today: date) -> dict[str, int]:  # noqa: ANN001
    import pyarrow as pa
    from pyiceberg.exceptions import NoSuchTableError

    from pipelines.config import load_config
    from pipelines.lake.catalog import get_catalog
    from pipelines.lake.meta import BATCHES, CONFLICTS, META_PROPS, QUALITY_RESULTS, STANDARDIZATION_LOG
    from pipelines.lake.tables import append

    rng = random.Random(9)
    _standards, _systems, contracts = load_config(settings)
    bench = sorted(c for c in contracts if c.startswith("bench_"))[:n]
    catalog = get_catalog(settings)
    row_schema = pa.schema([("poi_id", pa.string()), ("poi_name", pa.string()), ("poi_category", pa.string()),
                            ("poi_district_code", pa.string())])

    def rows(k: int, start: int) -> pa.Table:
        return pa.table({"poi_id": [f"P{start + j:07d}" for j in range(k)], "poi_name": [f"兴趣点{start + j}" for j in range(k)],
                         "poi_category": ["学校"] * k, "poi_district_code": ["340104"] * k}, schema=row_schema)

    for i, ds in enumerate(bench):
        for d in range(days):  # one raw load per night
            try:
                raw = catalog.load_table(f"raw.bench__t{i:03d}")
            except NoSuchTableError:
                raw = catalog.create_table(f"raw.bench__t{i:03d}", schema=row_schema)
            raw.append(rows(20, d * 20), snapshot_properties={"citylake.batch-id": f"night{d:02d}__t{i:03d}"})
        append(catalog, f"std.{ds}", rows(400, 0))
        bad = rows(30, 5000).append_column("resident_id", pa.array([f"34010419900101{j:03d}X" for j in range(30)]))
        bad = bad.append_column("_rules", pa.array([[f"{ds}.poi_name.required"]] * 15 + [[f"{ds}.poi_id.format"]] * 15,
                                                   pa.list_(pa.string())))
        append(catalog, f"quarantine.{ds}", bad)

    counts = dict.fromkeys(("quality_results", "batches", "standardization_log", "conflicts"), 0)
    for d in range(days):
        night = datetime.combine(today - timedelta(days=days - 1 - d), datetime.min.time(), UTC) - timedelta(hours=6)
        results, batches, stdlog, conflicts = [], [], [], []
        for i, ds in enumerate(bench):
            owner = contracts[ds].owner
            run = f"scheduled__{night:%Y-%m-%dT%H}__{ds}"
            n_rules = 10 + (i % 15)
            for r in range(n_rules):
                dim = list(DIMENSION_RULES)[r % len(DIMENSION_RULES)]
                kind = DIMENSION_RULES[dim][r % len(DIMENSION_RULES[dim])]
                evaluated = 20 + rng.randint(0, 400)
                failed = rng.randint(0, evaluated // 10) if rng.random() < 0.3 else 0
                results.append({"run_id": run, "dataset": ds, "department": owner, "rule": f"{ds}.c{r:02d}.{kind}",
                                "tag": kind, "dimension": dim, "element": "poi_name", "column": "poi_name",
                                "evaluated": evaluated, "failed": failed, "severity": "critical" if r % 3 else "warning",
                                "passed": failed == 0, "error": None, "recorded_at": night})
            if i % 5 == 0:
                compared = 0 if i % 25 == 0 else 300
                results.append({"run_id": f"consistency__{night:%Y%m%d}", "dataset": f"{contracts[ds].source['system']}.t{i:03d}", "department": owner,
                                "rule": "poi_name.consistency.bench", "tag": "source_conflict", "dimension": "一致性",
                                "element": "poi_name", "column": "poi_name", "evaluated": compared, "failed": compared // 50,
                                "severity": "warning", "passed": compared == 0, "error": None, "recorded_at": night})
                conflicts += [{"run_id": f"consistency__{night:%Y%m%d}", "element": "poi_name", "element_name": "兴趣点名称",
                               "authoritative_system": "poi", "other_system": contracts[ds].source["system"], "other_table": f"t{i:03d}",
                               "other_column": "name", "key": f"P{k:07d}", "authoritative_value": "合肥*****学校",
                               "other_value": "合肥*****小学", "recorded_at": night} for k in range(compared // 50)]
            status = "held" if (i % 17 == 0 and d == days - 1) else "published"
            quarantined = 0 if status == "held" or i % 3 else rng.randint(1, 20)
            batches.append({"dataset": ds, "raw_batch_id": f"night{d:02d}__t{i:03d}", "run_id": run, "status": status,
                            "extracted": 20, "published": 0 if status == "held" else 20 - quarantined,
                            "quarantined": quarantined, "held": 20 if status == "held" else 0, "std_snapshot_id": None,
                            "detail": json.dumps([{"rule": f"{ds}.c01.required", "failed": 15, "evaluated": 20}]) if status == "held" else "[]",
                            "reason": None, "recorded_at": night})
            stdlog += [{"dataset": ds, "column": c, "transformation": t, "rows_changed": rng.randint(0, 30), "run_id": run,
                        "recorded_at": night} for c, t in (("poi_name", "trim"), ("poi_district_code", "width"))]
        for name, schema, data in (("meta.quality_results", QUALITY_RESULTS, results), ("meta.batches", BATCHES, batches),
                                   ("meta.standardization_log", STANDARDIZATION_LOG, stdlog),
                                   ("meta.conflicts", CONFLICTS, conflicts)):
            if data:
                append(catalog, name, pa.Table.from_pylist(data, schema=schema), properties=META_PROPS)
                counts[name.removeprefix("meta.")] += len(data)
    return counts


def _build(out: Path, today: date) -> dict[str, float]:
    """Build the site in this (fresh) process; wall seconds and peak RSS in MB."""
    started = time.perf_counter()
    from pipelines.report import build_site
    from pipelines.settings import load_settings

    index = build_site(load_settings(), out_dir=out, today=today)
    seconds = time.perf_counter() - started
    pages = sum(1 for _ in index.parent.rglob("*.html"))
    return {"seconds": seconds, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "pages": pages}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=100)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--keep", action="store_true", help="keep the scratch lake (its path is printed)")
    parser.add_argument("--build-only", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    today = date(2026, 11, 30)
    if args.build_only:
        print(json.dumps(_build(Path(args.build_only), today)))
        return
    base = Path(tempfile.mkdtemp(prefix="citylake-report-bench-"))
    try:
        root = _project(base, args.datasets)
        env = {"CITYLAKE_ROOT": str(root), "CITYLAKE_REGISTRY_DIR": str(root / "schemas" / "sources"),
               "CITYLAKE_LAKE_DIR": str(base / "lake"), "CITYLAKE_DATA_DIR": str(base / "data")}
        os.environ.update(env)
        from pipelines.settings import load_settings

        t0 = time.perf_counter()
        counts = _generate(load_settings(), args.datasets, args.days, today)
        print(f"generated {args.datasets} datasets × {args.days} days in {time.perf_counter() - t0:.0f}s: "
              + ", ".join(f"{k} {v:,}" for k, v in counts.items()), flush=True)
        done = subprocess.run([sys.executable, __file__, "--build-only", str(base / "report")], env=os.environ.copy(),
                              capture_output=True, text=True, check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        verdict = "OK" if result["seconds"] < TARGET_SECONDS else "OVER TARGET"
        print(f"build_site: {result['seconds']:.1f} s wall, peak RSS {result['peak_rss_mb']:.0f} MB, "
              f"{result['pages']} pages (target < {TARGET_SECONDS:.0f} s on 2 cores: {verdict})")
        if args.keep:
            print(f"scratch lake kept: {base}")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
