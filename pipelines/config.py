"""The whole configuration as one load: the departments, the source registry, the standards (data elements,
code lists, authoritative sources) and the dataset contracts, each checked against the others."""

from __future__ import annotations

from typing import Any

from pipelines.contracts import DatasetContract, load_contracts
from pipelines.departments import Department, departments_file
from pipelines.departments import load_departments as _load_departments
from pipelines.errors import ConfigError
from pipelines.registry import load_registry
from pipelines.settings import Settings
from pipelines.standards import load_standards


def load_departments(settings: Settings) -> dict[str, Department]:
    """code → Department of ``schemas/departments.yml`` under the settings' root."""
    return _load_departments(departments_file(settings))


def load_config(settings: Settings) -> tuple[Any, dict[str, Any], dict[str, DatasetContract]]:
    """(standards, systems, contracts); a ConfigError lists every problem of every file that failed."""
    departments = load_departments(settings)
    systems, errors = load_registry(settings.registry_dir, departments)
    if errors:
        raise ConfigError(*(p for e in errors.values() for p in e.problems))
    standards = load_standards(settings.root / "schemas" / "standards", systems)
    return standards, systems, load_contracts(settings.root / "schemas" / "datasets", standards, systems,
                                            departments)
