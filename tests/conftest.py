"""Shared test helpers (tests/helpers: reference models, MoE and VAE cases, record factory) are
importable by name from every tier."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "helpers"))
