"""Converters from reference checkpoints to this package's state-dict layout.

* Published DiT weights (arXiv 2212.09748) already use our names; only the
  build arguments are inferred from tensor shapes.
* The DTR reference code (arXiv 2310.07138) stores one T×D mask table per
  block (``blocks.N.routing._unit_mapping``, or ``routers.N._unit_mapping`` in
  the Switch-DiT code base).  Ours is a closed-form, non-persistent buffer, so
  the tables are checked against the closed form and dropped.
* The Switch-DiT reference code (arXiv 2403.09176) names the gate
  ``routers.N.f_gate.1`` and the experts ``routers.N.experts.w|b`` (already
  laid out [E, D_in, D_out]); it also stores the prior table
  ``prior._unit_mapping`` and ``full_time = arange(T)``, both re-derivable.
"""
from __future__ import annotations

import re
from typing import Any, Mapping

import torch

from .masks import window_mask_table

_PREFIXES = ("module.", "_orig_mod.")
_OFFICIAL_SWITCH = re.compile(r"^(routers\.\d+\.f_gate\.|prior\._unit_mapping$|full_time$)")
_OURS_SWITCH = re.compile(r"^routers\.\d+\.gate\.")
_DTR_TABLE = re.compile(r"^(blocks\.\d+\.routing|routers\.\d+)\._unit_mapping$")
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
    """(method, is_reference_layout) judged from parameter names alone.

    A state dict without router tensors is reported as ``dit``; note that our own
    DTR state dicts have exactly the DiT keys (the mask is a closed form), so
    only this package's checkpoint format can tell them apart.
    """
    keys = list(state)
    if any(_OFFICIAL_SWITCH.match(k) for k in keys):
        return "switch_dit", True
    if any(_OURS_SWITCH.match(k) for k in keys):
        return "switch_dit", False
    if any(_DTR_TABLE.match(k) for k in keys):
        return "dtr", True
    return "dit", False


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


def _get(cfg: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def official_build_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    """Build arguments from the (plain-dict) Hydra config saved by the DTR / Switch-DiT ``train.py``."""
    name = _get(config, "models.name")
    match = _MODEL_NAME.match(str(name))
    if not match:
        raise ValueError(f"reference config has models.name={name!r}; expected 'DiT-<S|B|L|XL>/<patch>'")
    latent = _get(config, "models.param.latent_size")
    if not isinstance(latent, int):
        latent = int(_get(config, "general.image_size", 256)) // 8  # what their train.py sets it to
    num_classes = int(_get(config, "models.param.num_classes", 1000))
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
    routing = _get(config, "routing")
    if routing is None:  # the DTR code base keeps its routing knobs under models.routing
        routing = _get(config, "models.routing") or {}
        init = routing.get("init_method", "DTR")
        if init != "DTR":
            raise ValueError(f"reference DTR checkpoint uses init_method={init!r}; only the 'DTR' sliding-window mask is supported")
        # alpha is fixed at 4 in that code base
        return _dtr_build(build, 4.0, routing.get("sharing_ratio", 0.8), routing.get("taskcount", 1000))
    kind = routing.get("name")
    param = routing.get("param", {}) or {}
    if kind == "DTR":
        _dtr_build(build, param.get("alpha", 4.0), param.get("beta", 0.8), param.get("taskcount", 1000))
    elif kind == "DMoE":
        build["method"] = "switch_dit"
        build["method_options"] = {
            "num_experts": int(param.get("num_experts", 3)),
            "top_k": int(param.get("k", 2)),
            "w_jsd": float(routing.get("w_JSD", 1.0)),
            "num_tasks": int(routing.get("taskcount", 1000)),
            "prior_alpha": 4.0,  # fixed in that code base
        }
    else:
        raise ValueError(f"reference config has routing.name={kind!r}; supported: 'DTR', 'DMoE'")
    return build


def _dtr_build(build: dict[str, Any], alpha: Any, beta: Any, num_tasks: Any) -> dict[str, Any]:
    build["method"] = "dtr"
    build["method_options"] = {"alpha": float(alpha), "beta": float(beta), "num_tasks": int(num_tasks)}
    return build


def _check_table(key: str, table: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    if tuple(table.shape) != tuple(expected.shape):
        raise ValueError(f"{key} has shape {tuple(table.shape)}, expected {tuple(expected.shape)} for {what}")
    if not torch.equal(table.float().cpu(), expected):
        raise ValueError(f"{key} differs from the closed-form {what}; custom mask tables are not supported")


def convert_reference_state_dict(
    state: Mapping[str, torch.Tensor], method: str, hidden_size: int, depth: int, options: Mapping[str, Any]
) -> dict[str, torch.Tensor]:
    """Reference DTR / Switch-DiT names → ours, verifying and dropping the re-derivable tables."""
    out: dict[str, torch.Tensor] = {}
    if method == "dtr":
        expected = window_mask_table(options["num_tasks"], hidden_size, options["alpha"], options["beta"])
        for key, value in state.items():
            if _DTR_TABLE.match(key):
                _check_table(key, value, expected, f"DTR mask (alpha={options['alpha']}, beta={options['beta']})")
            else:
                out[key] = value
        return out
    if method == "switch_dit":
        e, k, tasks = options["num_experts"], options["top_k"], options["num_tasks"]
        for key, value in state.items():
            if key == "full_time":
                _check_table(key, value, torch.arange(tasks).float(), "timestep list arange(T)")
            elif key == "prior._unit_mapping":
                prior = window_mask_table(tasks, depth * e, options["prior_alpha"], k / e)
                _check_table(key, value, prior, f"Switch-DiT prior (k/E={k}/{e})")
            else:
                key = re.sub(r"^(routers\.\d+)\.f_gate\.", r"\1.gate.", key)
                key = re.sub(r"^(routers\.\d+\.experts)\.w$", r"\1.weight", key)
                key = re.sub(r"^(routers\.\d+\.experts)\.b$", r"\1.bias", key)
                out[key] = value
        return out
    return dict(state)
