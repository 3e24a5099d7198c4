"""A small lake for the sharing tests: the project's schemas, the seeded city (scale 0.01) with the population
system's ``person`` ingested as batch ``b1``, the given grants (one file per department) and a master key. One
set-up for ``test_share_deliver.py`` and ``test_share_cli.py``; each publishes std.person itself."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from conftest import scoped_env
from open_lake import project_copy

from pipelines.settings import PROJECT_ROOT, TZ, Settings, load_settings

AT = datetime(2026, 11, 20, 2, tzinfo=TZ)
MASTER = "test-only-share-master-key-0123456789abcdef"


@contextmanager
def share_lake(base: Path, grants: dict[str, list[dict[str, Any]]],
               scenarios: dict[str, Any] | None = None) -> Iterator[tuple[Settings, dict[str, str]]]:
    """Inside: the environment points at the lake under ``base``; yields its settings and that environment."""
    root = project_copy(base / "root")
    shutil.copytree(PROJECT_ROOT / "expectations", root / "expectations")  # the gate's suites
    folder = base / "grants"
    folder.mkdir()
    for code, items in grants.items():
        (folder / f"{code}.yml").write_text(yaml.safe_dump({"grants": items}, allow_unicode=True, sort_keys=False),
                                            encoding="utf-8")
    if scenarios is not None:
        (folder / "scenarios.yml").write_text(yaml.safe_dump(scenarios, allow_unicode=True), encoding="utf-8")
    env = {"CITYLAKE_ROOT": str(root), "CITYLAKE_REGISTRY_DIR": str(root / "schemas" / "sources"),
           "CITYLAKE_LAKE_DIR": str(base / "lake"), "CITYLAKE_DATA_DIR": str(base / "data"),
           "CITYLAKE_EXPORTS_DIR": str(base / "exports"), "CITYLAKE_GRANTS_DIR": str(folder),
           "CITYLAKE_SHARE_MASTER_KEY": MASTER}
    with scoped_env(env):
        from pipelines.ingest import ingest_table
        from pipelines.registry import get_system
        from pipelines.seed import seed_city

        settings = load_settings()
        seed_city(settings.data_dir, scale=0.01)
        ingest_table(get_system(settings.registry_dir, "population"), "person", settings=settings, batch_id="b1",
                     extracted_at=AT)
        yield settings, env
