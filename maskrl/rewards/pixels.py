"""ShapesWorld palette grids -> the pixels a learned reward model expects.

A grid becomes an RGB image by nearest-neighbour upscaling (`maskrl.world.to_rgb`, each cell an
s x s block) with s = ceil(model input size / 16), so for the usual sizes (224 = 16 * 14,
336 = 16 * 21, ShapesCLIP's 16) the model's own preprocessing (resize, crop, normalise) sees
exactly its input size and its resize is the identity; otherwise it resizes as it always does.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from maskrl.world import GRID, to_rgb


def input_side(size) -> int:
    """The side of a model input size given as an int, a (h, w) pair or a dict of them."""
    if isinstance(size, dict):  # transformers image processors: {"height", "width"} or {"shortest_edge"}
        size = size.get("shortest_edge") or max(size.get("height", 0), size.get("width", 0))
    if isinstance(size, (tuple, list)):
        size = max(size)
    return int(size)


def render_scale(side: int) -> int:
    return max(1, math.ceil(side / GRID))


def to_pil(images: np.ndarray, side: int) -> list[Image.Image]:
    """(B, 16, 16) palette grids -> B RGB PIL images of side 16 * ceil(side / 16)."""
    scale = render_scale(side)
    return [Image.fromarray(to_rgb(grid, scale)) for grid in images]


def preprocess(images: np.ndarray, transform, side: int) -> torch.Tensor:
    """(B, 16, 16) grids through a PIL -> tensor transform (open_clip's): (B, 3, H, W) float."""
    return torch.stack([transform(img) for img in to_pil(images, side)])
