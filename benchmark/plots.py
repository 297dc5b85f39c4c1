"""Figures a run writes: the training-loss curve and a grid of samples."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# Stable PNG bytes for the same inputs: no creation-time metadata.
PNG_META = {"Software": None}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curve(metrics_jsonl: Path, out: Path, title: str = "") -> Path:
    out = Path(out)
    rows = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line.strip()]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=110)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.4)
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, metadata=PNG_META)
    plt.close(fig)
    return out


def grid_array(images: np.ndarray, labels: np.ndarray | None = None, *, per_row: int = 10,
               max_rows: int = 10, upscale: int = 1, pad: int = 1) -> np.ndarray:
    """Tile uint8 NHWC images into one array; with labels, row r holds samples of class r."""
    if labels is not None and len(np.unique(labels)) > 1:
        rows = []
        for cls in np.unique(labels)[:max_rows]:
            rows.append(images[labels == cls][:per_row])
    else:
        rows = [images[i:i + per_row] for i in range(0, min(len(images), per_row * max_rows), per_row)]
    h, w, c = images.shape[1:]
    hh, ww = h * upscale, w * upscale
    canvas = np.full((len(rows) * (hh + pad) + pad, per_row * (ww + pad) + pad, c), 96, np.uint8)
    for r, row in enumerate(rows):
        for k, img in enumerate(row):
            big = img.repeat(upscale, 0).repeat(upscale, 1)
            y0, x0 = pad + r * (hh + pad), pad + k * (ww + pad)
            canvas[y0:y0 + hh, x0:x0 + ww] = big
    return canvas


def sample_grid(npz: Path, out: Path) -> Path:
    from PIL import Image

    out = Path(out)
    data = np.load(npz)
    images = data["arr_0"]
    labels = data["arr_1"] if "arr_1" in data.files else None
    upscale = max(1, 64 // images.shape[1])  # small images (8x8 digits) are enlarged to stay visible
    grid = grid_array(images, labels, upscale=upscale)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.squeeze(-1) if grid.shape[-1] == 1 else grid).save(out, format="PNG")
    return out
