"""Dataset contracts load against the standards and registry; catalog rules are enforced with file and line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipelines.contracts import load_contracts
from pipelines.errors import ConfigError
from pipelines.registry import load_registry
from pipelines.settings import PROJECT_ROOT
from pipelines.standards import load_standards

SCHEMAS = PROJECT_ROOT / "schemas"


def _load(directory: Path):  # noqa: ANN202
    systems, _ = load_registry(SCHEMAS / "sources")
    return load_contracts(directory, load_standards(SCHEMAS / "standards"), systems)


def test_every_contract_loads_and_covers_every_registry_table() -> None:
    contracts = _load(SCHEMAS / "datasets")
    systems, _ = load_registry(SCHEMAS / "sources")
    covered = {(c.source["system"], c.source["table"]) for c in contracts.values()}
    assert covered == {(s.system, t.code) for s in systems.values() for t in s.all_tables}
    person = contracts["person"]
    assert person.raw_table == "raw.population__person" and person.std_table == "std.person"
    assert person.sharing.type == "无条件共享"  # Hefei: population base data is shared unconditionally
    assert contracts["insured"].sharing.type == "有条件共享" and contracts["insured"].sharing.condition


@pytest.mark.parametrize(("old", "new", "message"), [
    ("  condition: 用于社会保障待遇核验, 经人社部门审核, 快速响应\n", "", r"insured\.yml:\d+: sharing: .*state the sharing conditions"),
    ("element: insurance_type", "element: no_such_element", "unknown data element 'no_such_element'"),
    ("primary_key: [resident_id, insurance_type]", "primary_key: [nope]", "'nope' .* not one of the columns"),
])
def test_bad_contracts(tmp_path: Path, old: str, new: str, message: str) -> None:
    d = tmp_path / "datasets"
    shutil.copytree(SCHEMAS / "datasets", d)
    path = d / "insured.yml"
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        _load(d)


def test_base_resource_must_be_shared_unconditionally(tmp_path: Path) -> None:
    d = tmp_path / "datasets"
    shutil.copytree(SCHEMAS / "datasets", d)
    path = d / "enterprise.yml"
    text = path.read_text(encoding="utf-8").replace("type: 无条件共享", "type: 有条件共享").replace(
        "condition: 无条件", "condition: 审核后共享")
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"enterprise\.yml:\d+: .*法人单位 is a base resource"):
        _load(d)
