"""``benchmark evaluate``: metrics of a sample set by the ADM protocol, with provenance.

The reference is ``eval.reference`` when given (an ADM reference batch .npz or a folder of
images), otherwise the dataset's own images (their Inception statistics are computed once
and cached). When the samples are a run's own (no ``eval.samples``), the result is
recorded under ``results/`` like ``benchmark run`` does (benchmark.pipeline); for outside samples the metrics
are printed and written beside them as ``<samples>.metrics.json``.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig




def reference_for(cfg: DictConfig, dataset=None):
    """The reference set: an ADM .npz path, a folder of images, or the dataset's own images (cached statistics)."""
    from benchmark.metrics import DatasetReference

    if cfg.eval.reference:
        path = Path(str(cfg.eval.reference))
        if path.is_dir() or (path.is_file() and path.suffix == ".npz"):
            return path
        accepted = "pass an ADM reference batch .npz or a folder of reference images"
        if not path.exists():
            raise FileNotFoundError(f"eval.reference={path} does not exist; {accepted}")
        raise ValueError(f"eval.reference={path} is neither an .npz file nor a folder; {accepted}")
    if dataset is None:
        from benchmark.data import from_config

        dataset = from_config(cfg.data)
    limit = cfg.eval.get("reference_max_images")
    if limit is None or int(limit) >= len(dataset):
        return DatasetReference(key=dataset.key, images=dataset.images_uint8, image_size=dataset.image_size)
    limit = int(limit)
    # The first `limit` images in the dataset's own order; the cache key records how many.
    return DatasetReference(key=f"{dataset.key}-first{limit}", images=lambda: dataset.images_uint8(limit),
                            image_size=dataset.image_size)


def evaluate_samples(cfg: DictConfig, samples, *, dataset=None, progress: bool = True) -> dict:
    from benchmark.metrics import evaluate
    from benchmark.metrics.bootstrap import check_count

    # checked here too so that a bad value is named by its config key
    resamples = check_count("eval.bootstrap_resamples", cfg.eval.bootstrap_resamples)
    seed = check_count("eval.bootstrap_seed", cfg.eval.bootstrap_seed)

    return evaluate(
        samples,
        reference=reference_for(cfg, dataset),
        num_fid_samples=int(cfg.eval.num_fid_samples),
        weights=str(cfg.eval.inception_weights) if cfg.eval.inception_weights else None,
        batch_size=int(cfg.eval.batch_size),
        cache_dir=Path(cfg.paths.cache) / "metrics",
        metrics=tuple(cfg.eval.metrics),
        progress=progress,
        bootstrap_resamples=resamples,
        bootstrap_seed=seed,
    )


def format_metrics(metrics: dict) -> str:
    lines = []
    for key, value in metrics.items():
        if key.endswith("_unavailable"):
            continue
        if value is None:
            shown = "unavailable: " + metrics.get(f"{key}_unavailable", "")
        elif isinstance(value, list):
            shown = "[" + ", ".join(f"{v:.4f}" for v in value) + "]"
        else:
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        lines.append(f"  {key:<18} {shown}")
    return "\n".join(lines)
