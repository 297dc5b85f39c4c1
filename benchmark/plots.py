"""Figures a run writes: the training-loss curve and a grid of samples."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# Stable PNG bytes for the same inputs: no creation-time metadata.
PNG_META = {"Software": None}


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curve(metrics_jsonl: Path, out: Path, title: str = "") -> Path:
    """The diffusion loss over training (left) and, when the method has any, its auxiliary losses (right)."""
    out = Path(out)
    rows = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line.strip()]
    aux = sorted({k for r in rows for k in r if k.startswith("aux_")})
    plt = pyplot()
    fig, axes = plt.subplots(1, 2 if aux else 1, figsize=(8.6 if aux else 5, 3.2), dpi=110, squeeze=False)
    ax = axes[0][0]
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.4)
    ax.set_xlabel("training step")
    ax.set_ylabel("diffusion loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    if aux:
        side = axes[0][1]
        for key in aux:
            pts = [(r["step"], r[key]) for r in rows if key in r]
            side.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2, label=key[len("aux_"):])
        side.set_xlabel("training step")
        side.set_ylabel("auxiliary loss")
        side.grid(alpha=0.3)
        side.legend(fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, metadata=PNG_META)
    plt.close(fig)
    return out


def grid_rows(images: np.ndarray, labels: np.ndarray | None = None, *, per_row: int = 10,
              max_rows: int = 10) -> list[tuple[str, np.ndarray]]:
    """(row label, images) per row: with labels, row r holds samples of the r-th class present."""
    if labels is not None and len(np.unique(labels)) > 1:
        return [(f"class {int(c)}", images[labels == c][:per_row]) for c in np.unique(labels)[:max_rows]]
    n = min(len(images), per_row * max_rows)
    return [("", images[i:i + per_row]) for i in range(0, n, per_row)]


def grid_array(images: np.ndarray, labels: np.ndarray | None = None, *, per_row: int = 10,
               max_rows: int = 10, upscale: int = 1, pad: int = 1) -> np.ndarray:
    """Tile uint8 NHWC images into one array; with labels, row r holds samples of class r."""
    rows = [row for _, row in grid_rows(images, labels, per_row=per_row, max_rows=max_rows)]
    h, w, c = images.shape[1:]
    hh, ww = h * upscale, w * upscale
    canvas = np.full((len(rows) * (hh + pad) + pad, per_row * (ww + pad) + pad, c), 96, np.uint8)
    for r, row in enumerate(rows):
        for k, img in enumerate(row):
            big = img.repeat(upscale, 0).repeat(upscale, 1)
            y0, x0 = pad + r * (hh + pad), pad + k * (ww + pad)
            canvas[y0:y0 + hh, x0:x0 + ww] = big
    return canvas


def sample_grid(npz: Path, out: Path, title: str = "") -> Path:
    """A grid of samples, one class per row labelled on the left, the cell's name above."""
    out = Path(out)
    data = np.load(npz)
    images = data["arr_0"]
    labels = data["arr_1"] if "arr_1" in data.files else None
    upscale = max(1, 64 // images.shape[1])  # small images (8x8 digits) are enlarged to stay visible
    pad = 1
    grid = grid_array(images, labels, upscale=upscale, pad=pad)
    names = [name for name, _ in grid_rows(images, labels)]
    plt = pyplot()
    height, width = grid.shape[:2]
    fig = plt.figure(figsize=(width / 100 + 1.4, height / 100 + 0.6), dpi=100)
    ax = fig.add_axes([1.1 / (width / 100 + 1.4), 0.1 / (height / 100 + 0.6),
                       width / 100 / (width / 100 + 1.4), height / 100 / (height / 100 + 0.6)])
    ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255,
              interpolation="nearest")
    row_h = images.shape[1] * upscale + pad
    ax.set_yticks([pad + r * row_h + row_h / 2 - 0.5 for r in range(len(names))])
    ax.set_yticklabels(names, fontsize=7)
    ax.set_xticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    fig.text(0.01, 1 - 0.25 / (height / 100 + 0.6), title, fontsize=6, va="center")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, metadata=PNG_META)
    plt.close(fig)
    return out
