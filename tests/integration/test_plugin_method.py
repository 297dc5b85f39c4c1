"""A fourth method from outside the package: one file registers it, one line of configuration
(``BENCHMARK_PLUGINS``) loads it, and it trains, samples, is evaluated and reported like the
built-in three (no file of the suite names it)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The whole plugin: a DiT whose blocks see their input scaled by a constant channel gain.
TOY = '''
import torch

from methods import MethodSpec, register_method
from methods.dit import DiT
from methods.options import Option


class GainDiT(DiT):
    OPTIONS = {"gain": Option(0.5, float, lambda v: 0 < v <= 1, "in (0, 1]", "input gain of every block")}

    def __init__(self, *, gain: float = 0.5, **backbone):
        super().__init__(**backbone)
        self.gain = gain

    def block_mask_delta(self, index, h, routing):
        return torch.full((1, 1, self.hidden_size), self.gain - 1.0, device=h.device, dtype=h.dtype)


register_method(MethodSpec("toy_gain", "Toy-Gain", GainDiT))
'''

TINY = ["train.iterations=4", "train.global_batch_size=8", "train.ckpt_every=4", "train.progress=false",
        "sample.num_samples=8", "sample.per_proc_batch_size=8", "sample.steps=2", "eval.reference_max_images=16",
        "eval.metrics=[fid]", "eval.bootstrap_resamples=10", "preflight.timed_steps=0"]


def _cli(tmp: Path, *args: str, plugin: Path | None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("BENCHMARK_PLUGINS", None)
    if plugin is not None:
        env["BENCHMARK_PLUGINS"] = str(plugin)
    paths = [f"paths.runs={tmp}/runs", f"paths.cache={tmp}/cache", f"paths.results={tmp}/results",
             f"paths.reports={tmp}/reports"]
    return subprocess.run([sys.executable, "-m", "benchmark", *args, *paths], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=600)


def test_a_plugin_method_trains_samples_and_is_reported(tmp_path):
    plugin = tmp_path / "toy_gain.py"
    plugin.write_text(TOY, encoding="utf-8")

    # Without the plugin the name is unknown, and the error lists what is valid.
    missing = _cli(tmp_path, "run", "method=toy_gain", *TINY, plugin=None)
    assert missing.returncode != 0
    assert "unknown method 'toy_gain'" in missing.stderr and "valid: dit, dtr, switch_dit" in missing.stderr

    # Its options come from its OPTIONS table: the default shows in the composed config, checks apply.
    shown = _cli(tmp_path, "train", "method=toy_gain", "--cfg", "job", plugin=plugin)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "name: toy_gain" in shown.stdout and "gain: 0.5" in shown.stdout
    bad = _cli(tmp_path, "train", "method=toy_gain", "method.options.gain=2", *TINY, plugin=plugin)
    assert bad.returncode != 0 and "gain=2.0 is invalid: must be in (0, 1]" in bad.stderr

    done = _cli(tmp_path, "run", "method=toy_gain", "method.options.gain=0.75", *TINY, plugin=plugin)
    assert done.returncode == 0, done.stderr[-3000:]
    records = list((tmp_path / "results" / "runs").glob("toy_gain-*/*.json"))
    assert len(records) == 1
    record = json.loads(records[0].read_text())
    assert record["method"] == "toy_gain" and record["iterations"] == 4
    assert record["training"]["build"]["method_options"] == {"gain": 0.75}
    assert record["identity"]["train"]["method"]["options"] == {"gain": 0.75}
    report = (tmp_path / "reports" / "digits-8.md").read_text()
    assert "Toy-Gain-debug" in report

