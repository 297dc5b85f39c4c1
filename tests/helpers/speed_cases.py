"""Shared cases of the report's speed-page tests and the MoE-mask and Switch-DiT model tests."""
import shutil
from pathlib import Path

import pytest

import methods
from moe_cases import grads_of, naive_moe
from reference_models import random_state_dict

PUBLISHED = Path(__file__).resolve().parents[2] / "results" / "published"


@pytest.fixture
def results_dir(tmp_path):
    res = tmp_path / "results"
    shutil.copytree(PUBLISHED, res / "published")
    return res


def kernel_json():
    return {"hardware": {"name": "H100", "peak_tflops": 989}, "git_commit": "feedbeef", "dtype": "bfloat16",
            "results": [{"provider": "triton", "shape": {"N": 8, "L": 256, "D": 1152}, "direction": "fwd",
                         "median_ms": 0.123, "tflops": 250.5, "gbps": 900.0, "pct_peak_flops": 25.3,
                         "peak_mem_mb": 12.0},
                        {"provider": "torch", "shape": {"N": 8, "L": 256, "D": 1152}, "direction": "fwd",
                         "median_ms": 0.5}],  # missing fields must not break the page
            "providers_ran": ["triton", "torch"], "providers_skipped": {"scattermoe": "not installed"}}


def moe_mask_reference(x, w, b, idx, g, gy):
    """x·(1 + moe(x)) and its gradients in float64, from the per-sample loop."""
    f64 = [t.double() for t in (x, w, b)] + [idx, g.double()]
    return grads_of(lambda x, w, b, i, g: x * (1 + naive_moe(x, w, b, i, g)), *f64, gy.double())


def random_switch(seed=21, **opts):
    """A debug-size Switch-DiT with random weights (8x8, 1 channel, 3 classes) and its state dict."""
    model = methods.build_model("switch_dit", "debug", input_size=8, in_channels=1, num_classes=3, **opts).eval()
    sd = random_state_dict(model.state_dict(), seed=seed)
    sd["pos_embed"] = model.pos_embed.detach().clone()
    model.load_state_dict(sd)
    return model, sd
