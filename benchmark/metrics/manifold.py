"""k-NN manifold membership per sample, for Improved Precision/Recall and its bootstrap.

Kynkäänniemi et al. 2019 (arXiv 1904.06991, eqs. 1-3): a set's manifold is the
union of balls around its samples, each with the radius to its k-th nearest
neighbour within the set. Precision is the fraction of generated samples inside
the real manifold, recall the fraction of real samples inside the generated one.

``manifold_membership`` keeps the per-sample answers instead of only their
means: for each generated sample whether it lies inside the real manifold, and
for each (real, generated) pair whether the real sample lies inside that
generated sample's ball. The bootstrap (``bootstrap.py``) resamples these.

The distances, radii and comparisons are the ones torch-fidelity's
``calculate_precision_recall_part`` makes (``torch.cdist`` on float32, the same
row/column batches, ``kthvalue(k + 1)`` because a sample is its own nearest
neighbour), so the full-sample precision and recall equal torch-fidelity's.
Memory: one (batch, other set) float32 distance block at a time, as
torch-fidelity; the real x generated "covered by" relation is kept bit-packed
along the generated axis, R * ceil(G / 8) bytes (10K x 50K: 63 MB; 50K x 50K:
313 MB).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

_BIT_WEIGHTS = (1, 2, 4, 8, 16, 32, 64, 128)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool (..., n) tensor into uint8 (..., ceil(n / 8)); bit j of byte i is element 8 i + j."""
    n = mask.shape[-1]
    pad = -n % 8
    if pad:
        mask = torch.nn.functional.pad(mask, (0, pad))
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=mask.device)
    grouped = mask.reshape(*mask.shape[:-1], -1, 8).to(torch.uint8)
    return (grouped * weights).sum(dim=-1, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of ``pack_bits``: bool (..., n)."""
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) & weights) != 0
    return bits.reshape(*packed.shape[:-1], -1)[..., :n]


def _cdist_part(rows: torch.Tensor, other: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([torch.cdist(rows, part) for part in other.split(batch_size)], dim=1)


def knn_radii(features: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row (the row itself is the 0-th)."""
    return torch.cat([_cdist_part(rows, features, batch_size).kthvalue(k + 1).values
                      for rows in features.split(batch_size)])


@dataclass(frozen=True)
class ManifoldMembership:
    """Per-sample k-NN manifold membership of a generated set against a real set.

    ``inside_real[i]``: generated sample i lies in the real manifold (precision indicator).
    ``covered_packed``: (R, ceil(G / 8)) uint8, ``pack_bits`` of the (R, G) relation
    "real sample r lies in generated sample j's ball".
    """

    inside_real: torch.Tensor
    covered_packed: torch.Tensor
    num_generated: int
    precision: float
    recall: float

    def covered(self) -> torch.Tensor:
        """The unpacked (R, G) bool relation (tests and small sets only: R * G bytes)."""
        return unpack_bits(self.covered_packed, self.num_generated)


def manifold_membership(
    generated: torch.Tensor, real: torch.Tensor, *, k: int, batch_size: int, device: torch.device | str = "cpu",
) -> ManifoldMembership:
    """Membership of ``generated`` (G, D) and ``real`` (R, D) features in each other's k-NN manifolds."""
    for name, f in (("generated", generated), ("real", real)):
        if f.dim() != 2 or f.shape[0] <= k:
            raise ValueError(f"{name} features need more than k={k} rows, got shape {tuple(f.shape)}")
    if generated.shape[1] != real.shape[1]:
        raise ValueError(f"generated features have {generated.shape[1]} dims but real features {real.shape[1]}")
    with torch.inference_mode():
        gen = generated.float().to(device)
        ref = real.float().to(device)
        radii_gen = knn_radii(gen, k, batch_size)
        covered = [pack_bits(_cdist_part(rows, gen, batch_size) <= radii_gen) for rows in ref.split(batch_size)]
        covered_packed = torch.cat(covered)
        recall_rows = torch.cat([(part != 0).any(dim=1).float() for part in covered])
        radii_real = knn_radii(ref, k, batch_size)
        inside = torch.cat([(_cdist_part(rows, ref, batch_size) <= radii_real).any(dim=1)
                            for rows in gen.split(batch_size)])
        precision = inside.float().mean().item()
        recall = recall_rows.mean().item()
    return ManifoldMembership(inside, covered_packed, gen.shape[0], precision, recall)
