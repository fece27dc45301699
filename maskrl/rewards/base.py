"""The reward interface and the registry that builds a reward from its config name."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class RewardOutput:
    scores: np.ndarray  # (B,) float32; may hold non-finite values, which are never trained on
    components: dict[str, np.ndarray] = field(default_factory=dict)  # named parts, for logging


class Reward(Protocol):
    name: str

    def __call__(self, images: np.ndarray, prompts: list[str]) -> RewardOutput:
        """(B, 16, 16) palette grids and their prompts -> one score per image."""


def build_reward(name: str, **options) -> Reward:
    from maskrl.rewards.shapes_rule import ShapesRuleReward

    registry = {"shapes_rule": ShapesRuleReward}
    if name not in registry:
        raise ValueError(f"unknown reward {name!r}; available: {sorted(registry)}")
    return registry[name](**options)
