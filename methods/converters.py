"""Reading checkpoints of the official code bases: the parts every method shares.

Wrapper prefixes are stripped, the backbone's build arguments are inferred from
tensor shapes (published DiT weights, arXiv 2212.09748, already use this
suite's names), and the official Hydra config's model name is parsed here.
What is particular to a method (how its routing tensors are named, which
tables are re-derivable, how its config's routing section maps onto options)
is the ``OfficialCheckpoint`` of its spec, in the method's own file.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import torch

_PREFIXES = ("module.", "_orig_mod.")
_MODEL_NAME = re.compile(r"^DiT-(S|B|L|XL)/(\d+)$")


def strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DDP (``module.``) and torch.compile (``_orig_mod.``) wrappers from key names."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def detect_method(state: Mapping[str, torch.Tensor]) -> tuple[str, bool]:
    """(method, is_reference_layout) judged from parameter names alone, by asking each method's spec.

    A state dict that no method with parameters of its own claims is reported as the
    fallback method (the DiT baseline); note that DTR state dicts of this suite have exactly
    the DiT keys (the mask is a closed form), so only this package's checkpoint format can
    tell them apart.
    """
    from .spec import METHODS

    keys = list(state)
    claims = [(spec.name, layout) for spec in METHODS.values() if spec.official is not None
              and not spec.official.fallback and (layout := spec.official.layout(keys)) is not None]
    if len(claims) > 1:
        raise ValueError(f"state dict is claimed by several methods ({', '.join(n for n, _ in claims)}); "
                         "pass method= to say which")
    if claims:
        return claims[0]
    fallback = [spec.name for spec in METHODS.values() if spec.official is not None and spec.official.fallback]
    return fallback[0], False


def is_fallback(method: str) -> bool:
    """Whether ``method``'s state dicts have no parameters of their own (DiT, DTR): a bare state
    dict without routing tensors may then be any of them."""
    from .spec import METHODS

    spec = METHODS.lookup(method)
    return spec.official is None or spec.official.fallback or not spec.official.own_keys


def infer_dit_build(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """patch/input size, channels, classes and learn_sigma from backbone tensor shapes.

    A label table with R rows is read as R−1 classes plus the classifier-free
    null row (DiT's convention, class_dropout_prob > 0).
    """
    need = ("x_embedder.proj.weight", "pos_embed", "final_layer.linear.weight")
    missing = [k for k in need if k not in state]
    if missing:
        raise ValueError(f"not a DiT-style state dict: missing {missing}")
    hidden, in_ch, p, _ = state["x_embedder.proj.weight"].shape
    grid = round(state["pos_embed"].shape[1] ** 0.5)
    out_ch = state["final_layer.linear.weight"].shape[0] // (p * p)
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    build: dict[str, Any] = {
        "patch_size": int(p),
        "input_size": int(grid * p),
        "in_channels": int(in_ch),
        "learn_sigma": bool(out_ch == 2 * in_ch),
        "hidden_size": int(hidden),
        "depth": int(depth),
    }
    table = state.get("y_embedder.embedding_table.weight")
    if table is None:
        build.update(num_classes=0, class_dropout_prob=0.0)
    else:
        build.update(num_classes=int(table.shape[0]) - 1, class_dropout_prob=0.1)
    return build


def config_value(cfg: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def official_build_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """Build arguments from the (plain-dict) Hydra config saved by the DTR / Switch-DiT ``train.py``."""
    name = config_value(config, "models.name")
    match = _MODEL_NAME.match(str(name))
    if not match:
        raise ValueError(f"reference config has models.name={name!r}; expected 'DiT-<S|B|L|XL>/<patch>'")
    latent = config_value(config, "models.param.latent_size")
    if not isinstance(latent, int):
        latent = int(config_value(config, "general.image_size", 256)) // 8  # what their train.py sets it to
    num_classes = int(config_value(config, "models.param.num_classes", 1000))
    build: dict[str, Any] = {
        "size": match.group(1),
        "patch_size": int(match.group(2)),
        "input_size": latent,
        "in_channels": 4,
        "num_classes": num_classes,
        "learn_sigma": True,
        # Their DiT disables label dropout (and the null row) for single-class data.
        "class_dropout_prob": 0.0 if num_classes == 1 else 0.1,
    }
    from .spec import METHODS

    routing = config_value(config, "routing")
    if routing is None:  # the DTR code base keeps its routing knobs under models.routing, without a name
        routing = config_value(config, "models.routing") or {}
        kind = None
    else:
        kind = routing.get("name")
    for spec in METHODS.values():
        if spec.official is not None and kind in spec.official.routing_names:
            return {**build, "method": spec.name, "method_options": spec.official.options(routing)}
    supported = [n for spec in METHODS.values() if spec.official for n in spec.official.routing_names if n]
    raise ValueError(f"reference config has routing.name={kind!r}; supported: {', '.join(map(repr, supported))}")


def check_table(key: str, table: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    """A stored table that this suite re-derives must equal its closed form (else it is refused)."""
    if tuple(table.shape) != tuple(expected.shape):
        raise ValueError(f"{key} has shape {tuple(table.shape)}, expected {tuple(expected.shape)} for {what}")
    if not torch.equal(table.float().cpu(), expected):
        raise ValueError(f"{key} differs from the closed-form {what}; custom mask tables are not supported")


def convert_reference_state_dict(
    state: Mapping[str, torch.Tensor], method: str, hidden_size: int, depth: int, options: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """The official code's names -> ours for ``method``, through the method's spec."""
    from .spec import METHODS

    official = METHODS.lookup(method).official
    if official is None:
        return dict(state)
    return official.convert(state, hidden_size, depth, options)
