"""Small figure writers for method diagnostics (DTR masks, Switch-DiT task-expert maps).

Uses matplotlib's object API with an Agg canvas, so it never touches the global
backend of the process that imports it.
"""
from __future__ import annotations

import pathlib

import numpy as np


def save_heatmap(
    values: np.ndarray,
    path: pathlib.Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    cmap: str = "viridis",
    vlines: list[float] | None = None,
) -> str:
    """Write a 2-D array as an image (rows on the y axis) to ``path`` (PNG); returns the path as str."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    values = np.asarray(values, dtype=np.float32)
    if values.ndim != 2:
        raise ValueError(f"heatmap needs a 2-D array, got shape {values.shape}")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(7, 5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(values, aspect="auto", interpolation="nearest", cmap=cmap, origin="lower")
    for x in vlines or []:
        ax.axvline(x, color="white", linewidth=0.6)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path)
    return str(path)
