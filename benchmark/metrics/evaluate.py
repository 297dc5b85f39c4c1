"""``evaluate()``: FID, IS, Precision/Recall, KID, sFID and clean-FID of generated samples, ADM protocol.

Protocol (Dhariwal & Nichol 2021, arXiv 2105.05233, ``evaluations/``): every
metric reads torch-fidelity's ``inception-v3-compat`` network (the TF
2015-12-05 Inception graph). FID on pool_3 against the reference's ``mu``/``sigma``;
sFID on the first 7 channels of ``mixed_6/conv``; IS from the unbiased logits
(10 consecutive splits); Precision/Recall with k = 3 (generated set first);
KID with torch-fidelity's subset defaults (100 subsets of up to 1000); clean-FID
(Parmar et al. 2022, arXiv 2104.11222) with clean-fid's PIL-bicubic resize.
A metric that cannot be computed honestly (e.g. IS without classifier weights)
is ``None`` with a ``<name>_unavailable`` reason, never an estimate.

FID, sFID, clean-FID, Precision and Recall also carry a bootstrap 95% interval
(``<name>_ci95``) over the generated samples, recomputed from the features
already extracted; see ``bootstrap.py`` for the method and its cost.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from . import bootstrap, scores
from .extractor import InceptionFeatureExtractor, extract, resolve_device
from .images import ImageSource, open_images
from .manifold import manifold_membership
from .reference import Reference
from .weights import InceptionWeights, resolve_weights

DEFAULT_METRICS = ("fid", "is", "precision_recall", "kid", "sfid", "fid_clean")

PROTOCOL = (
    "ADM evaluator protocol (Dhariwal & Nichol 2021) on torch-fidelity inception-v3-compat: "
    "FID pool_3; sFID mixed_6/conv[:7] (2023-d); IS unbiased logits, 10 splits; "
    "Precision/Recall k=3; KID poly-3 unbiased MMD, 100 subsets; clean-FID PIL bicubic resize"
)


@dataclass
class _Context:
    gen: dict[str, torch.Tensor]
    reference: Reference
    extract_ref: Callable[[ImageSource, str], dict[str, torch.Tensor]]
    extractor: InceptionFeatureExtractor
    device: torch.device
    info: dict
    resampling: np.ndarray | None = None  # (B, N) generated rows per resample (bootstrap.resample_indices)
    bootstrap_seconds: float = 0.0

    def interval(self, resampled: Callable[[np.ndarray], np.ndarray], point: float) -> list[float]:
        """The bootstrap interval of ``resampled(indices)`` around ``point``, timed into ``bootstrap_seconds``."""
        t0 = time.perf_counter()
        values = resampled(self.resampling)
        self.bootstrap_seconds += time.perf_counter() - t0
        return bootstrap.centred_interval(values, point)


def _frechet(ctx: _Context, name: str, stats: str, features: str) -> dict:
    mu_r, sigma_r = ctx.reference.stats(stats, ctx.extract_ref)
    feats = ctx.gen[features]
    out = {name: scores.frechet_distance_features(feats, mu_r, sigma_r)}
    if ctx.resampling is not None:
        out[f"{name}_ci95"] = ctx.interval(
            lambda idx: bootstrap.frechet_resamples(feats, mu_r, sigma_r, idx, device=ctx.device), out[name])
    return out


def _fid(ctx: _Context) -> dict:
    return _frechet(ctx, "fid", "pool3", "pool3")


def _sfid(ctx: _Context) -> dict:
    return _frechet(ctx, "sfid", "spatial", "spatial")


def _is(ctx: _Context) -> dict:
    if not ctx.extractor.has_logits:
        reason = f"inception weights {Path(ctx.extractor.weights.path).name} have no classifier (pool_3 only)"
        return {"inception_score": None, "inception_score_std": None, "inception_score_unavailable": reason}
    mean, std = scores.inception_score(ctx.gen["logits"])
    ctx.info["is_splits"] = max(1, min(scores.IS_SPLITS, ctx.gen["logits"].shape[0]))
    return {"inception_score": mean, "inception_score_std": std}


def _pr(ctx: _Context) -> dict:
    member = manifold_membership(
        ctx.gen["pool3"], ctx.reference.pool3_features(ctx.extract_ref), k=scores.PR_NEIGHBORHOOD,
        batch_size=scores.PR_BATCH_SIZE, device=ctx.device,
    )
    ctx.info["precision_recall_k"] = scores.PR_NEIGHBORHOOD
    out = {"precision": member.precision, "recall": member.recall}
    if ctx.resampling is not None:
        out["precision_ci95"] = ctx.interval(lambda idx: bootstrap.precision_resamples(member, idx), member.precision)
        out["recall_ci95"] = ctx.interval(lambda idx: bootstrap.recall_resamples(member, idx, device=ctx.device),
                                          member.recall)
    return out


def _kid(ctx: _Context) -> dict:
    mean, std, size = scores.kid(ctx.gen["pool3"], ctx.reference.pool3_features(ctx.extract_ref))
    ctx.info.update(kid_subsets=scores.KID_SUBSETS, kid_subset_size=size)
    return {"kid": mean, "kid_std": std}


def _fid_clean(ctx: _Context) -> dict:
    return _frechet(ctx, "fid_clean", "clean", "clean")


@dataclass(frozen=True)
class _Metric:
    needs: str  # generated feature group: "inception" (pool3/spatial/logits) or "clean"
    compute: Callable[[_Context], dict]
    keys: tuple[str, ...]


METRICS: dict[str, _Metric] = {
    "fid": _Metric("inception", _fid, ("fid",)),
    "is": _Metric("inception", _is, ("inception_score",)),
    "precision_recall": _Metric("inception", _pr, ("precision", "recall")),
    "kid": _Metric("inception", _kid, ("kid",)),
    "sfid": _Metric("inception", _sfid, ("sfid",)),
    "fid_clean": _Metric("clean", _fid_clean, ("fid_clean",)),
}

_EXTRACTORS: dict[tuple[str, str], InceptionFeatureExtractor] = {}


def get_extractor(weights: InceptionWeights, device: torch.device) -> InceptionFeatureExtractor:
    """One extractor per (weights, device) per process: building it costs seconds."""
    key = (weights.sha256, str(device))
    if key not in _EXTRACTORS:
        _EXTRACTORS.clear()  # keep at most one network in memory
        _EXTRACTORS[key] = InceptionFeatureExtractor(weights, device)
    return _EXTRACTORS[key]


def _validate_metrics(metrics) -> tuple[str, ...]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    metrics = tuple(dict.fromkeys(metrics))
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ValueError(f"unknown metrics {unknown or metrics!r}; valid: {list(METRICS)}")
    return metrics


def _feature_fn(extractor: InceptionFeatureExtractor, group: str) -> Callable[[np.ndarray], dict[str, torch.Tensor]]:
    if group == "clean":
        return lambda batch: {"clean": extractor.clean_pool3(batch)}
    return extractor


def evaluate(
    samples,
    *,
    reference,
    num_fid_samples: int | None = None,
    weights: str | os.PathLike | None = None,
    device: str | torch.device = "auto",
    batch_size: int = 64,
    cache_dir: str | os.PathLike,
    metrics=DEFAULT_METRICS,
    progress: bool = False,
    bootstrap_resamples: int = 200,
    bootstrap_seed: int = 0,
) -> dict:
    """Evaluate generated ``samples`` against ``reference``; see the module docstring for the protocol.

    ``bootstrap_resamples`` resamples of the generated set (0: none) drawn with
    ``bootstrap_seed`` give the ``*_ci95`` intervals.

    Returns ``{"metrics": {...}, "evaluation": {...provenance...}}``. Every
    input problem raises a one-line ``ValueError``/``TypeError`` before the
    expensive work where it can be detected up front.
    """
    t0 = time.perf_counter()
    metrics = _validate_metrics(metrics)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be a positive integer")
    if num_fid_samples is not None and (isinstance(num_fid_samples, bool) or not isinstance(num_fid_samples, int)):
        raise TypeError(f"num_fid_samples must be an int or None, got {num_fid_samples!r}")
    resamples = bootstrap.check_count("bootstrap_resamples", bootstrap_resamples)
    seed = bootstrap.check_count("bootstrap_seed", bootstrap_seed)
    source = open_images(samples, "samples")
    if num_fid_samples is not None:
        source = source.take(num_fid_samples)
    dev = resolve_device(device)
    w = resolve_weights(weights)
    ref = Reference(reference, cache_dir=cache_dir, weights_sha256=w.sha256, metrics=metrics)
    extractor = get_extractor(w, dev)

    def run(src: ImageSource, group: str, desc: str) -> dict[str, torch.Tensor]:
        return extract(src.batches, len(src), _feature_fn(extractor, group), batch_size=batch_size, device=dev,
                       progress=progress, desc=desc)

    groups = sorted({METRICS[m].needs for m in metrics})
    t_feat = time.perf_counter()
    gen: dict[str, torch.Tensor] = {}
    for group in groups:
        gen.update(run(source, group, f"samples {group}"))
    t_ref = time.perf_counter()
    info: dict = {}
    resampling = bootstrap.resample_indices(len(source), resamples, seed) if resamples else None
    ctx = _Context(gen, ref, lambda src, group: run(src, group, f"reference {group}"), extractor, dev, info,
                   resampling)
    values: dict = {}
    for name in metrics:
        values.update(METRICS[name].compute(ctx))
    t_end = time.perf_counter()

    import torch_fidelity

    evaluation = {
        "feature_extractor": f"torch-fidelity inception-v3-compat (torch-fidelity {torch_fidelity.__version__})",
        "weights": w.path,
        "weights_sha256": w.sha256,
        "weights_source": w.source,
        "reference": ref.description,
        "reference_key": ref.key,
        "reference_num_images": ref.num_images,
        "reference_statistics": dict(ref.statistics),
        "num_samples": len(source),
        "samples": source.description,
        "sample_resolution": list(source.image_shape[:2]),
        "metrics_requested": list(metrics),
        "protocol": PROTOCOL,
        "device": str(dev),
        "batch_size": batch_size,
        "seconds": {
            "setup": round(t_feat - t0, 3),
            "sample_features": round(t_ref - t_feat, 3),
            "reference_and_metrics": round(t_end - t_ref, 3),
            "bootstrap": round(ctx.bootstrap_seconds, 3),
            "total": round(t_end - t0, 3),
        },
        **info,
    }
    if resampling is not None:
        evaluation["bootstrap"] = {"resamples": resamples, "seed": seed, "level": bootstrap.LEVEL,
                                   "method": bootstrap.METHOD}
    if w.note:
        evaluation["weights_note"] = w.note
    return {"metrics": values, "evaluation": evaluation}
