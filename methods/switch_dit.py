"""Switch-DiT: timestep-gated sparse mixture of experts per block (Park et al. 2024, arXiv 2403.09176).

Block i owns a gate SiLU→Linear(D→E) that reads the timestep embedding and
E expert linears D→D (weights [E, D_in, D_out], bias [E, D_out]; both zero at
initialisation).  Each sample keeps its top-k experts (defaults E = 3, k = 2)
with their softmax probabilities as gates (not renormalised over the top-k,
as in the reference code), for all of its tokens, and the block's mask is

    m = 1 + Σ_j g_j · (x W_{e_j} + b_{e_j})          (x: the block input)

applied like DTR's: ``r = x·m; r += attn(r); r += mlp(r); out = r + (1 − m)·x``.
At initialisation m = 1, i.e. the model starts as DiT.  The block input x·m is
formed by ``kernels.moe_mask`` (on the Triton backend, the expert kernels and
the mask gradient in one backward launch; see ``methods.layers`` for how the
block sums its output).

Training (``return_aux=True``) adds ``w_jsd · JSD`` between the gate
probabilities and a DTR-style prior over depth·E expert slots, matched to the
current assignment of all T timesteps (``methods.prior``).  Sampling only
evaluates the gates for the batch's own timesteps; nothing is computed for the
other T − N timesteps (the reference code embeds and gates all 1000 on every
call).

Speed notes (the result is the same either way):

* When every sample of the batch has the same timestep – each sampling step,
  with or without its classifier-free guidance copy – all samples share their
  routing, so each block's expert layer is one plain GEMM over all N·L rows
  with a single gate-mixed D×D weight (``kernels.moe_torch.moe_linear_shared``)
  instead of N per-sample weights, whatever ``moe_backend`` says.  That is known without reading the device:
  a timestep given as a scalar (or any stride-0 tensor) is shared by
  construction, and a CPU tensor is checked directly; an (N,) accelerator
  tensor takes the per-sample path rather than pay a device→host sync.
* The Hungarian matching of the prior runs on the host (scipy).  The top-k
  assignment of all T timesteps it needs is launched before the blocks and
  copied to pinned memory asynchronously, so the host only waits for those
  few small kernels, not for the forward pass, and reads back one small
  integer tensor per step.
"""
from __future__ import annotations

import pathlib
import re
from typing import Any, Mapping, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from kernels.moe_torch import expert_coefficients, moe_linear_shared

from .diagnostics import save_heatmap
from .dit import DiT
from .masks import task_index, window_mask_table
from .converters import check_table
from .options import Option
from .spec import MethodSpec, OfficialCheckpoint, register_method
from .prior import match_columns, prior_jsd

MOE_BACKENDS = ("auto", "triton", "torch")


def shared_timestep(t: torch.Tensor) -> bool:
    """True when all (N,) timesteps are known to be equal without a device→host sync.

    A stride-0 tensor (a scalar timestep expanded to the batch) is equal by
    construction; a CPU tensor is compared directly.  Anything else – an
    accelerator tensor, or a value check while being traced by torch.compile –
    answers False, which only selects the general per-sample path.
    """
    if t.numel() <= 1 or t.stride(0) == 0:
        return True
    if t.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    return bool((t == t[0]).all())


class ExpertLinear(nn.Module):
    """E parallel D_in→D_out linears; each sample mixes its k experts (``kernels.moe_linear``)."""

    def __init__(self, num_experts: int, d_in: int, d_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(num_experts, d_in, d_out))
        self.bias = nn.Parameter(torch.zeros(num_experts, d_out))

    def forward(self, x: torch.Tensor, expert_idx: torch.Tensor, gates: torch.Tensor, backend: str) -> torch.Tensor:
        from kernels import moe_linear

        # The kernel contract wants contiguous inputs (the patch embedding yields a transposed view).
        return moe_linear(x.contiguous(), self.weight, self.bias, expert_idx, gates.to(x.dtype), backend=backend,
                          check_indices=False)  # indices come from topk over E logits

    def masked(self, x: torch.Tensor, expert_idx: torch.Tensor, gates: torch.Tensor, backend: str) -> torch.Tensor:
        """x·(1 + self(x)) in x's dtype (``kernels.moe_mask``: one fused backward on the triton backend)."""
        from kernels import moe_mask

        return moe_mask(x.contiguous(), self.weight, self.bias, expert_idx, gates.to(self.weight.dtype),
                        backend=backend, check_indices=False)

    def shared(self, x: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        """Every sample routed alike: ``coef`` (E,) holds each expert's summed gate; one dense GEMM."""
        return moe_linear_shared(x, self.weight, self.bias, coef)


class TaskMoERouter(nn.Module):
    """Gate (``gate.1``) and experts (``experts.weight|bias``) of one block."""

    def __init__(self, hidden_size: int, num_experts: int):
        super().__init__()
        self.gate = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, num_experts))
        self.experts = ExpertLinear(num_experts, hidden_size, hidden_size)


class SwitchRouting(NamedTuple):
    """What one forward's routing hands to every block: per-sample expert indices and gates (block-major,
    one (N, k) slice per block) or, when the whole batch shares one timestep, each block's mixing
    coefficients; the gate probabilities and timesteps for the prior loss; and the prior matching
    started early (training only)."""

    t: torch.Tensor
    probs: torch.Tensor
    idx: tuple[torch.Tensor, ...] | None = None
    gates: tuple[torch.Tensor, ...] | None = None
    coef: tuple[torch.Tensor, ...] | None = None
    prior_match: Any = None


class SwitchDiT(DiT):
    """DiT with a timestep-gated top-k mixture of expert channel masks and a diffusion-prior JSD loss."""

    method_name = "switch_dit"
    OPTIONS = {
        "num_experts": Option(3, int, lambda v: v >= 1, "an integer >= 1", "experts per block E"),
        "top_k": Option(2, int, lambda v: v >= 1, "an integer >= 1 (and <= num_experts)", "experts per sample k"),
        "w_jsd": Option(1.0, float, lambda v: v >= 0, ">= 0", "weight of the diffusion-prior JSD loss"),
        "moe_backend": Option("auto", str, lambda v: v in MOE_BACKENDS, f"one of {list(MOE_BACKENDS)}", "kernels.moe_linear backend"),
        "prior_alpha": Option(4.0, float, lambda v: v > 0, "> 0", "slide exponent α of the prior table"),
        "num_tasks": Option(1000, int, lambda v: v >= 2, "an integer >= 2", "number of diffusion timesteps T",
                            follows="diffusion.num_timesteps"),
    }

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> None:
        if options["top_k"] > options["num_experts"]:
            raise ValueError(
                f"switch_dit option top_k={options['top_k']} is invalid: must be <= num_experts={options['num_experts']}"
            )

    def __init__(
        self,
        *,
        num_experts: int = 3,
        top_k: int = 2,
        w_jsd: float = 1.0,
        moe_backend: str = "auto",
        prior_alpha: float = 4.0,
        num_tasks: int = 1000,
        **backbone: Any,
    ):
        super().__init__(**backbone)
        self.num_experts, self.top_k, self.w_jsd = num_experts, top_k, w_jsd
        self.moe_backend, self.prior_alpha, self.num_tasks = moe_backend, prior_alpha, num_tasks
        self.routers = nn.ModuleList([TaskMoERouter(self.hidden_size, num_experts) for _ in range(self.depth)])
        # The host copy feeds the (scipy) matching; the buffer follows the model to its device for the loss.
        self._prior_host = self._prior_table()
        self.register_buffer("prior_table", self._prior_host.clone(), persistent=False)

    def _prior_table(self) -> torch.Tensor:
        # β = k/E written exactly as the reference computes it, so int(U·β) agrees.
        return window_mask_table(self.num_tasks, self.depth * self.num_experts, self.prior_alpha, self.top_k / self.num_experts)

    def reset_non_persistent_buffers(self) -> None:
        self._prior_host = self._prior_table()
        self.prior_table = self._prior_host.to(self.pos_embed.device)

    def initialize_router_weights(self) -> None:
        # Gates keep the xavier init of every linear; experts start at zero so that m = 1.
        for router in self.routers:
            nn.init.zeros_(router.experts.weight)
            nn.init.zeros_(router.experts.bias)

    # ------------------------------------------------------------------ routing
    def gate_probs(self, t_emb: torch.Tensor) -> torch.Tensor:
        """(N, depth, E) gate probabilities of every block, as one matmul over the stacked gate weights."""
        weight = torch.cat([r.gate[1].weight for r in self.routers])  # (depth·E, D)
        bias = torch.cat([r.gate[1].bias for r in self.routers])
        logits = F.linear(F.silu(t_emb), weight, bias)
        return torch.softmax(logits.view(-1, self.depth, self.num_experts), dim=-1)

    def route(self, t: torch.Tensor, t_emb: torch.Tensor, need_aux: bool) -> SwitchRouting:
        # Gates only for the batch's own timesteps: a handful of small kernels per forward, not per block.
        probs = self.gate_probs(t_emb)
        gates, idx = probs.topk(self.top_k, dim=-1)  # (N, depth, k), not renormalised
        prior_match = self._start_prior_match() if need_aux and self.w_jsd != 0 else None
        if shared_timestep(t):
            # Equal timesteps give equal gates: sample 0's (depth, E) mixing coefficients serve the batch.
            coef = expert_coefficients(idx[0], gates[0], self.num_experts).unbind(0)
            return SwitchRouting(t, probs, coef=coef, prior_match=prior_match)
        # Block-major copies so each block's (N, k) slice is contiguous, as the kernel expects.
        return SwitchRouting(t, probs, idx=idx.transpose(0, 1).contiguous().unbind(0),
                             gates=gates.transpose(0, 1).contiguous().unbind(0), prior_match=prior_match)

    def block_mask_delta(self, index: int, h: torch.Tensor, routing: SwitchRouting) -> torch.Tensor:
        # m − 1 = Σ_j g_j · expert_j(h): the expert mixture is exactly the mask's offset from 1.
        experts = self.routers[index].experts
        if routing.coef is not None:
            return experts.shared(h, routing.coef[index])
        return experts(h, routing.idx[index], routing.gates[index], self.moe_backend)

    def block_input(self, index: int, h: torch.Tensor, routing: SwitchRouting) -> torch.Tensor:
        if routing.coef is not None:
            return super().block_input(index, h, routing)
        return self.routers[index].experts.masked(h, routing.idx[index], routing.gates[index], self.moe_backend)

    @torch.no_grad()
    def _assignment_indices(self) -> torch.Tensor:
        """(T, depth, k) top-k expert indices of every timestep under the current gates."""
        full = self.t_embedder(torch.arange(self.num_tasks, device=self.pos_embed.device))
        return self.gate_probs(full).topk(self.top_k, dim=-1).indices

    @torch.no_grad()
    def task_expert_assignment(self) -> torch.Tensor:
        """(T, depth, E) one-hot top-k assignment of every timestep under the current gates."""
        idx = self._assignment_indices()
        return torch.zeros(self.num_tasks, self.depth, self.num_experts, device=idx.device).scatter_(2, idx, 1.0)

    def aux_losses(self, routing: SwitchRouting) -> dict[str, torch.Tensor]:
        probs = routing.probs.flatten(1)  # (N, depth·E), block-major like the prior's columns
        if self.w_jsd == 0:
            return {"jsd": probs.sum() * 0.0}
        pending = routing.prior_match
        perm = self._finish_prior_match(self._start_prior_match() if pending is None else pending)
        rows = self.prior_table[task_index(routing.t, self.num_tasks)]
        return {"jsd": self.w_jsd * prior_jsd(probs, rows.to(probs.dtype), perm, self.depth)}

    @torch.compiler.disable
    def _start_prior_match(self) -> tuple[torch.Tensor, Any]:
        """Launch the assignment of all T timesteps and its copy to the host; returns (host indices, event)."""
        idx = self._assignment_indices()
        if idx.device.type != "cuda":
            return idx.cpu(), None
        # One small integer tensor crosses to pinned memory behind the kernels that produce it; the
        # event lets the host wait for exactly those, not for the blocks queued after them.
        small = torch.uint8 if self.num_experts <= 256 else torch.int64
        host = torch.empty(idx.shape, dtype=small, pin_memory=True)
        host.copy_(idx.to(small), non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return host, done

    @torch.compiler.disable
    def _finish_prior_match(self, pending: tuple[torch.Tensor, Any]) -> torch.Tensor:
        # Re-matched on every training step, as the reference code does (cheap: a U×U assignment, U = depth·E).
        idx, done = pending
        if done is not None:
            done.synchronize()
        assign = torch.zeros(self.num_tasks, self.depth, self.num_experts).scatter_(2, idx.long(), 1.0)
        return match_columns(assign.flatten(1), self._prior_host)

    # ------------------------------------------------------------------ diagnostics
    def diagnostics(self, out_dir: pathlib.Path) -> dict[str, str]:
        """Task–expert map (T × depth·E) and task affinity (T × T cosine of the assignments)."""
        out_dir = pathlib.Path(out_dir)
        assign = self.task_expert_assignment().flatten(1).float().cpu()
        unit = assign / assign.norm(dim=1, keepdim=True).clamp_min(1e-12)
        affinity = unit @ unit.T
        lines = [i * self.num_experts - 0.5 for i in range(1, self.depth)]
        return {
            "task_expert_map": save_heatmap(
                assign.numpy(), out_dir / "task_expert_map.png",
                title=f"Switch-DiT top-{self.top_k} experts per timestep ({self.depth} blocks x {self.num_experts})",
                xlabel="block · expert", ylabel="timestep t", cmap="gray", vlines=lines,
            ),
            "task_affinity": save_heatmap(
                affinity.numpy(), out_dir / "task_affinity.png",
                title="timestep affinity: cosine of expert assignments", xlabel="timestep t", ylabel="timestep t",
            ),
        }


# --------------------------------------------------------------------- official checkpoints
# The Switch-DiT code (arXiv 2403.09176) names the gate ``routers.N.f_gate.1`` and the experts
# ``routers.N.experts.w|b`` (already laid out [E, D_in, D_out]); it also stores the prior table
# ``prior._unit_mapping`` and ``full_time = arange(T)``, both re-derivable, so checked and dropped.
_OFFICIAL = re.compile(r"^(routers\.\d+\.f_gate\.|prior\._unit_mapping$|full_time$)")
_OURS = re.compile(r"^routers\.\d+\.gate\.")
_RENAMES = ((re.compile(r"^(routers\.\d+)\.f_gate\."), r"\1.gate."),
            (re.compile(r"^(routers\.\d+\.experts)\.w$"), r"\1.weight"),
            (re.compile(r"^(routers\.\d+\.experts)\.b$"), r"\1.bias"))


def _layout(keys: list[str]) -> bool | None:
    if any(_OFFICIAL.match(k) for k in keys):
        return True
    return False if any(_OURS.match(k) for k in keys) else None


def _options(routing: Mapping[str, Any]) -> dict[str, Any]:
    param = routing.get("param", {}) or {}
    return {"num_experts": int(param.get("num_experts", 3)), "top_k": int(param.get("k", 2)),
            "w_jsd": float(routing.get("w_JSD", 1.0)), "num_tasks": int(routing.get("taskcount", 1000)),
            "prior_alpha": 4.0}  # fixed in that code base


def _convert(state, hidden_size: int, depth: int, options: Mapping[str, Any]) -> dict:
    e, k, tasks = options["num_experts"], options["top_k"], options["num_tasks"]
    out = {}
    for key, value in state.items():
        if key == "full_time":
            check_table(key, value, torch.arange(tasks).float(), "timestep list arange(T)")
        elif key == "prior._unit_mapping":
            prior = window_mask_table(tasks, depth * e, options["prior_alpha"], k / e)
            check_table(key, value, prior, f"Switch-DiT prior (k/E={k}/{e})")
        else:
            for pattern, repl in _RENAMES:
                key = pattern.sub(repl, key)
            out[key] = value
    return out


register_method(MethodSpec("switch_dit", "Switch-DiT", SwitchDiT,
                           OfficialCheckpoint(layout=_layout, routing_names=("DMoE",), options=_options,
                                              convert=_convert, own_keys=True),
                           summary="timestep-gated sparse mixture of expert masks with a prior JSD loss "
                                   "(arXiv 2403.09176)"))
