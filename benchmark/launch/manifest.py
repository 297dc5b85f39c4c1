"""Submission manifests: which job ran which stage of which cell, and where its logs are.

One JSON file per submission, ``<paths.runs>/.submissions/<id>/manifest.json``, written
atomically (temp file + rename) so ``status`` never reads half a file. Layout::

    {"id", "created", "launcher", "cwd", "args", "host", "pid", "logs",
     "cells": [{"key" (<run id>/<eval id>), "run_id", "eval_id", "label", "record", "run_dir",
                "jobs": {"train": {"job_id", "stdout", "stderr", "state"?}, "sample": ..., "evaluate": ...}}]}

``state`` is stored only by the local launcher (it knows the outcome itself); SLURM
states are read from the cluster. The newest manifest that names a cell speaks for it.
"""
from __future__ import annotations

import json
import os
import secrets
import socket
import time
from pathlib import Path

from methods.atomic import atomic_write_text

SUBMISSIONS = ".submissions"


def submissions_dir(runs_dir: str | os.PathLike) -> Path:
    return Path(runs_dir) / SUBMISSIONS


def new_submission(runs_dir: str | os.PathLike, launcher: str, args: list[str], cwd: str) -> dict:
    """A fresh manifest (not yet written) with its own folder for logs."""
    sub_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
    folder = submissions_dir(runs_dir) / sub_id
    return {
        "id": sub_id,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "created_ts": time.time(),
        "launcher": launcher,
        "cwd": cwd,
        "args": list(args),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "folder": str(folder),
        "logs": str(folder / "logs"),
        "cells": [],
    }


def manifest_path(manifest: dict) -> Path:
    return Path(manifest["folder"]) / "manifest.json"


def write_manifest(manifest: dict) -> Path:
    return atomic_write_text(manifest_path(manifest), json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def load_manifests(runs_dir: str | os.PathLike) -> list[dict]:
    """Every manifest under ``runs_dir``, oldest first. An unreadable one is an error naming it."""
    root = submissions_dir(runs_dir)
    if not root.is_dir():
        return []
    out = []
    for path in root.glob("*/manifest.json"):
        try:
            out.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"unreadable submission manifest {path}: {exc}") from None
    return sorted(out, key=lambda m: (m.get("created_ts", 0), m["id"]))


def latest_entries(runs_dir: str | os.PathLike) -> dict[str, tuple[dict, dict]]:
    """cell key -> (manifest, cell entry) of the newest submission that included the cell."""
    latest: dict[str, tuple[dict, dict]] = {}
    for manifest in load_manifests(runs_dir):
        for cell in manifest["cells"]:
            latest[cell["key"]] = (manifest, cell)
    return latest
