"""Atomic writes: the mode a plain open() would give (umask respected), fsync of file and folder."""
from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from methods.atomic import atomic_write, atomic_write_json, atomic_write_text
from methods.checkpoint import atomic_torch_save


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    old = os.umask(0o022)
    try:
        yield lambda m: os.umask(m)
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_files_get_the_mode_of_a_plain_open(tmp_path, umask, mask):
    umask(mask)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = [atomic_write_text(tmp_path / "a.txt", "x"), atomic_write_json(tmp_path / "b.json", {"a": 1}),
               atomic_torch_save({"w": torch.zeros(2)}, tmp_path / "c.pt"),
               atomic_write(tmp_path / "d.npz", lambda tmp: Path(tmp).write_bytes(b"1"), suffix=".npz")]
    for path in written:
        assert _mode(path) == _mode(plain) == 0o666 & ~mask, path
    if mask == 0o022:
        assert all(_mode(p) & stat.S_IROTH and _mode(p) & stat.S_IRGRP for p in written)


def test_file_and_folder_are_synced_before_and_after_the_rename(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync, real_open = os.fsync, os.open
    names: dict[int, str] = {}

    def tracking_open(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        names[fd] = str(path)
        return fd

    def tracking_fsync(fd):
        synced.append(names.get(fd, "?"))
        return real_fsync(fd)

    monkeypatch.setattr(os, "open", tracking_open)
    monkeypatch.setattr(os, "fsync", tracking_fsync)
    target = tmp_path / "sub" / "record.json"
    atomic_write_text(target, "{}")
    assert len(synced) == 2
    assert Path(synced[0]).parent == target.parent and Path(synced[0]).name.startswith(".record.json.")
    assert Path(synced[1]) == target.parent
