"""Which curated datasets exist and in which order they build, from the curated contracts read as plain YAML.

Plain Python and YAML (no pyarrow, DuckDB or Iceberg), so the ``curate__<domain>`` DAG file can read it at parse
time; the CLI and the demo take the same order (a dataset after the curated datasets it reads).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)


def curated_specs(directory: Path) -> dict[str, dict[str, Any]]:
    """dataset → its contract as plain YAML (dataset, name, domain, owner, inputs). Not validated: a broken
    contract fails its build with the full message (``config.load_all``) instead of hiding the others."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.glob("*.yml")):
        try:
            doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            out[doc["dataset"]] = {"dataset": doc["dataset"], "name": doc.get("name", doc["dataset"]),
                                   "domain": doc["domain"], "owner": str(doc.get("owner", "")),
                                   "inputs": [str(i) for i in doc.get("inputs", [])]}
        except Exception as exc:  # noqa: BLE001
            log.error("%s: %s", path, exc)
    return out


def build_order(inputs: dict[str, list[str]]) -> list[str]:
    """Datasets (dataset → its inputs, ``std.x`` / ``curated.x``) ordered after the curated datasets they read,
    ties by name. A cycle leaves its members out and is logged (the contracts' load refuses it with file and line)."""
    done: list[str] = []
    pending = sorted(inputs)
    while pending:
        ready = [d for d in pending if all(i.partition(".")[2] in done or i.partition(".")[2] not in inputs
                                           for i in inputs[d] if i.startswith("curated."))]
        if not ready:
            log.error("curated inputs form a cycle among %s", ", ".join(pending))
            break
        done += ready
        pending = [d for d in pending if d not in ready]
    return done


def domains_in_order(specs: dict[str, dict[str, Any]]) -> list[str]:
    """Domains in the order their DAGs must run for every curated input to be built first (a domain reading
    another domain's curated dataset comes after it; ``dag.test`` does not trigger Asset-scheduled DAGs)."""
    order = build_order({d: s["inputs"] for d, s in specs.items()})
    domain_of = {d: s["domain"] for d, s in specs.items()}
    needs = {dom: {domain_of[i.partition(".")[2]] for d in order if domain_of[d] == dom for i in specs[d]["inputs"]
                   if i.startswith("curated.") and i.partition(".")[2] in domain_of} - {dom}
             for dom in set(domain_of.values())}
    out: list[str] = []
    while len(out) < len(needs):
        ready = sorted(dom for dom, before in needs.items() if dom not in out and before <= set(out))
        if not ready:  # domains reading each other: the dataset order inside still holds per DAG
            ready = sorted(dom for dom in needs if dom not in out)
        out += ready
    return out
