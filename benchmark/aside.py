"""``overwrite=true`` never deletes: the old files move to ``<root>/.replaced/<UTC time>/...``.

A finished stage is redone only when asked, and what it replaces stays on disk under the
same relative path inside a time-stamped folder, where reports and status never look.
"""
from __future__ import annotations

import datetime as _dt
import os
import shutil
from pathlib import Path

REPLACED = ".replaced"


def _stamp() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


def move_aside(path: str | os.PathLike, root: str | os.PathLike) -> Path | None:
    """Move ``path`` (file or folder under ``root``) to ``root/.replaced/<stamp>/<relative path>``.

    Returns the new location, or None when ``path`` does not exist.
    """
    path, root = Path(path), Path(root)
    if not path.exists():
        return None
    try:
        rel = path.resolve().relative_to(root.resolve())
    except ValueError:
        raise ValueError(f"{path} is not inside {root}; cannot set it aside there") from None
    target = root / REPLACED / _stamp() / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), str(target))
    print(f"overwrite: moved {path} aside to {target}", flush=True)
    return target
