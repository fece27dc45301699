"""The masking schedule shared by pre-training and decoding (MaskGIT/Show-o cosine)."""
from __future__ import annotations

import math

import torch


def cosine_mask_ratio(progress: torch.Tensor | float) -> torch.Tensor:
    """Fraction of image tokens still masked at `progress` in [0, 1] (1 -> 0)."""
    return torch.cos(torch.as_tensor(progress, dtype=torch.float64) * math.pi / 2)


def masked_counts(num_tokens: int, steps: int) -> list[int]:
    """Tokens still masked after each decoding step; strictly decreasing to 0."""
    counts, prev = [], num_tokens
    for t in range(1, steps + 1):
        left = int(math.floor(float(cosine_mask_ratio(t / steps)) * num_tokens))
        left = min(left, prev - 1) if t < steps else 0  # reveal at least one token a step
        counts.append(max(left, 0))
        prev = counts[-1]
    return counts
