"""Preflight: parameters, memory and FLOPs against independent counts; refusals and warnings in one line."""

from __future__ import annotations
import io
import pytest
import torch
import methods
from benchmark import preflight
from benchmark.compute import forward_flops_per_image
from benchmark.config import ConfigError, compose


def test_counts_match_the_real_model():
    cfg = compose(["method=switch_dit", "train.global_batch_size=16", "preflight.timed_steps=0"])
    est = preflight.estimate(cfg, device=torch.device("cpu"), time_steps=False)
    torch.manual_seed(0)
    real = methods.build_model("switch_dit", "debug", input_size=8, in_channels=1, num_classes=10)
    assert est.params == sum(p.numel() for p in real.parameters())
    assert est.state_bytes == 20 * est.params                     # fp32 weights, grads, Adam m and v, EMA
    assert est.forward_flops == forward_flops_per_image(real)      # meta count == the count on real tensors
    double = preflight.estimate(compose(["method=switch_dit", "train.global_batch_size=32"]),
                                device=torch.device("cpu"), time_steps=False)
    assert double.activation_bytes == pytest.approx(2 * est.activation_bytes, rel=0.05)  # linear in the batch
    # The saved-tensor count agrees with autograd's own graph on real tensors at batch 16.
    x = torch.randn(16, 1, 8, 8)
    saved = {}
    weights = {p.data_ptr() for p in real.parameters()}

    def keep(t):
        if t.untyped_storage().data_ptr() not in weights:
            saved.setdefault(id(t), t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        real.train()
        real(x, torch.randint(0, 1000, (16,)), torch.zeros(16, dtype=torch.long))  # training: mixed timesteps
    real_bytes = sum(t.numel() * t.element_size() for t in saved.values())
    # Host attention kernels keep their own extras (e.g. log-sum-exp rows): close, not equal.
    assert est.activation_bytes == pytest.approx(real_bytes, rel=0.1)


def test_a_size_meant_for_imagenet_on_the_digits_is_refused_saying_what_to_type():
    with pytest.raises(ConfigError, match=r"size=XL .* use size=debug here, or train it .*data=imagenet data.path="):
        preflight.check(compose(["method=switch_dit", "size=XL"]))
    assert preflight.check(compose(["size=XL", "preflight.enabled=false"])) is None


def test_too_little_memory_is_refused_with_the_numbers():
    cfg = compose(["method=dit"])
    with pytest.raises(ConfigError, match=r"dit-debug needs ~0\.\d+ GB per cpu device .* but the device has 0\.0 GB"):
        preflight.check(cfg, memory_bytes=1024, time_steps=False, out=io.StringIO())


def test_a_long_eta_warns(capsys):
    cfg = compose(["method=dit", "preflight.warn_eta_hours=0.0001"])
    out = io.StringIO()
    est = preflight.check(cfg, out=out)
    assert "3 timed steps" in est.sec_source and est.eta_s == pytest.approx(est.sec_per_step * 1500)
    assert out.getvalue().startswith("preflight: dit-debug: 0.7M parameters")
    err = capsys.readouterr().err
    assert err.startswith("warning: dit-debug is expected to train for") and "warn_eta_hours=0.0001" in err
