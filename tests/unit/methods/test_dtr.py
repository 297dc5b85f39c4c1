"""DTR: mask closed form, per-sample routing, reference-checkpoint conversion, diagnostics, option checks."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

import methods
from methods.masks import window_mask_table
from reference_models import backbone_state, random_state_dict, ref_dtr_table, ref_forward

torch.set_num_threads(2)


@pytest.mark.parametrize("tasks,units,alpha,beta", [(1000, 384, 4.0, 0.8), (1000, 96, 4.0, 0.8), (1000, 1152, 2.0, 0.5), (50, 36, 4.0, 2 / 3), (7, 10, 1.0, 1.0)])
def test_mask_table_matches_closed_form(tasks, units, alpha, beta):
    torch.testing.assert_close(window_mask_table(tasks, units, alpha, beta), ref_dtr_table(tasks, units, alpha, beta), atol=0, rtol=0)


def test_model_mask_is_timestep_window_and_shared_by_blocks():
    model = methods.build_model("dtr", "debug", input_size=8, in_channels=1, num_classes=0, alpha=2.0, beta=0.5)
    t = torch.tensor([0.0, 500.7, 999.0])
    delta = model.route(t, model.t_embedder(t), False)
    ref = ref_dtr_table(1000, 96, 2.0, 0.5)
    torch.testing.assert_close(1 + delta[:, 0], ref[[0, 500, 999]], atol=0, rtol=0)
    assert all(model.block_mask_delta(i, None, delta) is delta for i in range(model.depth))
    assert "task_masks" not in model.state_dict()  # closed form: DTR has exactly the DiT keys


def _random_dtr(**opts):
    model = methods.build_model("dtr", "debug", input_size=8, in_channels=1, num_classes=3, **opts).eval()
    sd = random_state_dict(model.state_dict(), seed=11)
    sd["pos_embed"] = model.pos_embed.detach().clone()
    model.load_state_dict(sd)
    return model, sd


def test_timestep_is_an_argument_per_sample():
    model, _ = _random_dtr()
    x, y = torch.randn(2, 1, 8, 8), torch.tensor([0, 2])
    t = torch.tensor([3, 980])
    with torch.no_grad():
        both = model(x, t, y)
        one = model(x[:1], t[:1], y[:1])
        two = model(x[1:], t[1:], y[1:])
    torch.testing.assert_close(both, torch.cat([one, two]), atol=1e-5, rtol=1e-5)
    # and the mask really differs between the two timesteps
    assert not torch.equal(model.task_masks[3], model.task_masks[980])


def test_matches_reference_forward():
    model, sd = _random_dtr(beta=0.6)
    ref_sd = dict(sd)
    for i in range(model.depth):
        ref_sd[f"blocks.{i}.routing._unit_mapping"] = ref_dtr_table(1000, 96, 4.0, 0.6)
    x, t, y = torch.randn(3, 1, 8, 8), torch.tensor([0, 250, 999]), torch.tensor([0, 1, 3])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, y), ref_forward(ref_sd, x, t, y, heads=4, routing="dtr_blocks"), atol=1e-5, rtol=1e-5)


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


def test_suite_round_trip_keeps_options(tmp_path):
    model, _ = _random_dtr(alpha=2.5, beta=0.4)
    path = methods.save_checkpoint(tmp_path / "dtr.pt", model, ema=model, step=1)
    loaded = methods.load_checkpoint(path, method="dtr")
    assert loaded.alpha == 2.5 and loaded.beta == 0.4
    torch.testing.assert_close(loaded.task_masks, model.task_masks, atol=0, rtol=0)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([1, 800]), torch.tensor([0, 2])
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, y), model(x, t, y), atol=0, rtol=0)
    with pytest.raises(ValueError, match="is a 'dtr' checkpoint; it cannot be loaded as 'dit'"):
        methods.load_checkpoint(path, method="dit")


def test_diagnostics_writes_mask_image(tmp_path):
    model, _ = _random_dtr()
    out = model.diagnostics(tmp_path)
    assert set(out) == {"dtr_masks"}
    data = open(out["dtr_masks"], "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert methods.build_model("dit", "debug", input_size=8).diagnostics(tmp_path) == {}


@pytest.mark.parametrize(
    "opts,needle",
    [
        ({"beta": 0.0}, "dtr option beta=0.0 is invalid: must be in (0, 1]"),
        ({"beta": 1.5}, "dtr option beta=1.5 is invalid: must be in (0, 1]"),
        ({"alpha": 0}, "dtr option alpha=0.0 is invalid: must be > 0"),
        ({"alpha": -1.0}, "dtr option alpha=-1.0 is invalid"),
        ({"alpha": "big"}, "dtr option alpha='big' must be a number"),
        ({"sharing": 0.8}, "unknown option(s) ['sharing'] for method 'dtr'; valid options: alpha, beta, num_tasks"),
    ],
)
def test_validate_options(opts, needle):
    with pytest.raises(ValueError) as err:
        methods.validate_options("dtr", **opts)
    assert needle in str(err.value)
    assert methods.validate_options("dtr") == {"alpha": 4.0, "beta": 0.8, "num_tasks": 1000}
