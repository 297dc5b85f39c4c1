"""Whole model steps of DiT, DTR and Switch-DiT, built and timed one way for every speed tool.

A training step is a step's model work without the optimizer update: a forward with the
auxiliary losses (``return_aux=True``: Switch-DiT's prior JSD) on a batch with per-sample
timesteps, the loss mean(out²) + Σ aux, and the backward. An eval forward is one no-grad
forward with every sample at one timestep (expanded, stride 0), as a sampling step calls
the model. Both run under autocast in the given dtype (none for float32). ``methods`` is
imported on first use only: the GPU acceptance run may go without it.
"""
from __future__ import annotations

import contextlib
import importlib
import sys
import traceback
from dataclasses import dataclass
from typing import Callable

import torch

from .shapes import NUM_SAMPLES
from .timing import measure, peak_memory_mb

# (warm-up calls, timed calls) of a whole step: XL steps take ~0.1 s on a GPU, seconds on a CPU.
STEP_REPEATS = {"cuda": (3, 20), "cpu": (1, 3)}


@dataclass(frozen=True)
class Batch:
    x: torch.Tensor
    t_train: torch.Tensor
    t_eval: torch.Tensor
    y: torch.Tensor


def make_batch(batch: int, device, *, in_channels: int = 4, input_size: int = 32, num_classes: int = 1000,
               seed: int = 0) -> Batch:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(batch, in_channels, input_size, input_size, generator=gen).to(device)
    t_train = torch.randint(0, 1000, (batch,), generator=gen).to(device)
    t_eval = torch.full((), 500, device=device).expand(batch)
    y = torch.randint(0, num_classes, (batch,), generator=gen).to(device)
    return Batch(x, t_train, t_eval, y)


def autocast(device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def model_loss(model, x, t, y) -> torch.Tensor:
    out, aux = model(x, t, y, return_aux=True)
    return out.float().square().mean() + sum((v.float() for v in aux.values()), torch.zeros((), device=out.device))


def model_forward(model, x, t, y):
    return model(x, t, y)


def train_step(model, batch: Batch, dtype: torch.dtype, loss: Callable = model_loss) -> tuple[Callable, list]:
    """(step, trainable parameters); the caller drops the parameters' grads between steps."""
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        with autocast(batch.x.device, dtype):
            value = loss(model, batch.x, batch.t_train, batch.y)
        value.backward()

    return step, params


def eval_forward(model, batch: Batch, dtype: torch.dtype, forward: Callable = model_forward) -> Callable:
    def step():
        with torch.no_grad(), autocast(batch.x.device, dtype):
            forward(model, batch.x, batch.t_eval, batch.y)

    return step


def build_model(method: str, size: str, device, *, compile: bool = False, **build_kw):
    """``methods.build_model(...)`` on ``device`` in train mode, optionally wrapped in torch.compile."""
    import methods

    model = methods.build_model(method, size, **build_kw).to(device).train()
    return torch.compile(model) if compile else model


def method_train_step(method: str, size: str, device, dtype: torch.dtype, batch: int = NUM_SAMPLES,
                      input_size: int = 32, compile: bool = False, **options) -> tuple[Callable, list]:
    """(step, params) of one method's training step at ``batch`` samples of ``input_size``² latents."""
    model = build_model(method, size, device, compile=compile, input_size=input_size, **options)
    return train_step(model, make_batch(batch, device, input_size=input_size), dtype)


def time_step(step: Callable, params: list, device, warmup: int | None = None, repeats: int | None = None) -> dict:
    """The timing fields of a step plus its peak memory (CUDA only)."""
    device = torch.device(device)
    default_warmup, default_repeats = STEP_REPEATS["cuda" if device.type == "cuda" else "cpu"]
    timing = measure(step, device, warmup=default_warmup if warmup is None else warmup,
                     repeats=default_repeats if repeats is None else repeats, clear=params)
    peak, extra = peak_memory_mb(step, device, clear=params)
    return {**timing.fields(), "peak_mem_mb": peak, "extra_mem_mb": extra}


def whole_step_benchmarks(device, dtype: torch.dtype, sizes=("S",), methods=("dit", "dtr", "switch_dit"),
                          batch: int = NUM_SAMPLES, input_size: int = 32, warmup: int | None = None,
                          repeats: int | None = None, options: dict | None = None, compile: bool = False) -> dict:
    """Training steps of each method x size: ``{"skipped": reason or None, "rows": [...]}``.

    ``options`` maps a method to build options (e.g. ``{"switch_dit": {"moe_backend": "torch"}}``);
    they are recorded in the row. One failing model is a row with its error, not the end of the run."""
    device = torch.device(device)
    try:
        importlib.import_module("methods")  # optional on a bare GPU machine
    except Exception as exc:
        return {"skipped": f"methods package not importable: {exc!r}", "rows": []}
    rows = []
    for method in methods:
        for size in sizes:
            opts = dict((options or {}).get(method, {}))
            row = {"method": method, "size": size, "batch": batch, "input_size": input_size}
            if opts:
                row["options"] = opts
            if compile:
                row["compiled"] = True
            try:
                step, params = method_train_step(method, size, device, dtype, batch, input_size, compile, **opts)
                row.update(time_step(step, params, device, warmup, repeats))
                del step, params
            except Exception as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
                print(f"[speed] whole step {method}-{size} failed:\n{traceback.format_exc()}", file=sys.stderr)
            rows.append(row)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return {"skipped": None, "rows": rows}
