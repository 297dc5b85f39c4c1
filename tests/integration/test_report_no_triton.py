"""The speed pages of the report build in a process where Triton cannot be imported."""

import json
from pathlib import Path

from speed_cases import kernel_json, results_dir  # noqa: F401  (results_dir is a fixture)

REPO = Path(__file__).resolve().parents[2]
PUBLISHED = REPO / "results" / "published"


def test_speed_pages_need_no_triton(results_dir, tmp_path):
    """Writing markdown must not import Triton: the report builds with it blocked."""
    import os
    import subprocess
    import sys

    (results_dir / "kernels" / "cpu").mkdir(parents=True)
    (results_dir / "kernels" / "cpu" / "c.json").write_text(json.dumps(
        {**kernel_json(), "device_kind": "cpu", "shapes": [{"name": "s"}]}))
    (results_dir / "kernels" / "g.json").write_text(json.dumps(
        {**kernel_json(), "hardware": {"device_type": "cuda"}, "shapes": [{"name": "s", "d": 1, "seq": 1, "n": 1, "k": 1}],
         "results": [{"provider": "triton_fused", "shape": "s", "direction": "fwd+bwd", "median_ms": 1.0}]}))
    code = f"""
import sys
sys.modules["triton"] = None  # as if not installed: find_spec gives None, import raises
from benchmark import report
report.build_report({str(results_dir)!r}, {str(tmp_path / "out")!r})
assert sys.modules["triton"] is None
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    kern = (tmp_path / "out" / "kernels.md").read_text()
    assert kern.index("### g.json") < kern.index("### cpu/c.json")
    assert "2 file(s)" in (tmp_path / "out" / "README.md").read_text()
