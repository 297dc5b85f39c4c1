"""Declarative method options: each method lists its knobs as a table of ``Option`` rows.

``resolve_options`` fills defaults, coerces numbers, and raises a one-line
``ValueError`` naming the bad option, its value and what is valid, so that a
bad configuration fails when the config is composed rather than mid-training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class Option:
    """One knob: default value, kind (int/float/str), a validity predicate and its human description."""

    default: Any
    kind: type
    valid: Callable[[Any], bool]
    valid_text: str
    doc: str = ""
    # A configuration key this option always takes its value from (``num_tasks`` follows
    # ``diffusion.num_timesteps``); the harness fills it in, so it is not a config key itself.
    follows: str | None = None


def _coerce(method: str, name: str, value: Any, kind: type) -> Any:
    if kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{method} option {name}={value!r} must be a string")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{method} option {name}={value!r} must be a number ({kind.__name__})")
    if kind is int:
        if float(value) != int(value):
            raise ValueError(f"{method} option {name}={value!r} must be an integer")
        return int(value)
    return float(value)


def resolve_options(method: str, table: Mapping[str, Option], given: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults overlaid with ``given``; every value type-checked and range-checked against ``table``."""
    unknown = sorted(set(given) - set(table))
    if unknown:
        valid = ", ".join(sorted(table)) or "(none)"
        raise ValueError(f"unknown option(s) {unknown} for method '{method}'; valid options: {valid}")
    out: dict[str, Any] = {}
    for name, opt in table.items():
        value = _coerce(method, name, given.get(name, opt.default), opt.kind)
        if not opt.valid(value):
            raise ValueError(f"{method} option {name}={value!r} is invalid: must be {opt.valid_text}")
        out[name] = value
    return out
