"""Registries of model sizes and methods, and the single ``build_model`` entry point.

Sizes follow DiT's Table 1 (arXiv 2212.09748): S/B/L/XL, plus ``debug``, a
tiny preset that trains in a minute or two on a laptop CPU (8×8 or 16×16
single-channel images).  Methods are looked up by name; the harness never
branches on which method it runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch.nn as nn

from kernels.registry import Registry

from . import dit, dtr, switch_dit  # noqa: F401  (each registers its MethodSpec)
from .dit import DiT
from .options import resolve_options
from .spec import METHODS, MethodSpec, register_method


@dataclass(frozen=True)
class SizeSpec:
    depth: int
    hidden_size: int
    num_heads: int


SIZES: Registry[SizeSpec] = Registry("size", {
    "S": SizeSpec(depth=12, hidden_size=384, num_heads=6),
    "B": SizeSpec(depth=12, hidden_size=768, num_heads=12),
    "L": SizeSpec(depth=24, hidden_size=1024, num_heads=16),
    "XL": SizeSpec(depth=28, hidden_size=1152, num_heads=16),
    # 4 blocks × 96 channels × 4 heads (head dim 24): ~0.5M parameters.
    "debug": SizeSpec(depth=4, hidden_size=96, num_heads=4),
}, case_insensitive=True)

__all__ = ["METHODS", "SIZES", "MethodSpec", "SizeSpec", "build_model", "method_class", "register_method",
           "size_name", "validate_options"]


def method_class(method: str) -> type[DiT]:
    return METHODS.lookup(method).model


def size_name(size: str) -> str:
    """Canonical size key (case-insensitive lookup: 'xl' → 'XL')."""
    return SIZES.canonical(size)


def validate_options(method: str, **options: Any) -> dict[str, Any]:
    """Check a method's options early (at config time); returns them with defaults filled in."""
    cls = method_class(method)
    resolved = resolve_options(method, cls.OPTIONS, options)
    cls.check_options(resolved)
    return resolved


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} is invalid: must be an integer >= {minimum}")
    return value


def build_model(
    method: str,
    size: str,
    *,
    patch_size: int = 2,
    input_size: int = 32,
    in_channels: int = 4,
    num_classes: int = 1000,
    learn_sigma: bool = True,
    class_dropout_prob: float = 0.1,
    method_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> nn.Module:
    """Build ``method`` at ``size`` with DiT initialisation; ``model.build_kwargs`` can rebuild it.

    Method options come as keyword arguments (``alpha=4.0``) or as a
    ``method_options`` mapping (the form stored in ``build_kwargs``).
    """
    cls = method_class(method)
    size = size_name(size)
    spec = SIZES[size]
    _check_int("patch_size", patch_size, 1)
    _check_int("input_size", input_size, 1)
    _check_int("in_channels", in_channels, 1)
    _check_int("num_classes", num_classes, 0)
    if input_size % patch_size:
        valid = [p for p in (1, 2, 4, 8, 16) if input_size % p == 0]
        raise ValueError(f"patch_size={patch_size} does not divide input_size={input_size}; valid: {valid}")
    if not isinstance(learn_sigma, bool):
        raise ValueError(f"learn_sigma={learn_sigma!r} must be True or False")
    if isinstance(class_dropout_prob, bool) or not isinstance(class_dropout_prob, (int, float)) or not 0 <= class_dropout_prob < 1:
        raise ValueError(f"class_dropout_prob={class_dropout_prob!r} is invalid: must be in [0, 1)")
    merged = {**dict(method_options or {}), **options}
    resolved = validate_options(method, **merged)
    # One table feeds both the constructor and build_kwargs, so a rebuild always matches.
    backbone = {"patch_size": patch_size, "input_size": input_size, "in_channels": in_channels,
                "num_classes": num_classes, "learn_sigma": learn_sigma, "class_dropout_prob": float(class_dropout_prob)}
    model = cls(depth=spec.depth, hidden_size=spec.hidden_size, num_heads=spec.num_heads, **backbone, **resolved)
    model.initialize_weights()
    model.build_kwargs = {"method": method, "size": size, **backbone, "method_options": dict(resolved)}
    return model
