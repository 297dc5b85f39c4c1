"""Sharded feature extraction under torch.distributed (gloo, 2 CPU ranks): every rank gets all rows, in order."""
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmark.metrics.extractor import extract, shard_range
from benchmark.metrics.images import ArraySource


@pytest.mark.parametrize("n, world", [(10, 3), (7, 2), (4, 4), (9, 1)])
def test_shard_range_partitions(n, world):
    ranges = [shard_range(n, r, world) for r in range(world)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    sizes = [b - a for a, b in ranges]
    assert max(sizes) - min(sizes) <= 1


def _features(batch):
    # a deterministic stand-in for Inception: per-image channel means and the first pixel
    x = torch.from_numpy(np.asarray(batch)).float()
    return {"a": x.mean(dim=(1, 2)), "b": x[:, 0, 0, :1]}


def _worker(rank, world, port, images, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        src = ArraySource(images)
        seen = []

        def batches(start, stop, bs):
            seen.append((start, stop))
            return src.batches(start, stop, bs)

        res = extract(batches, len(src), _features, batch_size=2, device=torch.device("cpu"))
        torch.save({"res": res, "seen": seen}, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_extract_all_gathers_in_order(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (7, 4, 4, 3), dtype=np.uint8)
    mp.spawn(_worker, args=(2, _free_port(), images, str(tmp_path)), nprocs=2, join=True)
    expected = _features(images)
    shards = []
    for rank in range(2):
        out = torch.load(tmp_path / f"{rank}.pt", weights_only=True)
        for key in ("a", "b"):
            torch.testing.assert_close(out["res"][key], expected[key])
        shards += out["seen"]
    assert sorted(shards) == [(0, 4), (4, 7)]  # each rank read only its own shard
