"""An independent, functional re-statement of the reference DiT / DTR / Switch-DiT forward passes.

Written from the papers (DiT arXiv 2212.09748, DTR arXiv 2310.07138, Switch-DiT
arXiv 2403.09176) and the semantics of their public code: it reads a state dict
under the *reference* parameter names and computes the eval-mode output with
plain tensor ops (manual softmax attention, per-sample expert loops), so it
shares no code with ``methods``.  Tests import it as a helper;
tests/unit/methods/test_reference_models.py checks it against closed forms.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F


def ref_timestep_embedding(t: torch.Tensor, dim: int = 256) -> torch.Tensor:
    half = dim // 2
    # float32 like the reference code: at t ~ 1000 the phase itself is only fp32-accurate.
    i = torch.arange(half, dtype=torch.float32)
    freqs = torch.exp(-math.log(10000.0) * i / half)
    ang = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(ang), torch.sin(ang)], dim=1).double()


def ref_pos_embed(dim: int, grid: int) -> np.ndarray:
    """MAE-style 2-D sin-cos table with numpy, as published."""
    gw, gh = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))

    def axis(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    return np.concatenate([axis(dim // 2, gw), axis(dim // 2, gh)], axis=1)


def ref_dtr_table(tasks: int, units: int, alpha: float, beta: float) -> torch.Tensor:
    """Closed form, written per row with Python arithmetic: window of floor(β·U) from round((t/(T-1))^α·(U-K))."""
    return _ref_dtr_table(tasks, units, alpha, beta).clone()


@functools.lru_cache(maxsize=None)
def _ref_dtr_table(tasks: int, units: int, alpha: float, beta: float) -> torch.Tensor:
    width = int(units * beta)
    table = torch.zeros(tasks, units)
    for t in range(tasks):
        start = round(((t / (tasks - 1)) ** alpha) * (units - width))
        table[t, start : start + width] = 1.0
    return table


def _lin(sd, name, x):
    return x @ sd[name + ".weight"].T + sd[name + ".bias"]


def _silu_lin(sd, name, x):
    return _lin(sd, name, x * torch.sigmoid(x))


def _ln(x):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-6)


def _attn(sd, pre, x, heads):
    n, length, d = x.shape
    hd = d // heads
    qkv = _lin(sd, pre + ".qkv", x).reshape(n, length, 3, heads, hd)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)
    return _lin(sd, pre + ".proj", (w @ v).transpose(1, 2).reshape(n, length, d))


def _mlp(sd, pre, x):
    h = _lin(sd, pre + ".fc1", x)
    h = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))
    return _lin(sd, pre + ".fc2", h)


def ref_forward(sd, x, t, y, *, heads: int, routing: str = "none", top_k: int = 2):
    """Eval-mode output of the reference model for state dict ``sd`` (reference key names).

    routing: "none" (DiT), "dtr_blocks" (DTR code base: blocks.N.routing._unit_mapping),
    "dtr_routers" (Switch-DiT code base, DTR variant: routers.N._unit_mapping), "dmoe" (Switch-DiT).
    """
    # float64 throughout, so the comparison measures only the fp32 error of the code under test.
    sd = {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}
    x = x.double()
    n, c, hgt, _ = x.shape
    w = sd["x_embedder.proj.weight"]
    d, p = w.shape[0], w.shape[-1]
    g = hgt // p
    patches = x.reshape(n, c, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(n, g * g, c * p * p)
    h = patches @ w.reshape(d, -1).T + sd["x_embedder.proj.bias"] + sd["pos_embed"]
    t_long = t.long()
    if routing == "dmoe":
        # The reference embeds all T timesteps and indexes them with the batch's t.
        full = torch.arange(sd["full_time"].shape[0])
        full_emb = _lin(sd, "t_embedder.mlp.2", F.silu(_lin(sd, "t_embedder.mlp.0", ref_timestep_embedding(full))))
        temb = full_emb[t_long]
    else:
        temb = _lin(sd, "t_embedder.mlp.2", F.silu(_lin(sd, "t_embedder.mlp.0", ref_timestep_embedding(t))))
    cond = temb + (sd["y_embedder.embedding_table.weight"][y] if "y_embedder.embedding_table.weight" in sd else 0)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        mod = _silu_lin(sd, f"blocks.{i}.adaLN_modulation.1", cond).chunk(6, dim=1)
        sh1, sc1, g1, sh2, sc2, g2 = (m[:, None] for m in mod)
        if routing == "none":
            mask = None
        elif routing == "dtr_blocks":
            mask = sd[f"blocks.{i}.routing._unit_mapping"][t_long][:, None]
        elif routing == "dtr_routers":
            mask = sd[f"routers.{i}._unit_mapping"][t_long][:, None]
        elif routing == "dmoe":
            probs = torch.softmax(_silu_lin(sd, f"routers.{i}.f_gate.1", full_emb), dim=1)
            gates, idx = probs.topk(top_k, dim=1)
            wexp, bexp = sd[f"routers.{i}.experts.w"], sd[f"routers.{i}.experts.b"]
            mix = torch.zeros_like(h)
            for s in range(n):  # per sample, per selected expert: gate * (x W_e + b_e)
                for j in range(top_k):
                    e = int(idx[t_long[s], j])
                    mix[s] += gates[t_long[s], j] * (h[s] @ wexp[e] + bexp[e])
            mask = 1 + mix
        else:
            raise ValueError(routing)
        r = h if mask is None else h * mask
        r = r + g1 * _attn(sd, f"blocks.{i}.attn", _ln(r) * (1 + sc1) + sh1, heads)
        r = r + g2 * _mlp(sd, f"blocks.{i}.mlp", _ln(r) * (1 + sc2) + sh2)
        h = r if mask is None else r + (1 - mask) * h
    shift, scale = _silu_lin(sd, "final_layer.adaLN_modulation.1", cond).chunk(2, dim=1)
    out = _lin(sd, "final_layer.linear", _ln(h) * (1 + scale[:, None]) + shift[:, None])
    oc = out.shape[-1] // (p * p)
    out = out.reshape(n, g, g, p, p, oc).permute(0, 5, 1, 3, 2, 4).reshape(n, oc, g * p, g * p)
    return out.float()


def random_state_dict(template: dict[str, torch.Tensor], seed: int = 0, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Random values for every float tensor of ``template`` (same names and shapes).

    Matrices get std scale/sqrt(fan_in) so activations stay O(1) at any width, as in
    a trained network; vectors get std 0.1·scale.  Integer tensors are copied.
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, v in template.items():
        if not v.is_floating_point():
            out[key] = v.clone()
            continue
        if key.endswith(("experts.w", "experts.weight")):
            std = scale / v.shape[1] ** 0.5  # [E, D_in, D_out]
        elif v.dim() >= 2:
            std = scale / (v[0].numel() ** 0.5)
        else:
            std = 0.1 * scale
        out[key] = torch.randn(v.shape, generator=gen) * std
    return out


@functools.lru_cache(maxsize=None)
def _cached_backbone(size: str, input_size: int, seed: int) -> dict[str, torch.Tensor]:
    import methods  # only for the list of tensor shapes

    with torch.device("meta"):
        shapes = methods.build_model("dit", size, input_size=input_size).state_dict()
    return random_state_dict({k: torch.empty(v.shape) for k, v in shapes.items()}, seed=seed)


def backbone_state(size: str = "S", input_size: int = 8, seed: int = 1) -> dict[str, torch.Tensor]:
    """Random DiT backbone weights under the published names (shared across tests; do not modify in place)."""
    return dict(_cached_backbone(size, input_size, seed))
