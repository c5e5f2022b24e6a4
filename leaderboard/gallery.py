"""Tiles for the report's galleries, cut from the cell grids the runner stores.

A cell's grid (``giabench.images.image_grid``) holds the B originals on its top row and their matched reconstructions
below, each H x W, 2 px apart and 2 px from the border, so image j's pair sits at a known place. Tiles are upscaled
with nearest-neighbour to at least ``MIN_SIDE`` pixels and embedded as PNG data.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pandas as pd
from PIL import Image

PAD = 2
MIN_SIDE = 96


def _png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _upscale(image: Image.Image, side: int) -> Image.Image:
    factor = max(1, -(-side // max(image.size)))
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def pair(run_dir: Path, relative: str, batch: int, index: int, side: int = MIN_SIDE) -> tuple[str, str] | None:
    """(original, reconstruction) of image ``index`` in a cell's grid as PNG data URIs, or None when the grid is
    missing, outside the run folder or not of the expected layout."""
    path = (run_dir / str(relative)).resolve()
    if not relative or not path.is_file() or run_dir.resolve() not in path.parents:
        return None
    with Image.open(path) as grid:
        grid = grid.convert("RGB")
    h, w = (grid.height - 3 * PAD) / 2, (grid.width - (batch + 1) * PAD) / batch
    if h < 1 or w < 1 or h != int(h) or w != int(w) or not 0 <= index < batch:
        return None
    h, w = int(h), int(w)
    left = PAD + index * (w + PAD)
    original = grid.crop((left, PAD, left + w, PAD + h))
    recon = grid.crop((left, 2 * PAD + h, left + w, 2 * PAD + 2 * h))
    return _png(_upscale(original, side)), _png(_upscale(recon, side))


def picks(images: pd.DataFrame, metric: str = "psnr") -> list[tuple[str, pd.Series]]:
    """The best, median and worst reconstruction (by ``metric``: PSNR, or ROUGE-1 for text) among a setting's image
    rows, each once."""
    ranked = images.dropna(subset=[metric]).sort_values([metric, "cell", "image"], ascending=[False, True, True])
    if ranked.empty:
        return []
    chosen = {"best": 0, "median": (len(ranked) - 1) // 2, "worst": len(ranked) - 1}
    seen, out = set(), []
    for name, position in chosen.items():
        if position not in seen:
            seen.add(position)
            out.append((name, ranked.iloc[position]))
    return out
