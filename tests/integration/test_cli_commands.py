"""The command line as a user meets it, in subprocesses: --help for every verb, one-line errors with a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "benchmark", *args], cwd=cwd or ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_help_lists_built_verbs_and_each_verb_has_help():
    out = cli("--help")
    assert out.returncode == 0
    for verb in ("run", "train", "sample", "evaluate", "report"):
        assert f"  {verb}" in out.stdout
        sub = cli(verb, "--help")
        assert sub.returncode == 0 and f"python -m benchmark {verb}" in sub.stdout


@pytest.mark.parametrize("args, needle", [
    (["frobnicate"], "unknown verb 'frobnicate'"),
    (["train", "method=nope"], "unknown method 'nope'"),
    (["train", "data=imagenet"], "data.path is required"),
    (["run", "-m", "method=dit,nope"], "unknown method 'nope'"),
    (["train", "sample.cfg_scale=0.2"], "sample.cfg_scale=0.2 is below 1"),
])
def test_cli_bad_input_is_one_line_and_nonzero(args, needle, tmp_path):
    out = cli(*args, f"paths.runs={tmp_path}/runs", cwd=tmp_path) if args[0] != "frobnicate" else cli(*args)
    assert out.returncode != 0
    lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert needle in lines[0]
    assert not (tmp_path / "runs").exists()
