"""`make bench`'s results.md: a run of some scripts (--only/--skip) keeps the other scripts' sections."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def run_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    module = importlib.import_module("run_all")
    bench = tmp_path / "benchmarks"
    bench.mkdir()
    for name, figure in (("alpha", 11), ("beta", 22)):  # scripts that only print their final table
        (bench / f"{name}.py").write_text(f"print('method  seconds')\nprint('{name}  {figure}')\n", encoding="utf-8")
    monkeypatch.setattr(module, "BENCH", bench)
    monkeypatch.setattr(module.common, "OUT", tmp_path / "out")
    monkeypatch.setattr(module, "SCRIPTS", [module.Script("alpha", "Alpha", [], marker="method "),
                                            module.Script("beta", "Beta 基准", [], marker="method ")])
    monkeypatch.setattr(module.common, "versions", lambda *a: {"pyarrow": "1"})
    monkeypatch.setattr(module, "venv_versions", lambda: {})
    yield module
    sys.modules.pop("run_all", None)


def _main(module, monkeypatch: pytest.MonkeyPatch, *argv: str) -> None:  # noqa: ANN001
    monkeypatch.setattr(sys, "argv", ["run_all.py", *argv])
    module.main()


def test_only_keeps_the_other_sections_marked(run_all, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    results = tmp_path / "results.md"
    _main(run_all, monkeypatch, "--output", str(results))
    first = results.read_text(encoding="utf-8")
    assert "alpha  11" in first and "beta  22" in first
    (run_all.BENCH / "alpha.py").write_text("print('method  seconds')\nprint('alpha  33')\n", encoding="utf-8")
    _main(run_all, monkeypatch, "--only", "alpha", "--output", str(results))
    second = results.read_text(encoding="utf-8")
    alpha, beta = second.split("## Alpha")[1].split("## Beta 基准")
    assert "alpha  33" in alpha and "Not run by this" not in alpha
    assert "beta  22" in beta and "*Not run by this `make bench`: kept from the previous results.md" in beta
    assert "skipped (--only/--skip); its section kept from the previous results.md, which was generated" in second
    # kept again by a later run: still marked once, naming the run it came from
    _main(run_all, monkeypatch, "--skip", "beta", "--output", str(results))
    third = results.read_text(encoding="utf-8")
    assert third.count("Not run by this") == 1 and "beta  22" in third and "alpha  33" in third


def test_only_without_a_previous_results_md_says_skipped(run_all, tmp_path: Path,  # noqa: ANN001
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    results = tmp_path / "results.md"
    _main(run_all, monkeypatch, "--only", "beta", "--output", str(results))
    text = results.read_text(encoding="utf-8")
    assert "not run: skipped (--only/--skip)" in text.split("## Beta")[0] and "beta  22" in text
