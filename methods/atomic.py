"""Atomic file writes: a temporary file in the target's folder, then ``os.replace``.

Readers see the old file or the new one, never a half-written one, and a failed write
leaves nothing behind. Every file the suite writes goes through here: model checkpoints
(``methods.save_checkpoint``, the lowest layer that writes files) and everything the
harness writes (records, caches, samples, reports, speed records). Standard library only.
"""
from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Callable


_umask_lock = threading.Lock()


def _umask() -> int:
    # The process umask can only be read by setting it; the lock keeps threads from racing on that.
    with _umask_lock:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def _fsync(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory; the data was synced already
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], object], *, suffix: str = ".tmp") -> Path:
    """Call ``write(tmp_path)`` and rename the result to ``path``; the error propagates, no file is left.

    The file gets the mode a plain ``open`` would give it (0666 less the umask: ``mkstemp`` makes
    0600, which colleagues on a shared filesystem could not read), and it and its folder are
    fsync-ed around the rename, so after a crash ``path`` holds the old or the new content, never
    an empty file. ``suffix`` is the temporary name's ending, for writers that append one
    themselves (``np.savez`` adds ``.npz`` unless the name already ends with it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
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
