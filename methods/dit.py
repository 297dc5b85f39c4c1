"""DiT: the diffusion transformer baseline (Peebles & Xie 2023, arXiv 2212.09748).

``DiT`` is also the shared backbone of the routed methods: DTR and Switch-DiT
subclass it and override three hooks,

* ``route(t, t_emb, need_aux)`` – per-forward routing state from the timesteps,
* ``block_mask_delta(i, h, routing)`` – δ = m − 1 for the channel mask m of block ``i`` (or ``None``),
  which ``block_input(i, h, routing)`` turns into the block's masked input h·m (a method may
  override the latter to form h·m in one fused step),
* ``aux_losses(routing)`` – already-weighted auxiliary losses for training,

so the forward pass, initialisation, checkpoint naming and gradient
checkpointing live in one place.  The timestep reaches the routers as an
argument of ``forward`` (no module-global state).
"""
from __future__ import annotations

import pathlib
from typing import Any

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from kernels.moe_mask import apply_mask

from .layers import DiTBlock, FinalLayer, LabelEmbedder, PatchEmbed, TimestepEmbedder, sincos_pos_embed_2d
from .options import Option
from .spec import MethodSpec, OfficialCheckpoint, register_method


class DiT(nn.Module):
    """Class-conditional (or unconditional when ``num_classes == 0``) latent diffusion transformer."""

    method_name = "dit"
    OPTIONS: dict[str, Option] = {}

    def __init__(
        self,
        *,
        depth: int,
        hidden_size: int,
        num_heads: int,
        patch_size: int = 2,
        input_size: int = 32,
        in_channels: int = 4,
        num_classes: int = 1000,
        learn_sigma: bool = True,
        class_dropout_prob: float = 0.1,
        mlp_ratio: float = 4.0,
    ):
        super().__init__()
        self.depth = depth
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.patch_size = patch_size
        self.input_size = input_size
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.learn_sigma = learn_sigma
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.grad_checkpointing = False
        self.build_kwargs: dict[str, Any] = {}

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        # num_classes == 0 means unconditional: no label table at all.
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob) if num_classes > 0 else None
        # A Parameter with requires_grad=False, as in the published checkpoints (it is in their state dict).
        self.pos_embed = nn.Parameter(torch.zeros(1, self.x_embedder.num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        """Cross-option checks beyond the per-option table (raise ValueError); none for DiT."""

    # ------------------------------------------------------------------ init
    def initialize_weights(self) -> None:
        """DiT initialisation: xavier linears, zeroed adaLN and output layer, N(0, 0.02) embeddings."""

        def basic_init(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(basic_init)
        grid = self.input_size // self.patch_size
        with torch.no_grad():
            self.pos_embed.copy_(sincos_pos_embed_2d(self.hidden_size, grid).unsqueeze(0))
        # The patch conv is initialised like a linear layer over the flattened patch.
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # adaLN-Zero: every residual branch starts as the identity.
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.final_layer.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        self.initialize_router_weights()

    def initialize_router_weights(self) -> None:
        """Hook for routed subclasses (runs after the backbone initialisation)."""

    def reset_non_persistent_buffers(self) -> None:
        """Recompute closed-form buffers (after ``to_empty``); DiT has none."""

    # --------------------------------------------------------------- routing hooks
    def route(self, t: torch.Tensor, t_emb: torch.Tensor, need_aux: bool) -> Any:
        """Per-forward routing state computed from the (N,) timesteps and their embeddings."""
        return None

    def block_mask_delta(self, index: int, h: torch.Tensor, routing: Any) -> torch.Tensor | None:
        """δ = m − 1 for block ``index``'s channel mask m, broadcastable to ``h`` (N, L, D); ``None``: no routing."""
        return None

    def block_input(self, index: int, h: torch.Tensor, routing: Any) -> torch.Tensor | None:
        """h·m, the input block ``index``'s branches read, or ``None`` when the block is not routed."""
        delta = self.block_mask_delta(index, h, routing)
        return None if delta is None else apply_mask(h, delta)

    def aux_losses(self, routing: Any) -> dict[str, torch.Tensor]:
        """Already-weighted auxiliary losses to add to the diffusion loss."""
        return {}

    # --------------------------------------------------------------- utilities
    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute each block in the backward pass instead of storing its activations."""
        self.grad_checkpointing = bool(enabled)

    def diagnostics(self, out_dir: pathlib.Path) -> dict[str, str]:
        """Write method-specific figures under ``out_dir``; the plain DiT has none."""
        return {}

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, p*p*C) tokens → (N, C, H, W) images."""
        n, p, c = x.shape[0], self.patch_size, self.out_channels
        g = self.input_size // p
        x = x.reshape(n, g, g, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(n, c, g * p, g * p)

    def _check_inputs(self, x: torch.Tensor, t: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        expected = (self.in_channels, self.input_size, self.input_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x has shape {tuple(x.shape)}; expected (N, {expected[0]}, {expected[1]}, {expected[2]})")
        n = x.shape[0]
        if not torch.is_tensor(t):
            t = torch.tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(n)
        if t.shape != (n,):
            raise ValueError(f"t has shape {tuple(t.shape)}; expected a scalar or ({n},)")
        if self.y_embedder is None:
            return t, None
        if y is None:
            raise ValueError(f"y (class labels) is required: the model has num_classes={self.num_classes}")
        if not torch.is_tensor(y) or y.shape != (n,):
            shape = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
            raise ValueError(f"y has shape {shape}; expected an integer tensor of shape ({n},)")
        return t, y

    def _run_block(self, index: int, h: torch.Tensor, c: torch.Tensor, routing: Any) -> torch.Tensor:
        return self.blocks[index](h, c, self.block_input(index, h, routing))

    # --------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, t: Any, y: Any = None, return_aux: bool = False):
        """Predict noise (and the variance interpolation when ``learn_sigma``) for original timesteps ``t``.

        Returns ``out`` of shape (N, 2C or C, H, W), or ``(out, aux)`` with ``return_aux=True``
        where ``aux`` maps names to already-weighted scalar losses.
        """
        t, y = self._check_inputs(x, t, y)
        # pos_embed first: the sum then takes its row-major layout instead of the patch embedding's
        # transposed view, so no block copies the residual stream to make it contiguous (same values).
        h = self.pos_embed + self.x_embedder(x)
        t_emb = self.t_embedder(t)
        c = t_emb if self.y_embedder is None else t_emb + self.y_embedder(y, self.training)
        routing = self.route(t, t_emb, return_aux)
        use_ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for index in range(self.depth):
            if use_ckpt:
                h = checkpoint(self._run_block, index, h, c, routing, use_reentrant=False)
            else:
                h = self._run_block(index, h, c, routing)
        out = self.unpatchify(self.final_layer(h, c))
        if return_aux:
            return out, self.aux_losses(routing)
        return out


# Published DiT weights use this suite's names; any state dict no routed method claims is a DiT.
register_method(MethodSpec("dit", "DiT", DiT, OfficialCheckpoint(fallback=True),
                           summary="the diffusion transformer baseline (arXiv 2212.09748)"))
