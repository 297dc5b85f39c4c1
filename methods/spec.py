"""A method is one ``MethodSpec``, registered by the file that defines its model.

The spec is everything the harness needs to know about a method and the only
place that knows it: the name used on the command line, the name a report
prints, the model class (whose ``OPTIONS`` table holds the options, their
defaults and checks, written once), and how checkpoints of the method's
official code are recognised and converted. The harness, the converters and
the report read specs; none of them names a method.

A method from outside this package registers itself the same way
(``register_method(MethodSpec(...))`` in its own module) and is imported
before the configuration is composed through ``BENCHMARK_PLUGINS``
(``benchmark.plugins``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from kernels.registry import Registry

StateDict = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class OfficialCheckpoint:
    """How checkpoints of a method's official code are read.

    ``layout(keys)``: None when the parameter names are not this method's, else
    True for the official code's layout and False for this suite's.
    ``routing_names``: the ``routing.name`` values of the official Hydra config
    (``None`` for the DTR code base, which keeps its routing under ``models.routing``).
    ``options(routing, param)``: this suite's method options from the official config.
    ``convert(state, hidden_size, depth, options)``: official names -> ours, with the
    re-derivable tables checked against their closed forms and dropped.
    ``fallback``: the method a state dict is taken for when no other claims it (the baseline).
    ``own_keys``: this suite's state dicts of the method hold parameters a DiT lacks, so a bare
    state dict without them cannot be this method.
    """

    layout: Callable[[list[str]], bool | None] = lambda keys: None
    routing_names: tuple[str | None, ...] = ()
    options: Callable[[Mapping[str, Any]], dict[str, Any]] = lambda routing: {}
    convert: Callable[[StateDict, int, int, Mapping[str, Any]], dict[str, torch.Tensor]] = (
        lambda state, hidden_size, depth, options: dict(state))
    fallback: bool = False
    own_keys: bool = False


@dataclass(frozen=True)
class MethodSpec:
    """One method: ``name`` on the command line, ``display`` in reports, its ``model`` class."""

    name: str
    display: str
    model: type
    official: OfficialCheckpoint | None = None
    summary: str = ""

    @property
    def options(self) -> dict:
        return dict(self.model.OPTIONS)

    def config_node(self) -> dict[str, Any]:
        """The Hydra node of ``method=<name>``: the option defaults, except those that follow
        another key of the configuration (``num_tasks`` is the diffusion's step count)."""
        defaults = {k: o.default for k, o in self.model.OPTIONS.items() if o.follows is None}
        return {"name": self.name, "options": defaults}


METHODS: Registry[MethodSpec] = Registry("method")


def register_method(spec: MethodSpec) -> MethodSpec:
    """Add a method (a ``methods.dit.DiT`` subclass with an ``OPTIONS`` table) under ``spec.name``."""
    from .dit import DiT  # the base class; imported here because dit.py registers itself through this module

    if not isinstance(spec, MethodSpec):
        raise TypeError(f"register_method takes a MethodSpec, got {spec!r}")
    if not (isinstance(spec.model, type) and issubclass(spec.model, DiT)):
        raise TypeError(f"method '{spec.name}' must be a subclass of methods.dit.DiT, got {spec.model!r}")
    METHODS.register(spec.name, spec)
    for hook in list(_ON_REGISTER):
        hook(spec)
    return spec


# Called with every spec registered from now on (the harness adds its Hydra node this way).
_ON_REGISTER: list[Callable[[MethodSpec], None]] = []


def on_register(hook: Callable[[MethodSpec], None]) -> None:
    """Call ``hook`` for every method registered so far and every one registered later."""
    _ON_REGISTER.append(hook)
    for spec in METHODS.values():
        hook(spec)


def method_spec(name: str) -> MethodSpec:
    return METHODS.lookup(name)


def display_name(name: str) -> str:
    """The name a report prints (the method's own name when it is not registered here)."""
    return METHODS[name].display if name in METHODS else name


def baseline() -> MethodSpec:
    """The method every other is compared with: the one whose state dicts have only backbone keys (DiT)."""
    for spec in METHODS.values():
        if spec.official is not None and spec.official.fallback:
            return spec
    raise LookupError("no baseline method is registered (a spec with OfficialCheckpoint(fallback=True))")
