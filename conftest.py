"""Root pytest configuration.

TRITON_INTERPRET must be set before any Triton kernel module is imported, so
the kernel tests run on the CPU through Triton's interpreter when no GPU is
present. It is set here, at collection time, before tests import `kernels`.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
