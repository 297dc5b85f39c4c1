"""DTR: Denoising Task Routing (Park et al., ICLR 2024, arXiv 2310.07138).

Every DiT block multiplies its input by a fixed 0/1 channel mask chosen by the
timestep (the "task"), runs attention and MLP on the masked activations and
adds the masked-out input channels back afterwards:

    r = x·m_t;  r += gate·attn(r);  r += gate·mlp(r);  out = r + (1 − m_t)·x

(the residual branches still write to every channel; only their input is
masked – the placement of the reference code).

with m_t the sliding window of ``methods.masks`` (defaults α = 4, β = 0.8).
No parameters are added.  All blocks share one T × D table, kept as a
non-persistent buffer: it is a closed-form function of (α, β, T, D), so a state
dict has exactly the DiT keys.
"""
from __future__ import annotations

import pathlib
import re
from typing import Any, Mapping

import torch

from .diagnostics import save_heatmap
from .dit import DiT
from .masks import task_index, window_mask_table
from .converters import check_table
from .options import Option
from .spec import MethodSpec, OfficialCheckpoint, register_method


class DTR(DiT):
    """DiT whose blocks are channel-routed by a timestep-indexed sliding-window mask."""

    method_name = "dtr"
    OPTIONS = {
        "alpha": Option(4.0, float, lambda v: v > 0, "> 0", "window slide exponent α"),
        "beta": Option(0.8, float, lambda v: 0 < v <= 1, "in (0, 1]", "fraction of channels active per task β"),
        "num_tasks": Option(1000, int, lambda v: v >= 2, "an integer >= 2", "number of diffusion timesteps T",
                            follows="diffusion.num_timesteps"),
    }

    def __init__(self, *, alpha: float = 4.0, beta: float = 0.8, num_tasks: int = 1000, **backbone: Any):
        super().__init__(**backbone)
        self.alpha, self.beta, self.num_tasks = alpha, beta, num_tasks
        self.register_buffer("task_masks", self._mask_table(), persistent=False)

    def _mask_table(self) -> torch.Tensor:
        return window_mask_table(self.num_tasks, self.hidden_size, self.alpha, self.beta)

    def reset_non_persistent_buffers(self) -> None:
        device = self.pos_embed.device
        self.task_masks = self._mask_table().to(device)

    def route(self, t: torch.Tensor, t_emb: torch.Tensor, need_aux: bool) -> torch.Tensor:
        """δ = m_t − 1 as (N, 1, D), shared by all blocks (they use the same table)."""
        return self.task_masks[task_index(t, self.num_tasks)].unsqueeze(1) - 1

    def block_mask_delta(self, index: int, h: torch.Tensor, routing: torch.Tensor) -> torch.Tensor:
        return routing

    def diagnostics(self, out_dir: pathlib.Path) -> dict[str, str]:
        """The (timestep × channel) mask shared by every block."""
        path = save_heatmap(
            self.task_masks.detach().cpu().numpy(),
            pathlib.Path(out_dir) / "dtr_masks.png",
            title=f"DTR channel mask (all {self.depth} blocks), alpha={self.alpha:g}, beta={self.beta:g}",
            xlabel="channel",
            ylabel="timestep t",
            cmap="gray",
        )
        return {"dtr_masks": path}


# --------------------------------------------------------------------- official checkpoints
# The DTR code (arXiv 2310.07138) stores one T×D mask table per block (``blocks.N.routing._unit_mapping``,
# or ``routers.N._unit_mapping`` in the Switch-DiT code base); ours is the closed form, so each
# table is checked against it and dropped.
_TABLE = re.compile(r"^(blocks\.\d+\.routing|routers\.\d+)\._unit_mapping$")


def _layout(keys: list[str]) -> bool | None:
    return True if any(_TABLE.match(k) for k in keys) else None


def _options(routing: Mapping[str, Any]) -> dict[str, Any]:
    if "name" not in routing:  # the DTR code base: models.routing, alpha fixed at 4
        init = routing.get("init_method", "DTR")
        if init != "DTR":
            raise ValueError(f"reference DTR checkpoint uses init_method={init!r}; "
                             "only the 'DTR' sliding-window mask is supported")
        alpha, beta, tasks = 4.0, routing.get("sharing_ratio", 0.8), routing.get("taskcount", 1000)
    else:  # the Switch-DiT code base: routing.name = DTR, knobs under routing.param
        param = routing.get("param", {}) or {}
        alpha, beta, tasks = param.get("alpha", 4.0), param.get("beta", 0.8), param.get("taskcount", 1000)
    return {"alpha": float(alpha), "beta": float(beta), "num_tasks": int(tasks)}


def _convert(state, hidden_size: int, depth: int, options: Mapping[str, Any]) -> dict:
    expected = window_mask_table(options["num_tasks"], hidden_size, options["alpha"], options["beta"])
    out = {}
    for key, value in state.items():
        if _TABLE.match(key):
            check_table(key, value, expected, f"DTR mask (alpha={options['alpha']}, beta={options['beta']})")
        else:
            out[key] = value
    return out


register_method(MethodSpec("dtr", "DTR", DTR,
                           OfficialCheckpoint(layout=_layout, routing_names=(None, "DTR"), options=_options,
                                              convert=_convert),
                           summary="denoising task routing: timestep-indexed channel masks (arXiv 2310.07138)"))
