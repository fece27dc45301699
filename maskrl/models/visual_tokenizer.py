"""ShapesWorld's visual tokenizer: images <-> discrete image tokens, exact and parameter-free
(one token per cell, the token being the cell's palette index). Real models decode their codes
through `MaskedPolicy.decode_images` (MAGVIT-v2, aMUSEd's VQ) instead.
"""
from __future__ import annotations

import numpy as np
import torch

from maskrl.world import GRID, PALETTE


class PaletteTokenizer:
    """ShapesWorld: an image is a (16, 16) grid of palette indices; code = palette index."""

    codebook_size = len(PALETTE)
    grid_shape = (GRID, GRID)

    @property
    def num_tokens(self) -> int:
        return self.grid_shape[0] * self.grid_shape[1]

    def encode(self, images: np.ndarray) -> torch.Tensor:
        images = np.asarray(images)
        if images.ndim != 3 or images.shape[1:] != self.grid_shape:
            raise ValueError(f"expected palette grids of shape (B, {GRID}, {GRID}), got {images.shape}")
        if images.size and images.max() >= self.codebook_size:
            raise ValueError(f"palette index {int(images.max())} outside 0..{self.codebook_size - 1}")
        return torch.from_numpy(images.reshape(len(images), -1).astype(np.int64))

    def decode(self, tokens: torch.Tensor) -> np.ndarray:
        codes = torch.as_tensor(tokens).detach().cpu()
        if codes.ndim != 2 or codes.shape[1] != self.num_tokens:
            raise ValueError(f"expected (B, {self.num_tokens}) codes, got {tuple(codes.shape)}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.codebook_size):
            raise ValueError("codes outside the palette; was a mask token left in the image?")
        return codes.numpy().astype(np.uint8).reshape(-1, *self.grid_shape)
