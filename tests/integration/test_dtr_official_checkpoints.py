"""DTR checkpoints written by the official DTR and Switch-DiT code bases (a full DiT-S/2 state, saved to
and loaded from disk): converted, checked against the float64 reference forward, refused when a mask
differs from the closed form."""

from __future__ import annotations
import pytest
import torch
from omegaconf import OmegaConf
import methods
from reference_models import backbone_state, ref_dtr_table, ref_forward

torch.set_num_threads(2)


# ------------------------------------------------------------- reference train.py checkpoints
def _dtr_repo_config(beta=0.8):
    """The Hydra config of the DTR code base as its train.py saves it (latent_size filled in at run time)."""
    cfg = OmegaConf.create({
        "general": {"image_size": 64, "iterations": 400000, "schedule_name": "cosine", "loss_weight_type": "constant"},
        "optim": {"lr": 1e-4, "weight_decay": 0.0},
        "data": {"name": "ImageNet", "num_classes": 1000, "is_uncond": False},
        "models": {"name": "DiT-S/2", "param": {"num_classes": "${data.num_classes}", "latent_size": None},
                   "routing": {"sharing_ratio": beta, "taskcount": 1000, "init_method": "DTR"}},
        "logs": {"results_dir": "results/${data.name}/${general.schedule_name}_scheduling/${models.routing.init_method}"},
    })
    cfg.models.param.latent_size = cfg.general.image_size // 8
    OmegaConf.set_struct(cfg, True)
    return cfg


def _switch_repo_dtr_config(alpha=3.0, beta=0.7):
    cfg = OmegaConf.create({
        "general": {"image_size": 64},
        "data": {"name": "ImageNet", "num_classes": 1000, "is_uncond": False},
        "models": {"name": "DiT-S/2", "param": {"num_classes": "${data.num_classes}", "latent_size": None}},
        "routing": {"name": "DTR", "param": {"alpha": alpha, "beta": beta, "taskcount": 1000}},
    })
    cfg.models.param.latent_size = cfg.general.image_size // 8
    return cfg


def _reference_state(table_key, alpha, beta):
    sd = backbone_state("S", input_size=8)
    for i in range(12):
        sd[table_key.format(i)] = ref_dtr_table(1000, 384, alpha, beta)
    return sd


@pytest.mark.parametrize("layout", ["dtr_blocks", "dtr_routers"])
def test_reference_checkpoint_round_trip(tmp_path, layout):
    if layout == "dtr_blocks":
        cfg, alpha, beta, key = _dtr_repo_config(0.8), 4.0, 0.8, "blocks.{}.routing._unit_mapping"
    else:
        cfg, alpha, beta, key = _switch_repo_dtr_config(3.0, 0.7), 3.0, 0.7, "routers.{}._unit_mapping"
    ema = _reference_state(key, alpha, beta)
    # The live weights differ in a few tensors only; the rest share storage (saved once, keeps the file small).
    live = dict(ema)
    for name in ("final_layer.linear.weight", "blocks.3.mlp.fc1.weight"):
        live[name] = ema[name] * 1.5
    path = tmp_path / "0050000.pt"
    torch.save({"model": live, "ema": ema, "opt": {"state": {}, "param_groups": []}, "config": cfg}, path)

    model = methods.load_checkpoint(path)
    assert model.build_kwargs["method"] == "dtr" and model.build_kwargs["size"] == "S"
    assert model.build_kwargs["method_options"]["alpha"] == alpha and model.build_kwargs["method_options"]["beta"] == beta
    x, t, y = torch.randn(3, 4, 8, 8), torch.tensor([0, 613, 999]), torch.tensor([5, 999, 1000])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), ref_forward(ema, x, t, y, heads=6, routing=layout), atol=1e-5, rtol=0)
    live_model = methods.load_checkpoint(path, use_ema=False)
    torch.testing.assert_close(live_model.blocks[3].mlp.fc1.weight, live["blocks.3.mlp.fc1.weight"], atol=0, rtol=0)
    with pytest.raises(ValueError, match="is a 'dtr' checkpoint; it cannot be loaded as 'dit'"):
        methods.load_checkpoint(path, method="dit")


def test_reference_checkpoint_with_other_mask_is_refused(tmp_path):
    sd = _reference_state("blocks.{}.routing._unit_mapping", 4.0, 0.8)
    sd["blocks.5.routing._unit_mapping"] = ref_dtr_table(1000, 384, 4.0, 0.5)
    path = tmp_path / "ck.pt"
    torch.save({"model": sd, "ema": sd, "opt": {}, "config": _dtr_repo_config(0.8)}, path)
    with pytest.raises(ValueError, match=r"blocks.5.routing._unit_mapping differs from the closed-form DTR mask"):
        methods.load_checkpoint(path)
    cfg = _dtr_repo_config(0.8)
    cfg.models.routing.init_method = "random"
    torch.save({"model": sd, "ema": sd, "opt": {}, "config": cfg}, path)
    with pytest.raises(ValueError, match="init_method='random'"):
        methods.load_checkpoint(path)
