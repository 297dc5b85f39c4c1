"""Training loop: resume equivalence, DDP (2 gloo ranks) agreement, loss falls, bad resume input."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from benchmark import checkpoint as ckpt_io
from methods import checkpoint as methods_checkpoint
from benchmark.config import compose


def tiny(tmp: Path, *extra: str) -> list[str]:
    return [f"paths.runs={tmp}/runs", f"paths.cache={tmp}/cache", f"paths.results={tmp}/results",
            f"paths.reports={tmp}/reports", "train.global_batch_size=8", "train.log_every=1",
            "train.progress=false", *extra]


def train_cfg(tmp: Path, *extra: str):
    from benchmark.train import train

    return train(compose(tiny(tmp, *extra)))


def run_dir(tmp: Path, *extra: str) -> Path:
    """The identity-named folder a config trains into."""
    from benchmark import cell

    return cell.run_dir(compose(tiny(tmp, *extra)))


def _states(path: Path) -> dict:
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return {"model": payload["model"], "ema": payload["ema"], "step": payload["step"]}


@pytest.mark.parametrize("method", ["dit"])
def test_resume_equals_uninterrupted(tmp_path, method):
    n = 3
    straight = train_cfg(tmp_path, f"method={method}", "run_name=straight", f"train.iterations={2 * n}")
    first = train_cfg(tmp_path, f"method={method}", "run_name=split", f"train.iterations={n}")
    # Another number of iterations is another run; it may continue one of the same protocol.
    resumed = train_cfg(tmp_path, f"method={method}", "run_name=split", f"train.iterations={2 * n}",
                        f"train.resume={first.checkpoint}")
    assert resumed.run_dir != first.run_dir and resumed.resumed_from == first.checkpoint
    a, b = _states(straight.checkpoint), _states(resumed.checkpoint)
    assert a["step"] == b["step"] == 2 * n
    for part in ("model", "ema"):
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=1e-6, msg=f"{part}.{key}")
    # and it did train: weights moved away from the step-n checkpoint
    mid = _states(ckpt_io.checkpoint_path(first.run_dir, n))
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
        methods_checkpoint.atomic_torch_save({"x": 1}, target)
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
    folder = run_dir(tmp_path, "run_name=ddp", "train.iterations=40", "train.log_every=5", "train.lr=2e-3")
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0]["loss"], rows[-1]["loss"]
    assert last < first, (first, last)


# ---------------------------------------------------------------- PAUSE file


def _release_when_paused(run_dir: Path, seen: dict, forbidden: Path, finished: threading.Event):
    """Watcher thread: once PAUSED appears, note it and what exists, then remove PAUSE.

    Stops looking when ``finished`` is set (training ended without ever pausing).
    """
    def body():
        marker = run_dir / "PAUSED"
        while not marker.exists():
            if finished.is_set():
                seen["error"] = f"training ended and {marker} never appeared"
                return
            time.sleep(0.02)
        seen["marker"] = json.loads(marker.read_text())
        # Held: the next checkpoint cannot appear while PAUSE stands, however long we look.
        time.sleep(1.0)
        seen["next_checkpoint_while_paused"] = forbidden.exists()
        (run_dir / "PAUSE").unlink()

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def _held_at_step_2(tmp_path: Path, run_name: str):
    """A 6-step run's folder with PAUSE in place and a watcher that lifts it once training holds;
    yields (folder, what the watcher saw)."""
    folder = run_dir(tmp_path, f"run_name={run_name}", "train.iterations=6", "train.ckpt_every=2")
    folder.mkdir(parents=True)
    (folder / "PAUSE").touch()
    seen: dict = {}
    finished = threading.Event()
    watcher = _release_when_paused(folder, seen, ckpt_io.checkpoint_path(folder, 4), finished)
    try:
        yield folder, seen
    finally:
        finished.set()
        watcher.join()


def test_pause_file_holds_training_at_a_checkpoint_and_changes_nothing(tmp_path):
    with _held_at_step_2(tmp_path, "held") as (folder, seen):
        held = train_cfg(tmp_path, "run_name=held", "train.iterations=6", "train.ckpt_every=2")
    assert "error" not in seen, seen
    assert seen["marker"]["step"] == 2 and seen["marker"]["checkpoint"] == str(ckpt_io.checkpoint_path(folder, 2))
    assert seen["next_checkpoint_while_paused"] is False
    assert not (folder / "PAUSED").exists() and not (folder / "PAUSE").exists()
    straight = train_cfg(tmp_path, "run_name=straight", "train.iterations=6", "train.ckpt_every=2")
    a, b = _states(held.checkpoint), _states(straight.checkpoint)
    for part in ("model", "ema"):
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=0, atol=0, msg=f"{part}.{key}")


def test_a_stop_request_ends_a_pause_and_the_final_step_never_pauses(tmp_path):
    from benchmark import pause

    folder = tmp_path / "run"
    folder.mkdir()
    assert pause.hold_if_paused(folder, 3, folder / "c.pt", stop_requested=lambda: True) is False
    (folder / "PAUSE").touch()
    assert pause.hold_if_paused(folder, 3, folder / "c.pt", stop_requested=lambda: True) is True
    assert not (folder / "PAUSED").exists()
    # A PAUSE file present throughout: training still ends, since the last step does not pause.
    done = run_dir(tmp_path, "run_name=last", "train.iterations=2", "train.ckpt_every=5")
    done.mkdir(parents=True)
    (done / "PAUSE").touch()
    result = train_cfg(tmp_path, "run_name=last", "train.iterations=2", "train.ckpt_every=5")
    assert result.step == 2 and (done / "PAUSE").exists()


def _ddp_pause_worker(rank: int, world: int, port: int, tmp: str, out: str):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from benchmark.train import train

    result = train(compose(tiny(Path(tmp), "run_name=ddp_pause", "train.iterations=6", "train.ckpt_every=2")))
    torch.save({k: v.detach().clone() for k, v in result.model_state.items()}, f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_ddp_ranks_pause_and_leave_together(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with _held_at_step_2(tmp_path, "ddp_pause") as (_, seen):
        mp.spawn(_ddp_pause_worker, args=(2, _free_port(), str(tmp_path), str(out)), nprocs=2, join=True)
    assert "error" not in seen and seen["marker"]["step"] == 2 and seen["next_checkpoint_while_paused"] is False
    w0, w1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key in w0:
        torch.testing.assert_close(w0[key], w1[key], rtol=0, atol=0, msg=key)
