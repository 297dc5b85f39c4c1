"""Deferred handling of the signal a scheduler sends before a time limit or a pre-emption.

A signal handler runs between two bytecodes of whatever the main thread is doing,
possibly in the middle of an optimizer step, so saving there could write a state
that no step ever had. Instead, ``defer(signum)`` replaces the current handler
(e.g. submitit's, which checkpoints and requeues) with one that only records the
signal; the training loop polls ``requested()`` at step boundaries, writes its
checkpoint, and then calls ``complete()``, which hands the signal to the original
handler.
"""
from __future__ import annotations

import signal
import threading

_pending: dict[int, object] = {}
_original: dict[int, object] = {}
_lock = threading.Lock()


def defer(*signums: int) -> None:
    """Record these signals instead of acting on them at once (main thread only)."""
    for signum in signums:
        if signum in _original:
            continue
        _original[signum] = signal.getsignal(signum)

        def _record(num, frame):
            with _lock:
                _pending[num] = frame

        signal.signal(signum, _record)


def requested() -> bool:
    return bool(_pending)


def complete() -> None:
    """Pass every recorded signal to the handler that was installed before ``defer``."""
    with _lock:
        pending = dict(_pending)
        _pending.clear()
    for signum, frame in pending.items():
        handler = _original.get(signum)
        if callable(handler):
            handler(signum, frame)
        elif handler == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)


def restore() -> None:
    """Reinstall the original handlers (tests, end of a stage)."""
    for signum, handler in list(_original.items()):
        signal.signal(signum, handler)
        _original.pop(signum)
    _pending.clear()
