"""Identity: which keys name a result (pinned), the hashes they give, and the recipes it records.

What train, run and submit do with it: tests/integration/test_cell_lifecycle.py."""
from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest

from benchmark import identity
from benchmark.config import ConfigError, compose
from omegaconf import OmegaConf

# Every leaf that never enters an identity. Adding a key to the config puts it in the identity
# unless it is listed in NOT_IDENTITY; this list makes either change a deliberate one.
EXCLUDED = {
    "paths.runs", "paths.results", "paths.reports", "paths.cache", "run_name", "overwrite", "recipe",
    "recipe_requires",
    "data.path", "autoencoder.path", "method.options.moe_backend",
    "train.progress", "train.log_every", "train.ckpt_every", "train.resume", "train.latent_batch_size",
    "train.compile", "train.grad_checkpointing", "sample.out", "sample.ckpt",
    "eval.samples", "eval.batch_size", "eval.metrics", "eval.bootstrap_resamples", "eval.bootstrap_seed",
    "preflight.enabled", "preflight.warn_eta_hours", "preflight.timed_steps", "preflight.max_timing_s",
    "preflight.device_memory_gb",
}
MUST_TRAIN = {"method.name", "method.options.num_experts", "method.options.top_k", "method.options.w_jsd",
              "size.name", "model.patch_size", "model.class_dropout_prob", "data.name", "data.image_size",
              "data.flip", "autoencoder.name", "autoencoder.variant", "diffusion.noise_schedule",
              "loss_weight.name", "train.iterations", "train.global_batch_size", "train.lr", "train.ema_decay",
              "train.precision", "train.adam_betas", "seed"}
MUST_EVAL = {"sample.sampler", "sample.steps", "sample.cfg_scale", "sample.guidance_channels", "sample.num_samples",
             "sample.per_proc_batch_size", "eval.num_fid_samples", "eval.reference", "eval.inception_weights",
             "eval.reference_max_images"}


def leaves(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from leaves(v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix


def covered(spec: dict, prefix: str = "") -> set[str]:
    return set(leaves(spec, prefix))


@pytest.mark.parametrize("overrides", [["method=switch_dit", "launcher=slurm"],
                                       ["method=dtr", "data=imagenet", f"data.path={Path(__file__).parent}",
                                        "loss_weight=min_snr", "eval.reference=/refs/ref.npz"]])
def test_every_key_is_in_an_identity_or_deliberately_out(overrides):
    cfg = compose(overrides)
    c = OmegaConf.to_container(cfg, resolve=True)
    keys = {k for k in leaves({s: v for s, v in c.items() if s not in ("launcher",)})}
    train = covered(identity.train_spec(c))
    sample = covered(identity.sample_spec(c)) - covered({"checkpoint": identity.checkpoint_ref(c)})
    evals = {f"eval.{k}" for k in ("num_fid_samples", "reference", "reference_max_images", "inception_weights")}
    included = train | sample | evals
    assert MUST_TRAIN & keys <= train
    assert MUST_EVAL & keys <= sample | evals
    out = {k for k in keys if k not in included}
    assert out == EXCLUDED & keys, sorted(out ^ (EXCLUDED & keys))
    sections = {k.split(".")[0] for k in EXCLUDED}
    assert identity.NOT_IDENTITY >= {k for k in EXCLUDED if k.split(".")[0] not in ("paths", "preflight")} | \
        (sections & {"paths", "preflight"})


NEUTRAL = ["train.log_every=7", "train.ckpt_every=3", "paths.runs=/elsewhere", "train.progress=false",
           "eval.batch_size=8", "eval.metrics=[fid]", "run_name=x", "launcher=slurm", "train.compile=true"]
TRAINING = ["train.iterations=60", "train.lr=0.002", "seed=1", "train.global_batch_size=32", "method=dtr",
            "diffusion.noise_schedule=cosine", "train.ema_decay=0.99", "model.patch_size=4"]
EVALUATION = ["sample.num_samples=64", "sample.steps=10", "sample.cfg_scale=2.0", "sample.guidance_channels=1",
              "eval.reference_max_images=200", "sample.sampler=ddpm", "sample.per_proc_batch_size=100"]


@functools.lru_cache(maxsize=None)  # composing is the slow part; the same overrides give the same hashes
def ids(*overrides: str) -> tuple[str, str, str]:
    i = identity.cell_identity(compose(list(overrides)))
    return identity.spec_hash(i.train), i.sample_hash, i.eval_hash


def test_what_cannot_change_a_number_changes_no_hash():
    base = ids()
    for override in NEUTRAL:
        assert ids(override) == base, override
    assert ids("method=switch_dit", "method.options.moe_backend=torch") == ids("method=switch_dit")
    assert ids("method=dtr", "method.options.alpha=4") == ids("method=dtr", "method.options.alpha=4.0")


@pytest.mark.parametrize("override", TRAINING)
def test_a_training_key_changes_the_run(override):
    (train, sample, evals), base = ids(override), ids()
    assert train != base[0] and evals != base[2]


@pytest.mark.parametrize("override", EVALUATION)
def test_an_evaluation_key_changes_the_record_not_the_run(override):
    (train, sample, evals), base = ids(override), ids()
    assert train == base[0] and evals != base[2]


def test_names_stay_readable():
    i = identity.cell_identity(compose(["method=switch_dit", "seed=3"]))
    assert i.run_id == f"switch_dit-debug-p2-digits8-s3-{identity.spec_hash(i.train)}"
    assert i.eval_id == f"0001500-ddim50-cfg1.5-n300-{i.eval_hash}"
    assert i.sample_id == f"0001500-ddim50-cfg1.5-n300-{i.sample_hash}"


# ---------------------------------------------------------------- recipes (the published protocols)

IMAGENET = ["data=imagenet", f"data.path={Path(__file__).parent}", "eval.reference=/refs/VIRTUAL_imagenet256_labeled.npz"]
OFFICIAL = {  # what each preset must compose to: the code behind each published table
    "switch_dit_paper": {"diffusion.noise_schedule": "cosine", "sample.guidance_channels": None,
                         "train.precision": "fp16", "sample.precision": "fp16", "data.latents": "posterior",
                         "train.compile": True, "train.lr": 1e-4, "train.global_batch_size": 256,
                         "train.iterations": 400000, "train.ema_decay": 0.9999,
                         "sample.sampler": "ddpm", "sample.steps": 250, "sample.cfg_scale": 1.5,
                         "eval.num_fid_samples": 50000, "autoencoder.variant": "ema", "data.flip": True},
    "dit_paper": {"diffusion.noise_schedule": "linear", "sample.guidance_channels": 3, "train.precision": "tf32",
                  "sample.precision": "tf32", "data.latents": "posterior", "train.compile": False,
                  "train.lr": 1e-4, "train.global_batch_size": 256, "train.iterations": 400000,
                  "train.ema_decay": 0.9999, "sample.sampler": "ddpm", "sample.steps": 250, "sample.cfg_scale": 1.5,
                  "eval.num_fid_samples": 50000, "autoencoder.variant": "ema", "data.flip": True},
}


@pytest.mark.parametrize("recipe", sorted(OFFICIAL))
def test_each_recipe_composes_to_the_official_settings(recipe):
    cfg = compose([*IMAGENET, f"recipe={recipe}"])
    assert cfg.recipe == recipe
    for key, want in OFFICIAL[recipe].items():
        if want is not None or key.startswith("sample."):
            assert OmegaConf.select(cfg, key) == want, key
    uw = compose([*IMAGENET, f"recipe={recipe}", "loss_weight=uw"])
    assert uw.loss_weight.lr == 0.025                          # the official uncertainty weights' learning rate
    other = compose([*IMAGENET, f"recipe={recipe}", "sample.guidance_channels=1"])  # one override away
    assert other.sample.guidance_channels == 1


def test_imagenet_runs_under_the_papers_recipe_unless_told_otherwise():
    assert compose(IMAGENET).recipe == "switch_dit_paper"
    assert compose([*IMAGENET, "recipe=none"]).recipe is None
    assert compose([]).recipe is None                           # the embedded digits keep their own budget
    # The recipe's values are the training identity; its name is only a label.
    a = identity.cell_identity(compose(IMAGENET))
    b = identity.cell_identity(compose([*IMAGENET, "recipe=none"]))
    assert a.run_id != b.run_id
    with pytest.raises(ConfigError, match=r"eval.reference is required by recipe=switch_dit_paper .*VIRTUAL_imagenet256"):
        compose(IMAGENET[:2])


def test_only_the_paper_recipe_matches_the_published_protocol(tmp_path):
    from benchmark import runs_report
    from record_factory import make_record

    protocol = json.loads((Path(__file__).resolve().parents[3] / "results" / "published" /
                           "imagenet256_switch_dit.protocol.json").read_text())["match"]
    reference = tmp_path / "VIRTUAL_imagenet256_labeled.npz"
    reference.write_bytes(b"stand-in")                     # the reference is named by its file name and size
    cell = [*IMAGENET[:2], f"eval.reference={reference}", "method=switch_dit", "size=B"]
    assert runs_report.matches(make_record(*cell), protocol)
    for other in (["recipe=dit_paper"], ["sample.guidance_channels=3"], ["train.precision=bf16"],
                  ["data.latents=sample_once"], ["train.iterations=100000"], ["sample.num_samples=10000"]):
        assert not runs_report.matches(make_record(*cell, *other), protocol), other
