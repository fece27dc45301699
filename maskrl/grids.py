"""Sample grids a person can read: each row one prompt (its text above it), then its images.
ShapesWorld's images are captioned with their rule reward and whether they pass ShapesEval."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from maskrl.world import dense_reward, detect_with_junk, parse_prompt, passes, to_rgb

GUTTER, TEXT_H, BACKGROUND = 4, 12, 40
PASS_RGB, FAIL_RGB, TEXT_RGB = (90, 220, 90), (235, 80, 80), (230, 230, 230)


def captioned_grid(prompts: list[str], grids: np.ndarray, scale: int = 6) -> np.ndarray:
    """(prompts, samples, 16, 16) palette grids -> (H, W, 3) uint8: a prompt line, then its images,
    each with "r=<rule reward> PASS|FAIL" under it in green or red."""
    n, samples = grids.shape[:2]
    cell = 16 * scale
    width = max(samples * (cell + GUTTER) + GUTTER, 6 * max(map(len, prompts)) + 2 * GUTTER)
    row_h = TEXT_H + cell + TEXT_H + GUTTER
    canvas = Image.new("RGB", (width, n * row_h + GUTTER), (BACKGROUND,) * 3)
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for i, text in enumerate(prompts):
        prompt, top = parse_prompt(text), GUTTER + i * row_h
        draw.text((GUTTER, top), text, fill=TEXT_RGB, font=font)
        for k in range(samples):
            x = GUTTER + k * (cell + GUTTER)
            canvas.paste(Image.fromarray(to_rgb(grids[i, k], scale)), (x, top + TEXT_H))
            ok = passes(prompt, detect_with_junk(grids[i, k])[0])
            reward = dense_reward(prompt, grids[i, k])
            draw.text((x, top + TEXT_H + cell + 1), f"r={reward:.2f} {'PASS' if ok else 'FAIL'}",
                      fill=PASS_RGB if ok else FAIL_RGB, font=font)
    return np.asarray(canvas)


def rgb_grid(prompts: list[str], images: np.ndarray) -> np.ndarray:
    """(prompts, samples, H, W, 3) RGB images -> (H', W', 3) uint8: a prompt line, then its images."""
    n, samples, h, w = images.shape[:4]
    width = max(samples * (w + GUTTER) + GUTTER, 6 * max(map(len, prompts)) + 2 * GUTTER)
    row_h = TEXT_H + h + GUTTER
    canvas = Image.new("RGB", (width, n * row_h + GUTTER), (BACKGROUND,) * 3)
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default()
    for i, text in enumerate(prompts):
        top = GUTTER + i * row_h
        draw.text((GUTTER, top), text, fill=TEXT_RGB, font=font)
        for k in range(samples):
            canvas.paste(Image.fromarray(images[i, k]), (GUTTER + k * (w + GUTTER), top + TEXT_H))
    return np.asarray(canvas)


def write_grid(prompts: list[str], images: np.ndarray, path: Path) -> np.ndarray:
    """Write the grid as a PNG (captioned ShapesWorld palette grids, or RGB images); returns it (for TensorBoard)."""
    image = rgb_grid(prompts, images) if images.ndim == 5 else captioned_grid(prompts, images)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")
    return image
