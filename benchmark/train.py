"""The training loop shared by every method (DiT, Peebles & Xie 2023, Sec. 4 set-up).

AdamW (lr 1e-4, no weight decay), EMA of the weights (0.9999), uniform timesteps (or
stratified ones for uncertainty weighting), the hybrid loss of improved DDPM
(ε-MSE + VLB on a frozen mean), optional loss weights, plus whatever auxiliary loss
the method's model returns from ``forward(..., return_aux=True)``. Latents are
extracted once per dataset before the first step, so training never runs the encoder;
with ``data.latents=posterior`` each step draws a fresh sample from the cached posterior.

Precision (``train.precision``): fp32; bf16 autocast; fp16 autocast with a GradScaler
(the official DTR / Switch-DiT recipe: ``torch.cuda.amp`` autocast and GradScaler); auto =
bf16 on CUDA, fp32 elsewhere. With the scaler, gradients are unscaled before clipping, a
step with inf/nan gradients is skipped while the scale backs off, and the EMA is updated
after every step, skipped or not, as the official train.py calls update_ema right after
``scaler.step`` (after a skipped step it moves toward the unchanged weights).

Determinism: every step reseeds the global RNG from (seed, step, rank) and draws its
batch indices from (seed, epoch), so a run stopped at step N and resumed gives the
same weights as one that never stopped; the checkpoint carries the scaler's state.
"""
from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch.nn.parallel import DistributedDataParallel as DDP

import methods
from benchmark import checkpoint as ckpt_io
from benchmark import cell, identity, pause, preempt
from methods.atomic import atomic_write_json, atomic_write_text
from benchmark.config import loss_weight_fn
from benchmark.distributed import DistInfo, barrier, init_distributed

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    step: int
    final_loss: float | None
    steps_per_sec: float | None
    wall_time_s: float
    metrics_log: Path
    num_parameters: int
    model_state: dict | None = None   # this rank's final weights (DDP agreement checks)
    train_wall_s: float | None = None  # training time over every attempt of this run (resumes included)
    devices: int = 1                   # ranks that trained (device-hours = train_wall_s x devices)
    resumed_from: Path | None = None
    finished_before: bool = False      # the run was already trained: nothing ran


def claim_run_folder(cfg: DictConfig, run_dir: Path) -> None:
    """Create the run folder with its identity file, or check that it holds this training protocol."""
    spec = identity.train_spec(cfg)
    doc = {"run_id": run_dir.name, "train_hash": identity.spec_hash(spec), "train": spec,
           "recipe": cfg.get("recipe")}
    found = identity.read_run_identity(run_dir)
    if found is None:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / identity.IDENTITY_FILE, doc)
    elif found.get("train_hash") != doc["train_hash"] or found.get("train") != json.loads(json.dumps(spec)):
        raise ValueError(f"run folder {run_dir} holds another training protocol ({run_dir / identity.IDENTITY_FILE} "
                         f"has hash {found.get('train_hash')}, this config {doc['train_hash']}); choose another "
                         "run_name or paths.runs")


def build_data(cfg: DictConfig, info: DistInfo):
    """Dataset, autoencoder and the cached latents (extracted once, DDP-parallel)."""
    from benchmark.data import from_config
    from benchmark.data.latents import extract_latents

    dataset = from_config(cfg.data)
    ae = make_autoencoder(cfg, image_channels=dataset.channels, device=info.device)
    latents = extract_latents(dataset, ae, Path(cfg.paths.cache) / "latents",
                              batch_size=cfg.train.latent_batch_size, device=info.device,
                              rank=info.rank, world_size=info.world_size, flips=bool(cfg.data.flip),
                              seed=int(cfg.seed), progress=info.is_main, mode=cfg.data.latents,
                              dtype=cfg.data.latent_dtype)
    return dataset, ae, latents


def step_batch(latents, step: int, per_rank: int, seed: int, info: DistInfo, device):
    """This rank's (latents, labels) at ``step``, after reseeding the global RNG from (seed, step, rank).

    Rows come from the (seed, epoch) permutation; a posterior cache draws its fresh sample from the
    reseeded RNG of ``device``, so a resumed run draws the same one.
    """
    torch.manual_seed(_step_seed(seed, step, info.rank, info.world_size))
    idx = latents.indices_for_step(step, per_rank, seed=seed, rank=info.rank, world_size=info.world_size)
    return latents.draw(idx, device), latents.labels[idx].to(device, non_blocking=True)


def make_autoencoder(cfg: DictConfig, *, image_channels: int, device):
    """The configured autoencoder; pixel space needs to know the image channels."""
    from benchmark.autoencoder import build_autoencoder

    kw = OmegaConf.to_container(cfg.autoencoder, resolve=True)
    if kw["name"] == "none":
        kw["image_channels"] = image_channels
    return build_autoencoder(**kw, device=device)


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    ema_params = dict(ema.named_parameters())
    for name, param in model.named_parameters():
        ema_params[name].mul_(decay).add_(param.detach(), alpha=1 - decay)


class LossWeighting:
    """Per-sample ε-loss weights (constant / min-SNR / P2) and optional uncertainty weighting."""

    def __init__(self, cfg: DictConfig, diffusion, device):
        from benchmark.diffusion import loss_weights as lw

        self.weight_fn = loss_weight_fn(cfg)
        self.alphas_cumprod = diffusion.alphas_cumprod
        self.uw = None
        if cfg.loss_weight.name == "uw":
            self.uw = lw.UncertaintyWeighting(
                num_timesteps=diffusion.num_timesteps, num_clusters=cfg.loss_weight.num_clusters,
                boundaries=cfg.loss_weight.clustering, alphas_cumprod=diffusion.alphas_cumprod,
            ).to(device)

    def sample_timesteps(self, n: int, num_timesteps: int, device) -> torch.Tensor:
        if self.uw is not None:
            return self.uw.sample_timesteps(n, generator=None, device=device)
        return torch.randint(0, num_timesteps, (n,), device=device)

    def mse_weight(self, t: torch.Tensor) -> torch.Tensor:
        return self.weight_fn(self.alphas_cumprod, t)

    def reduce(self, per_sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.uw(per_sample, t) if self.uw is not None else per_sample.mean()


# train.precision -> (autocast dtype or None for none, whether a GradScaler scales the loss)
PRECISIONS = {
    "fp32": (None, False),
    "tf32": (None, False),           # float32 with TF32 matrix products on GPUs that have them (DiT's recipe)
    "bf16": (torch.bfloat16, False),
    "fp16": (torch.float16, True),   # fp16's narrow range underflows small gradients without scaling
}
AUTO_PRECISION = {"cuda": "bf16"}    # device type -> what train.precision=auto means there; else fp32


def resolve_precision(precision: str, device: torch.device) -> str:
    """``train.precision`` with ``auto`` replaced by this device's choice."""
    if precision == "auto":
        return AUTO_PRECISION.get(device.type, "fp32")
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision={precision!r} is invalid; valid: auto, {', '.join(PRECISIONS)}")
    return precision


def _autocast(precision: str, device: torch.device):
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"
    dtype = PRECISIONS[precision][0]
    return nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A GradScaler with torch's defaults (initial scale 2**16) for fp16; a disabled pass-through otherwise."""
    return torch.amp.GradScaler(device.type, enabled=PRECISIONS[precision][1])


def apply_gradients(opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler, params, max_grad_norm) -> None:
    """Clip and step on gradients that ``scaler.scale(loss).backward()`` left.

    Clipping sees the true gradients (unscaled first). With an enabled scaler a step whose
    gradients hold inf/nan is skipped and the scale shrinks; a disabled one just steps.
    """
    if max_grad_norm:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, float(max_grad_norm))
    scaler.step(opt)
    scaler.update()


def _resume_path(cfg: DictConfig, run_dir: Path) -> Path | None:
    """The checkpoint training continues from: by default the run folder's newest one (the same
    protocol, so continuing gives what a fresh start would); ``latest`` insists on one; a PATH may
    be a run of the same protocol that planned another number of iterations (extending it)."""
    resume = cfg.train.resume
    if resume in (None, ""):
        return ckpt_io.latest_checkpoint(run_dir)
    if resume == "latest":
        path = ckpt_io.latest_checkpoint(run_dir)
        if path is None:
            raise FileNotFoundError(
                f"train.resume=latest but {ckpt_io.checkpoint_dir(run_dir)} holds no checkpoint; "
                "drop train.resume to start fresh or pass train.resume=PATH"
            )
        return path
    return Path(str(resume))


def _check_compatible(payload: dict, build: dict, path: Path) -> None:
    saved = payload.get("build", {})
    diff = sorted(k for k in set(saved) | set(build) if saved.get(k) != build.get(k))
    if diff:
        shown = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs config {build.get(k)!r}" for k in diff[:3])
        raise ValueError(f"checkpoint {path} was trained with another model ({shown}); resume needs the same cell")


def _flat(tree, prefix: str = "") -> dict:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for key, value in tree.items():
        out.update(_flat(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _check_same_protocol(payload: dict, cfg: DictConfig, path: Path) -> None:
    """A resumed checkpoint must come from the same training protocol; only train.iterations may differ."""
    saved = payload.get("config")
    if not isinstance(saved, dict):
        return  # a checkpoint without its config: the build check above is all there is
    mine = _flat(json.loads(json.dumps(identity.train_spec(cfg))))
    theirs = _flat(json.loads(json.dumps(identity.train_spec(saved))))
    diff = sorted(k for k in set(mine) | set(theirs) if k != "train.iterations" and mine.get(k) != theirs.get(k))
    if diff:
        shown = ", ".join(f"{k}: checkpoint {theirs.get(k)!r} vs config {mine.get(k)!r}" for k in diff[:3])
        raise ValueError(f"checkpoint {path} was trained under another protocol ({shown}); a run continues only "
                         "from its own protocol (train.iterations may differ)")


def _append_jsonl(path: Path, row: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row, sort_keys=True) + "\n")


def train(cfg: DictConfig) -> TrainResult:
    from benchmark.diffusion import create_diffusion

    started = time.time()
    info = init_distributed()
    device = info.device
    run_dir = cell.run_dir(cfg)
    if cfg.train.global_batch_size % info.world_size:
        raise ValueError(f"train.global_batch_size={cfg.train.global_batch_size} is not divisible by the "
                         f"world size {info.world_size}; choose a multiple of {info.world_size}")
    per_rank = cfg.train.global_batch_size // info.world_size
    if info.is_main:
        claim_run_folder(cfg, run_dir)
    barrier()
    iterations = int(cfg.train.iterations)
    resume_from = _resume_path(cfg, run_dir)
    payload = ckpt_io.load_training_checkpoint(resume_from) if resume_from else None
    if payload is not None:
        _check_same_protocol(payload, cfg, resume_from)
        if int(payload["step"]) >= iterations and Path(resume_from).parent == ckpt_io.checkpoint_dir(run_dir):
            return _finished(cfg, run_dir, resume_from, payload, started, info)

    dataset, _, latents = build_data(cfg, info)
    c, h, w = latents.latents.shape[1:]
    build = cell.model_build(cfg, in_channels=c, input_size=h, num_classes=dataset.num_classes)
    if payload is not None:
        _check_compatible(payload, build, resume_from)

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = methods.build_model(**build).to(device)
    ema = methods.build_model(**build).to(device)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False).eval()
    if cfg.train.grad_checkpointing:
        model.set_grad_checkpointing(True)
    num_params = sum(p.numel() for p in model.parameters())

    diffusion = create_diffusion(None, noise_schedule=cfg.diffusion.noise_schedule,
                                 learn_sigma=cfg.model.learn_sigma, num_timesteps=cfg.diffusion.num_timesteps)
    weighting = LossWeighting(cfg, diffusion, device)
    groups = [{"params": [p for p in model.parameters() if p.requires_grad]}]
    if weighting.uw is not None:
        groups.append({"params": list(weighting.uw.parameters()), "lr": float(cfg.loss_weight.lr)})
    opt = torch.optim.AdamW(groups, lr=float(cfg.train.lr), weight_decay=float(cfg.train.weight_decay),
                            betas=tuple(cfg.train.adam_betas))
    precision = resolve_precision(cfg.train.precision, device)
    scaler = make_scaler(precision, device)

    start_step, wall_before = 0, 0.0
    if payload is not None:
        wall_before = float(payload.get("extra", {}).get("train_wall_s", 0.0))
        model.load_state_dict(payload["model"])
        ema.load_state_dict(payload["ema"])
        opt.load_state_dict(payload["opt"])
        if weighting.uw is not None and "uw" in payload.get("extra", {}):
            weighting.uw.load_state_dict(payload["extra"]["uw"])
        if scaler.is_enabled():
            if "scaler" in payload:
                scaler.load_state_dict(payload["scaler"])
            elif info.is_main:
                log.warning("checkpoint %s holds no GradScaler state (not an fp16 run); starting a new scale",
                            resume_from)
        start_step = int(payload["step"])
        ckpt_io.set_rng_state(payload["rng"])
        if info.is_main:
            log.info("resumed from %s at step %d", resume_from, start_step)

    net = torch.compile(model) if cfg.train.compile else model
    if info.world_size > 1:
        net = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
    model.train()

    metrics_log = run_dir / "metrics.jsonl"
    if info.is_main and metrics_log.exists():
        # Rows past the checkpoint come from an attempt whose steps are trained again now.
        _truncate_log(metrics_log, start_step)
    config_container = OmegaConf.to_container(cfg, resolve=True)
    last_ckpt = resume_from
    loop_started = time.time()

    def save(step: int) -> Path:
        wall = wall_before + time.time() - loop_started
        return _save(cfg, info, run_dir, step, model, ema, opt, scaler, weighting, config_container, build,
                     {"train_wall_s": wall, "devices": info.world_size, "device_type": device.type})

    window = _Window()
    last_loss, sps = None, None
    bar = _progress(cfg, info, start_step, iterations)
    num_timesteps = diffusion.num_timesteps

    for step in range(start_step, iterations):
        if _stop_requested(info, device):
            # A scheduler asked us to stop: save this step boundary, then let its handler requeue.
            last_ckpt = save(step)
            preempt.complete()
        x, y = step_batch(latents, step, per_rank, cfg.seed, info, device)
        t = weighting.sample_timesteps(x.shape[0], num_timesteps, device)
        aux: dict[str, torch.Tensor] = {}

        def model_fn(x_t, t_model, y):
            out, extra = net(x_t, t_model, y, return_aux=True)
            aux.update(extra)
            return out

        with _autocast(precision, device):
            terms = diffusion.training_losses(model_fn, x, t, model_kwargs={"y": y},
                                              mse_weight=weighting.mse_weight(t))
            diffusion_loss = weighting.reduce(terms["loss"].float(), t)
            loss = diffusion_loss
            for value in aux.values():
                loss = loss + value.float()
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if weighting.uw is not None and info.world_size > 1:
            for p in weighting.uw.parameters():  # the mean of scaled gradients is the scaled mean
                dist.all_reduce(p.grad)
                p.grad /= info.world_size
        apply_gradients(opt, scaler, model.parameters(), cfg.train.max_grad_norm)
        update_ema(ema, model, float(cfg.train.ema_decay))

        window.add(diffusion_loss.detach(), loss.detach(), aux)
        done = step + 1
        if done % cfg.train.log_every == 0 or done == iterations:
            row = window.row(done, info, device)
            last_loss, sps = row["loss"], row["steps_per_sec"]
            if info.is_main:
                if scaler.is_enabled():
                    row["grad_scale"] = scaler.get_scale()
                _append_jsonl(metrics_log, row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{diffusion_loss.item():.4f}", sps=f"{sps:.2f}" if sps else "-")
        if done % cfg.train.ckpt_every == 0 or done == iterations:
            last_ckpt = save(done)
            if done < iterations:
                # An operator's PAUSE file holds the run here, its checkpoint on disk.
                pause.hold_if_paused(run_dir, done, last_ckpt, stop_requested=preempt.requested,
                                     device=device, is_main=info.is_main)
    if bar is not None:
        bar.close()
    if last_ckpt is None:
        last_ckpt = ckpt_io.latest_checkpoint(run_dir)
    return TrainResult(run_dir=run_dir, checkpoint=Path(last_ckpt), step=max(iterations, start_step),
                       final_loss=last_loss, steps_per_sec=sps, wall_time_s=time.time() - started,
                       metrics_log=metrics_log, num_parameters=num_params,
                       model_state=model.state_dict(), train_wall_s=wall_before + time.time() - loop_started,
                       devices=info.world_size, resumed_from=resume_from)


class _Window:
    """Means over one logging window: the diffusion loss, every auxiliary loss, and their sum."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.n = 0
        self.start = time.time()

    def add(self, diffusion_loss: torch.Tensor, total: torch.Tensor, aux: dict) -> None:
        values = {"loss": diffusion_loss, "total_loss": total, **{f"aux_{k}": v.detach() for k, v in aux.items()}}
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value.float().item())
        self.n += 1

    def row(self, step: int, info: DistInfo, device) -> dict:
        keys = sorted(self.sums)
        avg = torch.tensor([self.sums[k] / self.n for k in keys], device=device, dtype=torch.float64)
        if info.world_size > 1:
            dist.all_reduce(avg)
            avg /= info.world_size
        now = time.time()
        row = {"step": step, "steps_per_sec": self.n / max(now - self.start, 1e-9),
               **{k: float(v) for k, v in zip(keys, avg.tolist())}}
        self.sums, self.n, self.start = {}, 0, now
        return row


def _truncate_log(metrics_log: Path, step: int) -> None:
    lines = [ln for ln in metrics_log.read_text(encoding="utf-8").splitlines() if ln.strip()]
    kept = [ln for ln in lines if json.loads(ln).get("step", 0) <= step]
    if len(kept) != len(lines):
        atomic_write_text(metrics_log, "".join(ln + "\n" for ln in kept))


def _last_logged(metrics_log: Path) -> dict:
    try:
        lines = [ln for ln in metrics_log.read_text(encoding="utf-8").splitlines() if ln.strip()]
        return json.loads(lines[-1]) if lines else {}
    except (OSError, ValueError):
        return {}


def _finished(cfg: DictConfig, run_dir: Path, checkpoint: Path, payload: dict, started: float,
              info: DistInfo) -> TrainResult:
    """The run already holds its final checkpoint: nothing is trained again (overwrite=true redoes it)."""
    if info.is_main:
        print(f"train: {run_dir.name} is finished ({checkpoint}); overwrite=true trains it again", flush=True)
    extra = payload.get("extra", {})
    last = _last_logged(run_dir / "metrics.jsonl")
    num_params = sum(v.numel() for k, v in payload["model"].items())
    return TrainResult(run_dir=run_dir, checkpoint=Path(checkpoint), step=int(payload["step"]),
                       final_loss=last.get("loss"), steps_per_sec=last.get("steps_per_sec"),
                       wall_time_s=time.time() - started, metrics_log=run_dir / "metrics.jsonl",
                       num_parameters=num_params, train_wall_s=extra.get("train_wall_s"),
                       devices=int(extra.get("devices", 1)), resumed_from=Path(checkpoint), finished_before=True)


def _stop_requested(info: DistInfo, device) -> bool:
    """True on every rank as soon as any rank holds a deferred scheduler signal."""
    flag = preempt.requested()
    if info.world_size > 1:
        t = torch.tensor([1.0 if flag else 0.0], device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        flag = bool(t.item())
    return flag


def _save(cfg, info: DistInfo, run_dir: Path, step: int, model, ema, opt, scaler, weighting, config, build,
          bookkeeping: dict) -> Path:
    path = ckpt_io.checkpoint_path(run_dir, step)
    if info.is_main:
        extra = {"uw": weighting.uw.state_dict()} if weighting.uw is not None else {}
        extra.update(bookkeeping)
        ckpt_io.save_checkpoint(path, model=model, ema=ema, optimizer=opt, step=step, config=config,
                                build=build, extra=extra, scaler=scaler)
    barrier()
    return path


def _step_seed(seed: int, step: int, rank: int, world: int) -> int:
    # Distinct per (step, rank); stays below 2**63 for any realistic run length.
    return (seed * 1_000_003 + step) * max(world, 1) + rank


def _progress(cfg, info: DistInfo, start: int, total: int):
    if not (cfg.train.progress and info.is_main):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=start, desc=f"train {cfg.run_name}", dynamic_ncols=True,
                mininterval=1.0)


def main(cfg: DictConfig) -> TrainResult:
    from benchmark import preflight

    info = init_distributed()
    if info.is_main:
        cfg = cell.apply_overwrite(cfg, ("train",))
        cell.announce(cfg)
        if not cell.training_finished(cfg):
            preflight.check(cfg, world_size=info.world_size, device=info.device,
                            memory_bytes=preflight.memory_override(cfg))
    barrier()
    result = train(cell.with_values(cfg, overwrite=False))
    if math.isfinite(result.final_loss or 0.0):
        log.info("trained %s to step %d: %s", cfg.run_name, result.step, result.checkpoint)
    print(f"checkpoint: {result.checkpoint}")
    return result


def latents_main(cfg: DictConfig) -> Path:
    """``benchmark latents``: encode the dataset once into ``paths.cache`` (what training would do first),
    so that the cells of a grid find the cache instead of each encoding it."""
    info = init_distributed()
    dataset, _, latents = build_data(cfg, info)
    path = Path(latents.meta.get("path") or Path(cfg.paths.cache) / "latents")
    if info.is_main:
        print(f"latents: {len(latents)} rows of {tuple(latents.latent_shape)} for {len(dataset)} images of "
              f"{cfg.data.name} ({cfg.data.get('latents', 'sample_once')}) in {path}")
    return path
