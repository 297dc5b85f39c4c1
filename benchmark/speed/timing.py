"""The one timer of the speed tools: median and interquartile range over warmed-up repeats.

On a GPU each repeat is timed with CUDA events around the call, after the previous
call's gradients are dropped and the L2 cache is overwritten (as ``triton.testing.do_bench``
does), so one repeat cannot run from the cache the previous one filled. On a CPU each
repeat is ``time.perf_counter`` around the call. Both take repeat counts, so a record says
exactly how many samples its median and IQR come from.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import torch

L2_FLUSH_BYTES = 256 * 1024 ** 2  # larger than the L2 cache of any current GPU


@dataclass(frozen=True)
class Timing:
    median_ms: float
    iqr_ms: float
    q1_ms: float
    q3_ms: float
    repeats: int

    def fields(self, prefix: str = "") -> dict:
        """The timing as record fields, e.g. ``median_ms``, ``iqr_ms`` (``prefix`` prepended)."""
        return {f"{prefix}{k}": v for k, v in asdict(self).items()}


def summarize(times_ms: list[float]) -> Timing:
    """Median and quartiles (linear interpolation between order statistics) of the samples."""
    if not times_ms:
        raise ValueError("no timings to summarize; repeats must be >= 1")
    ordered = sorted(times_ms)
    if len(ordered) == 1:
        q1 = q3 = ordered[0]
    else:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    return Timing(statistics.median(ordered), q3 - q1, q1, q3, len(ordered))


def _clear(tensors: Iterable[torch.Tensor]) -> None:
    for t in tensors:
        t.grad = None


def _cpu_times(fn: Callable, repeats: int, clear) -> list[float]:
    out = []
    for _ in range(repeats):
        _clear(clear)
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e3)
    return out


def _cuda_times(fn: Callable, device: torch.device, repeats: int, clear) -> list[float]:
    flush = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.int32, device=device)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(repeats)]
    for start, end in zip(starts, ends):
        _clear(clear)
        flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


def measure(fn: Callable, device, *, warmup: int = 1, repeats: int = 5, clear: Iterable[torch.Tensor] = ()) -> Timing:
    """Time ``fn()`` ``repeats`` times after ``warmup`` untimed calls; ``clear``'s grads are dropped
    before every call, so backward passes do not accumulate into them."""
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    device = torch.device(device)
    clear = list(clear)
    for _ in range(warmup):
        _clear(clear)
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        times = _cuda_times(fn, device, repeats, clear)
    else:
        times = _cpu_times(fn, repeats, clear)
    _clear(clear)
    return summarize(times)


def describe(device, warmup: int, repeats: int) -> str:
    """How ``measure`` timed on ``device``, for a record's ``timing`` field."""
    how = ("CUDA events per call, L2 cache overwritten between calls" if torch.device(device).type == "cuda"
           else "time.perf_counter per call")
    return f"median and IQR of {repeats} timed calls, after {warmup} untimed warm-up calls; {how}"


def peak_memory_mb(fn: Callable, device, clear: Iterable[torch.Tensor] = ()) -> tuple[float | None, float | None]:
    """(peak MiB during one call, peak minus what was allocated before it); None off CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return None, None
    clear = list(clear)
    _clear(clear)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    _clear(clear)
    mib = 1024.0 ** 2
    return peak / mib, (peak - base) / mib
