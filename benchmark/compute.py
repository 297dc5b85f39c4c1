"""What a model cost: parameters, forward FLOPs per image, training FLOPs, device-hours.

Forward FLOPs are counted, not estimated: ``torch.utils.flop_counter.FlopCounterMode`` over one
eval-mode forward pass of one image at the model's own input size, one timestep and one class
label (matrix products, convolutions and attention, two FLOPs per multiply-add), on a copy of
the model on the meta device. Training compute uses
the usual rule that a backward pass costs twice a forward one: 3 x forward x global batch x
steps (Kaplan et al. 2020, arXiv 2001.08361, Sec. 2.1). Switch-DiT's routed experts are
counted as run (k experts per token), so its higher cost per step shows.
"""
from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

TRAIN_FLOPS_RULE = "3 x forward FLOPs x global batch x steps (backward = 2 x forward)"


def meta_model(build: dict) -> torch.nn.Module:
    """The model of ``build`` (methods.build_model's arguments) on the meta device: shapes, no data."""
    import methods

    with torch.device("meta"):
        model = methods.build_model(**build)
    return model.to("meta")  # buffers a method builds from host arrays follow


@torch.no_grad()
def forward_flops_per_image(model: torch.nn.Module) -> int:
    """FLOPs of one forward pass of one image at timestep 500, counted on a meta copy of ``model``.

    Meta tensors take the same operator paths whatever the host's kernels (CPU attention
    kernels, for one, are not counted by the FLOP counter on real tensors), so a record made on
    a CPU and one made on a GPU count the same FLOPs.
    """
    meta = meta_model(model.build_kwargs) if hasattr(model, "build_kwargs") else model
    x = torch.zeros(1, meta.in_channels, meta.input_size, meta.input_size, device="meta")
    t = torch.full((1,), 500, device="meta", dtype=torch.long)
    y = torch.zeros(1, device="meta", dtype=torch.long) if getattr(meta, "num_classes", 0) else None
    meta.eval()
    counter = FlopCounterMode(display=False)
    with counter:
        meta(x, t, y)
    return int(counter.get_total_flops())


def compute_record(model: torch.nn.Module, *, global_batch: int | None, steps: int | None,
                   train_wall_s: float | None, devices: int | None, device_type: str) -> dict:
    """The record's ``compute`` block."""
    fwd = forward_flops_per_image(model)
    out = {"parameters": int(sum(p.numel() for p in model.parameters())), "forward_flops_per_image": fwd,
           "train_flops": None, "train_flops_rule": TRAIN_FLOPS_RULE, "train_wall_s": train_wall_s,
           "devices": devices, "device_type": device_type, "device_hours": None}
    if global_batch and steps is not None:
        out["train_flops"] = float(3 * fwd * global_batch * steps)
    if train_wall_s is not None and devices:
        out["device_hours"] = train_wall_s * devices / 3600.0
    return out
