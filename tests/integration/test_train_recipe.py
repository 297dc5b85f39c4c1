"""The official recipe's training mechanics in the loop: fresh posterior latents every step
(data.latents=posterior) and fp16 autocast with a GradScaler (train.precision=fp16), both
resuming bit-exactly; a step with inf gradients is skipped, the scale backs off, training goes on."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from benchmark import checkpoint as ckpt_io
from benchmark.config import ConfigError, compose
from benchmark.distributed import DistInfo
from benchmark.train import apply_gradients, build_data, step_batch, train
from vae_cases import tiny_sd_vae

CPU = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def overrides(tmp: Path, *extra: str) -> list[str]:
    return [f"paths.runs={tmp}/runs", f"paths.cache={tmp}/cache", f"paths.results={tmp}/results",
            f"paths.reports={tmp}/reports", "train.global_batch_size=8", "train.log_every=1",
            "train.progress=false", *extra]


def vae_overrides(tmp: Path) -> list[str]:
    """The digits at 32 px through a tiny random 8x VAE saved as a local diffusers folder (4x4x4 latents)."""
    folder = tmp / "vae"
    if not folder.exists():
        tiny_sd_vae(in_channels=1).save_pretrained(folder)
    return ["autoencoder=sd_vae", f"autoencoder.path={folder}", "data.image_size=32",
            "train.latent_batch_size=600"]


def states(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a: dict, b: dict) -> None:
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=0, msg=f"{part}.{key}")


def resume_pair(tmp: Path, *extra: str, n: int = 3) -> tuple[dict, dict]:
    """(checkpoint of 2n steps straight, checkpoint of n steps resumed to 2n)."""
    straight = train(compose(overrides(tmp, "run_name=straight", f"train.iterations={2 * n}", *extra)))
    first = train(compose(overrides(tmp, "run_name=split", f"train.iterations={n}", *extra)))
    resumed = train(compose(overrides(tmp, "run_name=split", f"train.iterations={2 * n}", f"train.resume={first.checkpoint}",
                                      *extra)))
    return states(straight.checkpoint), states(resumed.checkpoint)


# ---------------------------------------------------------------- posterior latents
def test_each_step_draws_a_fresh_posterior_sample(tmp_path):
    cfg = compose(overrides(tmp_path, *vae_overrides(tmp_path), "data.latents=posterior"))
    _, _, lat = build_data(cfg, CPU)
    n = len(lat)
    assert lat.mode == "posterior" and lat.latents.shape == (n, 4, 4, 4)

    def whole_set_at(step):  # a batch of the whole set, put back in row order
        x, y = step_batch(lat, step, n, cfg.seed, CPU, CPU.device)
        order = torch.argsort(lat.indices_for_step(step, n, seed=cfg.seed))
        return x[order], y[order]

    (x0, y0), (x1, y1) = whole_set_at(0), whole_set_at(1)
    assert torch.equal(y0, lat.labels) and torch.equal(y1, lat.labels)
    assert bool((x0 != x1).all())                      # a new sample of every row at every step
    assert torch.equal(whole_set_at(0)[0], x0)         # fixed by the step's reseeded RNG
    eps0, eps1 = ((x - lat.latents) / lat.std for x in (x0, x1))
    # 115,008 standard normals each: mean and std within 0.02 (about 7 standard errors), uncorrelated
    for eps in (eps0, eps1):
        assert abs(eps.mean().item()) < 0.02 and abs(eps.std().item() - 1) < 0.02
    assert abs(torch.corrcoef(torch.stack([eps0.flatten(), eps1.flatten()]))[0, 1].item()) < 0.02

    # sample_once: every step trains on the same stored sample
    once_cfg = compose(overrides(tmp_path, *vae_overrides(tmp_path)))
    _, _, once = build_data(once_cfg, CPU)
    assert once.std is None
    x, _ = step_batch(once, 1, n, cfg.seed, CPU, CPU.device)
    assert torch.equal(x[torch.argsort(once.indices_for_step(1, n, seed=cfg.seed))], once.latents)


def test_posterior_training_resumes_bit_exactly(tmp_path):
    a, b = resume_pair(tmp_path, *vae_overrides(tmp_path), "data.latents=posterior")
    assert a["step"] == b["step"] == 6
    assert_same_weights(a, b)


def test_pixel_space_posterior_trains_as_sample_once(tmp_path):
    runs = [train(compose(overrides(tmp_path, f"run_name={mode}", "train.iterations=2", f"data.latents={mode}")))
            for mode in ("sample_once", "posterior")]
    checkpoints = [states(r.checkpoint) for r in runs]
    assert_same_weights(*checkpoints)
    assert "scaler" not in checkpoints[0]  # fp32 (auto on a CPU) keeps no scaler state


# ---------------------------------------------------------------- fp16 with a GradScaler
def test_fp16_resumes_bit_exactly_with_the_scaler_state(tmp_path):
    a, b = resume_pair(tmp_path, "train.precision=fp16")
    assert a["step"] == b["step"] == 6
    assert_same_weights(a, b)
    for ckpt in (a, b):
        assert set(ckpt["scaler"]) >= {"scale", "growth_factor", "backoff_factor", "growth_interval",
                                       "_growth_tracker"}
        assert ckpt["scaler"]["scale"] > 0
    assert a["scaler"] == b["scaler"]
    assert a["opt"]["state"][0]["step"] == b["opt"]["state"][0]["step"]
    (straight,) = (tmp_path / "runs").glob("straight-*")
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["grad_scale"] == a["scaler"]["scale"]


def test_inf_gradient_skips_the_step_backs_off_and_training_goes_on(tmp_path):
    extra = ("run_name=bad", "train.iterations=4", "train.ckpt_every=1", "train.precision=fp16")
    cfg = compose(overrides(tmp_path, *extra))
    _, _, lat = build_data(cfg, CPU)
    # One image of step 1's batch turns to inf in the cache: that step's loss and gradients are not finite.
    (path,) = (tmp_path / "cache" / "latents").glob("latents-*.pt")
    data = torch.load(path, weights_only=True)
    bad_row = int(lat.indices_for_step(1, 8, seed=cfg.seed)[0])
    data["latents"][bad_row] = float("inf")
    del lat
    torch.save(data, path)

    train(cfg)
    (run,) = (tmp_path / "runs").glob("bad-*")
    ck = {s: states(ckpt_io.checkpoint_path(run, s)) for s in range(1, 5)}
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    scale = [row["grad_scale"] for row in rows]
    assert math.isnan(rows[1]["loss"]) and all(math.isfinite(rows[i]["loss"]) for i in (0, 2, 3))
    assert scale[1] == scale[0] / 2 and scale[3] == scale[2] == scale[1]        # backed off once, at step 2
    assert ck[2]["scaler"]["scale"] == scale[1]
    # the skipped step left the weights and the optimizer alone ...
    for key in ck[1]["model"]:
        assert torch.equal(ck[2]["model"][key], ck[1]["model"][key]), key
    assert ck[2]["opt"]["state"][0]["step"] == ck[1]["opt"]["state"][0]["step"]
    # ... the EMA still moved toward them, as the official loop calls update_ema after every scaler.step
    decay = float(cfg.train.ema_decay)
    for key in ck[1]["ema"]:
        expected = decay * ck[1]["ema"][key].double() + (1 - decay) * ck[1]["model"][key].double()
        torch.testing.assert_close(ck[2]["ema"][key].double(), expected, rtol=0, atol=1e-6, msg=key)
    # ... and the next steps trained normally
    assert any(not torch.equal(ck[3]["model"][k], ck[2]["model"][k]) for k in ck[2]["model"])
    assert all(torch.isfinite(v).all() for v in ck[4]["model"].values())
    assert ck[4]["opt"]["state"][0]["step"] == ck[1]["opt"]["state"][0]["step"] + 2


def _tiny_regression(seed=0):
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x, y = torch.randn(16, 6, generator=g), torch.randn(16, 3, generator=g)
    return model, lambda m: ((m(x) - y) ** 2).mean() * 50


def test_clipping_sees_unscaled_gradients():
    # Reference: plain fp32 backward, clip to norm 0.5, AdamW step. The scaled path multiplies by
    # 2**16 and divides back exactly (a power of two), so clipping after unscaling gives the same
    # update bit for bit; clipping the scaled gradients would shrink the step 65536-fold.
    ref, loss_fn = _tiny_regression()
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=0.1)
    loss_fn(ref).backward()
    raw = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in ref.parameters()]))
    assert raw > 1.0  # so clipping to 0.5 acts
    torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5)
    ref_opt.step()

    model, loss_fn = _tiny_regression()
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(loss_fn(model)).backward()
    apply_gradients(opt, scaler, model.parameters(), 0.5)
    clipped = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
    assert clipped.item() == pytest.approx(0.5, rel=1e-5)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p, q)
    assert scaler.get_scale() == 2.0 ** 16


def test_precision_rule_lists_fp16(tmp_path):
    with pytest.raises(ConfigError, match="train.precision='fp8' is invalid; expected auto, fp32, tf32, bf16 or fp16"):
        compose(overrides(tmp_path, "train.precision=fp8"))
    with pytest.raises(ConfigError, match="data.latents='fresh' is invalid; expected sample_once .* or posterior"):
        compose(overrides(tmp_path, "data.latents=fresh"))
    with pytest.raises(ConfigError, match="data.latent_dtype='bf16' is invalid; expected float32 or float16"):
        compose(overrides(tmp_path, "data.latent_dtype=bf16"))
