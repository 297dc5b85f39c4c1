"""Atomic file writes: a temporary file in the target's folder, then ``os.replace``.

Readers see the old file or the new one, never a half-written one, and a failed write
leaves nothing behind. Every file the suite writes goes through here: records,
checkpoints, caches, samples and reports of the harness (re-exported as
``benchmark.atomic``), model checkpoints and speed records of ``methods``, and
kernel benchmark records. It lives in ``kernels``, the package everything else
imports, and needs only the standard library.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, write: Callable[[str], object], *, suffix: str = ".tmp") -> Path:
    """Call ``write(tmp_path)`` and rename the result to ``path``; the error propagates, no file is left.

    ``suffix`` is the temporary name's ending, for writers that append one themselves
    (``np.savez`` adds ``.npz`` unless the name already ends with it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)

    return atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike, obj, *, indent: int = 2, default=None) -> Path:
    import json

    return atomic_write_text(path, json.dumps(obj, indent=indent, default=default) + "\n")
