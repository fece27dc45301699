"""The dense ShapesWorld rule reward (partial credit per prompt clause; see world.evaluate)."""
from __future__ import annotations

import numpy as np

from maskrl.rewards.base import RewardOutput, check_batch
from maskrl.world import dense_reward_batch, detect_batch, parse_prompt, passes


class ShapesRuleReward:
    name = "shapes_rule"

    def __call__(self, images: np.ndarray, prompts: list[str]) -> RewardOutput:
        images = check_batch(images, prompts, palette_only=True)  # ShapesWorld's rules read palette grids
        parsed = [parse_prompt(p) for p in prompts]
        detections = detect_batch(images)
        scores = dense_reward_batch(parsed, detections)
        passed = np.array([passes(p, d) for p, d in zip(parsed, detections)], dtype=np.float32)
        return RewardOutput(scores=np.asarray(scores, dtype=np.float32), components={"pass": passed})
