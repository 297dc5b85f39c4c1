"""Content hash of the fused MoE kernel source.

Every kernel benchmark record stores it, so a report can say whether its
fused-kernel numbers were measured with the kernel in this tree or with an
earlier one (a commit id is not enough: copies of the tree without git
history, e.g. on a lent GPU machine, record none).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

FUSED_KERNEL_SOURCE = Path(__file__).with_name("moe_triton.py")


def fused_kernel_sha256(path: Path = FUSED_KERNEL_SOURCE) -> str | None:
    """sha256 of kernels/moe_triton.py as bytes, or None where the file is missing."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None
