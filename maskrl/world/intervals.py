"""95% intervals for ShapesEval rates, honest about how images were drawn.

Images of one prompt entry (its samples) are correlated, so a category's rate is treated as a
mean of per-prompt pass fractions: its variance is estimated from their spread (a cluster
estimate), turned into an effective sample size (never above the image count), and the
category's interval is Wilson's score interval at that size, sound near 0 and 1. The
overall score is the mean of the category rates: its interval is the normal one with the
categories' variances (each from the Agresti-Coull-adjusted rate, so it is never 0).
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Sequence

import numpy as np

from .grammar import CATEGORIES, Prompt

Z95 = 1.959964


def wilson(rate: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion `rate` observed on `n` (possibly effective) trials."""
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def effective_size(per_prompt: np.ndarray, samples: np.ndarray) -> float:
    """Images' worth of independent evidence: n / design effect, between n_prompts and n_images."""
    n_images, rate = samples.sum(), float((per_prompt * samples).sum() / samples.sum())
    if len(per_prompt) < 2 or rate in (0.0, 1.0):
        return float(n_images)
    cluster_var = float(np.var(per_prompt, ddof=1)) / len(per_prompt)
    binomial_var = rate * (1 - rate) / n_images
    return float(np.clip(n_images * binomial_var / max(cluster_var, 1e-12), len(per_prompt), n_images))


def shapes_eval_intervals(prompts: Sequence[Prompt], passed: Sequence[bool],
                          clusters: Sequence[int] | None = None) -> dict[str, list[float]]:
    """{category: [low, high]} and "overall": [low, high] (95%). `clusters[i]` names the prompt entry
    image i was generated for (its samples share it); by default every image is its own entry. A
    prompt text drawn twice is two entries: entries are the draws from the category's prompts."""
    by_prompt: dict[str, dict[int, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for i, (prompt, ok) in enumerate(zip(prompts, passed)):
        by_prompt[prompt.category][clusters[i] if clusters is not None else i].append(bool(ok))
    out, variances, rates = {}, [], []
    for category in (c for c in CATEGORIES if c in by_prompt):
        groups = list(by_prompt[category].values())
        per_prompt = np.array([np.mean(g) for g in groups])
        samples = np.array([len(g) for g in groups], dtype=float)
        rate = float((per_prompt * samples).sum() / samples.sum())
        n_eff = effective_size(per_prompt, samples)
        out[category] = list(wilson(rate, n_eff))
        adjusted = (rate * n_eff + 2) / (n_eff + 4)
        variances.append(adjusted * (1 - adjusted) / (n_eff + 4))
        rates.append(rate)
    overall, half = float(np.mean(rates)), Z95 * math.sqrt(sum(variances)) / len(rates)
    out["overall"] = [max(0.0, overall - half), min(1.0, overall + half)]
    return out
