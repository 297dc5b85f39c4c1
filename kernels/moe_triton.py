"""Fused Triton kernels for the Switch-DiT expert linear (forward and backward).

Computes, for sample n with experts e_j = expert_idx[n, j] and gates g_j,

    out[n] = sum_j g_j * (x[n] @ W[e_j] + b[e_j])                               (1)

(Park et al. 2024, arXiv 2403.09176, Sec. 3.2). Switch-DiT routes by timestep,
so a routing decision covers all L tokens of a sample. That makes (1) a
grouped GEMM in the sense of ScatterMoE (arXiv 2403.08245, Sec. 3) whose
groups are whole samples, and, because each expert is one linear map, (1) is
linear in the weights:

    out[n] = x[n] @ Wmix[n] + bmix[n],  Wmix[n] = sum_j g_j W[e_j],
                                        bmix[n] = sum_j g_j b[e_j]              (2)

Kernels (one launch per pass, no gathered copy of x, no atomics, so results
are bitwise deterministic for a given tile table):

* `_mixed_linear_kernel` (forward and dx). One program per (sample, row tile,
  column tile); it walks K, loads the tile of x and the k expert tiles of W,
  mixes the expert tiles with the gates in fp32 registers and issues a single
  tensor-core dot. Compared with k separate expert GEMMs this does 1/k of the
  MACs; the mixing is k*BK*BN FMAs per BM*BK*BN MACs. dx uses the same kernel
  with W read transposed: dx[n] = dy[n] @ Wmix[n]^T.
* `_expert_grad_kernel` (dweight, dbias, dgates). The N*k (sample, slot)
  pairs are sorted by expert on the device (`expert_order`: one stable
  argsort, no host read-back; each program counts its expert's share from
  expert_idx itself). One program per (expert, D_in x D_out tile, share of
  that expert's pairs) runs one flat K loop over (pair, row block), so tile
  loads stay software-pipelined across sample boundaries, and accumulates
  the running sum of G_n = x[n]^T dy[n] in fp32 (never reset, so the
  tensor-core accumulator chain is only read, at sample ends, never rewritten;
  G_n is recovered there by summation by parts); per sample
      dW[e]     += g * G_n
      dgates    ~  <W[e], G_n>_F + <b[e], s_n>   (d out[n] / d g_j = x[n] @ W[e_j] + b[e_j])
      db[e]     += g * s_n                       (s_n = sum_l dy[n, l], one torch sum)
  The dgates terms are per-tile partial sums written to a (tiles, N*k) buffer
  and summed afterwards, which keeps the reduction order fixed.

`kernels.moe_mask` (the Switch-DiT block input x·(1 + out), kernels/moe_mask.py)
uses the same three launches through `_FusedMaskedMoE`; its dx launch adds the
mask's own gradient g·(1 + out) in the epilogue (HAS_RES) and stores x's dtype.

Work per forward+backward: N*L*D_in*D_out MACs forward, the same for dx and
k*N*L*D_in*D_out for dW, against 3*k*N*L*D_in*D_out for per-expert GEMMs;
forward is one launch, backward two plus small fixed-order reductions.

The gradient kernel gives each program one expert's slots only (no branch over
the other experts' samples). Measurements behind the design and the tile tables
are in results/kernels/NOTES.md and the records beside it.

Accumulation is fp32; inputs are fp32 (tf32 dots on GPU), fp16 or bf16.
Tile sizes come from a small table keyed by D (no multi-config autotune: it
cannot run under TRITON_INTERPRET=1); benchmark/speed/compile_check.py compiles the
table's launches for sm_90 on a CPU to check for spills. The op is a
`torch.library.custom_op` with a fake implementation and an autograd formula,
so torch.compile can trace a model that calls it.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
from dataclasses import dataclass, replace

import torch
import triton
import triton.language as tl


# Triton reads TRITON_INTERPRET when a kernel is decorated, i.e. when this
# module is imported; remember what it saw so the CPU check below is truthful.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# --------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------
@triton.jit
def _gate(g_ptr, idx_ptr, n, j, TOPK: tl.constexpr):
    """(expert index, fp32 gate) of slot j of sample n."""
    e = tl.load(idx_ptr + n * TOPK + j)
    g = tl.load(g_ptr + n * TOPK + j).to(tl.float32)
    return e, g


@triton.jit
def _tile_coords(pid, NROWS, NCOLS, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """(row-tile index, row indices, column indices, row mask, column mask) of tile `pid`, tiles row-major."""
    num_c = tl.cdiv(NCOLS, BLOCK_C)
    pid_r = pid // num_c
    rr = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    rc = (pid % num_c) * BLOCK_C + tl.arange(0, BLOCK_C)
    return pid_r, rr, rc, rr < NROWS, rc < NCOLS


@triton.jit
def _mixed_linear_kernel(
    a_ptr, w_ptr, b_ptr, idx_ptr, g_ptr, out_ptr, res_ptr, rmul_ptr,
    L, K, NOUT,
    stride_we, stride_wk, stride_wn,
    HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, TOPK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    EVEN_K: tl.constexpr, SWAP_AB: tl.constexpr,
):
    """out[n, m-tile, o-tile] = a[n] @ Wmix[n] (+ bmix[n]), eq. (2).

    a is (N, L, K) contiguous; W[e] is addressed through (stride_wk,
    stride_wn) so the same code reads W (forward) or W^T (dx). With SWAP_AB
    the tile is computed transposed, out^T = Wmix^T @ a^T, which lets the
    register-mixed weights be the left dot operand. With HAS_RES the epilogue
    adds res + res·rmul (both (N, L, NOUT)): the masked-input gradient
    g·(1 + δ) that `moe_mask`'s dx carries besides dδ @ Wmix^T.
    """
    n = tl.cast(tl.program_id(1), tl.int64)
    _pid_m, rm, rn, m_ok, n_ok = _tile_coords(tl.program_id(0), L, NOUT, BLOCK_M, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    a_base = a_ptr + n * L * K

    # Orientation of the tiles: [M, K] x [K, N] or, swapped, [N, K] x [K, M].
    if SWAP_AB:
        a_offs = rm[None, :] * K + rk[:, None]
        w_offs = rn[:, None] * stride_wn + rk[None, :] * stride_wk
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        a_offs = rm[:, None] * K + rk[None, :]
        w_offs = rk[:, None] * stride_wk + rn[None, :] * stride_wn
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)

    for k0 in range(0, K, BLOCK_K):
        k_ok = (k0 + rk) < K
        if SWAP_AB:
            a_mask = m_ok[None, :] & k_ok[:, None]
            w_mask = n_ok[:, None] & k_ok[None, :]
        else:
            a_mask = m_ok[:, None] & k_ok[None, :]
            w_mask = k_ok[:, None] & n_ok[None, :]
        if EVEN_K:
            # K is a multiple of BLOCK_K: only the row/column edges need masks.
            if SWAP_AB:
                a_mask = m_ok[None, :]
                w_mask = n_ok[:, None]
            else:
                a_mask = m_ok[:, None]
                w_mask = n_ok[None, :]
        a = tl.load(a_base + a_offs + k0, mask=a_mask, other=0.0)
        w_k = w_ptr + k0 * stride_wk
        if TOPK == 1:
            # One expert: dot with W directly, the gate scales the result.
            e0, _g0 = _gate(g_ptr, idx_ptr, n, 0, TOPK)
            w = tl.load(w_k + e0 * stride_we + w_offs, mask=w_mask, other=0.0)
        else:
            wmix = tl.zeros(w_offs.shape, dtype=tl.float32)
            for j in tl.static_range(TOPK):
                e, g = _gate(g_ptr, idx_ptr, n, j, TOPK)
                wj = tl.load(w_k + e * stride_we + w_offs, mask=w_mask, other=0.0)
                wmix += g * wj.to(tl.float32)
            w = wmix.to(a.dtype)
        if SWAP_AB:
            acc = tl.dot(w, a, acc)
        else:
            acc = tl.dot(a, w, acc)

    if TOPK == 1:
        _e0, g0 = _gate(g_ptr, idx_ptr, n, 0, TOPK)
        acc = acc * g0
    if HAS_BIAS:
        bmix = tl.zeros((BLOCK_N,), dtype=tl.float32)
        for j in tl.static_range(TOPK):
            e, g = _gate(g_ptr, idx_ptr, n, j, TOPK)
            bmix += g * tl.load(b_ptr + e * NOUT + rn, mask=n_ok, other=0.0).to(tl.float32)
        if SWAP_AB:
            acc = acc + bmix[:, None]
        else:
            acc = acc + bmix[None, :]

    if SWAP_AB:
        offs = n * L * NOUT + rm[None, :] * NOUT + rn[:, None]
        out_mask = n_ok[:, None] & m_ok[None, :]
    else:
        offs = n * L * NOUT + rm[:, None] * NOUT + rn[None, :]
        out_mask = m_ok[:, None] & n_ok[None, :]
    if HAS_RES:
        res = tl.load(res_ptr + offs, mask=out_mask, other=0.0).to(tl.float32)
        rmul = tl.load(rmul_ptr + offs, mask=out_mask, other=0.0).to(tl.float32)
        acc = acc + (res + res * rmul)
    tl.store(out_ptr + offs, acc, mask=out_mask)


@triton.jit
def _expert_grad_kernel(
    x_ptr, dy_ptr, w_ptr, b_ptr, g_ptr, idx_ptr, order_ptr, col_ptr,
    dw_ptr, db_ptr, dgp_ptr,
    NK, L, DIN, DOUT, SPLIT,
    TOPK: tl.constexpr, NK_POW2: tl.constexpr,
    BLOCK_I: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_L: tl.constexpr, EVEN: tl.constexpr,
):
    """dW, db and per-tile dgates partials for one expert and one (D_in, D_out) tile.

    `order` lists the N*k slots n*TOPK + j stably sorted by expert, so expert
    e's slots start at #(idx < e) and number #(idx == e), both counted here
    from expert_idx. Program (tile, e, s) takes the s-th of SPLIT equal
    shares of them. Its K loop is one flat range over (slot, row block), so
    the tile loads stay pipelined across sample boundaries; the fp32 running
    sum of G_n = x[n]^T dy[n] is read at each sample's last row block to give
        dW[e] += g * G_n,   dgp[tile, slot] = <W[e], G_n> on the tile,
    and, in the row-0 tiles, with s_n = col[n] = sum_l dy[n, l]:
        db[e] += g * s_n,   dgp[tile, slot] += <b[e], s_n> on the columns.
    Every dw/db (split, e) tile and every (tile, slot) partial has one writer.
    """
    pid_t = tl.program_id(0)
    e = tl.program_id(1)
    s = tl.program_id(2)
    num_e = tl.num_programs(1)
    pid_i, ri, ro, i_ok, o_ok = _tile_coords(pid_t, DIN, DOUT, BLOCK_I, BLOCK_O)
    rl = tl.arange(0, BLOCK_L)
    tile_mask = i_ok[:, None] & o_ok[None, :]
    e64 = tl.cast(e, tl.int64)

    rs = tl.arange(0, NK_POW2)
    experts = tl.load(idx_ptr + rs, mask=rs < NK, other=-1)
    first = tl.sum(((experts >= 0) & (experts < e)).to(tl.int32), axis=0)
    count = tl.sum((experts == e).to(tl.int32), axis=0)
    lo = first + (count * s) // SPLIT
    hi = first + (count * (s + 1)) // SPLIT
    nblk = tl.cdiv(L, BLOCK_L)

    # Kept in the input dtype (half the registers of fp32) and widened per use.
    w_tile = tl.load(w_ptr + e64 * DIN * DOUT + ri[:, None] * DOUT + ro[None, :], mask=tile_mask, other=0.0)
    b_vec = tl.load(b_ptr + e64 * DOUT + ro, mask=o_ok, other=0.0).to(tl.float32)
    acc = tl.zeros((BLOCK_I, BLOCK_O), dtype=tl.float32)
    run = tl.zeros((BLOCK_I, BLOCK_O), dtype=tl.float32)
    db_acc = tl.zeros((BLOCK_O,), dtype=tl.float32)
    p_prev = tl.zeros((), dtype=tl.float32)
    for b in range(lo * nblk, hi * nblk):
        q = b // nblk
        l0 = (b - q * nblk) * BLOCK_L
        slot = tl.load(order_ptr + q)
        n64 = tl.cast(slot // TOPK, tl.int64)
        ll = l0 + rl
        x_base = x_ptr + n64 * L * DIN
        dy_base = dy_ptr + n64 * L * DOUT
        if EVEN:
            # Tiles divide L, D_in and D_out: unmasked loads.
            xt = tl.load(x_base + ll[None, :] * DIN + ri[:, None])
            dyt = tl.load(dy_base + ll[:, None] * DOUT + ro[None, :])
        else:
            l_ok = ll < L
            xt = tl.load(x_base + ll[None, :] * DIN + ri[:, None], mask=i_ok[:, None] & l_ok[None, :], other=0.0)
            dyt = tl.load(dy_base + ll[:, None] * DOUT + ro[None, :], mask=l_ok[:, None] & o_ok[None, :], other=0.0)
        # The running sum S_k = G_1 + ... + G_k is never reset, so the
        # accumulator chain is only read at sample ends, never rewritten.
        run = tl.dot(xt, dyt, run)
        if l0 + BLOCK_L >= L:
            # Last row block of sample k: G_k = S_k - S_(k-1). By summation by
            # parts sum_k g_k G_k = sum_k (g_k - g_(k+1)) S_k (g after the
            # share's last sample = 0), and <W, G_k> = <W, S_k> - <W, S_(k-1)>.
            g = tl.load(g_ptr + slot).to(tl.float32)
            has_next = q + 1 < hi
            next_slot = tl.load(order_ptr + q + 1, mask=has_next, other=0)
            g_next = tl.load(g_ptr + next_slot, mask=has_next, other=0.0).to(tl.float32)
            acc += (g - g_next) * run
            p_run = tl.sum(tl.sum(run * w_tile.to(tl.float32), axis=1), axis=0)
            part = p_run - p_prev
            p_prev = p_run
            if pid_i == 0:
                # Bias terms once per column tile: the row-0 tile owns them.
                col = tl.load(col_ptr + n64 * DOUT + ro, mask=o_ok, other=0.0)
                part += tl.sum(col * b_vec, axis=0)
                db_acc += g * col
            tl.store(dgp_ptr + pid_t * NK + slot, part)

    split_e = tl.cast(s, tl.int64) * num_e + e64
    tl.store(dw_ptr + split_e * DIN * DOUT + ri[:, None] * DOUT + ro[None, :], acc, mask=tile_mask)
    if pid_i == 0:
        tl.store(db_ptr + split_e * DOUT + ro, db_acc, mask=o_ok)


# --------------------------------------------------------------------------
# tile tables (keyed by D; see module docstring for why not autotune)
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class MMTiles:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    swap_ab: bool = False


@dataclass(frozen=True)
class GradTiles:
    block_i: int
    block_o: int
    block_l: int
    num_warps: int
    num_stages: int


# (largest D the row applies to, tiles). GPU tiles keep every dim >= 16 and
# BLOCK_K >= 16 so 16-bit tl.dot is legal on tensor cores.
# swap_ab: the gate-mixed weight tile is built in registers; as the left dot
# operand it can feed Hopper's wgmma from registers, while as the right one it
# would take a round trip through shared memory every K step.
MM_TABLE: tuple[tuple[float, MMTiles], ...] = (
    (512, MMTiles(128, 64, 64, 4, 4, swap_ab=True)),
    # Wide tiles for large D: fewer programs reload the gate-mixed weight (results/kernels/NOTES.md).
    (math.inf, MMTiles(256, 128, 64, 8, 3, swap_ab=False)),
)
# dx = dy @ Wmix^T reads the weight transposed; the large-D row keeps 128x128 tiles because the
# sweeps so far disagree on wider ones (results/kernels/NOTES.md).
DX_TABLE: tuple[tuple[float, MMTiles], ...] = (
    (512, MMTiles(128, 64, 64, 4, 4, swap_ab=True)),
    (math.inf, MMTiles(128, 128, 64, 8, 3, swap_ab=True)),
)
# Every entry must compile without register spills for sm_90 (benchmark/speed/compile_check.py
# checks it on a CPU). The gradient kernel holds two fp32 accumulators (G_n and dW), so its tiles
# are narrower and give more programs.
GRAD_TABLE: tuple[tuple[float, GradTiles], ...] = (
    (512, GradTiles(128, 64, 64, 8, 3)),
    (math.inf, GradTiles(128, 64, 64, 4, 3)),
)


@dataclass(frozen=True)
class TilePlan:
    """Tiles a caller sets instead of the tables: a tile sweep, or a test that needs several
    tiles per dimension under the interpreter. ``mm`` is the forward launch's (and dx's unless
    ``dx`` is given), ``grad`` the expert-gradient launch's, ``split`` its sample split."""
    mm: MMTiles | None = None
    dx: MMTiles | None = None
    grad: GradTiles | None = None
    split: int | None = None

    def mixed(self, transpose_w: bool) -> MMTiles | None:
        return (self.dx or self.mm) if transpose_w else self.mm


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _next_pow2(v: int) -> int:
    # Plain Python on purpose: triton.next_power_of_2 / triton.cdiv go through
    # Triton's function wrappers, which cost more host time than the launch.
    return 1 << max(int(v) - 1, 0).bit_length()


def _pow2_clamp(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, _next_pow2(max(int(v), 1))))


def mm_tiles(seq: int, k: int, nout: int, itemsize: int = 2, transpose_w: bool = False,
             tiles: MMTiles | None = None) -> MMTiles:
    """Tiles for `_mixed_linear_kernel` with L=seq rows per sample (``transpose_w``: the dx launch);
    ``tiles`` replaces the table's choice."""
    if tiles is not None:
        t = tiles
    elif INTERPRET:
        # The interpreter runs each program as numpy ops: few big tiles win.
        return MMTiles(_pow2_clamp(seq, 16, 64), _pow2_clamp(nout, 16, 64), _pow2_clamp(k, 16, 64), 4, 1)
    else:
        table = DX_TABLE if transpose_w else MM_TABLE
        t = next(tiles for limit, tiles in table if max(k, nout) <= limit)
        if itemsize == 4:
            # fp32 tiles take twice the shared memory per stage: halve K.
            t = replace(t, block_k=max(16, t.block_k // 2))
    # A tile never spans two samples, so rows beyond L are wasted work.
    return replace(t, block_m=min(t.block_m, _pow2_clamp(seq, 16, t.block_m)))


def grad_tiles(seq: int, din: int, dout: int, itemsize: int = 2) -> GradTiles:
    """Tiles for `_expert_grad_kernel`."""
    if INTERPRET:
        return GradTiles(_pow2_clamp(din, 16, 64), _pow2_clamp(dout, 16, 64), _pow2_clamp(seq, 16, 64), 4, 1)
    t = next(tiles for limit, tiles in GRAD_TABLE if max(din, dout) <= limit)
    if itemsize == 4:
        # fp32 tiles: half the rows per step, and at most 64 columns so the fp32
        # copy of the weight tile still fits in registers next to two accumulators.
        # Eight warps: with four, the fp32 128x64 tile spills 48 B at sm_90.
        t = replace(t, block_o=min(t.block_o, 64), block_l=max(16, t.block_l // 2), num_stages=min(t.num_stages, 2),
                    num_warps=max(t.num_warps, 8))
    return t


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


# --------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------
def _device_ctx(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def _check_runnable(x: torch.Tensor) -> None:
    if x.dtype not in TRITON_DTYPES:
        raise TypeError(f"backend='triton' supports dtypes {[str(d) for d in TRITON_DTYPES]}, got {x.dtype}")
    if not x.is_cuda and not INTERPRET:
        raise ValueError(f"backend='triton' got tensors on {x.device}; it needs CUDA tensors, or "
                         "TRITON_INTERPRET=1 set before importing kernels.moe_triton to run on CPU")


@dataclass(frozen=True)
class LaunchSpec:
    """Everything one kernel launch needs; benchmark/speed/compile_check.py reuses it offline."""
    kernel: object
    grid: tuple
    args: tuple
    meta: dict  # constexpr arguments plus num_warps / num_stages

    def launch(self) -> None:
        self.kernel[self.grid](*self.args, **self.meta)


def mixed_linear_spec(a, weight, bias, expert_idx, gates, out, *, transpose_w: bool,
                      res=None, rmul=None, tiles: MMTiles | None = None) -> LaunchSpec:
    """Launch of `_mixed_linear_kernel`: out = a @ Wmix (+ bmix), or a @ Wmix^T for dx
    (+ res + res·rmul when ``res`` and ``rmul``, shaped like out, are given)."""
    n, seq, k = a.shape
    nout = out.shape[2]
    t = mm_tiles(seq, k, nout, a.element_size(), transpose_w, tiles)
    s_e, s_in, s_out = weight.stride()
    stride_wk, stride_wn = (s_out, s_in) if transpose_w else (s_in, s_out)
    grid = (_cdiv(seq, t.block_m) * _cdiv(nout, t.block_n), n)
    has_res = res is not None
    args = (a, weight, bias if bias is not None else weight, expert_idx, gates, out,
            res if has_res else out, rmul if has_res else out,
            seq, k, nout, s_e, stride_wk, stride_wn)
    meta = dict(HAS_BIAS=bias is not None, HAS_RES=has_res, TOPK=expert_idx.shape[1],
                BLOCK_M=t.block_m, BLOCK_N=t.block_n, BLOCK_K=t.block_k,
                EVEN_K=k % t.block_k == 0, SWAP_AB=t.swap_ab,
                num_warps=t.num_warps, num_stages=t.num_stages)
    return LaunchSpec(_mixed_linear_kernel, grid, args, meta)


def grad_plan(x, weight, plan: TilePlan | None = None) -> tuple[GradTiles, int, int]:
    """(tiles, number of (D_in, D_out) tiles, sample split) for the gradient kernel."""
    n, seq, din = x.shape
    e, _, dout = weight.shape
    plan = plan or TilePlan()
    t = plan.grad or grad_tiles(seq, din, dout, x.element_size())
    tiles = _cdiv(din, t.block_i) * _cdiv(dout, t.block_o)
    # Split the samples over extra programs when tiles x experts alone cannot
    # fill the GPU; the split partials are summed in a fixed order afterwards.
    split = plan.split or max(1, min(n, -(-_num_sms(x.device) // (tiles * e))))
    return t, tiles, split


def expert_order(expert_idx: torch.Tensor) -> torch.Tensor:
    """The N*k slots n*k + j stably sorted by expert (one device sort, no host read-back)."""
    return torch.argsort(expert_idx.reshape(-1), stable=True)


def expert_grad_spec(x, dy, weight, bias, gates, expert_idx, order, col, dw_buf, db_buf, dgp,
                     t: GradTiles, tiles: int, split: int) -> LaunchSpec:
    """Launch of `_expert_grad_kernel` into the (split, E, ...) dW/db buffers and the dgates partials."""
    n, seq, din = x.shape
    e, _, dout = weight.shape
    nk = order.numel()
    args = (x, dy, weight, bias, gates, expert_idx, order, col, dw_buf, db_buf, dgp, nk, seq, din, dout, split)
    meta = dict(TOPK=gates.shape[1], NK_POW2=_next_pow2(max(nk, 1)),
                BLOCK_I=t.block_i, BLOCK_O=t.block_o, BLOCK_L=t.block_l,
                EVEN=din % t.block_i == 0 and dout % t.block_o == 0 and seq % t.block_l == 0,
                num_warps=t.num_warps, num_stages=t.num_stages)
    return LaunchSpec(_expert_grad_kernel, (tiles, e, split), args, meta)


def grad_buffers(x, weight, expert_idx, tiles: int, split: int):
    """Output buffers of the gradient kernel: dW (split, E, D_in, D_out), db (split, E, D_out), dgates partials.

    No buffer needs zeroing: every program stores its dW tile (zeros for an
    expert no sample picked), the row-0 tiles store db, and each (tile, slot)
    partial is written by the one program whose share of its expert's list
    holds that slot.
    """
    n, _, din = x.shape
    e, _, dout = weight.shape
    f32 = torch.float32
    dw_buf = torch.empty((split, e, din, dout), dtype=weight.dtype if split == 1 else f32, device=x.device)
    db_buf = torch.empty((split, e, dout), dtype=f32, device=x.device)
    dgp = torch.empty((tiles, n * expert_idx.shape[1]), dtype=f32, device=x.device)
    return dw_buf, db_buf, dgp


def launch_mixed(a, weight, bias, expert_idx, gates, *, transpose_w: bool, out_dtype=None,
                 res=None, rmul=None, plan: TilePlan | None = None) -> torch.Tensor:
    """One `_mixed_linear_kernel` launch into a new tensor (forward, or dx with ``transpose_w``)."""
    n, seq, _ = a.shape
    nout = weight.shape[1] if transpose_w else weight.shape[2]
    out = torch.empty((n, seq, nout), dtype=out_dtype or a.dtype, device=a.device)
    if out.numel() == 0:
        return out
    with _device_ctx(a):
        mixed_linear_spec(a, weight, bias, expert_idx, gates, out, transpose_w=transpose_w,
                          res=res, rmul=rmul, tiles=plan.mixed(transpose_w) if plan else None).launch()
    return out


def launch_expert_grads(x, dy, weight, bias, expert_idx, gates, plan: TilePlan | None = None):
    """(dweight, dbias, dgates) from one `_expert_grad_kernel` launch and fixed-order sums."""
    n = x.shape[0]
    topk = expert_idx.shape[1]
    t, tiles, split = grad_plan(x, weight, plan)
    dw_buf, db_buf, dgp = grad_buffers(x, weight, expert_idx, tiles, split)
    if x.numel() > 0:
        col = dy.sum(1, dtype=torch.float32)  # s_n = sum_l dy[n, l], for the bias terms
        with _device_ctx(x):
            expert_grad_spec(x, dy, weight, bias, gates, expert_idx, expert_order(expert_idx), col,
                             dw_buf, db_buf, dgp, t, tiles, split).launch()
    else:
        dw_buf.zero_()
        db_buf.zero_()
        dgp.zero_()
    dw = dw_buf[0] if split == 1 else dw_buf.sum(0).to(weight.dtype)
    db = (db_buf[0] if split == 1 else db_buf.sum(0)).to(bias.dtype)
    dgates = dgp.sum(0).view(n, topk).to(gates.dtype)
    return dw, db, dgates


# --------------------------------------------------------------------------
# torch.library ops
# --------------------------------------------------------------------------
@torch.library.custom_op("dit_bench::moe_linear", mutates_args=())
def moe_linear_fused(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                     expert_idx: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
    """Forward of eq. (1) with `_mixed_linear_kernel` (inputs validated by the caller)."""
    return launch_mixed(x, weight, bias, expert_idx, gates, transpose_w=False)


@moe_linear_fused.register_fake
def _moe_linear_fused_fake(x, weight, bias, expert_idx, gates):
    return x.new_empty((x.shape[0], x.shape[1], weight.shape[2]))


def _backward_launches(grad_out, x, weight, bias, expert_idx, gates, need_dx: bool, need_dparams: bool,
                       plan: TilePlan | None = None):
    """(dx, dweight, dbias, dgates); the ones not asked for come back empty."""
    dy = grad_out.contiguous()
    if need_dx:
        dx = launch_mixed(dy, weight, None, expert_idx, gates, transpose_w=True, plan=plan)
    else:
        dx = x.new_empty((0,))
    if need_dparams:
        dw, db, dg = launch_expert_grads(x, dy, weight, bias, expert_idx, gates, plan)
    else:
        dw, db, dg = weight.new_empty((0,)), bias.new_empty((0,)), gates.new_empty((0,))
    return dx, dw, db, dg


def _fused_backward(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor, expert_idx: torch.Tensor, gates: torch.Tensor,
                    need_dx: bool, need_dparams: bool
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dx, dweight, dbias, dgates) with the table's tiles; the ones not asked for come back empty."""
    return _backward_launches(grad_out, x, weight, bias, expert_idx, gates, need_dx, need_dparams)


# Eager training (`_FusedMoELinear`) calls `_fused_backward` directly; the custom op's
# backward (torch.compile) goes through this op, which keeps the launches opaque to the tracer.
moe_linear_fused_backward = torch.library.custom_op("dit_bench::moe_linear_backward", mutates_args=())(_fused_backward)


@moe_linear_fused_backward.register_fake
def _moe_linear_fused_backward_fake(grad_out, x, weight, bias, expert_idx, gates, need_dx, need_dparams):
    dx = torch.empty_like(x) if need_dx else x.new_empty((0,))
    if need_dparams:
        return dx, torch.empty_like(weight), torch.empty_like(bias), torch.empty_like(gates)
    return dx, weight.new_empty((0,)), bias.new_empty((0,)), gates.new_empty((0,))


def _setup_context(ctx, inputs, output):
    x, weight, bias, expert_idx, gates = inputs
    ctx.save_for_backward(x, weight, bias, expert_idx, gates)


def _backward_with(backward, ctx, grad_out):
    x, weight, bias, expert_idx, gates = ctx.saved_tensors
    need = ctx.needs_input_grad
    need_dparams = bool(need[1] or need[2] or need[4])
    dx, dw, db, dg = backward(grad_out, x, weight, bias, expert_idx, gates, bool(need[0]), need_dparams)
    return (dx if need[0] else None, dw if need[1] else None, db if need[2] else None,
            None, dg if need[4] else None)


def _op_backward(ctx, grad_out):
    # The custom op is the torch.compile path: its backward is traced with fake tensors (by AOT
    # autograd, where is_compiling() may be False), so it must be the opaque op, never a launch.
    return _backward_with(moe_linear_fused_backward, ctx, grad_out)


moe_linear_fused.register_autograd(_op_backward, setup_context=_setup_context)


class _FusedMoELinear(torch.autograd.Function):
    """Eager autograd over the same launches as the custom op, minus torch.library's dispatch
    layers: in eager training they cost more host time per layer than the kernels themselves at
    S/B sizes, which makes a step host-bound (results/kernels/NOTES.md)."""

    @staticmethod
    def forward(ctx, x, weight, bias, expert_idx, gates, plan=None):
        _setup_context(ctx, (x, weight, bias, expert_idx, gates), None)
        ctx.plan = plan
        return launch_mixed(x, weight, bias, expert_idx, gates, transpose_w=False, plan=plan)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        launches = functools.partial(_backward_launches, plan=ctx.plan)
        return (*_backward_with(launches, ctx, grad_out), None)


def moe_linear_triton(x, weight, bias, expert_idx, gates, plan: TilePlan | None = None):
    """The "triton" backend of `kernels.moe_linear` (shape checks done by the caller).

    Under torch.compile the custom op keeps the launches opaque to the tracer (with the
    table's tiles); eager calls take the lighter autograd.Function (same kernels, same
    results), whose tiles ``plan`` may set."""
    _check_runnable(x)
    if torch.compiler.is_compiling():
        return moe_linear_fused(x, weight, bias, expert_idx, gates)
    return _FusedMoELinear.apply(x, weight, bias, expert_idx, gates, plan)


class _FusedMaskedMoE(torch.autograd.Function):
    """r = x·(1 + δ), δ = eq. (1) of x computed in the weights' dtype: the Switch-DiT block input.

    Against ``x·(1 + moe_linear(x.to(w.dtype)))`` taken apart by autograd, the backward makes
    three fewer passes over the activations: dx = dδ @ Wmix^T + g·(1 + δ) comes out of the dx
    launch's epilogue in x's dtype, so neither the 16-bit dx is widened nor are x's two gradient
    terms summed afterwards, and g·(1 + δ) is never a tensor of its own.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, expert_idx, gates):
        xc = x.to(weight.dtype)
        delta = launch_mixed(xc, weight, bias, expert_idx, gates, transpose_w=False)
        ctx.save_for_backward(x, xc, weight, bias, expert_idx, gates, delta)
        return torch.addcmul(x, x, delta)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, xc, weight, bias, expert_idx, gates, delta = ctx.saved_tensors
        need = ctx.needs_input_grad
        grad = grad.contiguous()
        ddelta = torch.empty_like(delta)
        torch.mul(grad, x, out=ddelta)  # d out / d δ = g·x, stored in the kernels' dtype
        dx = dw = db = dg = None
        if need[0]:
            dx = launch_mixed(ddelta, weight, None, expert_idx, gates, transpose_w=True, out_dtype=x.dtype,
                               res=grad, rmul=delta)
        if need[1] or need[2] or need[4]:
            dw, db, dg = launch_expert_grads(xc, ddelta, weight, bias, expert_idx, gates)
        return dx, dw if need[1] else None, db if need[2] else None, None, dg if need[4] else None


def moe_mask_triton(x, weight, bias, expert_idx, gates):
    """The "triton" backend of `kernels.moe_mask` (checks done by the caller).

    Under torch.compile it is the custom op followed by the mask product, which the compiler
    fuses by itself."""
    _check_runnable(weight)
    if torch.compiler.is_compiling():
        return torch.addcmul(x, x, moe_linear_fused(x.to(weight.dtype), weight, bias, expert_idx, gates))
    return _FusedMaskedMoE.apply(x, weight, bias, expert_idx, gates)
