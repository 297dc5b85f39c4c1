"""Batched Inception-v3 feature extraction with torch-fidelity's ``inception-v3-compat`` network.

Per image it produces the three feature sets the ADM evaluator reads
(Dhariwal & Nichol 2021, ``evaluations/evaluator.py``):

* ``pool3``: the 2048-d ``pool_3`` activations (FID, KID, Precision/Recall);
* ``spatial``: the first 7 channels of ``mixed_6/conv`` (the 1x1 branch of
  Mixed_6d, 17x17), flattened in NHWC order to 7*17*17 = 2023 values (sFID,
  Nash et al. 2021);
* ``logits``: the unbiased 1008-way logits (Inception Score), only when the
  weights carry the classifier.

Preprocessing is torch-fidelity's (TF1-compatible bilinear resize to 299,
``(x - 128) / 128``), matching the TF graph ADM uses. The ``clean`` pass instead
resizes each image with clean-fid's ``clean`` resizer (PIL bicubic on float
channels, Parmar et al. 2022) and feeds the same network.

With ``torch.distributed`` initialised, each rank extracts a contiguous shard
and the shards are all-gathered, so every rank ends with the full feature set.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from .weights import InceptionWeights, build_fidelity_extractor

SPATIAL_CHANNELS = 7
SPATIAL_SIZE = 17
SPATIAL_DIM = SPATIAL_CHANNELS * SPATIAL_SIZE * SPATIAL_SIZE  # 2023
POOL3_DIM = 2048
INPUT_SIZE = 299

# torch-fidelity's module order from the stem to pool_3; used by the clean pass,
# whose input is already resized and must skip torch-fidelity's own resize.
_STAGES = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_1", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
    "MaxPool_2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
    "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "AvgPool",
)
# TF's "mixed_6/conv" is Mixed_6d's 1x1 branch (after its ReLU) in torch-fidelity's layout.
SPATIAL_MODULE = "Mixed_6d.branch1x1"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be 'auto', 'cpu', 'cuda[:N]' or a torch.device; got {device!r}")
    if device == "auto":
        if torch.cuda.is_available():
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                return torch.device("cuda", torch.cuda.current_device())
            return torch.device("cuda")
        return torch.device("cpu")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device {device!r} is invalid; use 'auto', 'cpu' or 'cuda[:N]'") from exc


class InceptionFeatureExtractor:
    """Callable on uint8 NHWC RGB batches; returns a dict of float32 CPU tensors."""

    def __init__(self, weights: InceptionWeights, device: str | torch.device = "auto"):
        self.weights = weights
        self.device = resolve_device(device)
        features = ["2048", "logits_unbiased"] if weights.has_logits else ["2048"]
        self.net = build_fidelity_extractor(weights, features).to(self.device)
        if self.device.type == "cpu":
            # NHWC convolutions are ~1.4x faster with oneDNN on CPU; results equal to float round-off.
            self.net = self.net.to(memory_format=torch.channels_last)
        self.has_logits = weights.has_logits
        self._spatial: list[torch.Tensor] = []
        self._lock = threading.Lock()
        self.net.get_submodule(SPATIAL_MODULE).register_forward_hook(self._capture_spatial)

    def _capture_spatial(self, module, inputs, output) -> None:
        # (N, 192, 17, 17) -> first 7 channels, NHWC flatten like the TF tensor in ADM.
        self._spatial.append(output[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(output.shape[0], -1))

    @staticmethod
    def _to_nchw(batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(batch)
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected a uint8 NHWC RGB batch, got dtype {x.dtype} shape {tuple(x.shape)}")
        return x.permute(0, 3, 1, 2).contiguous()

    @torch.inference_mode()
    def __call__(self, batch: np.ndarray | torch.Tensor) -> dict[str, torch.Tensor]:
        x = self._to_nchw(batch).to(self.device, non_blocking=True)
        with self._lock, _full_fp32():
            self._spatial.clear()
            outputs = self.net(x)
            spatial = self._spatial.pop()
        result = {"pool3": outputs[0].float().cpu(), "spatial": spatial.float().cpu()}
        if self.has_logits:
            result["logits"] = outputs[1].float().cpu()
        return result

    @torch.inference_mode()
    def clean_pool3(self, batch: np.ndarray | torch.Tensor) -> torch.Tensor:
        """pool_3 features after clean-fid's ``clean`` resize (PIL bicubic to 299, no quantisation)."""
        from cleanfid.resize import build_resizer

        images = np.asarray(batch)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected a uint8 NHWC RGB batch, got dtype {images.dtype} shape {images.shape}")
        resize = build_resizer("clean")
        resized = np.stack([resize(img) for img in images]).astype(np.float32)  # N, 299, 299, 3 in [0, 255]
        x = torch.from_numpy(resized).permute(0, 3, 1, 2).to(self.device)
        return self.pool3_from_pixels(x).float().cpu()

    def pool3_from_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """pool_3 of float NCHW pixels in [0, 255] already at 299x299 (no resize)."""
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"expected 299x299 input, got {tuple(x.shape[-2:])}")
        h = (x.to(self.net.feature_extractor_internal_dtype) - 128) / 128
        with self._lock, _full_fp32():
            self._spatial.clear()
            for name in _STAGES:
                h = getattr(self.net, name)(h)
            self._spatial.clear()
        return torch.flatten(h, 1)


@contextlib.contextmanager
def _full_fp32():
    """Disable TF32 while extracting: the reference statistics were computed in full fp32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _dist_info() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous [start, stop) of ``n`` items for ``rank``; shards differ in size by at most one."""
    per, extra = divmod(n, world_size)
    start = rank * per + min(rank, extra)
    return start, start + per + (1 if rank < extra else 0)


def _all_gather_rows(local: torch.Tensor, n_total: int, world_size: int, device: torch.device) -> torch.Tensor:
    """Gather row shards (contiguous, rank order) from every rank into one (n_total, ...) tensor."""
    dist = torch.distributed
    # NCCL gathers CUDA tensors only; gloo gathers CPU tensors.
    comm_device = device if dist.get_backend() == "nccl" else torch.device("cpu")
    rows = -(-n_total // world_size)
    padded = torch.zeros((rows, *local.shape[1:]), dtype=local.dtype, device=comm_device)
    padded[: local.shape[0]] = local.to(comm_device)
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    parts = [g[: shard_range(n_total, r, world_size)[1] - shard_range(n_total, r, world_size)[0]] for r, g in enumerate(gathered)]
    return torch.cat(parts).cpu()


def extract(
    batches_for: Callable[[int, int, int], Iterable[np.ndarray]],
    n: int,
    fn: Callable[[np.ndarray], dict[str, torch.Tensor]],
    *,
    batch_size: int,
    device: torch.device,
    progress: bool = False,
    desc: str = "features",
) -> dict[str, torch.Tensor]:
    """Run ``fn`` over all ``n`` images and concatenate its outputs per key.

    ``batches_for(start, stop, batch_size)`` yields uint8 NHWC batches of images
    [start, stop). Under torch.distributed each rank handles its shard and the
    results are all-gathered in order.
    """
    rank, world = _dist_info()
    if n < world:  # too few images to give every rank a shard: each rank does all of them
        world = 1
    start, stop = shard_range(n, rank, world) if world > 1 else (0, n)
    chunks: dict[str, list[torch.Tensor]] = {}
    iterator: Iterator = iter(batches_for(start, stop, batch_size))
    if progress and rank == 0:
        from tqdm.auto import tqdm

        iterator = iter(tqdm(iterator, total=-(-(stop - start) // batch_size), desc=desc, leave=False))
    for batch in iterator:
        out = fn(batch)
        if not isinstance(out, dict):
            out = {"features": out}
        for key, value in out.items():
            chunks.setdefault(key, []).append(value)
    result = {k: torch.cat(v) for k, v in chunks.items()}
    if world > 1:
        keys = sorted(result) if result else []
        result = {k: _all_gather_rows(result[k], n, world, device) for k in keys}
    return result
