"""Ground-truth ShapesWorld images and their PNG form (SHAPES_WORLD.md sections 1-3).

Layouts are drawn exactly uniformly over all valid joint placements. Rejection would
be uniform too, but four separated boxes fit only ~1% of random 4-tuples, so the
valid placements are enumerated once per (object count, relation) and indexed.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Sequence

import numpy as np
from PIL import Image

from .grammar import COLORS, Prompt, relation_holds_at

GRID = 16
BOX = 5
SPAN = GRID - BOX + 1  # top-left row/col in 0..11

PALETTE = np.array([
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200),
    (255, 225, 25), (145, 30, 180), (70, 240, 240),
], dtype=np.uint8)


def _bitmap(*rows: str) -> np.ndarray:
    return np.array([[ch == "#" for ch in row] for row in rows], dtype=np.bool_)


BITMAPS = {
    "square": _bitmap("#####", "#####", "#####", "#####", "#####"),
    "circle": _bitmap(".###.", "#####", "#####", "#####", ".###."),
    "triangle": _bitmap("..#..", ".###.", ".###.", "#####", "#####"),
    "cross": _bitmap("..#..", "..#..", "#####", "..#..", "..#.."),
}

# Top-left (row, col) of placement p = row-major index over the 12 x 12 positions.
PLACEMENTS = np.array([(r, c) for r in range(SPAN) for c in range(SPAN)], dtype=np.int64)


def _separated() -> np.ndarray:
    """(144, 144): boxes neither overlap nor touch, i.e. a free row or column between them."""
    gap = np.abs(PLACEMENTS[:, None, :] - PLACEMENTS[None, :, :])
    return (gap >= BOX + 1).any(-1)


@lru_cache(maxsize=None)
def _layouts(k: int, relation: str | None) -> np.ndarray:
    """All valid placements of k objects as (N, k) placement indices.

    Without a relation the rows are sets (ascending) and the caller permutes them;
    with one (k == 2) they are ordered pairs (A, B) whose centres satisfy it.
    """
    ok = _separated()
    if relation is not None:
        dy = PLACEMENTS[None, :, 0] - PLACEMENTS[:, None, 0]
        dx = PLACEMENTS[None, :, 1] - PLACEMENTS[:, None, 1]
        return np.argwhere(ok & relation_holds_at(relation, dx, dy))
    sets = np.arange(len(PLACEMENTS))[:, None]
    for _ in range(k - 1):
        fits = ok[sets].all(1) & (np.arange(len(PLACEMENTS)) > sets[:, -1:])
        rows, nxt = np.nonzero(fits)
        sets = np.concatenate([sets[rows], nxt[:, None]], axis=1)
    return sets


def render(prompt: Prompt, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random clean image of `prompt`: (16, 16) uint8 palette indices."""
    layouts = _layouts(len(prompt.objects), prompt.relation)
    layout = layouts[rng.integers(len(layouts))]
    if prompt.relation is None:
        layout = rng.permutation(layout)
    grid = np.zeros((GRID, GRID), dtype=np.uint8)
    for spec, p in zip(prompt.objects, layout):
        color = spec.color or COLORS[rng.integers(len(COLORS))]
        r, c = PLACEMENTS[p]
        grid[r:r + BOX, c:c + BOX][BITMAPS[spec.shape]] = COLORS.index(color) + 1
    return grid


def render_batch(prompts: Sequence[Prompt], rng: np.random.Generator) -> np.ndarray:
    return np.stack([render(p, rng) for p in prompts]) if prompts else np.zeros((0, GRID, GRID), np.uint8)


def to_rgb(grid: np.ndarray, scale: int = 1) -> np.ndarray:
    """(16*scale, 16*scale, 3) uint8: each cell an s x s block of its palette colour."""
    return np.repeat(np.repeat(PALETTE[np.asarray(grid)], scale, axis=0), scale, axis=1)


def write_png(grid: np.ndarray, path: str | os.PathLike, scale: int = 1) -> None:
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    Image.fromarray(to_rgb(grid, scale)).save(path, format="PNG")


def read_png(path: str | os.PathLike) -> np.ndarray:
    """Palette indices of a ShapesWorld PNG: each cell's centre pixel, nearest palette colour."""
    with Image.open(path) as img:
        rgb = np.asarray(img.convert("RGB"), dtype=np.int64)
    h, w = rgb.shape[:2]
    if h != w or h % GRID or h == 0:
        raise ValueError(f"{os.fspath(path)}: image is {w}x{h}, expected a square with side a multiple of {GRID}")
    s = h // GRID
    centres = rgb[s // 2::s, s // 2::s]
    dist = ((centres[:, :, None, :] - PALETTE.astype(np.int64)) ** 2).sum(-1)
    return dist.argmin(-1).astype(np.uint8)
