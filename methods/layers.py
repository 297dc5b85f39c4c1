"""Building blocks of the DiT backbone (Peebles & Xie 2023, arXiv 2212.09748).

Patch embedding, sinusoidal timestep embedding, label embedding with a null
class for classifier-free guidance, multi-head self-attention, the MLP, the
fixed 2-D sin-cos positional table (MAE, arXiv 2111.06377, eq. in its appendix)
and the adaLN-Zero block of DiT Sec. 3.2.  Attribute names follow the published
DiT checkpoints so their state dicts load with ``strict=True``.

The block accepts an optional routed input x·m for a channel mask m: it computes
``r = x·m; r += attn(r); r += mlp(r); out = r + (1 − m)·x``, the placement
used by Denoising Task Routing (arXiv 2310.07138, Sec. 3.2) and Switch-DiT
(arXiv 2403.09176, Sec. 3.2); without it, the plain DiT block.  Since
r = x·m + A + M with A, M the two residual branches, the output is evaluated
as x + A + M (the same value, with fewer passes over the activations).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation: per-sample affine transform broadcast over tokens."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def timestep_frequencies(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features [cos(t·ω_i), sin(t·ω_i)] with ω_i = max_period^(-i/half) (DDPM/GLIDE)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.reshape(-1, 1).float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def sincos_pos_embed_2d(embed_dim: int, grid_size: int) -> torch.Tensor:
    """Fixed 2-D sin-cos table, shape (grid_size**2, embed_dim), row-major over (h, w).

    The first half of the channels encodes the column (w) coordinate and the
    second half the row (h) coordinate, each as [sin(pos·ω), cos(pos·ω)] with
    ω_i = 10000^(-i/(embed_dim/4)); computed in float64 like the published table.
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim={embed_dim} must be divisible by 4 for a 2-D sin-cos embedding")
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    coords = torch.arange(grid_size, dtype=torch.float64)
    rows = coords.repeat_interleave(grid_size)  # h index of token h*G + w
    cols = coords.repeat(grid_size)  # w index of token h*G + w

    def one_axis(pos: torch.Tensor) -> torch.Tensor:
        ang = pos[:, None] * omega[None]
        return torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)

    return torch.cat([one_axis(cols), one_axis(rows)], dim=1).float()


class PatchEmbed(nn.Module):
    """Non-overlapping p×p patches → tokens via a strided convolution (ViT)."""

    def __init__(self, input_size: int, patch_size: int, in_channels: int, hidden_size: int):
        super().__init__()
        self.input_size = input_size
        self.patch_size = patch_size
        self.num_patches = (input_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class TimestepEmbedder(nn.Module):
    """Timestep → vector: sinusoidal features followed by Linear-SiLU-Linear (names ``mlp.0``/``mlp.2``)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_frequencies(t, self.frequency_embedding_size))


class LabelEmbedder(nn.Module):
    """Class label → vector. Row ``num_classes`` is the null label used by classifier-free guidance.

    During training each label is replaced by the null label with probability
    ``dropout_prob`` (Ho & Salimans 2022, arXiv 2207.12598).
    """

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)

    def forward(self, labels: torch.Tensor, train: bool) -> torch.Tensor:
        if train and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection laid out as [q | k | v] × heads × head_dim."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


class Mlp(nn.Module):
    """Two-layer MLP with tanh-approximated GELU (names ``fc1``/``fc2``)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _AddToBoth(torch.autograd.Function):
    """(x + a, r + a): the routed block adds its attention branch a to two streams.

    Autograd would cast each stream's float32 gradient to a's 16-bit autocast dtype and
    then sum the two; here the sum is one add written straight in a's dtype.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, r: torch.Tensor, a: torch.Tensor):
        ctx.a_dtype = a.dtype
        return x + a, r + a

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_x: torch.Tensor, grad_r: torch.Tensor):
        grad_a = torch.empty(grad_x.shape, dtype=ctx.a_dtype, device=grad_x.device)
        torch.add(grad_x, grad_r, out=grad_a)
        return grad_x, grad_r, grad_a


class DiTBlock(nn.Module):
    """adaLN-Zero transformer block (DiT Sec. 3.2), optionally channel-routed by a mask m = 1 + δ."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor, masked: torch.Tensor | None = None) -> torch.Tensor:
        """``masked`` is the routed input x·m (``kernels.apply_mask`` or ``kernels.moe_mask``), or None
        for the plain block."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        routed = masked is not None
        r = masked if routed else x
        attn = gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(r), shift_msa, scale_msa))
        # The routed output r + (1 − m)·x, with r = x·m + A + M, equals x + A + M: the mask only changes
        # what the branches read, so the stream leaving the block is summed as in DiT. That saves the
        # (1 − m)·x term and its gradients (two multiplies per block forward and backward, and a cast of
        # dδ), and x·m − x·m no longer cancels in floating point.
        if routed:
            h, r = _AddToBoth.apply(x, r, attn)
        else:
            h = r = x + attn
        return h + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(r), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    """adaLN-modulated LayerNorm followed by the linear patch decoder."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))
