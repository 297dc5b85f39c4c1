"""Training checkpoints: written atomically, read back with ``weights_only=True``.

A checkpoint is a plain dict of tensors, numbers and strings (format
``dit-router-bench/1``): model and EMA state dicts, optimizer state, the fp16 GradScaler's
state (``scaler``, fp16 runs only), extra trainer state (e.g. uncertainty-weighting
parameters), step, the composed config as a plain
container, the model's build arguments, and every RNG state the trainer draws from,
so that ``train.resume=latest`` continues exactly where an uninterrupted run would be.
"""
from __future__ import annotations

import random
import re
from pathlib import Path

import numpy as np
import torch

# One definition of the format, its layout and its writer: methods.checkpoint.
import methods
from methods import CHECKPOINT_FORMAT as FORMAT

_NAME = re.compile(r"^(\d{7,})\.pt$")


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"{step:07d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": list(_flatten_py_state(random.getstate())),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _flatten_py_state(state):
    version, internal, gauss = state
    return [version, list(internal), gauss]


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state(("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"],
                         npst["has_gauss"], npst["cached_gaussian"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, *, model, ema, optimizer, step: int, config: dict, build: dict,
                    extra: dict | None = None, scaler=None) -> Path:
    """The trainer's checkpoint: ``methods.save_checkpoint`` with optimizer, extra and RNG state, and the
    state of an enabled ``torch.amp.GradScaler``."""
    return methods.save_checkpoint(path, model, ema=ema, step=step, config=config, opt=optimizer.state_dict(),
                                   rng=rng_state(), extra=extra, build=build,
                                   scaler=scaler.state_dict() if scaler is not None and scaler.is_enabled() else None)


def load_training_checkpoint(path: Path) -> dict:
    """Read a checkpoint of this suite for resuming; a clear error if it is not one or is damaged."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, wrong file type, disallowed pickle...
        raise ValueError(f"checkpoint {path} is unreadable or corrupt ({type(exc).__name__}); "
                         "delete it or pass another train.resume=PATH") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} is not a training checkpoint of this suite "
                         f"(expected format {FORMAT}); resume needs one written by `benchmark train`")
    return payload
