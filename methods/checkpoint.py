"""Checkpoint format of this suite and ``load_checkpoint`` for every supported source.

Sources, recognised from the file's contents:

1. this suite: ``{"format": "dit-router-bench/1", "model", "ema", "build",
   "step", "config", "opt", "rng"}`` – rebuilt from ``build``;
2. DiT (arXiv 2212.09748): a bare state dict such as ``DiT-XL-2-256x256.pt`` or
   DiT ``train.py``'s ``{"model", "ema", "opt", "args"}`` – ``method`` and
   ``size`` must be given; the rest is read from tensor shapes;
3. the DTR / Switch-DiT reference ``train.py``: ``{"model", "ema", "opt",
   "config"}`` with an OmegaConf config – converted by ``methods.converters``.

Files are read with ``torch.load(weights_only=True)`` only (``methods.safe_load``).
"""
from __future__ import annotations

import pathlib
from typing import Any, Mapping

import torch
import torch.nn as nn

from .atomic import atomic_write

from .converters import (convert_reference_state_dict, detect_method, infer_dit_build, is_fallback, official_build_kwargs,
                         strip_prefixes)
from .registry import SIZES, build_model, size_name
from .safe_load import safe_torch_load, to_plain

CHECKPOINT_FORMAT = "dit-router-bench/1"
_BUILD_KEYS = ("patch_size", "input_size", "in_channels", "num_classes", "learn_sigma", "class_dropout_prob")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain model inside DDP / FSDP-style ``.module`` and torch.compile ``._orig_mod`` wrappers."""
    while True:
        inner = getattr(model, "_orig_mod", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def make_checkpoint(
    model: nn.Module,
    *,
    ema: nn.Module | None = None,
    step: int = 0,
    config: Any = None,
    opt: Mapping[str, Any] | None = None,
    rng: Any = None,
    extra: Mapping[str, Any] | None = None,
    build: Mapping[str, Any] | None = None,
    scaler: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The suite's checkpoint dict, the one definition of its layout (the trainer writes it too).

    ``config`` must be plain data (dicts/lists/numbers/strings); ``build``
    defaults to the model's ``build_kwargs``; tensors are detached CPU copies.
    """
    model = unwrap_model(model)
    build = build if build is not None else getattr(model, "build_kwargs", None)
    if not build:
        raise ValueError("model has no build_kwargs; build it with methods.build_model")
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model": _cpu_state(model),
        "ema": _cpu_state(unwrap_model(ema)) if ema is not None else None,
        "opt": opt,
        "extra": dict(extra or {}),
        "step": int(step),
        "config": to_plain(config),
        "build": dict(build),
        "rng": rng,
    }
    if scaler is not None:  # an fp16 run's GradScaler (its scale and growth tracker: plain numbers)
        payload["scaler"] = dict(scaler)
    return payload


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def atomic_torch_save(obj: Any, path: str | pathlib.Path) -> pathlib.Path:
    """``torch.save`` through a temporary file in the same folder and a rename."""
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_checkpoint(path: str | pathlib.Path, model: nn.Module, **kwargs: Any) -> pathlib.Path:
    """Write ``make_checkpoint(model, **kwargs)`` atomically: the one writer of the suite's checkpoints."""
    return atomic_torch_save(make_checkpoint(model, **kwargs), path)


def read_checkpoint(path: str | pathlib.Path) -> Any:
    """Load a checkpoint file safely; pickled configs (Namespace / OmegaConf) come back as plain dicts."""
    obj = safe_torch_load(path)
    if isinstance(obj, dict):
        obj = {k: (to_plain(v) if k in ("config", "args") else v) for k, v in obj.items()}
    return obj


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


def _pick_weights(ckpt: Mapping[str, Any], use_ema: bool, path: Any) -> dict[str, torch.Tensor]:
    state = ckpt.get("ema") if use_ema else None
    if state is None:
        state = ckpt.get("model")
    if not _is_state_dict(state):
        raise ValueError(f"{path}: checkpoint has no 'model'/'ema' state dict")
    return strip_prefixes(state)


def _check_method(path: Any, found: str, wanted: str | None) -> None:
    if wanted is not None and wanted != found:
        raise ValueError(f"{path} is a '{found}' checkpoint; it cannot be loaded as '{wanted}'")


def _merge_build(path: Any, build: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Caller keywords may restate, but not contradict, what the checkpoint says."""
    options = build.get("method_options") or {}
    for key, value in overrides.items():
        stated = build.get(key, options.get(key))
        if (key in build or key in options) and stated != value:
            raise ValueError(f"{path}: {key}={value!r} contradicts the checkpoint's {key}={stated!r}")
        build[key] = value
    return build


def _size_of(hidden: int, depth: int) -> str | None:
    for name, spec in SIZES.items():
        if spec.hidden_size == hidden and spec.depth == depth:
            return name
    return None


def load_state_dict_checked(model: nn.Module, state: Mapping[str, torch.Tensor], what: str = "model") -> None:
    """``load_state_dict(strict=True)`` with one-line errors naming keys and shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(f"state dict does not fit {what}: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}")
    bad = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items() if tuple(state[k].shape) != tuple(v.shape)]
    if bad:
        desc = "; ".join(f"{k}: checkpoint {a} vs model {b}" for k, a, b in bad[:3])
        raise ValueError(f"shape mismatch loading {what} ({len(bad)} tensors): {desc}")
    model.load_state_dict(state, strict=True)


def _stored_build(ckpt: Any) -> dict[str, Any] | None:
    """Build arguments recorded in the checkpoint (this suite's format or an official config), else None."""
    if isinstance(ckpt, Mapping) and ckpt.get("format") == CHECKPOINT_FORMAT:
        return dict(ckpt["build"])
    if isinstance(ckpt, Mapping) and isinstance(ckpt.get("config"), Mapping) and "models" in ckpt["config"]:
        return official_build_kwargs(ckpt["config"])
    return None


def load_checkpoint(
    path: str | pathlib.Path,
    method: str | None = None,
    size: str | None = None,
    *,
    use_ema: bool = True,
    **build_kw: Any,
) -> nn.Module:
    """Rebuild and load a model from any supported checkpoint; returns it in eval mode on the CPU."""
    ckpt = read_checkpoint(path)
    build = _stored_build(ckpt)
    if build is not None:  # ours or an official train.py checkpoint: it says what it holds
        _check_method(path, build["method"], method)
        if size is not None and size_name(size) != build["size"]:
            raise ValueError(f"{path} is a size-{build['size']} checkpoint, not size {size}")
        build = _merge_build(path, build, build_kw)
        state = _pick_weights(ckpt, use_ema, path)
    else:
        state = _pick_weights(ckpt, use_ema, path) if isinstance(ckpt, Mapping) and ("model" in ckpt or "ema" in ckpt) else ckpt
        if not _is_state_dict(state):
            raise ValueError(f"{path}: not a recognised checkpoint (no 'format', 'config' or tensor state dict)")
        state = strip_prefixes(state)
        found, _ = detect_method(state)
        if method is None or size is None:
            raise ValueError(
                f"{path} is a bare '{found}' state dict without build information; pass method= and size= "
                f"(e.g. load_checkpoint(path, method='{found}', size='XL'))"
            )
        # Without routing tensors of its own a state dict may be any method that adds no
        # parameters (a DiT or one of our DTR models: same keys).
        if not (is_fallback(found) and is_fallback(method)):
            _check_method(path, found, method)
        inferred = infer_dit_build(state)
        hidden, depth = inferred.pop("hidden_size"), inferred.pop("depth")
        spec = SIZES[size_name(size)]
        if (spec.hidden_size, spec.depth) != (hidden, depth):
            other = _size_of(hidden, depth)
            raise ValueError(
                f"{path} has depth {depth} and hidden size {hidden} (size {other or 'unknown'}), not size {size}"
            )
        if "class_dropout_prob" in build_kw and build_kw["class_dropout_prob"] == 0 and inferred["num_classes"] > 0:
            inferred["num_classes"] += 1  # no null row: every table row is a class
        build = {"method": method, "size": size_name(size), **inferred}
        build.update({k: v for k, v in build_kw.items()})
    method_options = dict(build.pop("method_options", {}) or {})
    extra = {k: build.pop(k) for k in list(build) if k not in ("method", "size", *_BUILD_KEYS)}
    method_options.update(extra)  # stray keywords are method options (e.g. top_k=2 for a bare Switch-DiT dict)
    with torch.device("meta"):
        model = build_model(build["method"], build["size"], **{k: build[k] for k in _BUILD_KEYS if k in build}, **method_options)
    model = model.to_empty(device="cpu")
    model.reset_non_persistent_buffers()
    found, reference_layout = detect_method(state)
    if reference_layout:
        spec = SIZES[build["size"]]
        state = convert_reference_state_dict(state, build["method"], spec.hidden_size, spec.depth, model.build_kwargs["method_options"])
    label = f"{build['method']}-{build['size']}/{model.patch_size}"
    load_state_dict_checked(model, state, label)
    return model.eval()
