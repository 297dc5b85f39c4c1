"""The import contract (.importlinter): benchmark -> methods -> kernels, no cycle inside the harness.

CI runs ``lint-imports`` on the tree; here it runs on a copy, as it is and with a planted back-edge
and a planted cycle, so the contract is shown to catch both.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = shutil.which("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess:
    assert LINT is not None, "import-linter is not installed: pip install -e '.[test]'"
    return subprocess.run([LINT, "--no-cache"], cwd=tree, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=str(tree)))


@pytest.fixture
def tree(tmp_path):
    for name in ("benchmark", "methods", "kernels", "conf"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / ".importlinter", tmp_path / ".importlinter")
    return tmp_path


def test_the_tree_keeps_the_contract(tree):
    out = lint(tree)
    assert out.returncode == 0, out.stdout[-2000:]
    assert "Contracts: 2 kept, 0 broken" in out.stdout


def test_a_back_edge_breaks_it(tree):
    (tree / "kernels" / "planted.py").write_text("import methods.registry\n")
    out = lint(tree)
    assert out.returncode != 0 and "kernels.planted -> methods.registry" in out.stdout, out.stdout[-2000:]


def test_a_cycle_in_the_harness_breaks_it(tree):
    (tree / "benchmark" / "plots.py").write_text((tree / "benchmark" / "plots.py").read_text()
                                                 + "\nfrom benchmark import pipeline  # noqa\n")
    out = lint(tree)
    assert out.returncode != 0 and "No import cycle inside the harness BROKEN" in out.stdout, out.stdout[-2000:]
