"""Installs that do not drift (issue 12 item 5).

The lock files pin every package, satisfy pyproject.toml and agree with each other; this venv holds exactly
what requirements-dev.lock pins, so the lock is what the tests ran on. And the pyiceberg (and SQLAlchemy)
internals the code reaches into still exist and still accept what the code passes: pyiceberg is pinned, but
a bump must fail here, by name, not somewhere deep in a load."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as md
import inspect
import os
import re
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ROOT / "pipelines"
RUNTIME_LOCK = ROOT / "requirements.lock"
DEV_LOCK = ROOT / "requirements-dev.lock"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;#]+)\s*(?:#.*)?$")
DEV_ONLY = ("pytest", "ruff", "mypy", "moto", "playwright")


def read_lock(path: Path) -> dict[str, Version]:
    """name → pinned version; every line that is not a comment must be one exact ``name==version``."""
    pins: dict[str, Version] = {}
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = PIN.match(line)
        assert m, f"{path.name}:{n}: not an exact pin (name==version): {line!r}"
        name = canonicalize_name(m["name"])
        assert name not in pins, f"{path.name}:{n}: {name} pinned twice"
        pins[name] = Version(m["version"])
    return pins


def project_requirements(extras: tuple[str, ...]) -> list[Requirement]:
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra in extras:
        reqs += [Requirement(r) for r in PROJECT["optional-dependencies"][extra]]
    return reqs


def applies(req: Requirement, extras: set[str]) -> bool:
    """Whether a requirement holds on this interpreter (the locks' platform) with these extras requested."""
    if req.marker is None:
        return True
    env: dict[str, str] = dict(default_environment())
    return any(req.marker.evaluate({**env, "extra": e}) for e in (extras or {""}))


def closure(lock: dict[str, Version], roots: list[Requirement]) -> tuple[set[str], list[str]]:
    """Walk the requirements from ``roots`` through the installed packages' metadata (the installed versions
    are the dev lock's, see ``test_venv_is_the_dev_lock``): the packages reached, and every requirement the
    lock's pin does not satisfy or lacks."""
    reached: set[str] = set()
    problems: list[str] = []
    todo: list[tuple[Requirement, str]] = [(r, "pyproject.toml") for r in roots]
    seen_extras: dict[str, set[str]] = {}
    while todo:
        req, by = todo.pop()
        name = canonicalize_name(req.name)
        if name not in lock:
            problems.append(f"{name} (required by {by}: {req}) is not in the lock")
            continue
        if not req.specifier.contains(lock[name], prereleases=True):
            problems.append(f"{name}=={lock[name]} does not satisfy {req} (required by {by})")
        extras = set(req.extras)
        if name in reached and extras <= seen_extras[name]:
            continue
        reached.add(name)
        new = extras - seen_extras.get(name, set())
        first = name not in seen_extras
        seen_extras.setdefault(name, set()).update(extras)
        for text in md.requires(name) or []:
            sub = Requirement(text)
            marker = str(sub.marker) if sub.marker else ""
            if "extra" in marker:
                if applies(sub, new):
                    todo.append((sub, f"{name}[{','.join(sorted(new))}]"))
            elif first and applies(sub, set()):
                todo.append((sub, name))
    return reached, problems


@pytest.fixture(scope="module")
def dev_lock() -> dict[str, Version]:
    return read_lock(DEV_LOCK)


@pytest.fixture(scope="module")
def runtime_lock() -> dict[str, Version]:
    return read_lock(RUNTIME_LOCK)


# --- the lock files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [RUNTIME_LOCK, DEV_LOCK], ids=lambda p: p.name)
def test_lock_says_how_to_regenerate(path: Path) -> None:
    head = path.read_text(encoding="utf-8").splitlines()[:3]
    assert any("make lock" in line for line in head), f"{path.name}: header does not name `make lock`"
    assert "lock:" in (ROOT / "Makefile").read_text(encoding="utf-8"), "Makefile has no `lock` target"


def test_venv_is_the_dev_lock(dev_lock: dict[str, Version]) -> None:
    """The tests run on exactly the locked versions. Packages beyond the lock (``make bench``'s extra, uv)
    are not checked; ``make bench`` moves some pins and the next ``make install`` puts them back."""
    wrong = []
    for name, version in sorted(dev_lock.items()):
        try:
            installed = Version(md.version(name))
        except md.PackageNotFoundError:
            wrong.append(f"{name}: not installed (lock {version})")
            continue
        if installed != version:
            wrong.append(f"{name}: installed {installed}, lock {version}")
    assert not wrong, "the venv is not requirements-dev.lock (run `make install`): " + "; ".join(wrong)


def test_dev_lock_is_exactly_pyproject_with_dev(dev_lock: dict[str, Version]) -> None:
    reached, problems = closure(dev_lock, project_requirements(("dev",)))
    assert not problems, "requirements-dev.lock does not satisfy pyproject.toml (run `make lock`): " + "; ".join(problems)
    assert not set(dev_lock) - reached, f"requirements-dev.lock pins what nothing requires: {sorted(set(dev_lock) - reached)}"


def test_runtime_lock_is_exactly_pyproject(runtime_lock: dict[str, Version]) -> None:
    reached, problems = closure(runtime_lock, project_requirements(()))
    assert not problems, "requirements.lock does not satisfy pyproject.toml (run `make lock`): " + "; ".join(problems)
    assert not set(runtime_lock) - reached, f"requirements.lock pins what nothing requires: {sorted(set(runtime_lock) - reached)}"
    assert not set(DEV_ONLY) & set(runtime_lock), "the image's lock carries dev tools"


def test_locks_agree(runtime_lock: dict[str, Version], dev_lock: dict[str, Version]) -> None:
    missing = sorted(set(runtime_lock) - set(dev_lock))
    assert not missing, f"in requirements.lock but not requirements-dev.lock: {missing}"
    differ = {n: (str(v), str(dev_lock[n])) for n, v in runtime_lock.items() if dev_lock[n] != v}
    assert not differ, f"the locks pin different versions (runtime, dev): {differ}"


def test_drifting_packages_are_bounded() -> None:
    """duckdb, pyarrow and ADBC change behaviour between releases: pyproject.toml caps them (a plain
    ``pip install .`` without the lock must not pick an untested release)."""
    reqs = {canonicalize_name(r.name): r for r in project_requirements(())}
    for name in ("duckdb", "pyarrow", "adbc-driver-postgresql", "adbc-driver-manager", "sqlglot"):
        assert any(s.operator in ("<", "<=", "==", "~=") for s in reqs[name].specifier), f"{name} has no upper bound"


def test_lock_platform_matches_this_interpreter() -> None:
    """The locks are resolved for CPython >= 3.11.3 (LOCK_FLAGS in the Makefile): an older 3.11 would also
    need async-timeout (redis' marker), which the lock does not carry."""
    assert sys.version_info[:2] == (3, 11) and sys.version_info[:3] >= (3, 11, 3), sys.version
    assert "--python-version 3.11.3" in (ROOT / "Makefile").read_text(encoding="utf-8")


def test_celery_provider_imports_on_the_locked_celery(tmp_path: Path) -> None:
    """celery 5.7.0 removed ``celery.backends.database.retry``, which the celery provider's executor imports:
    every worker died at start. The pair the lock pins must import (a subprocess: Airflow's configuration
    is read at import, under a throw-away AIRFLOW_HOME)."""
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", "import airflow.providers.celery.executors.celery_executor_utils"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"the celery provider does not import: {done.stderr.strip().splitlines()[-1:]}"


# --- internals the code uses -------------------------------------------------------------------------


def pipeline_sources() -> Iterator[tuple[Path, ast.Module]]:
    for path in sorted(PIPELINES.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def pyiceberg_imports() -> list[tuple[str, str, str]]:
    """(where, module, name) of every ``from pyiceberg… import name`` in pipelines/ (module level or not)."""
    found = []
    for path, tree in pipeline_sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pyiceberg":
                for alias in node.names:
                    found.append((f"{path.relative_to(ROOT)}:{node.lineno}", node.module, alias.name))
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "pyiceberg":
                        found.append((f"{path.relative_to(ROOT)}:{node.lineno}", alias.name, ""))
    return found


def test_every_pyiceberg_import_exists() -> None:
    found = pyiceberg_imports()
    names = {(module, name) for _, module, name in found}
    # the walk really sees the private ones (else this test would pass on nothing)
    assert {("pyiceberg.io.pyarrow", "_dataframe_to_data_files"), ("pyiceberg.io.pyarrow", "_read_all_delete_files"),
            ("pyiceberg.io.pyarrow", "_check_pyarrow_schema_compatible")} <= names
    missing = []
    for where, module, name in found:
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            missing.append(f"{where}: {module} ({exc})")
            continue
        if name and not hasattr(mod, name):
            missing.append(f"{where}: {module}.{name}")
    assert not missing, "pyiceberg no longer has: " + "; ".join(missing)


# Private attributes the code reaches on pyiceberg's and SQLAlchemy's objects (``obj._name``, not self's):
# each is checked below. A new one must be added here with its check.
INTERNALS = {
    "_stage": "pyiceberg Transaction._stage (pipelines/lake/raw.py _stage_state)",
    "_record_batches_from_scan_tasks_and_deletes": "pyiceberg ArrowScan (pipelines/lake/raw.py stream_scan)",
    "_requirements": "pyiceberg ExpireSnapshots._requirements (pipelines/lake/maintenance.py)",
    "_Binary": "sqlalchemy.types._Binary (pipelines/extract/sql.py, pipelines/seed/servers.py)",
}
PRIVATE = re.compile(r"^_[A-Za-z]")


def test_every_private_attribute_used_is_checked() -> None:
    """``obj._name`` on something that is not citylake's own (no citylake class or ``self._name`` defines
    ``_name``) must be listed in INTERNALS, so the checks below cover every internal the code relies on."""
    owned: set[str] = set()
    used: dict[str, list[str]] = {}
    for path, tree in pipeline_sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                owned.add(node.name)
            if isinstance(node, ast.ClassDef):
                for stmt in node.body:
                    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                        owned.add(stmt.target.id)
                    elif isinstance(stmt, ast.Assign):
                        owned.update(t.id for t in stmt.targets if isinstance(t, ast.Name))
            elif isinstance(node, ast.Attribute) and PRIVATE.match(node.attr):
                if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                    owned.add(node.attr)
                else:
                    used.setdefault(node.attr, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert "_record_batches_from_scan_tasks_and_deletes" in used  # the walk sees raw.py's use
    unchecked = {name: where for name, where in used.items() if name not in owned and name not in INTERNALS}
    assert not unchecked, f"private attributes of other libraries used without a check in this file: {unchecked}"


def accepts(fn: Any, *args: Any, **kwargs: Any) -> None:
    """``fn``'s signature accepts the call the code makes (names and positions), or the test fails naming it."""
    try:
        inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as exc:
        pytest.fail(f"{getattr(fn, '__qualname__', fn)}{inspect.signature(fn)} no longer accepts the code's call: {exc}")


def test_private_function_signatures() -> None:
    from pyiceberg.io import pyarrow as pio

    x = object()
    # pipelines/lake/tables.py append_staged
    accepts(pio._check_pyarrow_schema_compatible, x, provided_schema=x, format_version=x)
    # pipelines/lake/tables.py, pipelines/quality/gate.py _drop_keys, pipelines/lake/maintenance.py compact
    accepts(pio._dataframe_to_data_files, table_metadata=x, df=x, io=x, write_uuid=x, counter=x)
    # pipelines/lake/raw.py stream_scan
    accepts(pio._read_all_delete_files, x, [x])
    accepts(pio.expression_to_pyarrow, x, x)
    accepts(pio.schema_to_pyarrow, x, include_field_ids=False)
    # ArrowScan: positional in raw.py, by keyword in gate.py and maintenance.py
    accepts(pio.ArrowScan, x, x, x, x, True)
    accepts(pio.ArrowScan, table_metadata=x, io=x, projected_schema=x, row_filter=x)
    accepts(pio.ArrowScan.to_table, x, tasks=[x])
    accepts(pio.ArrowScan._record_batches_from_scan_tasks_and_deletes, x, [x], x)

    from pyiceberg.expressions.visitors import bind, extract_field_ids

    accepts(bind, x, x, True)
    accepts(extract_field_ids, x)


def test_transaction_and_update_internals() -> None:
    from pyiceberg.manifest import ManifestFile
    from pyiceberg.table import FileScanTask, Table, TableProperties, Transaction
    from pyiceberg.table.snapshots import Snapshot
    from pyiceberg.table.update import ValidatableTableRequirement
    from pyiceberg.table.update.snapshot import ExpireSnapshots, UpdateSnapshot, _SnapshotProducer

    x = object()
    accepts(Transaction._stage, x, (), (x,))  # raw.py _stage_state: tx._stage((), (_AssertState(...),))
    accepts(ValidatableTableRequirement.validate, x, x)  # _AssertState.validate(self, base_metadata)
    # raw.py single_attempt: commit retries are read from the table's metadata properties
    assert TableProperties.COMMIT_NUM_RETRIES == "commit.retry.num-retries"
    source = inspect.getsource(Transaction.commit_transaction)
    assert "self._table.metadata.properties" in source and "COMMIT_NUM_RETRIES" in source
    accepts(Table, identifier=x, metadata=x, metadata_location=x, io=x, catalog=x)
    accepts(UpdateSnapshot.overwrite, x, commit_uuid=x)  # gate.py _drop_keys
    accepts(UpdateSnapshot.fast_append, x)
    accepts(Transaction.update_snapshot, x, snapshot_properties={})
    assert hasattr(_SnapshotProducer, "append_data_file") and hasattr(_SnapshotProducer, "delete_data_file")
    accepts(FileScanTask, x)  # gate.py _removed_by_run: FileScanTask(entry.data_file)
    accepts(ManifestFile.fetch_manifest_entry, x, x, discard_deleted=False)
    accepts(Snapshot.manifests, x, x)
    # maintenance.py: expire._requirements set before commit(); _commit() hands it to the transaction
    assert "_requirements" in ExpireSnapshots.__annotations__
    assert "self._requirements" in inspect.getsource(ExpireSnapshots._commit)


def test_sqlalchemy_binary_base() -> None:
    import sqlalchemy.types as T

    assert isinstance(T._Binary, type) and issubclass(T.LargeBinary, T._Binary) and issubclass(T.BINARY, T._Binary)


# --- the same internals, exercised on a real SQL catalog -----------------------------------------------


@pytest.fixture
def table(tmp_path: Path) -> Any:
    from pyiceberg.catalog.sql import SqlCatalog

    catalog = SqlCatalog("deps", uri=f"sqlite:///{tmp_path}/catalog.db", warehouse=f"file://{tmp_path}/wh")
    catalog.create_namespace("t")
    data = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "v": pa.array(["a", "b", "c"])})
    t = catalog.create_table("t.x", schema=data.schema)
    t.append(data)
    t.append(data)
    return catalog.load_table("t.x")


def test_sql_catalog_validates_a_staged_requirement(table: Any) -> None:
    """raw.py's load-sequence compare-and-swap: a requirement staged with ``tx._stage`` is validated by the
    SQL catalog on commit (a wrong expectation is refused; the right one lands)."""
    from pyiceberg.exceptions import CommitFailedException

    from pipelines.lake.raw import STATE_PROPERTY, _AssertState, _require_sql_catalog, single_attempt

    _require_sql_catalog(table.catalog, "t.x")  # a SqlCatalog: accepted
    tx = single_attempt(table).transaction()
    assert table.metadata.properties["commit.retry.num-retries"] == "0"
    tx._stage((), (_AssertState(expected=None),))  # no state yet: holds now
    tx.set_properties({STATE_PROPERTY: "one"})
    other = table.catalog.load_table("t.x")
    other.transaction().set_properties({STATE_PROPERTY: "other"}).commit_transaction()
    with pytest.raises(CommitFailedException):
        tx.commit_transaction()
    tx = table.catalog.load_table("t.x").transaction()
    tx._stage((), (_AssertState(expected="other"),))
    tx.set_properties({STATE_PROPERTY: "two"}).commit_transaction()
    assert table.catalog.load_table("t.x").properties[STATE_PROPERTY] == "two"


def test_expire_requirement_is_sent(table: Any) -> None:
    """maintenance.py's snapshot expiry sets ``ExpireSnapshots._requirements``: the catalog checks it."""
    from pyiceberg.exceptions import CommitFailedException
    from pyiceberg.table.update import AssertRefSnapshotId
    from pyiceberg.table.update.snapshot import ExpireSnapshots

    first = table.metadata.snapshots[0].snapshot_id
    tx = table.transaction()
    expire = ExpireSnapshots(tx).by_ids([first])
    expire._requirements = (AssertRefSnapshotId(snapshot_id=first, ref="main"),)  # not the current one
    with pytest.raises(CommitFailedException):
        expire.commit()
        tx.commit_transaction()
    assert len(table.catalog.load_table("t.x").metadata.snapshots) == 2


def test_scan_attributes_the_readers_use(table: Any) -> None:
    """stream_scan (raw.py), _drop_keys (gate.py) and compact (maintenance.py) read these off a scan and
    its tasks, and call ArrowScan's private per-task reader."""
    from pyiceberg.expressions import AlwaysTrue
    from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files, _read_all_delete_files

    scan = table.scan()
    for attr in ("table_metadata", "io", "row_filter", "case_sensitive"):
        assert hasattr(scan, attr), f"DataScan.{attr}"
    tasks = list(scan.plan_files())
    assert len(tasks) == 2 and tasks[0].delete_files == set() and tasks[0].file.file_size_in_bytes > 0
    deletes = _read_all_delete_files(scan.io, tasks)
    reader = ArrowScan(scan.table_metadata, scan.io, scan.projection(), scan.row_filter, scan.case_sensitive)
    rows = sum(b.num_rows for b in reader._record_batches_from_scan_tasks_and_deletes(tasks, deletes))
    assert rows == 6
    meta = table.metadata
    files = list(_dataframe_to_data_files(table_metadata=meta, df=reader.to_table(tasks=tasks[:1]), io=table.io,
                                          write_uuid=uuid.uuid4(), counter=iter(range(9))))
    assert files and files[0].record_count == 3
    assert ArrowScan(table_metadata=meta, io=table.io, projected_schema=meta.schema(),
                     row_filter=AlwaysTrue()).to_table(tasks=tasks).num_rows == 6
