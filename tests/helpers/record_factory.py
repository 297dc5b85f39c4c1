"""Valid result records for tests, built the way the suite builds them: compose -> identity -> record."""
from __future__ import annotations

import copy
import functools
from pathlib import Path

from benchmark.config import compose
from benchmark.identity import cell_identity
from benchmark.results import new_record

HERE = Path(__file__).resolve().parent
PROVENANCE = {"git_commit": "0123456789abcdef0123456789abcdef01234567",
              "git": {"commit": "0123456789abcdef0123456789abcdef01234567", "dirty": False, "diff_sha256": None},
              "hardware": {"device": "cuda", "name": "H100", "count": 8, "cpu": "x86_64", "cpu_threads": 8},
              "versions": {"python": "3.11", "torch": "2.4"}}
IMAGENET = ["data=imagenet", f"data.path={HERE}", "eval.reference=/refs/VIRTUAL_imagenet256_labeled.npz"]


def metrics(fid: float = 27.10, **extra) -> dict:
    out = {"fid": fid, "inception_score": 70.0, "precision": 0.6, "recall": 0.5, "kid": 0.0123, "sfid": 5.5,
           "fid_clean": 28.0}
    out.update(extra)
    return out


def evaluation(ident, *, reference: str = "ADM reference batch x.npz", reference_key: str = "adm-x",
               weights_sha256: str = "abcdef0123456789" * 4) -> dict:
    return {"feature_extractor": "torch-fidelity inception-v3-compat", "weights": "/w/pt_inception.pth",
            "weights_sha256": weights_sha256, "reference": reference, "reference_key": reference_key,
            "num_samples": ident.eval["num_fid_samples"]}


@functools.lru_cache(maxsize=None)
def _composed(overrides: tuple[str, ...]):
    # Tests build many records of the same cell; Hydra composes each set of overrides once.
    return compose(list(overrides))


def make_record(*overrides: str, fid: float = 27.10, metrics_extra: dict | None = None,
                artifacts: dict | None = None, compute: dict | None = None, created: str = "2025-01-02T00:00:00Z",
                eval_fields: dict | None = None) -> dict:
    """A record of the cell ``overrides`` compose to (paths are not part of the identity)."""
    cfg = copy.deepcopy(_composed(tuple(overrides)))
    ident = cell_identity(cfg)
    comp = {"parameters": 33_000_000, "forward_flops_per_image": 6_000_000_000, "train_wall_s": 3600.0,
            "devices": 8, "device_type": "cuda", "device_hours": 8.0}
    comp.update(compute or {})
    comp.setdefault("train_flops", 3.0 * comp["forward_flops_per_image"] * int(cfg.train.global_batch_size)
                    * int(ident.checkpoint.get("step") or 0))
    return new_record(ident.as_record(), provenance=PROVENANCE, recipe=cfg.get("recipe"),
                      evaluation=evaluation(ident, **(eval_fields or {})),
                      metrics=metrics(fid, **(metrics_extra or {})), training={"final_loss": 0.15},
                      compute=comp, artifacts=artifacts or {}, wall_time_s={"total": 10.0}, created=created)
