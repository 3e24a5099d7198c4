"""Score what the quality stage found against the seed's ground truth (``seed_manifest.json``).

Per defect type: recall = truth keys found / truth keys; precision = found keys that are true / found.
Found keys come from quarantine tables (rule tags), meta.conflicts and the drop ledgers' rejections.
Benign variants (width, whitespace, case, +86) must not appear among the found keys at all.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from pipelines.config import load_config
from pipelines.lake.catalog import get_catalog
from pipelines.lake.raw import TableState, open_table
from pipelines.settings import Settings, load_settings

Found = dict[str, set[tuple[str, str, str]]]


def _k(key: Any) -> str:
    return "|".join(map(str, key)) if isinstance(key, list) else str(key)


def found_keys(settings: Settings) -> Found:
    _standards, systems, contracts = load_config(settings)
    catalog = get_catalog(settings)
    found: Found = defaultdict(set)
    results = open_table(catalog, "meta.quality_results")
    tags = {r["rule"]: r["tag"] for r in results.scan(selected_fields=("rule", "tag")).to_arrow().to_pylist()} \
        if results is not None else {}
    for c in contracts.values():
        q = open_table(catalog, f"quarantine.{c.dataset}")
        if q is None:
            continue
        system, table = c.source["system"], c.source["table"]
        for row in q.scan(selected_fields=(*c.primary_key, "_rules")).to_arrow().to_pylist():
            key = _k([row[k] for k in c.primary_key] if len(c.primary_key) > 1 else row[c.primary_key[0]])
            for rule in row["_rules"] or []:
                tag = tags.get(rule, "duplicate_key" if rule.endswith(".unique") else rule)
                found[tag].add((system, table, key))
    conflicts = open_table(catalog, "meta.conflicts")
    if conflicts is not None:
        for row in conflicts.scan().to_arrow().to_pylist():
            found["source_conflict"].add((row["other_system"], row["other_table"], row["key"]))
    for s in systems.values():
        for t in s.all_tables:
            raw = open_table(catalog, s.raw_table(t.code))
            if raw is None:
                continue
            for name, entry in TableState.of(raw).ledger.items():
                if entry.get("status") == "rejected":
                    found["malformed_file"].add((s.system, t.code, name))
    return found


def score(settings: Settings | None = None, manifest_path: Path | None = None) -> dict[str, Any]:
    """Recall and precision per injected defect type, and any benign variant wrongly flagged."""
    settings = settings or load_settings()
    manifest = json.loads((manifest_path or settings.data_dir / "seed_manifest.json").read_text(encoding="utf-8"))
    truth: Found = defaultdict(set)
    for d in manifest["defects"]:
        for key in d["keys"]:
            truth[d["defect"]].add((d["system"], d["table"], _k(key)))
    found = found_keys(settings)
    rows = []
    for defect in sorted(truth):
        t, f = truth[defect], found.get(defect, set())
        hit = len(t & f)
        rows.append({"defect": defect, "truth": len(t), "found": len(f), "true_positives": hit,
                     "recall": round(hit / len(t), 4) if t else 1.0, "precision": round(hit / len(f), 4) if f else 0.0})
    flagged = set().union(*found.values()) if found else set()
    benign_hits = []
    for b in manifest.get("benign", []):
        for key in b["keys"]:
            if (b["system"], b["table"], _k(key)) in flagged:
                benign_hits.append({"variant": b["defect"], "system": b["system"], "table": b["table"], "key": key})
    return {"reference_date": manifest["reference_date"], "defects": rows, "benign_flagged": benign_hits}
