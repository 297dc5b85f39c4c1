"""The fused MoE kernels compile for sm_90 (H100/H200) without a GPU.

Runs `python -m benchmark.speed.compile_check` in a subprocess without
TRITON_INTERPRET (the root conftest sets it for this process) and checks each
launch of the forward, dx and expert-gradient kernels at the Switch-DiT XL
shape (D=1152, L=256, N=32, E=3, k=2; arXiv 2403.09176) in bf16, fp16 and fp32 with the default tile
table: it compiles, spills no registers, fits in shared memory and its tile
loads are software-pipelined (asynchronous copies).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
H100_SMEM_PER_BLOCK = 227 * 1024


@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_default_tiles_compile_for_sm90_without_spills(dtype):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "benchmark.speed.compile_check", "--sizes", "XL", "--dtype", dtype, "--json"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode == 2:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {r["kernel"] for r in rows} == {"forward", "dx", "dx_mask", "dparams"}
    for r in rows:
        assert "error" not in r, r
        assert r["stack_bytes"] == 0, f"{r['kernel']} spills registers: {r}"
        assert 0 < r["shared_bytes"] <= H100_SMEM_PER_BLOCK, r
        assert r["async_copies"] > 0, f"{r['kernel']} loads are not pipelined: {r}"
        assert r["wgmma"] > 0, f"{r['kernel']} does not use Hopper wgmma: {r}"
