"""Sampling N images from a checkpoint, DDP-parallel, as ADM's and DiT's sample scripts do.

Images are cut into batches of ``sample.per_proc_batch_size``; batch b draws its
labels and noise from a generator seeded with (seed, b) and is handled by rank
b mod world_size, so the images do not depend on how many ranks ran and a
restarted job skips the batches whose PNGs are already on disk. Rank 0 then packs
``samples.npz`` (``arr_0``: uint8 NHWC RGB, ``arr_1``: labels) for ADM's evaluator.
"""
from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image

import methods
from benchmark import cell
from methods.atomic import atomic_write, atomic_write_json
from benchmark.distributed import barrier, init_distributed
from benchmark.provenance import file_sha256

log = logging.getLogger(__name__)


@dataclass
class SampleResult:
    folder: Path
    npz: Path
    num_samples: int
    wall_time_s: float
    sampler: str
    steps: int
    cfg_scale: float


def respacing(sampler: str, steps: int) -> str:
    """The respacing string of benchmark.diffusion: '250' for DDPM, 'ddim50' for DDIM."""
    return {"ddpm": str(steps), "ddim": f"ddim{steps}"}[sampler]


def _model_build_overrides(cfg: DictConfig) -> dict:
    """Build arguments used when the checkpoint does not carry its own (published DiT weights)."""
    from benchmark.cell import model_build
    from benchmark.config import latent_geometry

    down, side = latent_geometry(cfg)
    kw = model_build(cfg, in_channels=4, input_size=side, num_classes=cfg.data.num_classes)
    # method and size are load_checkpoint's own arguments; label dropout is what the weights were trained with
    for key in ("method", "size", "class_dropout_prob") + (() if down == 8 else ("in_channels",)):
        kw.pop(key)
    return kw


def load_model(cfg: DictConfig, path: Path, device: torch.device) -> torch.nn.Module:
    model = methods.load_checkpoint(path, method=cfg.method.name, size=cfg.size.name,
                                    use_ema=cfg.sample.use_ema, **_model_build_overrides(cfg))
    return model.to(device).eval()


def _atomic_png(img: np.ndarray, path: Path) -> None:
    mode = "L" if img.shape[-1] == 1 else "RGB"
    pil = Image.fromarray(img.squeeze(-1) if mode == "L" else img, mode=mode)
    atomic_write(path, lambda tmp: pil.save(tmp, format="PNG"))


def _batch_done(folder: Path, start: int, stop: int) -> bool:
    return all((folder / f"{i:06d}.png").exists() for i in range(start, stop))


MANIFEST = ".manifest.json"


def sampling_manifest(cfg: DictConfig, ckpt: Path) -> dict:
    """What a folder's samples are drawn from: the checkpoint's bytes, the sampling and diffusion
    settings, the seed and the data (whose autoencoder decodes them)."""
    settings = {k: v for k, v in OmegaConf.to_container(cfg.sample, resolve=True).items() if k not in ("out", "ckpt")}
    return {"checkpoint_sha256": file_sha256(ckpt), "seed": int(cfg.seed), "sample": settings,
            "diffusion": OmegaConf.to_container(cfg.diffusion, resolve=True),
            "data": OmegaConf.to_container(cfg.data, resolve=True)}


def _claim_folder(folder: Path, manifest: dict) -> None:
    """Keep the folder's finished samples (a pre-empted job resumes) only if drawn with ``manifest``.

    Samples of another checkpoint (a retrained run) or of other settings would silently stand in
    for the new ones; they are not deleted either: the folder is refused (``overwrite=true`` moves
    it aside, ``sample.out`` names another).
    """
    path = folder / MANIFEST
    old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    stale = [*folder.glob("[0-9]*.png"), *folder.glob(".labels_*.npy"), *folder.glob("samples.npz")]
    if old is not None and old != manifest or old is None and stale:
        raise ValueError(f"sample folder {folder} holds samples drawn from another checkpoint or with other "
                         "settings; pass overwrite=true to move them aside, or another sample.out")
    if old is None:
        atomic_write_json(path, manifest)


# sample.precision -> autocast dtype of the sampling loop and the decoder (the official Switch-DiT
# sampler runs both under fp16 autocast; DiT's in fp32).
# tf32: float32 with TF32 matrix products on GPUs that have them (DiT's sampler default).
AUTOCAST = {"fp32": None, "tf32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def _autocast(precision: str, device: torch.device):
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    dtype = AUTOCAST[precision]
    return nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


@torch.no_grad()
def sample(cfg: DictConfig) -> SampleResult:
    from benchmark.autoencoder import to_uint8
    from benchmark.diffusion import create_diffusion
    from benchmark.diffusion.samplers import cfg_model_fn, ddim_sample, ddpm_sample
    from benchmark.train import make_autoencoder

    started = time.time()
    info = init_distributed()
    device = info.device
    ckpt = cell.resolve_checkpoint(cfg)
    model = load_model(cfg, ckpt, device)
    build = getattr(model, "build_kwargs", {})
    num_classes = int(build.get("num_classes", cfg.data.num_classes))
    in_ch = int(build.get("in_channels", 4))
    side = int(build.get("input_size", 32))
    learn_sigma = bool(build.get("learn_sigma", cfg.model.learn_sigma))
    ae = make_autoencoder(cfg, image_channels=in_ch, device=device)

    scale = float(cfg.sample.cfg_scale)
    use_cfg = num_classes > 0 and scale > 1.0
    diffusion = create_diffusion(respacing(cfg.sample.sampler, cfg.sample.steps),
                                 noise_schedule=cfg.diffusion.noise_schedule, learn_sigma=learn_sigma,
                                 num_timesteps=cfg.diffusion.num_timesteps)
    folder = cell.sample_folder(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    if info.is_main:
        _claim_folder(folder, sampling_manifest(cfg, ckpt))
    barrier()
    n, bs = int(cfg.sample.num_samples), int(cfg.sample.per_proc_batch_size)
    num_batches = math.ceil(n / bs)
    guidance = cfg.sample.guidance_channels

    def net(x, t, y):
        return model(x, t, y)

    for b in range(info.rank, num_batches, info.world_size):
        lo, hi = b * bs, min(n, (b + 1) * bs)
        if _batch_done(folder, lo, hi):
            continue  # written by an earlier (pre-empted) job
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + b)
        m = hi - lo
        z = torch.randn(m, in_ch, side, side, generator=gen).to(device)
        y = torch.randint(0, max(num_classes, 1), (m,), generator=gen).to(device)
        fn, kwargs = net, {"y": y}
        if use_cfg:
            z = torch.cat([z, z])
            kwargs = {"y": torch.cat([y, torch.full_like(y, num_classes)])}
            fn = cfg_model_fn(net, scale, guidance_channels=guidance)
        noise_gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + b + 7919)
        run = ddim_sample if cfg.sample.sampler == "ddim" else ddpm_sample
        extra = {"eta": float(cfg.sample.eta)} if cfg.sample.sampler == "ddim" else {}
        with _autocast(cfg.sample.get("precision", "fp32"), device):
            out = run(fn, diffusion, tuple(z.shape), noise=z, generator=noise_gen, model_kwargs=kwargs,
                      clip_denoised=cfg.sample.clip_denoised, **extra)
            if use_cfg:
                out = out[:m]
            decoded = ae.decode(out)
        images = to_uint8(decoded.float()).permute(0, 2, 3, 1).cpu().numpy()
        # Labels first: a batch counts as done only once its last PNG exists.
        np.save(folder / f".labels_{b:06d}.npy", y.cpu().numpy())
        for i, img in enumerate(images):
            _atomic_png(img, folder / f"{lo + i:06d}.png")
    barrier()
    npz = folder / "samples.npz"
    if info.is_main:
        pack_npz(folder, n, npz)
    barrier()
    return SampleResult(folder=folder, npz=npz, num_samples=n, wall_time_s=time.time() - started,
                        sampler=cfg.sample.sampler, steps=int(cfg.sample.steps), cfg_scale=scale)


def pack_npz(folder: Path, n: int, out: Path) -> Path:
    """Pack PNGs 0..n-1 into ADM's format: arr_0 uint8 (N, H, W, 3), arr_1 labels."""
    images = []
    for i in range(n):
        img = np.asarray(Image.open(folder / f"{i:06d}.png").convert("RGB"))
        images.append(img)
    arr = np.stack(images)
    label_files = sorted(folder.glob(".labels_*.npy"))
    labels = np.concatenate([np.load(p) for p in label_files])[:n] if label_files else np.zeros(n, np.int64)
    # np.savez appends ".npz" to a name without it, hence the suffix.
    atomic_write(out, lambda tmp: np.savez(tmp, arr_0=arr, arr_1=labels), suffix=".npz")
    return out


def main(cfg: DictConfig) -> SampleResult:
    info = init_distributed()
    if info.is_main:
        cfg = cell.apply_overwrite(cfg, ("sample",))
    barrier()
    result = sample(cell.with_values(cfg, overwrite=False))
    print(f"samples: {result.folder} ({result.num_samples} images), npz: {result.npz}")
    return result
