"""`composite`: a weighted sum of other rewards, each logged on its own.

    name: composite
    options:
      components:
        - {name: shapes_clip, weight: 1.0}
        - {name: shapes_rule, weight: 0.5}
        - {name: clip_score, key: clip_b32, weight: 0.0, options: {checkpoint: /models/b32.safetensors}}

score = sum_i weight_i * score_i over the components with a non-zero weight; a component with
weight 0 is scored and logged only (its NaNs do not reach the sum). A NaN from a weighted
component makes the sum NaN, so that sample is dropped, never trained on with a partial reward.
Components: `<key>` (the component's raw score) and `<key>/<its component>`; `key` defaults to
the component's name and must be unique.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
from omegaconf import MISSING

from maskrl.config import ConfigError
from maskrl.rewards.base import RewardConfig, RewardOutput, build_reward, check_batch


@dataclass
class ComponentConfig:
    name: str = MISSING  # any registered reward (a composite too)
    weight: float = 1.0
    key: Optional[str] = None  # its name in the logs; default: name
    options: dict[str, Any] = field(default_factory=dict)
    runtime_env: Optional[dict[str, Any]] = None  # merged into the composite's (RewardConfig.ray_runtime_env)


@dataclass
class CompositeOptions:
    components: list[ComponentConfig] = MISSING

    def __post_init__(self):
        """Checked when the options are validated (the driver does so before any actor starts)."""
        if not self.components:
            raise ConfigError("reward 'composite': options.components is empty")
        keys = set()
        for i, c in enumerate(self.components):
            key = c.key or c.name
            if key in keys:
                raise ConfigError(f"reward 'composite': options.components[{i}]: key {key!r} is used twice; "
                                  "give one component a distinct `key`")
            keys.add(key)
            if not np.isfinite(c.weight):
                raise ConfigError(f"reward 'composite': options.components[{i}].weight must be finite, got {c.weight}")


class CompositeReward:
    name = "composite"
    Options = CompositeOptions

    def __init__(self, components: list[ComponentConfig]):
        """`components` as validated by `CompositeOptions` (build_reward validates before building)."""
        self.parts = [(c.key or c.name, float(c.weight), build_reward(RewardConfig(c.name, dict(c.options), c.runtime_env)))
                      for c in components]

    def __call__(self, images: np.ndarray, prompts: list[str]) -> RewardOutput:
        images = check_batch(images, prompts)
        total = np.zeros(len(images), np.float64)
        components: dict[str, np.ndarray] = {}
        for key, weight, reward in self.parts:
            out = reward(images, prompts)
            components[key] = out.scores
            components.update({f"{key}/{k}": v for k, v in out.components.items()})
            if weight != 0.0:
                total += weight * out.scores.astype(np.float64)
        return RewardOutput(scores=total.astype(np.float32), components=components)
