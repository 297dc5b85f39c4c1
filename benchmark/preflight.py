"""Preflight: what a training cell will cost, checked before anything trains or is queued.

From the composed config and the machine (or, for ``submit``, the cluster's GPUs):

* parameters, counted on a model built on the ``meta`` device (no memory, no compute);
* peak memory per device: training state (fp32 weights, gradients, Adam's two moments and the
  EMA copy: 20 bytes a parameter) plus the activations saved for backward at the per-device
  batch, measured by a saved-tensors hook over one forward pass on ``meta`` tensors (float32;
  halved for 16-bit autocast, whose matmul inputs are what backward keeps);
* forward FLOPs per image (``FlopCounterMode`` on the same meta model) and so the FLOPs of a
  step (3 x forward x per-device batch);
* seconds per step: timed over a few real steps on random inputs when the FLOP estimate says a
  step is quick, otherwise estimated from FLOPs and a measured matrix-product rate of the device;
  and from it the ETA of the whole run.

It refuses, in one line with the numbers, a cell whose memory estimate exceeds the device's; it
warns when the ETA is beyond ``preflight.warn_eta_hours``; it refuses a size meant for ImageNet
latents (S, B, L, XL) on the embedded 8x8 digits, saying what to type instead.
``preflight.enabled=false`` skips all of it.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

import methods
from benchmark.compute import forward_flops_per_image, meta_model
from benchmark.cell import model_build
from benchmark.config import ConfigError, latent_geometry

STATE_BYTES_PER_PARAM = 4 + 4 + 8 + 4   # fp32 weights, gradients, Adam m and v, EMA weights
EMBEDDED_DATASETS = ("digits",)         # tiny data that ships with the suite: only the debug size fits it
GB = 1024 ** 3


@dataclass
class Estimate:
    params: int
    state_bytes: int
    activation_bytes: int
    per_device_batch: int
    forward_flops: int
    device: str
    device_memory: int | None           # bytes the device offers (None: unknown)
    sec_per_step: float | None
    sec_source: str
    iterations: int

    @property
    def peak_bytes(self) -> int:
        return self.state_bytes + self.activation_bytes

    @property
    def eta_s(self) -> float | None:
        return None if self.sec_per_step is None else self.sec_per_step * self.iterations

    def line(self, name: str) -> str:
        eta = f"ETA unknown ({self.sec_source})" if self.eta_s is None else \
            f"ETA {_duration(self.eta_s)} ({self.sec_source})"
        avail = "" if self.device_memory is None else f" of {self.device_memory / GB:.1f} GB"
        return (f"preflight: {name}: {self.params / 1e6:.1f}M parameters; ~{self.peak_bytes / GB:.2f} GB{avail} "
                f"per {self.device} device (state {self.state_bytes / GB:.2f} GB + activations "
                f"{self.activation_bytes / GB:.2f} GB at batch {self.per_device_batch}); "
                f"{self.forward_flops / 1e9:.3g} GFLOPs a forward image; {eta}")


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def _input_shape(cfg: DictConfig) -> tuple[int, int]:
    """(channels, side) of what the model sees: latents of the SD VAE, or the dataset's pixels."""
    from benchmark.data import DATASETS

    down, side = latent_geometry(cfg)
    if down != 1:
        return 4, side
    entry = DATASETS.get(cfg.data.dataset)
    channels = getattr(entry, "channels", None) if entry is not None else None
    return int(channels or (1 if cfg.data.dataset in EMBEDDED_DATASETS else 3)), side


def build_arguments(cfg: DictConfig) -> dict:
    channels, side = _input_shape(cfg)
    return model_build(cfg, in_channels=channels, input_size=side, num_classes=int(cfg.data.num_classes))


def _meta_inputs(model, batch: int, device="meta"):
    x = torch.zeros(batch, model.in_channels, model.input_size, model.input_size, device=device)
    t = torch.full((batch,), 500, dtype=torch.long, device=device)
    y = torch.zeros(batch, dtype=torch.long, device=device) if model.num_classes else None
    return x, t, y


def _saved_bytes(model, batch: int) -> int:
    """Bytes autograd keeps for backward over one training forward pass (meta tensors, float32)."""
    seen: dict[int, torch.Tensor] = {}
    params = {id(p) for p in model.parameters()}

    def pack(t):
        base = t._base if t._base is not None else t
        if id(base) not in params:  # weights kept for backward are the training state, counted there
            seen[id(t)] = t
        return t

    x, t, y = _meta_inputs(model, batch)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.train()
        model(x, t, y)  # the auxiliary losses keep little; their host-side matching cannot run on meta
    return sum(v.numel() * v.element_size() for v in seen.values())


def device_memory(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _matmul_rate(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of square matrix products on ``device``, measured over a fraction of a second."""
    n = 2048 if device.type == "cuda" else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < 0.3:
        a @ b
        reps += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - start)


def _timed_steps(cfg: DictConfig, build: dict, batch: int, device: torch.device, steps: int) -> float:
    """Seconds per forward+backward+Adam step of the real model on random inputs (after one warm-up)."""
    model = methods.build_model(**build).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, t, y = (v.to(device) if v is not None else None for v in _meta_inputs(model, batch, device="cpu"))
    x = torch.randn_like(x)

    def step():
        out, aux = model(x, t, y, return_aux=True)
        loss = out.float().square().mean() + sum(v.float() for v in aux.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / steps


def estimate(cfg: DictConfig, *, world_size: int = 1, device: torch.device | None = None,
             memory_bytes: int | None = None, sec_per_step: float | None = None, time_steps: bool = True) -> Estimate:
    """The cost of training ``cfg`` (see the module docstring)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    build = build_arguments(cfg)
    model = meta_model(build)
    params = sum(p.numel() for p in model.parameters())
    batch = max(1, int(cfg.train.global_batch_size) // max(world_size, 1))
    activations = _saved_bytes(model, batch)
    precision = str(cfg.train.precision)
    if precision in ("bf16", "fp16") or (precision == "auto" and device.type == "cuda"):
        activations //= 2
    if cfg.train.grad_checkpointing:
        # Only block inputs are kept, plus one block's activations while it is recomputed.
        depth = len(getattr(model, "blocks", [])) or 1
        activations = activations // depth * 2
    flops = forward_flops_per_image(model)
    source = "given"
    if sec_per_step is None and not time_steps:
        source = "no step time known; submit takes launcher.stages.train.sec_per_step"
    elif sec_per_step is None:
        rate = _matmul_rate(device, torch.float32 if device.type == "cpu" else torch.bfloat16)
        guess = 3 * flops * batch / (0.5 * rate)
        steps = int(cfg.get("preflight", {}).get("timed_steps", 3))
        if time_steps and steps > 0 and guess * (steps + 1) <= float(cfg.preflight.get("max_timing_s", 20)):
            sec_per_step = _timed_steps(cfg, build, batch, device, steps)
            source = f"{steps} timed steps: {sec_per_step:.3g} s/step"
        else:
            sec_per_step = guess
            source = f"estimated from {3 * flops * batch:.3g} FLOPs/step at half the measured {rate / 1e9:.0f} GFLOP/s"
    if memory_bytes is None and time_steps:  # this machine's own device
        memory_bytes = device_memory(device)
    return Estimate(params=params, state_bytes=params * STATE_BYTES_PER_PARAM, activation_bytes=activations,
                    per_device_batch=batch, forward_flops=flops, device=device.type, device_memory=memory_bytes,
                    sec_per_step=sec_per_step, sec_source=source, iterations=int(cfg.train.iterations))


def check_data_fits_size(cfg: DictConfig) -> None:
    """A size meant for ImageNet latents on the embedded digits is refused, saying what to type instead."""
    if cfg.data.dataset in EMBEDDED_DATASETS and cfg.size.name != "debug":
        gpu = "" if torch.cuda.is_available() else " on a GPU machine"
        raise ConfigError(
            f"size={cfg.size.name} is a model for ImageNet latents, but data={cfg.data.name} is the embedded "
            f"{cfg.data.image_size}x{cfg.data.image_size} digits: use size=debug here, or train it{gpu} with "
            f"data=imagenet data.path=/path/to/imagenet/train (preflight.enabled=false runs it anyway)")


def check(cfg: DictConfig, *, world_size: int = 1, device: torch.device | None = None,
          memory_bytes: int | None = None, sec_per_step: float | None = None, time_steps: bool = True,
          out=sys.stdout) -> Estimate | None:
    """Run the preflight for one cell: print its line, refuse (ConfigError) or warn; None when disabled."""
    pre = cfg.get("preflight") or {}
    if not pre.get("enabled", True):
        return None
    check_data_fits_size(cfg)
    if cfg.data.dataset != "digits":
        from benchmark.data.imagefolder import ImageFolderError, check_has_images

        classes = cfg.data.get("classes")
        try:
            check_has_images(cfg.data.path, classes if classes is None or isinstance(classes, int) else list(classes))
        except ImageFolderError as exc:
            raise ConfigError(str(exc)) from None
    est = estimate(cfg, world_size=world_size, device=device, memory_bytes=memory_bytes,
                   sec_per_step=sec_per_step, time_steps=time_steps)
    name = f"{cfg.method.name}-{cfg.size.name}"
    print(est.line(name), file=out, flush=True)
    if est.device_memory is not None and est.peak_bytes > est.device_memory:
        raise ConfigError(
            f"{name} needs ~{est.peak_bytes / GB:.1f} GB per {est.device} device (state "
            f"{est.state_bytes / GB:.1f} GB + activations {est.activation_bytes / GB:.1f} GB at batch "
            f"{est.per_device_batch}) but the device has {est.device_memory / GB:.1f} GB; lower "
            "train.global_batch_size, train on more devices, set train.grad_checkpointing=true, or choose a "
            "smaller size")
    hours = float(pre.get("warn_eta_hours", 24))
    if est.eta_s is not None and est.eta_s > hours * 3600:
        print(f"warning: {name} is expected to train for {_duration(est.eta_s)} ({est.iterations} steps at "
              f"{est.sec_per_step:.3g} s/step, {est.sec_source}) on this {est.device}; beyond "
              f"preflight.warn_eta_hours={hours:g}", file=sys.stderr, flush=True)
    return est


def memory_override(cfg: DictConfig) -> int | None:
    """``preflight.device_memory_gb`` in bytes (None: ask the device)."""
    gb = (cfg.get("preflight") or {}).get("device_memory_gb")
    return None if gb is None else int(float(gb) * GB)
