"""The shapes of the Switch-DiT expert linear (arXiv 2403.09176, Sec. 3.2) that the speed tools measure.

D is the hidden size of DiT-S/B/L/XL (384/768/1024/1152). L is the number of tokens per
sample at 256 px through the SD VAE (32x32 latents): 256 with patch 2, 64 with patch 4.
32 samples per GPU, E = 3 experts, k = 2 of them per sample. Two routings: "random"
(uniform-random timesteps, so random experts per sample) and "shared" (one timestep for
the batch, every sample on the same pair, as in a sampling step).
"""
from __future__ import annotations

from dataclasses import dataclass

SIZES = {"S": 384, "B": 768, "L": 1024, "XL": 1152}
SEQS = (256, 64)
ROUTINGS = ("random", "shared")
NUM_SAMPLES, NUM_EXPERTS, TOP_K = 32, 3, 2


@dataclass(frozen=True)
class Shape:
    size: str
    d: int
    seq: int
    n: int = NUM_SAMPLES
    e: int = NUM_EXPERTS
    k: int = TOP_K
    routing: str = "random"

    @property
    def name(self) -> str:
        return f"{self.size}-D{self.d}-L{self.seq}-N{self.n}-{self.routing}"

    @property
    def rows(self) -> int:
        """Rows of per-expert GEMMs: every sample's L tokens once per chosen expert."""
        return self.n * self.k * self.seq


def grid(sizes=tuple(SIZES), seqs=SEQS, routings=ROUTINGS, n: int = NUM_SAMPLES) -> list[Shape]:
    """Every (size, L, routing) in the order given; an unknown size is a one-line error."""
    bad = [s for s in sizes if s not in SIZES]
    if bad:
        raise ValueError(f"unknown sizes {bad}; valid: {list(SIZES)}")
    return [Shape(s, SIZES[s], seq, n=n, routing=r) for s in sizes for seq in seqs for r in routings]


# --quick: a minute's worth. On a GPU the two smaller real widths at few tokens; on a CPU,
# where the fused kernel runs under the Triton interpreter, shapes small enough for it.
QUICK = {"cuda": lambda: grid(("S", "B"), (64,), n=4),
         "cpu": lambda: [Shape("mini", 64, 16, n=4, routing=r) for r in ROUTINGS]}


def default_shapes(device_type: str, quick: bool = False) -> list[Shape]:
    """The full grid, or the quick shapes of ``device_type`` ("cuda" or "cpu")."""
    if not quick:
        return grid()
    return QUICK["cuda" if device_type == "cuda" else "cpu"]()
