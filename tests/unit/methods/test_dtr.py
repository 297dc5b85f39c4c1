"""DTR: mask closed form, per-sample routing, suite checkpoints, diagnostics, option checks
(official checkpoints: tests/integration/test_dtr_official_checkpoints.py)."""

from __future__ import annotations
import pytest
import torch
import methods
from methods.masks import window_mask_table
from reference_models import random_state_dict, ref_dtr_table, ref_forward

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
