"""The whole configuration as one load: the departments, the source registry, the standards (data elements,
code lists, authoritative sources), the dataset contracts and the curated contracts, each checked against
the others."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from pipelines.contracts import CuratedContract, DatasetContract, load_contracts, load_curated_contracts
from pipelines.departments import load_departments
from pipelines.errors import ConfigError
from pipelines.registry import load_registry
from pipelines.settings import Settings
from pipelines.standards import Standards, load_standards

__all__ = ["Config", "load_all", "load_config", "load_curated", "load_departments", "load_for"]  # load_departments re-exported:
# the one department registry loader

_CACHE: dict[tuple[Any, ...], tuple[tuple[Any, ...], Config]] = {}


class Config(NamedTuple):
    standards: Standards
    systems: dict[str, Any]
    contracts: dict[str, DatasetContract]
    """std contracts, schemas/datasets/."""
    curated: dict[str, CuratedContract]
    """curated contracts, schemas/curated/."""


def load_config(settings: Settings) -> tuple[Any, dict[str, Any], dict[str, DatasetContract]]:
    """(standards, systems, contracts); a ConfigError lists every problem of every file that failed."""
    departments = load_departments(settings)
    systems, errors = load_registry(settings.registry_dir, departments)
    if errors:
        raise ConfigError(*(p for e in errors.values() for p in e.problems))
    standards = load_standards(settings.root / "schemas" / "standards", systems)
    return standards, systems, load_contracts(settings.root / "schemas" / "datasets", standards, systems,
                                            departments)


def _version(settings: Settings) -> tuple[Any, ...]:
    """Every file the whole load reads (schemas, registry, models), by mtime and size: a changed file reloads."""
    from pipelines.contracts import CURATE_DIR

    files = [*(settings.root / "schemas").rglob("*"), *Path(settings.registry_dir).glob("*.yml"),
             *CURATE_DIR.glob("*.sql")]
    out = []
    for f in sorted(set(files)):
        try:
            st = f.stat()
        except OSError:
            continue
        out.append((str(f), st.st_mtime_ns, st.st_size))
    return tuple(out)


def load_all(settings: Settings) -> Config:
    """Standards, systems, std and curated contracts, each checked against the others; cached per version of
    the files read (the DAG files and the CLI call it repeatedly)."""
    key = (str(settings.root), str(settings.registry_dir))
    version = _version(settings)
    hit = _CACHE.get(key)
    if hit is not None and hit[0] == version:
        return hit[1]
    standards, systems, contracts = load_config(settings)
    curated = load_curated_contracts(settings.root / "schemas" / "curated", standards, contracts,
                                     load_departments(settings))
    config = Config(standards, systems, contracts, curated)
    _CACHE[key] = (version, config)
    return config


def load_curated(settings: Settings, standards: Standards | None = None,
                 contracts: dict[str, DatasetContract] | None = None) -> dict[str, CuratedContract]:
    """The curated contracts, checked against ``standards`` and the std ``contracts`` (loaded, and cached, when
    not given); a ConfigError lists every problem with its file and line."""
    if standards is None or contracts is None:
        return dict(load_all(settings).curated)
    return load_curated_contracts(settings.root / "schemas" / "curated", standards, contracts,
                                  load_departments(settings))


def load_for(settings: Settings, dataset: str) -> Config:
    """The config a build or an alert of ``dataset`` needs: ``load_all``, or, when some curated contract is
    broken, the std config and only ``dataset``'s own curated contract and those of its curated inputs (a broken
    file elsewhere is that file's error, not this dataset's; one of its own is raised with its file and line)."""
    try:
        return load_all(settings)
    except ConfigError:
        standards, systems, contracts = load_config(settings)  # a std problem is everyone's
    from pipelines.curate.plan import curated_specs

    specs = curated_specs(settings.root / "schemas" / "curated")
    needed: set[str] = set()
    todo = [dataset]
    while todo:
        d = todo.pop()
        if d in needed:
            continue
        needed.add(d)
        todo += [i.partition(".")[2] for i in specs.get(d, {}).get("inputs", []) if i.startswith("curated.")]
    curated = load_curated_contracts(settings.root / "schemas" / "curated", standards, contracts,
                                     load_departments(settings), only=needed)
    return Config(standards, systems, contracts, curated)
