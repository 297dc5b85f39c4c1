"""The one record writer of the speed tools: what every record names and where it is written.

A record is one JSON object, written atomically, named
``<device-slug>-<yyyymmdd>-<commit7>[-<what>].json`` (``nocommit`` where the commit is
unknown), so records of one device and day from different commits never overwrite each
other. Every record carries ``benchmark.provenance`` (git state, hardware, versions), the
UTC time it was made, ``device_kind`` ("gpu" or "cpu": the report keeps CPU timings apart
from GPU ones) and the sha256 of the fused kernel's source, so a report can tell whether
its numbers belong to the kernel in the tree.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
from pathlib import Path

import torch

from methods.atomic import atomic_write_json
from benchmark.provenance import REPO, file_sha256, provenance

FUSED_KERNEL_SOURCE = REPO / "kernels" / "moe_triton.py"
SCHEMA = 2


def fused_kernel_sha256(path: str | os.PathLike = FUSED_KERNEL_SOURCE) -> str | None:
    """sha256 of the fused kernel's source file, or None where it is missing."""
    try:
        return file_sha256(path)
    except OSError:
        return None


def device_kind(device) -> str:
    return "gpu" if torch.device(device).type == "cuda" else "cpu"


def device_slug(device) -> str:
    device = torch.device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def record_name(device, what: str | None = None, *, commit: str | None = None, day: _dt.date | None = None) -> str:
    """``<device-slug>-<yyyymmdd>-<commit7>[-<what>].json``."""
    day = day or _dt.datetime.now(_dt.timezone.utc).date()
    stem = f"{device_slug(device)}-{day:%Y%m%d}-{commit[:7] if commit else 'nocommit'}"
    return f"{stem}-{what}.json" if what else f"{stem}.json"


def new_record(kind: str, device, **fields) -> dict:
    """A record's common head: kind, schema, time, device kind, provenance, fused kernel hash."""
    head = {"schema": SCHEMA, "kind": kind,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device_kind": device_kind(device), **provenance(device),
            "fused_kernel_sha256": fused_kernel_sha256()}
    return {**head, **fields}


def write_record(record: dict, out_dir: str | os.PathLike, device, what: str | None = None) -> Path:
    """Write ``record`` atomically into ``out_dir`` under its standard name; returns the path."""
    commit = (record.get("git") or {}).get("commit")
    path = Path(out_dir) / record_name(device, what, commit=commit)
    return atomic_write_json(path, record, indent=1, default=str)
