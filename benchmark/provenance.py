"""Where a number came from: the source's git state, the hardware and the library versions.

One helper for every kind of record (runs, kernel and method-speed benchmarks, GPU checks).
Only the source decides whether a record is *dirty*: the packages, the configuration and
``pyproject.toml`` (``SOURCE_PATHS``). Files the suite writes itself (``results/``,
``reports/``) do not, so a run from a fresh clone records a clean commit even though it
rewrites tracked records. A dirty source records the sha256 of its diff against ``HEAD``
(untracked source files included), so two dirty trees can be told apart.

Needs the standard library and torch only (Triton's version when it is importable), so the
GPU acceptance scripts can use it on a machine with nothing else installed.
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SOURCE_PATHS = ("benchmark", "methods", "kernels", "conf", "pyproject.toml")
# A tree copied without its history (e.g. onto a lent GPU machine) names its commit here.
COMMIT_ENV = "BENCH_GIT_COMMIT"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


@functools.lru_cache(maxsize=64)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def cached_file_sha256(path: str | os.PathLike) -> str:
    """``file_sha256`` memoised on (path, size, mtime): large checkpoints and weights are hashed once
    per process, and again as soon as they change."""
    st = os.stat(path)
    return _sha256_of(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def _git(args: list[str], repo: Path) -> str | None:
    try:
        res = subprocess.run(["git", *args], cwd=repo, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.decode("utf-8", "replace") if res.returncode == 0 else None


def git_state(repo: str | os.PathLike | None = None) -> dict:
    """``{"commit", "dirty", "diff_sha256"}`` of the source; commit is None outside git (or $BENCH_GIT_COMMIT)."""
    repo = Path(repo) if repo is not None else REPO
    head = _git(["rev-parse", "HEAD"], repo)
    if head is None:
        return {"commit": os.environ.get(COMMIT_ENV) or None, "dirty": None, "diff_sha256": None}
    diff = _git(["diff", "HEAD", "--binary", "--", *SOURCE_PATHS], repo) or ""
    untracked = (_git(["ls-files", "--others", "--exclude-standard", "-z", "--", *SOURCE_PATHS], repo) or "")
    names = sorted(n for n in untracked.split("\0") if n)
    if not diff and not names:
        return {"commit": head.strip(), "dirty": False, "diff_sha256": None}
    digest = hashlib.sha256(diff.encode("utf-8"))
    for name in names:
        digest.update(b"\0" + name.encode("utf-8") + b"\0")
        try:
            digest.update(bytes.fromhex(file_sha256(repo / name)))
        except OSError:
            pass
    return {"commit": head.strip(), "dirty": True, "diff_sha256": digest.hexdigest()}


def commit_label(state: dict | None = None) -> str | None:
    """``<sha>``, or ``<sha>-dirty-<diff sha256[:12]>`` for a dirty source; None when unknown."""
    state = git_state() if state is None else state
    if not state.get("commit"):
        return None
    if state.get("dirty"):
        return f"{state['commit']}-dirty-{str(state.get('diff_sha256'))[:12]}"
    return state["commit"]


def versions() -> dict:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        pass
    return out


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def hardware(device: Any = None) -> dict:
    """The device a measurement ran on: type, name, how many, and the host CPU."""
    import torch

    dev = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info: dict[str, Any] = {"device": dev.type, "cpu": platform.processor() or platform.machine() or "cpu",
                            "cpu_threads": torch.get_num_threads()}
    if dev.type == "cuda" and torch.cuda.is_available():
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info.update(name=props.name, count=torch.cuda.device_count(), capability=f"{props.major}.{props.minor}",
                    sm_count=props.multi_processor_count, memory_gb=round(props.total_memory / 1024 ** 3, 1))
    else:
        info.update(name=info["cpu"], count=1)
    world = _world_size()
    if world > 1:
        info["world_size"] = world
    return info


def provenance(device: Any = None) -> dict:
    """Everything a record names about how it was made: git state, hardware, versions."""
    state = git_state()
    return {"git_commit": commit_label(state), "git": state, "hardware": hardware(device), "versions": versions()}
