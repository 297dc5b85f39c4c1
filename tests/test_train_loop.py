"""Training loop: resume equivalence, DDP (2 gloo ranks) agreement, loss falls, bad resume input."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from benchmark import checkpoint as ckpt_io
from benchmark.config import compose


def tiny(tmp: Path, *extra: str) -> list[str]:
    return [f"paths.runs={tmp}/runs", f"paths.cache={tmp}/cache", f"paths.results={tmp}/results",
            f"paths.reports={tmp}/reports", "train.global_batch_size=8", "train.log_every=1",
            "train.progress=false", *extra]


def train_cfg(tmp: Path, *extra: str):
    from benchmark.train import train

    return train(compose(tiny(tmp, *extra)))


def _states(path: Path) -> dict:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return {"model": payload["model"], "ema": payload["ema"], "step": payload["step"]}


@pytest.mark.parametrize("method", ["dit"])
def test_resume_equals_uninterrupted(tmp_path, method):
    n = 3
    straight = train_cfg(tmp_path, f"method={method}", "run_name=straight", f"train.iterations={2 * n}")
    train_cfg(tmp_path, f"method={method}", "run_name=split", f"train.iterations={n}")
    resumed = train_cfg(tmp_path, f"method={method}", "run_name=split", f"train.iterations={2 * n}",
                        "train.resume=latest")
    a, b = _states(straight.checkpoint), _states(resumed.checkpoint)
    assert a["step"] == b["step"] == 2 * n
    for part in ("model", "ema"):
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=1e-6, msg=f"{part}.{key}")
    # and it did train: weights moved away from the step-n checkpoint
    mid = _states(ckpt_io.checkpoint_path(tmp_path / "runs" / "split", n))
    assert any(not torch.equal(mid["model"][k], b["model"][k]) for k in b["model"])


def test_resume_latest_without_checkpoint_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.resume=latest but .* holds no checkpoint"):
        train_cfg(tmp_path, "train.iterations=2", "train.resume=latest")
    assert not list((tmp_path / "runs").rglob("*.pt"))


def test_resume_from_corrupt_checkpoint_fails_clearly(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(ValueError, match="unreadable or corrupt"):
        train_cfg(tmp_path, "train.iterations=2", f"train.resume={bad}")


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    target = tmp_path / "ck" / "0000001.pt"

    def boom(obj, f, *a, **k):
        Path(f).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        ckpt_io.atomic_torch_save({"x": 1}, target)
    assert not target.exists() and list(target.parent.iterdir()) == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, tmp: str, out: str):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from benchmark.train import train

    cfg = compose(tiny(Path(tmp), "run_name=ddp", "train.iterations=40", "train.log_every=5",
                       "train.lr=2e-3"))
    result = train(cfg)
    torch.save({k: v.detach().clone() for k, v in result.model_state.items()}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_ddp_two_gloo_ranks_agree_and_loss_falls(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path), str(out)), nprocs=2, join=True)
    w0 = torch.load(out / "rank0.pt", weights_only=True)
    w1 = torch.load(out / "rank1.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    for key in w0:
        torch.testing.assert_close(w0[key], w1[key], rtol=0, atol=0, msg=key)
    rows = [json.loads(line) for line in (tmp_path / "runs" / "ddp" / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0]["loss"], rows[-1]["loss"]
    assert last < first, (first, last)
