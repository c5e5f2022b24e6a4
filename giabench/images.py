"""Image grids for the run folder and the generators' sample sheets: N x C x H x W tensors in [0, 1] as one
H x W x 3 uint8 array."""

from __future__ import annotations

import numpy as np
import torch


def tile(images: torch.Tensor, columns: int, pad: int = 2, margin: int = 2) -> np.ndarray:
    """N x C x H x W images in [0, 1] laid out row by row on white, ``pad`` pixels apart and ``margin`` from the
    border, as an H x W x 3 uint8 array."""
    n, _, h, w = images.shape
    rows = -(-n // columns)
    canvas = torch.ones(3, rows * h + (rows - 1) * pad + 2 * margin, columns * w + (columns - 1) * pad + 2 * margin)
    for i, img in enumerate(images.clamp(0, 1)):
        top, left = margin + (i // columns) * (h + pad), margin + (i % columns) * (w + pad)
        canvas[:, top:top + h, left:left + w] = img.expand(3, h, w)
    return (canvas.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def image_grid(truth: torch.Tensor, recon: torch.Tensor, pad: int = 2) -> np.ndarray:
    """Originals on the top row, matched reconstructions below, as an H x W x 3 uint8 array."""
    return tile(torch.cat([truth, recon]), truth.shape[0], pad, pad)
