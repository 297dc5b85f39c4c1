"""A composed config as a cell: where its run, checkpoint, samples and record live, and ``overwrite``.

Every verb and every launcher stage asks here, so the places a cell's files go are decided
once, from its identity (benchmark.identity):

* run folder     ``<paths.runs>/<run id>`` (for a checkpoint of another run: that run's folder;
                 for an outside checkpoint: ``<paths.runs>/external-<name>-<sha>``);
* checkpoint     ``sample.ckpt``, else the run's checkpoint at ``train.iterations``;
* samples        ``<run folder>/samples/<sample id>`` (or ``sample.out``);
* record         ``<paths.results>/runs/<run id>/<eval id>.json``.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from benchmark import checkpoint as ckpt_io
from benchmark import identity
from benchmark.aside import move_aside
from benchmark.results import artifact_dir, record_path


def model_build(cfg: DictConfig, *, in_channels: int, input_size: int, num_classes: int) -> dict:
    """Arguments of ``methods.build_model`` for this cell (train, sample, preflight and compute use these)."""
    from benchmark.config import method_options

    return dict(
        method=cfg.method.name,
        size=cfg.size.name,
        patch_size=cfg.model.patch_size,
        input_size=input_size,
        in_channels=in_channels,
        num_classes=num_classes,
        learn_sigma=cfg.model.learn_sigma,
        class_dropout_prob=cfg.model.class_dropout_prob if num_classes > 0 else 0.0,
        **method_options(cfg),
    )


def run_dir(cfg: DictConfig) -> Path:
    """The folder this config trains into: ``<paths.runs>/<run_name>-<training hash>``."""
    return Path(str(cfg.paths.runs)) / identity.run_id(cfg)


def owner_dir(cfg: DictConfig, ident: identity.CellIdentity | None = None) -> Path:
    """The run folder the sampled checkpoint belongs to (samples of it go there, never elsewhere)."""
    ident = ident or identity.cell_identity(cfg)
    if "train_hash" in ident.checkpoint:
        if ident.run_id == identity.run_id(cfg):
            return run_dir(cfg)
        return identity.owning_run(str(cfg.sample.ckpt))
    return Path(str(cfg.paths.runs)) / ident.run_id


def resolve_checkpoint(cfg: DictConfig) -> Path:
    """``sample.ckpt``, or the run's final checkpoint (step ``train.iterations``), which must exist."""
    if cfg.sample.ckpt:
        path = Path(str(cfg.sample.ckpt))
        if not path.is_file():
            raise FileNotFoundError(f"sample.ckpt={path} does not exist; pass a checkpoint file")
        return path
    folder = run_dir(cfg)
    final = ckpt_io.checkpoint_path(folder, int(cfg.train.iterations))
    if not final.is_file():
        latest = ckpt_io.latest_checkpoint(folder)
        where = f"its newest checkpoint is {latest.name}" if latest else "it holds no checkpoint"
        raise FileNotFoundError(f"run {folder} is not trained to train.iterations={cfg.train.iterations} ({where}); "
                                "train it first or pass sample.ckpt=PATH")
    return final


def training_finished(cfg: DictConfig) -> bool:
    """The run already holds its checkpoint at ``train.iterations``."""
    return ckpt_io.checkpoint_path(run_dir(cfg), int(cfg.train.iterations)).is_file()


def sample_folder(cfg: DictConfig, ident: identity.CellIdentity | None = None) -> Path:
    if cfg.sample.out:
        return Path(str(cfg.sample.out))
    ident = ident or identity.cell_identity(cfg)
    return owner_dir(cfg, ident) / "samples" / ident.sample_id


def record_of(cfg: DictConfig, ident: identity.CellIdentity | None = None) -> Path:
    ident = ident or identity.cell_identity(cfg)
    return record_path(cfg.paths.results, ident.run_id, ident.eval_id)


STAGE_FILES = {
    # stage -> what redoing it replaces
    "train": lambda cfg, ident: [(run_dir(cfg), Path(str(cfg.paths.runs)))],
    "sample": lambda cfg, ident: [(sample_folder(cfg, ident), sample_folder(cfg, ident).parent)],
    "evaluate": lambda cfg, ident: [
        (record_of(cfg, ident), Path(str(cfg.paths.results))),
        (artifact_dir(cfg.paths.results, ident.run_id, ident.eval_id), Path(str(cfg.paths.results)))],
}


def apply_overwrite(cfg: DictConfig, stages: tuple[str, ...]) -> DictConfig:
    """With ``overwrite=true``, move what ``stages`` would replace aside; return the config with it off.

    Call once per cell before its stages run (never inside a stage, which a requeue repeats).
    """
    if not cfg.get("overwrite"):
        return cfg
    ident = identity.cell_identity(cfg)
    for stage in stages:
        for path, root in STAGE_FILES[stage](cfg, ident):
            move_aside(path, root)
    return with_values(cfg, overwrite=False)


def announce(cfg: DictConfig) -> identity.CellIdentity:
    """Say, before anything runs, which cell this is and under which recipe."""
    ident = identity.cell_identity(cfg)
    recipe = cfg.get("recipe") or "none (the config as composed)"
    print(f"cell: run {ident.run_id}, evaluation {ident.eval_id}; recipe: {recipe}", flush=True)
    return ident


def with_values(cfg: DictConfig, **dotted) -> DictConfig:
    cfg = cfg.copy()
    OmegaConf.set_struct(cfg, False)
    for key, value in dotted.items():
        OmegaConf.update(cfg, key, value, merge=False)
    return cfg
