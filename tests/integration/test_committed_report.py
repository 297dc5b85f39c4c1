"""The committed report is exactly what the committed records give: rebuilding reports/ from
results/ reproduces every markdown page byte for byte and the same set of figures."""
from __future__ import annotations

import shutil
from pathlib import Path

from PIL import Image

from benchmark.report import build_report

ROOT = Path(__file__).resolve().parents[2]


def _files(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rebuilding_the_report_from_the_committed_records_changes_nothing(tmp_path):
    # The same layout as the repository (links in the pages are relative: ../results/...).
    shutil.copytree(ROOT / "results", tmp_path / "results")
    build_report(tmp_path / "results", tmp_path / "reports")
    committed, rebuilt = _files(ROOT / "reports"), _files(tmp_path / "reports")
    assert sorted(rebuilt) == sorted(committed), "the rebuilt report has other files than the committed one"
    pages = [name for name in committed if name.endswith(".md")]
    assert "README.md" in pages and any(name.startswith("digits") for name in pages)
    for name in pages:
        assert rebuilt[name].read_bytes() == committed[name].read_bytes(), f"reports/{name} differs when rebuilt"
    # Figures: the same images (their bytes depend on the matplotlib build, not on the records).
    for name in committed:
        if name.endswith(".png"):
            with Image.open(committed[name]) as a, Image.open(rebuilt[name]) as b:
                assert a.size == b.size, name
