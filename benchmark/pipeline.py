"""The pipeline of a cell: train -> sample -> evaluate -> record -> report (``benchmark run``), and
the verbs that run a part of it (``benchmark evaluate``: the record of a trained and sampled cell).

With ``-m`` (or no ``method=``, which sweeps every registered method) Hydra runs this
once per cell; each cell writes its own record and rebuilds the report, so the report
after the last cell shows them all. A cell whose record exists is finished: it is
reported and skipped (``overwrite=true`` moves its files aside and runs it again); a
cell whose training or sampling finished earlier continues from there.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from benchmark import cell, identity
from benchmark import results as res
from benchmark.distributed import barrier, init_distributed
from methods.atomic import atomic_write_json

log = logging.getLogger(__name__)


def _checkpoint_extra(ckpt: Path) -> dict:
    """The trainer's bookkeeping in a checkpoint of this suite (training time, devices); {} otherwise."""
    try:
        payload = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # an outside checkpoint in another format
        return {}
    extra = payload.get("extra") if isinstance(payload, dict) else None
    return {k: v for k, v in (extra or {}).items() if k in ("train_wall_s", "devices", "device_type")}


def _log_until(metrics_log: Path, step: int | None) -> list[dict]:
    if not metrics_log.is_file():
        return []
    rows = [json.loads(line) for line in metrics_log.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if step is None or r.get("step", 0) <= step]


def record_run(cfg: DictConfig, *, dataset=None, wall: dict | None = None) -> Path:
    """Evaluate a cell's samples and write its record (plus artifacts) under paths.results."""
    from benchmark import plots
    from benchmark.compute import compute_record
    from benchmark.evaluate import evaluate_samples
    from benchmark.provenance import provenance
    from benchmark.sample import load_model

    ident = identity.cell_identity(cfg)
    path = cell.record_of(cfg, ident)
    if path.exists():
        raise res.RecordExists(f"record {path} exists; overwrite=true moves it aside and evaluates again")
    npz = cell.sample_folder(cfg, ident) / "samples.npz"
    if not npz.is_file():
        raise FileNotFoundError(f"{npz} does not exist; run `benchmark sample` for this cell first")
    ckpt = cell.resolve_checkpoint(cfg)
    t0 = time.time()
    evaluation = evaluate_samples(cfg, npz, dataset=dataset)
    eval_time = time.time() - t0

    results_dir = Path(cfg.paths.results)
    run_dir = cell.owner_dir(cfg, ident)
    label = f"{ident.run_id} / {ident.eval_id}"
    artifacts: dict = {}

    def keep(src: Path, name: str) -> str:
        return res.copy_artifact(src, results_dir, ident.run_id, name, eval_id=ident.eval_id)

    scratch = run_dir / "evaluations" / ident.eval_id
    scratch.mkdir(parents=True, exist_ok=True)
    rows = _log_until(run_dir / "metrics.jsonl", ident.checkpoint.get("step"))
    if rows:
        log_copy = scratch / "metrics.jsonl"
        log_copy.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows), encoding="utf-8")
        artifacts["metrics_log"] = keep(log_copy, "metrics.jsonl")
        artifacts["loss_curve"] = keep(plots.loss_curve(log_copy, scratch / "loss_curve.png", title=ident.run_id),
                                       "loss_curve.png")
    artifacts["sample_grid"] = keep(plots.sample_grid(npz, scratch / "sample_grid.png", title=label), "sample_grid.png")
    model = load_model(cfg, ckpt, device=torch.device("cpu"))
    diags = dict(model.diagnostics(scratch / "diagnostics"))
    artifacts["diagnostics"] = {name: keep(p, f"{name}.png") for name, p in sorted(diags.items())}

    extra = _checkpoint_extra(ckpt)
    build = getattr(model, "build_kwargs", {})
    compute = compute_record(model, global_batch=(ident.train or {}).get("train", {}).get("global_batch_size"),
                             steps=ident.checkpoint.get("step"), train_wall_s=extra.get("train_wall_s"),
                             devices=extra.get("devices"), device_type=extra.get("device_type", "unknown"))
    last = rows[-1] if rows else {}
    training = {"checkpoint": str(ckpt), "final_loss": last.get("loss"), "steps_per_sec": last.get("steps_per_sec"),
                "aux_losses": {k: v for k, v in last.items() if k.startswith("aux_")},
                "num_parameters": compute["parameters"], "build": {k: build[k] for k in sorted(build)}}
    wall = {k: v for k, v in dict(wall or {}).items() if v is not None}
    if extra.get("train_wall_s") is not None:
        wall["train"] = extra["train_wall_s"]
    wall["evaluate"] = eval_time
    wall["total"] = sum(v for k, v in wall.items() if k != "total")
    fields = {} if ident.train is not None else {"dataset": cfg.data.name, "image_size": int(cfg.data.image_size)}
    device = "cuda" if torch.cuda.is_available() else "cpu"
    record = res.new_record(
        ident.as_record(), provenance=provenance(device), recipe=cfg.get("recipe"),
        evaluation=evaluation["evaluation"], metrics=evaluation["metrics"], training=training, compute=compute,
        artifacts=artifacts, wall_time_s=wall, **fields)
    written = res.write_record(record, results_dir)
    from benchmark.report import build_report

    build_report(results_dir, Path(cfg.paths.reports))
    return written


def evaluate_main(cfg: DictConfig) -> dict:
    """``benchmark evaluate``: metrics of outside samples (``eval.samples``), or the record of this cell."""
    from benchmark.evaluate import evaluate_samples, format_metrics

    if cfg.eval.samples:
        samples = Path(str(cfg.eval.samples))
        if not samples.exists():
            raise FileNotFoundError(f"eval.samples={samples} does not exist; pass an .npz or a folder of PNGs")
        result = evaluate_samples(cfg, samples)
        out = samples.with_name(samples.name + ".metrics.json") if samples.is_file() else samples / "metrics.json"
        atomic_write_json(out, result, indent=2)
        print(format_metrics(result["metrics"]))
        print(f"metrics: {out}")
        return result
    cfg = cell.apply_overwrite(cfg, ("evaluate",))
    cell.announce(cfg)
    path = cell.record_of(cfg)
    if path.exists():
        print(f"finished: {path} (overwrite=true evaluates again)")
        return {"record": str(path)}
    path = record_run(cfg)
    print(f"record: {path}")
    return {"record": str(path)}


def main(cfg: DictConfig) -> Path | None:
    from benchmark.sample import sample
    from benchmark.train import train

    from benchmark import preflight

    info = init_distributed()
    if info.is_main:
        cfg = cell.apply_overwrite(cfg, ("train", "sample", "evaluate"))
        ident = cell.announce(cfg)
    barrier()
    cfg = cell.with_values(cfg, overwrite=False)
    path = cell.record_of(cfg)
    if path.exists():
        if info.is_main:
            print(f"finished: {path} (overwrite=true runs the cell again)")
        return path
    if info.is_main and not cell.training_finished(cfg):
        preflight.check(cfg, world_size=info.world_size, device=info.device,
                        memory_bytes=preflight.memory_override(cfg))
    train(cfg)
    sample_result = sample(cfg)
    if not info.is_main:
        return None
    path = record_run(cfg, wall={"sample": sample_result.wall_time_s})
    assert path == cell.record_of(cfg, ident)
    print(f"record: {path}")
    print(f"report: {Path(cfg.paths.reports) / 'README.md'}")
    return path


def report_main(cfg: DictConfig) -> list[Path]:
    from benchmark.report import build_report

    written = build_report(Path(cfg.paths.results), Path(cfg.paths.reports))
    for p in written:
        print(p)
    return written
