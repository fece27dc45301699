"""The masking schedule shared by pre-training and decoding (MaskGIT/Show-o cosine)."""
from __future__ import annotations

import math
from enum import StrEnum

import torch


class MaskRounding(StrEnum):
    """How the count of still-masked tokens is computed (the two differ for some N, T)."""
    float64 = "float64"  # floor(cos(pi/2 * t/T) * N) in float64
    float32 = "float32"  # the same in float32, as Show-o's sampler does


def cosine_mask_ratio(progress: torch.Tensor | float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Fraction of image tokens still masked at `progress` in [0, 1] (1 -> 0)."""
    return torch.cos(torch.as_tensor(progress, dtype=dtype) * (math.pi / 2))


def masked_counts(num_tokens: int, steps: int, rounding: MaskRounding = MaskRounding.float64) -> list[int]:
    """Tokens still masked after each decoding step; strictly decreasing to 0."""
    dtype = torch.float32 if rounding == MaskRounding.float32 else torch.float64
    counts, prev = [], num_tokens
    for t in range(1, steps + 1):
        left = int(torch.floor(cosine_mask_ratio(t / steps, dtype) * num_tokens))
        left = min(left, prev - 1) if t < steps else 0  # reveal at least one token a step
        counts.append(max(left, 0))
        prev = counts[-1]
    return counts
