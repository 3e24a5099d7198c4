"""The whole configuration as one load: the departments, the source registry, the standards (data elements,
code lists, authoritative sources) and the dataset contracts, each checked against the others."""

from __future__ import annotations

from typing import Any

from pipelines.contracts import DatasetContract, load_contracts
from pipelines.departments import load_departments
from pipelines.errors import ConfigError
from pipelines.registry import load_registry
from pipelines.settings import Settings
from pipelines.standards import load_standards

__all__ = ["load_config", "load_departments"]  # re-exported: the one department registry loader


def load_config(settings: Settings) -> tuple[Any, dict[str, Any], dict[str, DatasetContract]]:
    """(standards, systems, contracts); a ConfigError lists every problem of every file that failed."""
    departments = load_departments(settings)
    systems, errors = load_registry(settings.registry_dir, departments)
    if errors:
        raise ConfigError(*(p for e in errors.values() for p in e.problems))
    standards = load_standards(settings.root / "schemas" / "standards", systems)
    return standards, systems, load_contracts(settings.root / "schemas" / "datasets", standards, systems,
                                            departments)
