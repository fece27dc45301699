"""Helpers of the ShapesWorld tests: seeded generators, hand-painted grids, detections."""
import numpy as np

from maskrl.world import BITMAPS, COLORS, Detection


def rng(seed=0):
    return np.random.default_rng(seed)


def grid_with(*objects):
    """Grid with (shape, colour, row, col) objects painted in order."""
    g = np.zeros((16, 16), np.uint8)
    for shape, color, r, c in objects:
        g[r:r + 5, c:c + 5][BITMAPS[shape]] = COLORS.index(color) + 1
    return g


def det(shape, cy, cx, color="red"):
    return Detection(shape, color, cy - 2, cx - 2)
