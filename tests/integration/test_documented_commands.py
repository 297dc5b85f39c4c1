"""Every command the README and `python -m benchmark --help` show is run here, as written.

Commands are read out of the README (fenced blocks and inline code) and the CLI's usage text, so
documentation cannot drift from behaviour: a documented command missing from ``HOW`` fails, and
each one is run the way ``HOW`` says, with only what a CPU test needs appended (small budgets;
``--cfg job`` for ImageNet-scale training, which composes and validates everything as written;
``--help`` for the GPU-only tools). Placeholder paths (ImageNet, the SD VAE, the ADM reference,
a published checkpoint) are replaced by small stand-ins of the same kind.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
TINY = ("train.iterations=2", "train.global_batch_size=8", "train.progress=false", "sample.num_samples=8",
        "sample.per_proc_batch_size=8", "sample.steps=2", "eval.reference_max_images=16", "eval.metrics=[fid]",
        "eval.bootstrap_resamples=10", "preflight.timed_steps=0")

# (command prefix, how it is run, what is appended or expected)
HOW = [
    ("python -m benchmark --help", "as-is", None),
    ("python -m benchmark VERB --help", "every-verb-help", None),
    ("python -m benchmark VERB", "every-verb-help", None),
    ("python -m benchmark run --cfg job", "as-is", None),
    ("python -m benchmark run method=switch_dit size=XL data=imagenet", "append", ("--cfg", "job")),
    ("python -m benchmark run method=switch_dit size=XL", "refuse", r"size=XL is a model for ImageNet latents.*"
                                                                    r"use size=debug.*data=imagenet"),
    ("python -m benchmark run -m method=dit,dtr,switch_dit size=debug seed=0,1", "append", ("--cfg", "job")),
    ("torchrun --nproc_per_node=8 -m benchmark train", "append", ("--cfg", "job")),
    ("python -m benchmark sample sample.ckpt=DiT-XL-2-256x256.pt", "append", ("--cfg", "job")),
    ("python -m benchmark evaluate eval.samples=samples.npz", "append", ("eval.metrics=[fid]", "eval.num_fid_samples=8")),
    ("python -m benchmark latents data=imagenet", "append", ("data.classes=2", "data.image_size=64")),
    ("python -m benchmark submit launcher=slurm", "append", ("--cfg", "job")),
    ("python -m benchmark status launcher=slurm", "append", ("--cfg", "job")),
    ("python -m benchmark run method=dit overwrite=true", "append", TINY),
    ("python -m benchmark run method=dit", "append", TINY),
    ("python -m benchmark run", "append", TINY),
    ("python -m benchmark report", "as-is", None),
    ("python -m benchmark kernels --quick", "append", ("--out", "")),
    ("python -m benchmark kernels", "append", ("--help",)),
    ("python -m benchmark.speed.gpu_check", "append", ("--help",)),        # needs a GPU
    ("python -m benchmark.speed.step_probe", "append", ("--help",)),       # needs a GPU
    ("python -m benchmark.speed.compile_check", "append", ("--help",)),    # run in test_kernels_compile_sm90
    ("python -m benchmark.speed.passes", "append", ("--help",)),           # run in test_methods_passes
]


def _joined(block: str) -> list[str]:
    lines, current = [], ""
    for raw in block.splitlines():
        line = raw.strip()
        current = f"{current} {line[:-1].strip()}".strip() if line.endswith("\\") else f"{current} {line}".strip()
        if not line.endswith("\\"):
            lines.append(current)
            current = ""
    return lines


def documented_commands() -> list[str]:
    """Every `python -m ...` / torchrun command of the README and of the CLI's usage text, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in _joined(block):
            line = line.split("  #")[0].split(" # ")[0].strip()
            line = re.sub(r"^pip install [^&]*&& ", "", line)
            if line.startswith(("python -m benchmark", "torchrun")):
                found.append(line)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    found += [c for c in re.findall(r"`(python -m benchmark[^`]*)`", text)]
    usage = subprocess.run([sys.executable, "-m", "benchmark", "--help"], cwd=ROOT, capture_output=True, text=True,
                           env=dict(os.environ, PYTHONPATH=str(ROOT))).stdout
    found += [ln.split("#")[0].strip() for ln in usage.splitlines() if ln.strip().startswith("python -m benchmark")]
    return list(dict.fromkeys(" ".join(c.split()) for c in found))


def how(command: str) -> tuple[str, object]:
    matches = [(p, mode, arg) for p, mode, arg in HOW if command == p or command.startswith(p + " ")]
    assert matches, f"documented command has no entry in HOW: {command}"
    prefix, mode, arg = max(matches, key=lambda m: len(m[0]))  # the most specific entry
    return mode, arg


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A folder with stand-ins for the README's placeholder paths; commands run in it."""
    from vae_cases import tiny_sd_vae

    tmp = tmp_path_factory.mktemp("docs")
    rng = np.random.default_rng(0)
    for cls in ("n01440764", "n01443537"):
        (tmp / "imagenet" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (72, 72, 3), dtype=np.uint8)).save(tmp / "imagenet" / cls / f"{i}.png")
    tiny_sd_vae().save_pretrained(tmp / "vae")
    np.savez(tmp / "VIRTUAL_imagenet256_labeled.npz", arr_0=rng.integers(0, 255, (12, 16, 16, 3), dtype=np.uint8))
    np.savez(tmp / "samples.npz", arr_0=rng.integers(0, 255, (8, 16, 16, 3), dtype=np.uint8))
    (tmp / "DiT-XL-2-256x256.pt").write_bytes(b"a stand-in: --cfg job only hashes it")
    return tmp


def substitute(command: str, ws: Path) -> list[str]:
    for placeholder, real in (("/data/imagenet/train", ws / "imagenet"), ("/models/sd-vae-ft-ema", ws / "vae"),
                              ("/refs/VIRTUAL_imagenet256_labeled.npz", ws / "VIRTUAL_imagenet256_labeled.npz")):
        command = command.replace(placeholder, str(real))
    args = shlex.split(command)
    if args[0] == "torchrun":  # torchrun starts the same entry point once per GPU; one process here
        args = ["python", *args[args.index("-m"):]]
    assert args[:2] == ["python", "-m"], command
    return [sys.executable, *args[1:]]


def run(args: list[str], ws: Path) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=ws, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1"))


def test_every_documented_command_has_an_entry():
    commands = documented_commands()
    assert len(commands) >= 15 and any(c.startswith("torchrun") for c in commands)
    for command in commands:
        how(command)


def test_documented_commands_run_as_written(workspace):
    from benchmark import cli
    from benchmark.cli import VERBS

    for command in documented_commands():
        mode, arg = how(command)
        if mode == "every-verb-help":  # the same entry point, in this process (one interpreter start saved a verb)
            for verb in VERBS:
                with contextlib.redirect_stdout(io.StringIO()) as shown:
                    try:
                        code = cli.main([verb, "--help"])
                    except SystemExit as exc:  # a verb with its own argument parser
                        code = exc.code
                assert code == 0, verb
                assert shown.getvalue().startswith(f"usage: python -m benchmark {verb}"), verb
            continue
        args = substitute(command, workspace)
        if mode == "append":
            args += list(arg)
        out = run(args, workspace)
        if mode == "refuse":
            lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
            assert out.returncode == 2 and len(lines) == 1 and re.search(arg, lines[0]), (command, out.stderr[-800:])
        else:
            assert out.returncode == 0, (command, out.stdout[-800:], out.stderr[-1500:])
            if "--cfg" in args:
                assert "recipe:" in out.stdout, command
    # The quick start compared every method: one record each, with their artifacts and diagnostics.
    records = {p.parent.name.split("-debug")[0]: json.loads(p.read_text())
               for p in (workspace / "results" / "runs").glob("*/*.json")}
    assert set(records) == {"dit", "dtr", "switch_dit"}
    for rec in records.values():
        assert rec["num_samples"] == 8 and rec["iterations"] == 2 and rec["dataset"] == "digits"
        assert isinstance(rec["metrics"]["fid"], float) and rec["metrics"]["fid"] >= 0
        assert rec["evaluation"]["weights_sha256"] and rec["git_commit"]
        for rel in (rec["artifacts"]["sample_grid"], rec["artifacts"]["loss_curve"]):
            assert (workspace / "results" / rel).is_file()
    assert {"task_expert_map", "task_affinity"} <= set(records["switch_dit"]["artifacts"]["diagnostics"])
    assert "dtr_masks" in records["dtr"]["artifacts"]["diagnostics"]
    assert list((workspace / "results" / ".replaced").rglob("*.json"))      # overwrite=true moved one aside
    page = (workspace / "reports" / "digits-8.md").read_text()
    assert all(label in page for label in ("DiT-debug", "DTR-debug", "Switch-DiT-debug"))
