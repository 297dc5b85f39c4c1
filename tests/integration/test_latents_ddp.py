"""Latent extraction over two gloo ranks equals one process."""

import os

import pytest
import torch
from image_cases import NoisyToy, TinyDataset
import torch.distributed as dist
import torch.multiprocessing as mp

from benchmark.autoencoder import from_uint8
from benchmark.data import build_dataset, extract_latents
from benchmark.data.latents import cache_path


@pytest.fixture(scope="module")
def digits():
    return build_dataset("digits", image_size=8)


# ---------------------------------------------------------------- DDP extraction
def _ddp_worker(rank, world_size, init_file, cache_dir, out_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        lat = extract_latents(TinyDataset(), NoisyToy(), cache_dir, batch_size=32, rank=rank, world_size=world_size,
                              seed=3)
        post = extract_latents(TinyDataset(), NoisyToy(), cache_dir, batch_size=32, rank=rank,
                               world_size=world_size, seed=3, mode="posterior")
        if rank == 1:  # every rank returns the merged set, not only its shard
            torch.save({"latents": lat.latents.clone(), "labels": lat.labels.clone(),
                        "mean": post.latents.clone(), "std": post.std.clone()}, out_file)
    finally:
        dist.destroy_process_group()


def test_ddp_extraction_equals_single_process(tmp_path):
    tiny = TinyDataset()
    single = extract_latents(tiny, NoisyToy(), str(tmp_path / "single"), batch_size=100, seed=3)
    out_file = str(tmp_path / "rank1.pt")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "ddp"), out_file), nprocs=2, join=True)
    ddp = torch.load(out_file, weights_only=True)
    torch.testing.assert_close(ddp["latents"], single.latents, rtol=0, atol=0)
    assert torch.equal(ddp["labels"], single.labels)
    final = os.path.basename(cache_path(tiny, NoisyToy(), str(tmp_path / "ddp"), True, 3))
    final_posterior = os.path.basename(cache_path(tiny, NoisyToy(), str(tmp_path / "ddp"), True, 3, "posterior"))
    # shards cleaned up, only the final caches left
    assert sorted(os.listdir(tmp_path / "ddp")) == sorted([final, final_posterior])
    # the merged posterior rows are the toy's mean and std of each image, then of each flip
    images = from_uint8(tiny._images)
    both = torch.cat([images, images.flip(-1)])
    torch.testing.assert_close(ddp["mean"], 0.5 * both, rtol=0, atol=0)
    torch.testing.assert_close(ddp["std"], 0.1 + 0.05 * both.abs(), rtol=0, atol=0)
    # The noise really is per-row noise: residual / 0.1 is standard normal, differs between rows and
    # between an image and its flip.
    n = len(tiny)
    images = from_uint8(tiny._images)
    noise = (single.latents - 0.5 * torch.cat([images, images.flip(-1)])) / 0.1
    assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1) < 0.05
    assert not torch.allclose(noise[0], noise[1]) and not torch.allclose(noise[0], noise[n])
