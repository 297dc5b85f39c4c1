"""Hydra configuration groups of the suite, shipped as package data."""
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent
