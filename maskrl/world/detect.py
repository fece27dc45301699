"""The ShapesEval detector (SHAPES_WORLD.md section 4), vectorised to score every RL rollout.

All 4 x 144 placed bitmaps are precomputed as one (256, 576) matrix, so a component's
intersections with every placement are the sum of its cells' rows. (A BLAS matmul
does the same but, sharing cores with training, its thread pool made it 10x slower.)
IoUs and colour shares are ratios of small integers, so float comparisons between
them (ties, the 0.7 and 0.8 thresholds) are exact.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .grammar import COLORS, SHAPES, relation_holds_at
from .render import BITMAPS, BOX, GRID, PLACEMENTS

MIN_IOU = 0.7
MIN_COLOR_SHARE = 0.8


def _placed_bitmaps() -> np.ndarray:
    """(4, 144, 256) bool: shape s placed at placement p, flattened row-major."""
    placed = np.zeros((len(SHAPES), len(PLACEMENTS), GRID, GRID), dtype=np.bool_)
    for s, shape in enumerate(SHAPES):
        for p, (r, c) in enumerate(PLACEMENTS):
            placed[s, p, r:r + BOX, c:c + BOX] = BITMAPS[shape]
    return placed.reshape(len(SHAPES), len(PLACEMENTS), GRID * GRID)


PLACED = _placed_bitmaps()
_PLACED_T = PLACED.reshape(-1, GRID * GRID).T.astype(np.float32)  # (256, 576)
_SHAPE_SIZES = np.array([BITMAPS[s].sum() for s in SHAPES], dtype=np.float64)[:, None]


def _neighbours() -> list[list[int]]:
    out = []
    for i in range(GRID * GRID):
        r, c = divmod(i, GRID)
        out.append([(r + dr) * GRID + c + dc for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1))
                    if 0 <= r + dr < GRID and 0 <= c + dc < GRID])
    return out


_NEIGHBOURS = _neighbours()


@dataclass(frozen=True)
class Detection:
    """An object: its shape, colour and the top-left of its best placement."""

    shape: str
    color: str
    row: int
    col: int

    @property
    def cy(self) -> int:
        return self.row + 2

    @property
    def cx(self) -> int:
        return self.col + 2


def _components(flat: np.ndarray) -> list[list[int]]:
    """4-connected components of non-background cells, in row-major order of first cell."""
    fg = (flat != 0).tolist()
    seen = [False] * len(fg)
    comps = []
    for start in np.flatnonzero(flat).tolist():
        if seen[start]:
            continue
        seen[start] = True
        stack, comp = [start], []
        while stack:
            i = stack.pop()
            comp.append(i)
            for j in _NEIGHBOURS[i]:
                if fg[j] and not seen[j]:
                    seen[j] = True
                    stack.append(j)
        comps.append(comp)
    return comps


def _check_grid(grid: np.ndarray) -> np.ndarray:
    grid = np.asarray(grid)
    if grid.shape != (GRID, GRID) or grid.size and (grid.min() < 0 or grid.max() > len(COLORS)):
        raise ValueError(f"expected a ({GRID}, {GRID}) grid of palette indices 0..{len(COLORS)}, "
                         f"got shape {grid.shape}")
    return grid.astype(np.int64).reshape(-1)


def _ious(comps: list[list[int]]) -> np.ndarray:
    """(n, 4, 144) IoU of each component (flat cell indices) with each placed bitmap."""
    inter = np.stack([_PLACED_T[comp].sum(0) for comp in comps]).astype(np.float64)
    inter = inter.reshape(len(comps), len(SHAPES), len(PLACEMENTS))
    sizes = np.array([len(comp) for comp in comps], dtype=np.float64)[:, None, None]
    return inter / (_SHAPE_SIZES + sizes - inter)


def placement_ious(mask: np.ndarray) -> np.ndarray:
    """(4, 144) IoU of a (16, 16) cell mask with every shape at every placement."""
    return _ious([np.flatnonzero(np.asarray(mask).reshape(-1)).tolist()])[0]


def detect_with_junk(grid: np.ndarray) -> tuple[list[Detection], int]:
    """Objects of `grid` (components in row-major order) and the number of junk components."""
    flat = _check_grid(grid)
    comps = _components(flat)
    if not comps:
        return [], 0
    iou = _ious(comps)
    best_p = iou.argmax(-1)  # first maximum = smallest r, then smallest c
    scores = iou.max(-1)
    objects, junk = [], 0
    for k, comp in enumerate(comps):
        counts = np.bincount(flat[comp], minlength=len(COLORS) + 1)
        color = int(counts.argmax())
        s = int(scores[k].argmax())
        top = scores[k, s]
        if counts[color] < MIN_COLOR_SHARE * len(comp) or top < MIN_IOU or (scores[k] == top).sum() > 1:
            junk += 1
            continue
        r, c = PLACEMENTS[best_p[k, s]]
        objects.append(Detection(SHAPES[s], COLORS[color - 1], int(r), int(c)))
    return objects, junk


def detect(grid: np.ndarray) -> list[Detection]:
    """Objects of a (16, 16) palette-index grid, junk ignored."""
    return detect_with_junk(grid)[0]


def detect_batch(grids: Sequence[np.ndarray] | np.ndarray) -> list[list[Detection]]:
    return [detect(g) for g in grids]


def relation_holds(relation: str, a: Detection, b: Detection) -> bool:
    """Whether B (second named) sits in `relation` to A (first named), by their centres."""
    return bool(relation_holds_at(relation, b.cx - a.cx, b.cy - a.cy))
