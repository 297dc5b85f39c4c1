"""Hydra composition of ``conf/`` and the checks that refuse invalid cells early.

Every verb composes the same root config (``conf/config.yaml``) with its groups
(``method/``, ``size/``, ``data/``, ``autoencoder/``, ``loss_weight/``,
``launcher/``). ``validate`` runs right after composition, before anything is
trained, sampled or written, and raises ``ConfigError`` naming the key.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Callable, Iterable

from omegaconf import DictConfig, OmegaConf

from conf import CONF_DIR

GROUPS = ("method", "size", "data", "autoencoder", "loss_weight", "launcher")


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key and what is valid."""


def group_options(group: str) -> list[str]:
    """Names of the YAML files of one config group, e.g. ``method`` -> [dit, dtr, switch_dit]."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def expand_sweep(overrides: Iterable[str]) -> list[list[str]]:
    """Expand Hydra sweep overrides (``a=1,2 b=x,y``) into the list of cells, in Hydra's order."""
    choices: list[list[str]] = []
    for ov in _parser().parse_overrides(list(overrides)):
        key = ov.get_key_element()
        if ov.is_sweep_override():
            choices.append([f"{key}={v}" for v in ov.sweep_string_iterator()])
        else:
            choices.append([ov.input_line])
    return [list(cell) for cell in itertools.product(*choices)]


def check_group_choices(overrides: Iterable[str]) -> None:
    """Refuse an unknown group option (``method=foo``) with one line listing the valid ones."""
    for ov in _parser().parse_overrides(list(overrides)):
        key = ov.key_or_group.lstrip("+~")
        if key.startswith("/"):
            key = key[1:]
        if key not in GROUPS or ov.is_delete():
            continue
        values = list(ov.sweep_string_iterator()) if ov.is_sweep_override() else [ov.value()]
        valid = group_options(key)
        for value in values:
            if str(value) not in valid:
                raise ConfigError(f"unknown {key} '{value}'; valid: {', '.join(valid)}")


def compose(overrides: Iterable[str] = ()) -> DictConfig:
    """Compose the root config with ``overrides`` (no sweeps) and validate it."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = list(overrides)
    check_group_choices(overrides)
    was_initialized = GlobalHydra.instance().is_initialized()
    if was_initialized:
        # Composing inside a running Hydra app (e.g. a multirun job): reuse its search path.
        try:
            cfg = hydra_compose(config_name="config", overrides=overrides)
        except Exception as exc:  # hydra's errors are multi-line; keep the first line
            raise ConfigError(_first_line(exc)) from None
    else:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            try:
                cfg = hydra_compose(config_name="config", overrides=overrides)
            except Exception as exc:
                raise ConfigError(_first_line(exc)) from None
    validate(cfg)
    return cfg


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = " ".join(line.strip() for line in text[:2] if line.strip()) if text else type(exc).__name__
    return msg


# --------------------------------------------------------------------------------------
# Validation: a table of (key, check, what is valid). A check returns True when fine.

def _get(cfg: DictConfig, key: str):
    return OmegaConf.select(cfg, key, throw_on_missing=False)


def _positive_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


RULES: list[tuple[str, Callable[[object], bool], str]] = [
    ("seed", lambda v: isinstance(v, int) and v >= 0, "a non-negative integer"),
    ("diffusion.noise_schedule", lambda v: v in ("linear", "cosine"), "linear or cosine"),
    ("diffusion.num_timesteps", _positive_int, "a positive integer"),
    ("model.patch_size", _positive_int, "a positive integer (2, 4 or 8 for the published sizes)"),
    ("model.class_dropout_prob", lambda v: 0.0 <= float(v) < 1.0, "a probability in [0, 1)"),
    ("train.iterations", _positive_int, "a positive integer"),
    ("train.global_batch_size", _positive_int, "a positive integer"),
    ("train.lr", lambda v: float(v) > 0, "a positive number"),
    ("train.weight_decay", lambda v: float(v) >= 0, "a non-negative number"),
    ("train.ema_decay", lambda v: 0.0 <= float(v) < 1.0, "a number in [0, 1)"),
    ("train.ckpt_every", _positive_int, "a positive integer"),
    ("train.log_every", _positive_int, "a positive integer"),
    ("train.precision", lambda v: v in ("auto", "fp32", "bf16", "fp16"),
     "auto, fp32, bf16 or fp16 (fp16 autocast with a GradScaler)"),
    ("sample.sampler", lambda v: v in ("ddpm", "ddim"), "ddpm or ddim"),
    ("sample.eta", lambda v: float(v) >= 0, "a non-negative number"),
    ("sample.num_samples", _positive_int, "a positive integer"),
    ("sample.per_proc_batch_size", _positive_int, "a positive integer"),
    ("eval.batch_size", _positive_int, "a positive integer"),
    ("data.image_size", _positive_int, "a positive integer"),
    ("data.latents", lambda v: v in ("sample_once", "posterior"),
     "sample_once (one cached posterior sample per image) or posterior (a fresh sample every step)"),
    ("data.latent_dtype", lambda v: v in ("float32", "float16"), "float32 or float16 (the latent cache's storage)"),
]


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError for the first invalid key of a composed config."""
    for key, ok, valid in RULES:
        value = _get(cfg, key)
        try:
            good = ok(value)
        except (TypeError, ValueError):
            good = False
        if not good:
            raise ConfigError(f"{key}={value!r} is invalid; expected {valid}")
    _check_data_path(cfg)
    _check_resolution(cfg)
    _check_sampling(cfg)
    _check_loss_weight(cfg)
    _check_method_options(cfg)


def _check_data_path(cfg: DictConfig) -> None:
    if OmegaConf.is_missing(cfg.data, "path"):
        raise ConfigError(
            f"data.path is required for data={cfg.data.name}: pass data.path=/path/to/images"
        )
    path = cfg.data.path
    if path is not None and not Path(str(path)).expanduser().exists():
        raise ConfigError(f"data.path={path} does not exist; pass an existing image folder")


def latent_geometry(cfg: DictConfig) -> tuple[int, int]:
    """(downsampling factor, latent side) of the configured autoencoder and image size."""
    down = 1 if cfg.autoencoder.name == "none" else 8
    return down, cfg.data.image_size // down


def _check_resolution(cfg: DictConfig) -> None:
    size, patch = cfg.data.image_size, cfg.model.patch_size
    down, _ = latent_geometry(cfg)
    if size % (down * patch):
        space = "pixel space (autoencoder=none)" if down == 1 else f"latent space ({down}x autoencoder)"
        raise ConfigError(
            f"data.image_size={size} is not divisible by {down * patch} "
            f"(patch {patch} in {space}); choose a multiple of {down * patch}"
        )


def _check_sampling(cfg: DictConfig) -> None:
    steps = cfg.sample.steps
    if not _positive_int(steps) or steps > cfg.diffusion.num_timesteps:
        raise ConfigError(
            f"sample.steps={steps!r} is invalid; expected an integer in [1, {cfg.diffusion.num_timesteps}]"
        )
    scale = float(cfg.sample.cfg_scale)
    if cfg.data.num_classes > 0 and scale < 1.0:
        raise ConfigError(f"sample.cfg_scale={scale} is below 1 for a class-conditional model; use a value >= 1")
    if cfg.data.num_classes == 0 and scale != 1.0:
        raise ConfigError(
            f"sample.cfg_scale={scale} needs class labels, but data={cfg.data.name} is unconditional; use 1.0"
        )


def _check_loss_weight(cfg: DictConfig) -> None:
    lw = cfg.loss_weight
    if lw.name == "min_snr" and not float(lw.k) > 0:
        raise ConfigError(f"loss_weight.k={lw.k} is invalid; expected a positive number")
    if lw.name == "p2" and not (float(lw.k) > 0 and float(lw.gamma) >= 0):
        raise ConfigError(f"loss_weight.k={lw.k}, gamma={lw.gamma} are invalid; expected k > 0, gamma >= 0")
    if lw.name == "uw":
        if not _positive_int(lw.num_clusters) or lw.num_clusters > cfg.diffusion.num_timesteps:
            raise ConfigError(f"loss_weight.num_clusters={lw.num_clusters} is invalid; expected 1..T")
        if lw.clustering not in ("uniform", "snr"):
            raise ConfigError(f"loss_weight.clustering={lw.clustering} is invalid; expected uniform or snr")


def loss_weight_spec(cfg: DictConfig) -> str:
    """The string form understood by benchmark.diffusion.loss_weights (e.g. ``min_snr_5``)."""
    lw = cfg.loss_weight
    table = {
        "constant": lambda: "constant",
        "uw": lambda: "constant",
        "min_snr": lambda: f"min_snr_{lw.k}",
        "p2": lambda: f"p2_{lw.gamma}_{lw.k}",
    }
    return table[lw.name]()


def method_options(cfg: DictConfig) -> dict:
    """The method's build options as a plain dict (empty for DiT)."""
    options = cfg.method.get("options")
    return dict(OmegaConf.to_container(options, resolve=True)) if options else {}


def _check_method_options(cfg: DictConfig) -> None:
    import methods

    options = method_options(cfg)
    try:
        methods.validate_options(cfg.method.name, **options)
    except ValueError as exc:
        raise ConfigError(f"method={cfg.method.name}: {exc}") from None
