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

GROUPS = ("method", "size", "data", "recipe", "autoencoder", "loss_weight", "launcher")


# Short aliases accepted anywhere on the command line.
ALIASES = {
    "samples": "eval.samples",
    "reference": "eval.reference",
    "num_fid_samples": "eval.num_fid_samples",
    "ckpt": "sample.ckpt",
    "resume": "train.resume",
}


def expand_aliases(args: list[str], extra: dict[str, str] | None = None) -> list[str]:
    """``KEY=VALUE`` arguments with an aliased KEY spelled out (``ckpt=x`` -> ``sample.ckpt=x``)."""
    table = {**ALIASES, **(extra or {})}
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        out.append(f"{table[key]}={value}" if sep and key in table else arg)
    return out


def _class_count(classes, fallback):
    """``${class_count:${data.classes},FALLBACK}``: a subset's size, else FALLBACK (a number, or a
    folder whose class subfolders are counted, 0 for a flat folder)."""
    from benchmark.data.imagefolder import count_classes

    if classes is not None:
        return count_classes(None, classes if isinstance(classes, int) else list(classes))
    if isinstance(fallback, int):
        return fallback
    return count_classes(str(fallback) if fallback else None)


if not OmegaConf.has_resolver("class_count"):
    OmegaConf.register_new_resolver("class_count", _class_count)


class ConfigError(ValueError):
    """An invalid configuration value; the message names the key and what is valid."""


def _store_method(spec) -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(group="method", name=spec.name, node=spec.config_node(), provider="benchmark")


_METHODS_STORED = False


def register_methods() -> None:
    """Import the plugins (``BENCHMARK_PLUGINS``) and make every registered method a choice of the
    ``method`` group: its Hydra node (name and option defaults) comes from the method's spec."""
    global _METHODS_STORED
    from benchmark.plugins import load_plugins

    load_plugins()
    if not _METHODS_STORED:
        from methods.spec import on_register

        on_register(_store_method)
        _METHODS_STORED = True


def group_options(group: str) -> list[str]:
    """The choices of one config group, e.g. ``method`` -> [dit, dtr, switch_dit]."""
    if group == "method":
        register_methods()
        import methods

        return methods.METHODS.names()
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
                from kernels.registry import closest

                near = closest(value, valid)
                hint = f" (did you mean '{near}'?)" if near else ""
                raise ConfigError(f"unknown {key} '{value}'{hint}; valid: {', '.join(valid)}")


def _hydra_compose(overrides: list[str]) -> DictConfig:
    """Hydra's compose of ``conf/config.yaml``; inside a running Hydra app, with its search path."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_methods()
    if GlobalHydra.instance().is_initialized():
        return hydra_compose(config_name="config", overrides=overrides)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def _override_keys(overrides: list[str]) -> list[tuple[str, bool]]:
    """(dotted key, added with '+') of every override that sets a value (not a group choice)."""
    from hydra.core.override_parser.types import OverrideType

    out = []
    for ov in _parser().parse_overrides(overrides):
        key = ov.key_or_group.lstrip("/")
        if key in GROUPS or key.split(".")[0] == "hydra" or ov.is_delete():
            continue
        out.append((key, ov.type in (OverrideType.ADD, OverrideType.FORCE_ADD)))
    return out


def _paths(tree, prefix: str = "") -> set[str]:
    out = {prefix} if prefix else set()
    if isinstance(tree, dict):
        for key, value in tree.items():
            out |= _paths(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def _followed_option(key: str) -> str | None:
    """The key a method option follows (``method.options.num_tasks`` -> ``diffusion.num_timesteps``)."""
    prefix, _, name = key.rpartition(".")
    if prefix != "method.options":
        return None
    import methods

    for spec in methods.METHODS.values():
        option = spec.options.get(name)
        if option is not None and option.follows:
            return option.follows
    return None


def _unknown_key(key: str, known: set[str]) -> ConfigError:
    import difflib

    follows = _followed_option(key)
    if follows:
        return ConfigError(f"{key} is not set directly: it follows {follows}; set {follows} instead")

    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else "; `python -m benchmark run --cfg job` lists the keys"
    return ConfigError(f"unknown key {key}{hint}")


def _known_keys(overrides: list[str]) -> set[str]:
    """Every key the config has for these group choices (the groups chosen, no values set)."""
    groups = [o for o in overrides if o.split("=")[0].lstrip("+~/") in GROUPS]
    return _paths(OmegaConf.to_container(_hydra_compose(groups), resolve=False))


def compose(overrides: Iterable[str] = ()) -> DictConfig:
    """Compose the root config with ``overrides`` (no sweeps) and validate it.

    A key the config does not have is refused, also when added with ``+`` (which Hydra would
    accept and nothing would read), with the closest existing key suggested.
    """
    overrides = list(overrides)
    check_group_choices(overrides)
    try:
        cfg = _hydra_compose(overrides)
    except Exception as exc:  # hydra's errors are multi-line
        try:
            known = _known_keys(overrides)
        except Exception:  # the group choices themselves do not compose
            raise ConfigError(_first_line(exc)) from None
        for key, _ in _override_keys(overrides):
            if key not in known:
                raise _unknown_key(key, known) from None
        raise ConfigError(_first_line(exc)) from None
    added = [key for key, plus in _override_keys(overrides) if plus]
    if added:
        known = _known_keys(overrides)
        for key in added:
            if key not in known:
                raise _unknown_key(key, known)
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
    ("train.precision", lambda v: v in ("auto", "fp32", "tf32", "bf16", "fp16"),
     "auto, fp32, tf32, bf16 or fp16 (fp16 autocast with a GradScaler)"),
    ("sample.sampler", lambda v: v in ("ddpm", "ddim"), "ddpm or ddim"),
    ("sample.precision", lambda v: v in ("fp32", "tf32", "fp16", "bf16"), "fp32, tf32, fp16 or bf16"),
    ("sample.eta", lambda v: float(v) >= 0, "a non-negative number"),
    ("sample.num_samples", _positive_int, "a positive integer"),
    ("sample.per_proc_batch_size", _positive_int, "a positive integer"),
    ("eval.batch_size", _positive_int, "a positive integer"),
    ("eval.bootstrap_resamples", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
     "a non-negative integer (0: no intervals)"),
    ("eval.bootstrap_seed", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
     "a non-negative integer"),
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
    _check_reference(cfg)
    _check_fid_samples(cfg)
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


# What a recipe cannot do without, and how to supply it.
REQUIRED_HOW = {
    "eval.reference": "its table is FID-50K against ADM's reference batch: pass "
                      "eval.reference=/path/to/VIRTUAL_imagenet256_labeled.npz",
}


def _check_fid_samples(cfg: DictConfig) -> None:
    n, drawn = cfg.eval.num_fid_samples, cfg.sample.num_samples
    if not cfg.eval.samples and _positive_int(n) and n > drawn:
        raise ConfigError(f"eval.num_fid_samples={n} is more than the sample.num_samples={drawn} a run draws; "
                          f"choose at most {drawn}, or raise sample.num_samples")


def _check_reference(cfg: DictConfig) -> None:
    for key in cfg.get("recipe_requires") or ():
        if _get(cfg, key) in (None, ""):
            how = REQUIRED_HOW.get(key, f"pass {key}=...")
            raise ConfigError(f"{key} is required by recipe={cfg.get('recipe')} ({how}), or recipe=none to leave "
                              "the published protocol")


def latent_geometry(cfg: DictConfig) -> tuple[int, int]:
    """(downsampling factor, latent side) of the configured autoencoder and image size."""
    down = 1 if cfg.autoencoder.name == "none" else 8
    return down, cfg.data.image_size // down


def _check_resolution(cfg: DictConfig) -> None:
    size, patch = cfg.data.image_size, cfg.model.patch_size
    down, side = latent_geometry(cfg)
    if size % down:
        raise ConfigError(f"data.image_size={size} is not divisible by the autoencoder's downsampling {down}; "
                          f"choose a multiple of {down}")
    if side % patch:
        space = "pixel space (autoencoder=none)" if down == 1 else f"latent space ({down}x autoencoder)"
        fits = [p for p in range(1, side + 1) if side % p == 0]
        raise ConfigError(
            f"model.patch_size={patch} does not divide the {side}x{side} input of {space} "
            f"(data.image_size={size}); choose a patch size that divides {side}: {', '.join(map(str, fits))}"
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


def loss_weight_fn(cfg: DictConfig):
    """The per-sample loss weight of ``loss_weight=<name>`` with the group's keys as its parameters."""
    from benchmark.diffusion.loss_weights import loss_weight

    params = OmegaConf.to_container(cfg.loss_weight, resolve=True)
    name = params.pop("name")
    return loss_weight(name, **params)


def method_options(cfg: DictConfig) -> dict:
    """The method's build options as a plain dict (empty for DiT), with the options that follow
    another key filled from it (DTR's and Switch-DiT's ``num_tasks`` = ``diffusion.num_timesteps``)."""
    import methods

    options = cfg.method.get("options")
    out = dict(OmegaConf.to_container(options, resolve=True)) if options else {}
    spec = methods.method_spec(cfg.method.name)
    for name, option in spec.options.items():
        if option.follows is not None:
            out[name] = _get(cfg, option.follows)
    return out


def _check_method_options(cfg: DictConfig) -> None:
    import methods

    options = method_options(cfg)
    try:
        methods.validate_options(cfg.method.name, **options)
    except ValueError as exc:
        raise ConfigError(f"method={cfg.method.name}: {exc}") from None
