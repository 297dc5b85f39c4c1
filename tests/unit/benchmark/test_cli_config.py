"""The CLI and Hydra composition, driven as a user drives them (subprocesses) where it matters."""

from __future__ import annotations
from pathlib import Path
import pytest
from benchmark.config import ConfigError, compose, expand_sweep, group_options

ROOT = Path(__file__).resolve().parents[3]


def test_groups_are_tables_of_yaml_files():
    assert {"dit", "dtr", "switch_dit"} <= set(group_options("method"))
    assert set(group_options("size")) == {"debug", "S", "B", "L", "XL"}
    assert {"digits", "imagenet", "ffhq"} <= set(group_options("data"))


def test_default_composition_is_the_embedded_digits_cell():
    cfg = compose([])
    assert cfg.method.name == "dit" and cfg.size.name == "debug" and cfg.data.name == "digits"
    assert cfg.autoencoder.name == "none"
    assert cfg.run_name == "dit-debug-p2-digits8-s0"


def test_every_official_knob_has_a_key():
    cfg = compose([])
    for key in ["diffusion.noise_schedule", "loss_weight.name", "train.global_batch_size", "train.iterations",
                "train.lr", "seed", "data.image_size", "sample.cfg_scale", "sample.steps",
                "sample.num_samples", "train.ckpt_every", "train.ema_decay", "eval.num_fid_samples"]:
        node = cfg
        for part in key.split("."):
            assert part in node, key
            node = node[part]


def test_imagenet_uses_the_vae_and_full_scale_defaults(tmp_path):
    cfg = compose(["data=imagenet", f"data.path={tmp_path}", "size=XL", "recipe=none"])
    assert cfg.autoencoder.name == "sd-vae" and cfg.autoencoder.scale == pytest.approx(0.18215)
    assert cfg.train.iterations == 400000 and cfg.sample.num_samples == 50000
    assert cfg.train.global_batch_size == 256
    cfg = compose(["data=imagenet", f"data.path={tmp_path}", "autoencoder=none", "recipe=none"])
    assert cfg.autoencoder.name == "none"


def test_sweep_expansion_is_the_cartesian_product():
    cells = expand_sweep(["method=dit,dtr", "size=S,B", "seed=1"])
    assert len(cells) == 4
    assert ["method=dit", "size=S", "seed=1"] in cells and ["method=dtr", "size=B", "seed=1"] in cells


@pytest.mark.parametrize("overrides, needle", [
    (["method=foo"], "unknown method 'foo'; valid: dit"),
    (["size=XXL"], "unknown size 'XXL'"),
    (["data=cifar"], "unknown data 'cifar'"),
    (["data=imagenet"], "data.path is required for data=imagenet"),
    (["data=imagenet", "data.path=/does/not/exist"], "data.path=/does/not/exist does not exist"),
    (["data.image_size=10", "model.patch_size=4"],
     "model.patch_size=4 does not divide the 10x10 input of pixel space (autoencoder=none) (data.image_size=10); "
     "choose a patch size that divides 10: 1, 2, 5, 10"),
    (["sample.cfg_scale=0.5"], "sample.cfg_scale=0.5 is below 1"),
    (["diffusion.noise_schedule=quadratic"], "diffusion.noise_schedule='quadratic' is invalid"),
    (["sample.sampler=euler"], "sample.sampler='euler' is invalid"),
    (["train.iterations=0"], "train.iterations=0 is invalid"),
])
def test_bad_config_values_fail_naming_the_key(overrides, needle):
    with pytest.raises(ConfigError, match=None) as err:
        compose(overrides)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_latent_resolution_must_divide_by_8_times_patch(tmp_path):
    with pytest.raises(ConfigError, match="data.image_size=260 is not divisible by the autoencoder's downsampling 8"):
        compose(["data=imagenet", f"data.path={tmp_path}", "data.image_size=260", "recipe=none"])
    with pytest.raises(ConfigError, match=r"model.patch_size=8 does not divide the 36x36 input of latent space "
                                          r"\(8x autoencoder\).*divides 36: 1, 2, 3, 4, 6, 9, 12, 18, 36"):
        compose(["data=imagenet", f"data.path={tmp_path}", "data.image_size=288", "model.patch_size=8",
                 "recipe=none"])
