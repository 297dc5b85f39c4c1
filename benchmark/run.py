"""``benchmark run``: train -> sample -> evaluate -> record -> report for one cell.

With ``-m`` (or no ``method=``, which sweeps every registered method) Hydra runs this
once per cell; each cell writes its own record and rebuilds the report, so the report
after the last cell shows them all.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from benchmark import results as res
from benchmark.distributed import init_distributed

log = logging.getLogger(__name__)


def _cell_fields(cfg: DictConfig) -> dict:
    return dict(
        run_id=cfg.run_name,
        method=cfg.method.name,
        size=cfg.size.name,
        patch_size=int(cfg.model.patch_size),
        dataset=cfg.data.name,
        image_size=int(cfg.data.image_size),
        iterations=int(cfg.train.iterations),
        global_batch_size=int(cfg.train.global_batch_size),
        seed=int(cfg.seed),
        sampler=cfg.sample.sampler,
        sampling_steps=int(cfg.sample.steps),
        cfg_scale=float(cfg.sample.cfg_scale),
        num_samples=int(cfg.sample.num_samples),
        autoencoder=None if cfg.autoencoder.name == "none" else
        f"{cfg.autoencoder.name}-{cfg.autoencoder.get('variant', '')}".rstrip("-"),
    )


def _diagnostics(cfg: DictConfig, ckpt: Path, out_dir: Path) -> dict[str, str]:
    from benchmark.sample import load_model

    model = load_model(cfg, ckpt, device=__import__("torch").device("cpu"))
    out_dir.mkdir(parents=True, exist_ok=True)
    return dict(model.diagnostics(out_dir))


def record_run(cfg: DictConfig, *, train_result=None, sample_result=None, dataset=None,
               wall: dict | None = None) -> Path:
    """Evaluate a run's samples and write its record (plus artifacts) under paths.results."""
    from benchmark import plots
    from benchmark.evaluate import evaluate_samples
    from benchmark.sample import resolve_checkpoint, sample_folder
    from benchmark.train import run_dir_of

    run_dir = run_dir_of(cfg)
    npz = sample_result.npz if sample_result else sample_folder(cfg) / "samples.npz"
    if not npz.is_file():
        raise FileNotFoundError(f"{npz} does not exist; run `benchmark sample` for this cell first")
    ckpt = train_result.checkpoint if train_result else resolve_checkpoint(cfg)
    t0 = time.time()
    evaluation = evaluate_samples(cfg, npz, dataset=dataset)
    eval_time = time.time() - t0

    results_dir = Path(cfg.paths.results)
    run_id = cfg.run_name
    artifacts: dict = {}
    metrics_log = run_dir / "metrics.jsonl"
    if metrics_log.is_file() and metrics_log.stat().st_size:
        curve = plots.loss_curve(metrics_log, run_dir / "loss_curve.png", title=run_id)
        artifacts["loss_curve"] = res.copy_artifact(curve, results_dir, run_id, "loss_curve.png")
        artifacts["metrics_log"] = res.copy_artifact(metrics_log, results_dir, run_id, "metrics.jsonl")
    grid = plots.sample_grid(npz, run_dir / "sample_grid.png")
    artifacts["sample_grid"] = res.copy_artifact(grid, results_dir, run_id, "sample_grid.png")
    diags = _diagnostics(cfg, ckpt, run_dir / "diagnostics")
    artifacts["diagnostics"] = {name: res.copy_artifact(path, results_dir, run_id, f"{name}.png")
                                for name, path in sorted(diags.items())}

    training = {"checkpoint": str(ckpt)}
    if train_result is not None:
        training.update(final_loss=train_result.final_loss, steps_per_sec=train_result.steps_per_sec,
                        num_parameters=train_result.num_parameters)
    wall = dict(wall or {})
    wall["evaluate"] = eval_time
    wall["total"] = sum(v for k, v in wall.items() if k != "total")
    import torch

    record = res.new_record(
        **_cell_fields(cfg),
        evaluation=evaluation["evaluation"],
        metrics=evaluation["metrics"],
        training=training,
        artifacts=artifacts,
        wall_time_s=wall,
        hardware=res.hardware_info("cuda" if torch.cuda.is_available() else "cpu"),
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    path = res.write_record(record, results_dir)
    from benchmark.report import build_report

    build_report(results_dir, Path(cfg.paths.reports))
    return path


def main(cfg: DictConfig) -> Path | None:
    from benchmark.sample import sample
    from benchmark.train import train

    info = init_distributed()
    train_result = train(cfg)
    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    cfg.sample.ckpt = str(train_result.checkpoint)
    sample_result = sample(cfg)
    if not info.is_main:
        return None
    path = record_run(cfg, train_result=train_result, sample_result=sample_result,
                      wall={"train": train_result.wall_time_s, "sample": sample_result.wall_time_s})
    print(f"record: {path}")
    print(f"report: {Path(cfg.paths.reports) / 'README.md'}")
    return path


def report_main(cfg: DictConfig) -> list[Path]:
    from benchmark.report import build_report

    written = build_report(Path(cfg.paths.results), Path(cfg.paths.reports))
    for p in written:
        print(p)
    return written
