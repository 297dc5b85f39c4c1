"""Loading checkpoint files without unpickling arbitrary objects.

Everything goes through ``torch.load(weights_only=True)`` (or safetensors).
Checkpoints written by the reference training scripts also pickle an
``argparse.Namespace`` (DiT) or an OmegaConf ``DictConfig`` (DTR, Switch-DiT);
for those, a minimal, explicit allow-list of pure-data container classes is
enabled for the duration of the call only.  Config objects are converted to
plain dicts right after loading.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import pathlib
import typing
from typing import Any

import torch


def _allowed_globals() -> list[Any]:
    """Data-only classes a reference checkpoint may contain (never functions or arbitrary types)."""
    allowed: list[Any] = [argparse.Namespace, collections.defaultdict, typing.Any, dict, list, tuple, set, int, float, str, bool, bytes]
    try:
        from omegaconf import DictConfig, ListConfig, nodes
        from omegaconf.base import ContainerMetadata, Metadata
    except ImportError:  # without omegaconf such checkpoints simply fail to load, with a clear message
        return allowed
    allowed += [DictConfig, ListConfig, ContainerMetadata, Metadata]
    allowed += [nodes.AnyNode, nodes.StringNode, nodes.IntegerNode, nodes.FloatNode, nodes.BooleanNode, nodes.BytesNode]
    return allowed


@contextlib.contextmanager
def _allow(globals_: list[Any]):
    if hasattr(torch.serialization, "safe_globals"):
        with torch.serialization.safe_globals(globals_):
            yield
    else:  # torch < 2.5: only the process-wide allow-list exists
        torch.serialization.add_safe_globals(globals_)
        yield


def _looks_like_torch_file(path: pathlib.Path) -> bool:
    """torch.save writes a zip archive (or, legacy, a pickle: protocol 2+ starts with 0x80)."""
    with open(path, "rb") as fh:
        head = fh.read(4)
    return head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"


def safe_torch_load(path: str | pathlib.Path) -> Any:
    """Load a ``.pt``/``.pth``/``.safetensors`` file onto the CPU without executing pickled code."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if not _looks_like_torch_file(path):
        raise ValueError(f"{path} is not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle); "
                         "pass a .pt/.pth file written by torch.save, or a .safetensors file")
    try:
        with _allow(_allowed_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # the unpickler's message is many lines; keep the telling one
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        reason = next((ln for ln in lines if "Unsupported global" in ln or "WeightsUnpickler" in ln), lines[-1] if lines else repr(err))
        raise ValueError(f"cannot load {path} safely (weights_only): {reason}") from None


def to_plain(obj: Any) -> Any:
    """OmegaConf containers and argparse.Namespace → plain dicts/lists (interpolations resolved when possible)."""
    if isinstance(obj, argparse.Namespace):
        return {k: to_plain(v) for k, v in vars(obj).items()}
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:
        return obj
    if isinstance(obj, (DictConfig, ListConfig)):
        try:
            return OmegaConf.to_container(obj, resolve=True)
        except Exception:  # e.g. a ${now:...} resolver that is not registered here
            raw = OmegaConf.to_container(obj, resolve=False)
            return _resolve_plain_refs(raw, raw)
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def _resolve_plain_refs(node: Any, root: Any) -> Any:
    """Resolve values that are exactly ``${a.b.c}`` against ``root``; leave anything else as is."""
    if isinstance(node, dict):
        return {k: _resolve_plain_refs(v, root) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve_plain_refs(v, root) for v in node]
    if isinstance(node, str) and node.startswith("${") and node.endswith("}") and ":" not in node:
        target: Any = root
        for part in node[2:-1].split("."):
            if not isinstance(target, dict) or part not in target:
                return node
            target = target[part]
        return _resolve_plain_refs(target, root)
    return node
