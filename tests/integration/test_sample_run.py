"""Sampling from checkpoints (this suite's and published-DiT-style state dicts) and the run flow."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import methods

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "benchmark", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def paths(tmp: Path) -> list[str]:
    return [f"paths.runs={tmp}/runs", f"paths.cache={tmp}/cache", f"paths.results={tmp}/results",
            f"paths.reports={tmp}/reports"]


def _published_style_checkpoint(tmp: Path) -> Path:
    """A bare DiT state dict, as the published DiT-XL-2-256x256.pt is, at the debug size."""
    torch.manual_seed(0)
    model = methods.build_model("dit", "debug", patch_size=2, input_size=8, in_channels=1, num_classes=10)
    path = tmp / "DiT-debug-2-8x8.pt"
    torch.save(model.state_dict(), path)
    return path


def test_sample_from_a_published_style_state_dict(tmp_path):
    ckpt = _published_style_checkpoint(tmp_path)
    out = cli("sample", f"sample.ckpt={ckpt}", "sample.num_samples=6", "sample.steps=3",
              "sample.per_proc_batch_size=4", f"sample.out={tmp_path}/s", *paths(tmp_path), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    pngs = sorted((tmp_path / "s").glob("*.png"))
    assert [p.name for p in pngs] == [f"{i:06d}.png" for i in range(6)]
    data = np.load(tmp_path / "s" / "samples.npz")
    assert data["arr_0"].shape == (6, 8, 8, 3) and data["arr_0"].dtype == np.uint8
    assert data["arr_1"].shape == (6,) and set(data["arr_1"]) <= set(range(10))


def test_sampling_resumes_and_is_deterministic(tmp_path):
    ckpt = _published_style_checkpoint(tmp_path)
    args = ["sample", f"sample.ckpt={ckpt}", "sample.num_samples=8", "sample.steps=3",
            "sample.per_proc_batch_size=4", "sample.sampler=ddpm", f"sample.out={tmp_path}/s", *paths(tmp_path)]
    assert cli(*args, cwd=tmp_path).returncode == 0
    folder = tmp_path / "s"
    first = {p.name: p.read_bytes() for p in folder.glob("*.png")}
    kept = folder / "000001.png"
    stamp = kept.stat().st_mtime_ns
    (folder / "000006.png").unlink()  # an interrupted second batch
    assert cli(*args, cwd=tmp_path).returncode == 0
    assert kept.stat().st_mtime_ns == stamp  # the finished batch was not redone
    again = {p.name: p.read_bytes() for p in folder.glob("*.png")}
    assert again == first  # the redone batch is bit-identical


def test_sample_with_a_checkpoint_of_the_wrong_size_fails_clearly(tmp_path):
    ckpt = _published_style_checkpoint(tmp_path)
    out = cli("sample", f"sample.ckpt={ckpt}", "size=S", "sample.num_samples=2", "sample.steps=2",
              f"sample.out={tmp_path}/s", *paths(tmp_path), cwd=tmp_path)
    assert out.returncode != 0
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "error:" in lines[0], out.stderr[-2000:]
    assert not (tmp_path / "s" / "samples.npz").exists()


def test_a_failed_evaluation_writes_no_record(tmp_path):
    out = cli("run", "method=dit", "train.iterations=2", "train.global_batch_size=8", "train.progress=false",
              "sample.num_samples=4", "sample.per_proc_batch_size=4", "sample.steps=2",
              "eval.num_fid_samples=10", "eval.reference_max_images=16", *paths(tmp_path), cwd=tmp_path)
    assert out.returncode != 0
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    assert lines and "error:" in lines[-1] and "10" in lines[-1], out.stderr[-2000:]
    assert not list((tmp_path / "results").rglob("*.json"))


def test_samples_of_another_checkpoint_or_settings_are_refused_unless_overwritten(tmp_path):
    """A folder's finished samples stand for new ones only when drawn from the same checkpoint and
    settings; otherwise they are neither reused nor deleted: refused, or moved aside with overwrite=true."""
    ckpt = _published_style_checkpoint(tmp_path)
    args = ["sample", f"sample.ckpt={ckpt}", "sample.num_samples=4", "sample.steps=3",
            "sample.per_proc_batch_size=4", "sample.sampler=ddpm", *paths(tmp_path)]
    assert cli(*args, f"sample.out={tmp_path}/s", cwd=tmp_path).returncode == 0
    first = {p.name: p.read_bytes() for p in (tmp_path / "s").glob("*.png")}

    # Retrain: different weights, same file name.
    torch.manual_seed(1)
    other = methods.build_model("dit", "debug", patch_size=2, input_size=8, in_channels=1, num_classes=10)
    for p in other.parameters():
        torch.nn.init.normal_(p, std=0.05)
    torch.save(other.state_dict(), ckpt)
    out = cli(*args, f"sample.out={tmp_path}/s", cwd=tmp_path)
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
    assert out.returncode == 2 and len(lines) == 1 and "overwrite=true" in lines[0], out.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in (tmp_path / "s").glob("*.png")} == first     # nothing lost

    out = cli(*args, f"sample.out={tmp_path}/s", "overwrite=true", cwd=tmp_path)
    assert out.returncode == 0 and "moved" in out.stdout, out.stderr[-2000:]
    assert cli(*args, f"sample.out={tmp_path}/fresh", cwd=tmp_path).returncode == 0
    redrawn = {p.name: p.read_bytes() for p in (tmp_path / "s").glob("*.png")}
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "fresh").glob("*.png")}
    assert redrawn == fresh and redrawn != first
    (aside,) = (tmp_path / ".replaced").glob("*/s")
    assert {p.name: p.read_bytes() for p in aside.glob("*.png")} == first


def test_sampling_another_runs_checkpoint_writes_into_that_run_only(tmp_path):
    from benchmark import cell
    from benchmark.config import compose
    from benchmark.sample import sample
    from benchmark.train import train

    tiny = [*paths(tmp_path), "train.iterations=2", "train.global_batch_size=8", "train.progress=false",
            "sample.num_samples=4", "sample.per_proc_batch_size=4", "sample.steps=2"]
    seed7 = train(compose([*tiny, "seed=7"]))
    mine = compose([*tiny, "seed=0"])
    train(mine)
    before = sorted(p.relative_to(tmp_path) for p in cell.run_dir(mine).rglob("*"))
    result = sample(compose([*tiny, "seed=0", f"sample.ckpt={seed7.checkpoint}"]))
    assert result.folder.parent == seed7.run_dir / "samples" and len(list(result.folder.glob("*.png"))) == 4
    assert sorted(p.relative_to(tmp_path) for p in cell.run_dir(mine).rglob("*")) == before
