"""Switch-DiT checkpoints written by the official code base (a full DiT-S/2 state, saved to and loaded
from disk): converted, checked against the float64 reference forward, refused when their prior differs."""

from __future__ import annotations
import pytest
import torch
from omegaconf import OmegaConf
import methods
from reference_models import backbone_state, ref_dtr_table, ref_forward

torch.set_num_threads(2)


# ------------------------------------------------------------------ reference checkpoints
def _switch_repo_config(num_experts=3, k=2, w_jsd=1):
    cfg = OmegaConf.create({
        "general": {"image_size": 64, "iterations": 400000, "schedule_name": "cosine", "loss_weight_type": "constant"},
        "optim": {"lr": 1e-4, "weight_decay": 0.0},
        "data": {"name": "ImageNet", "num_classes": 1000, "is_uncond": False},
        "models": {"name": "DiT-S/2", "param": {"num_classes": "${data.num_classes}", "latent_size": None}},
        "routing": {"name": "DMoE", "taskcount": 1000, "w_JSD": w_jsd, "param": {"num_experts": num_experts, "k": k}},
        "logs": {"results_dir": "results/${data.name}/${general.schedule_name}_scheduling/${routing.name}_${general.loss_weight_type}"},
    })
    cfg.models.param.latent_size = cfg.general.image_size // 8  # as their train.py does before saving
    OmegaConf.set_struct(cfg, True)
    return cfg


def _reference_switch_state(num_experts=3, k=2, seed=5):
    sd = backbone_state("S", input_size=8)
    gen = torch.Generator().manual_seed(seed)
    for i in range(12):
        sd[f"routers.{i}.f_gate.1.weight"] = torch.randn(num_experts, 384, generator=gen) / 384**0.5 * 3
        sd[f"routers.{i}.f_gate.1.bias"] = torch.randn(num_experts, generator=gen) * 0.5
        sd[f"routers.{i}.experts.w"] = torch.randn(num_experts, 384, 384, generator=gen) / 384**0.5 * 0.3
        sd[f"routers.{i}.experts.b"] = torch.randn(num_experts, 384, generator=gen) * 0.1
    sd["prior._unit_mapping"] = ref_dtr_table(1000, 12 * num_experts, 4.0, k / num_experts)
    sd["full_time"] = torch.arange(0, 1000)
    return sd


def test_reference_checkpoint_round_trip(tmp_path):
    ema = _reference_switch_state()
    live = dict(ema)
    live["routers.2.experts.w"] = ema["routers.2.experts.w"] * -1.0
    path = tmp_path / "0400000.pt"
    torch.save({"model": live, "ema": ema, "opt": {"state": {}, "param_groups": []}, "config": _switch_repo_config()}, path)

    model = methods.load_checkpoint(path)
    opts = model.build_kwargs["method_options"]
    assert model.build_kwargs["method"] == "switch_dit" and (opts["num_experts"], opts["top_k"], opts["w_jsd"]) == (3, 2, 1.0)
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([0, 377, 999]), torch.tensor([7, 999, 1000])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), ref_forward(ema, x, t, y, heads=6, routing="dmoe", top_k=2), atol=1e-5, rtol=0)
    live_model = methods.load_checkpoint(path, use_ema=False)  # the live weights, converted the same way
    torch.testing.assert_close(live_model.routers[2].experts.weight, live["routers.2.experts.w"], atol=0, rtol=0)
    with pytest.raises(ValueError, match="is a 'switch_dit' checkpoint; it cannot be loaded as 'dtr'"):
        methods.load_checkpoint(path, method="dtr")

    # a bare reference state dict loads too, given method/size and its options
    bare = tmp_path / "ema_only.pt"
    torch.save(ema, bare)
    with pytest.raises(ValueError, match="is a 'switch_dit' checkpoint; it cannot be loaded as 'dit'"):
        methods.load_checkpoint(bare, method="dit", size="S")
    again = methods.load_checkpoint(bare, method="switch_dit", size="S", top_k=2)
    with torch.no_grad():
        torch.testing.assert_close(again(x, t, y), model(x, t, y), atol=0, rtol=0)


def test_reference_checkpoint_same_timestep_batch(tmp_path):
    # The sampling-time fast path (one timestep for the whole batch) against the reference forward.
    ema = _reference_switch_state(seed=8)
    path = tmp_path / "ck.pt"
    torch.save({"model": ema, "ema": ema, "opt": {}, "config": _switch_repo_config()}, path)
    model = methods.load_checkpoint(path)
    x, y = torch.randn(4, 4, 8, 8), torch.tensor([3, 999, 1000, 12])
    for step in (0, 500, 999):
        t = torch.full((4,), step)
        with torch.no_grad():
            want = ref_forward(ema, x, t, y, heads=6, routing="dmoe", top_k=2)
            torch.testing.assert_close(model(x, t, y), want, atol=1e-5, rtol=0)
            torch.testing.assert_close(model(x, step, y), want, atol=1e-5, rtol=0)  # a scalar timestep too


def test_reference_checkpoint_with_wrong_prior_is_refused(tmp_path):
    sd = _reference_switch_state()
    sd["prior._unit_mapping"] = ref_dtr_table(1000, 36, 2.0, 2 / 3)
    path = tmp_path / "ck.pt"
    torch.save({"model": sd, "ema": sd, "opt": {}, "config": _switch_repo_config()}, path)
    with pytest.raises(ValueError, match=r"prior._unit_mapping differs from the closed-form Switch-DiT prior"):
        methods.load_checkpoint(path)
