"""Atomic file writes for the harness: the one implementation lives in kernels/atomic.py."""
from kernels.atomic import atomic_write, atomic_write_json, atomic_write_text

__all__ = ["atomic_write", "atomic_write_json", "atomic_write_text"]
