"""`shapes_foreground`: the share of a ShapesWorld grid's cells that are not background.

A learnability probe, not a quality reward: every image position's token moves it, so a working
Mask-GRPO run raises it within a few iterations (`make run`'s recipe at lr 1e-3 took the shipped
base's rollouts from 0.16 to 0.42 by the fifth iteration, on 12 prompts; see the README's results).
Run it when bringing up a deployment (configs/shapes_probe.yaml): a flat curve means the pipeline,
not the task, is broken. Two of its gradient estimates agree at 192 rollouts; the rule reward's need
about 13x as many (`bench/study_ascent.py --reward shapes_foreground`).
"""
from __future__ import annotations

import numpy as np

from maskrl.rewards.base import RewardOutput, check_batch


class ShapesForegroundReward:
    name = "shapes_foreground"

    def __call__(self, images: np.ndarray, prompts: list[str]) -> RewardOutput:
        images = check_batch(images, prompts, palette_only=True)
        return RewardOutput(scores=(images != 0).mean(axis=(1, 2)).astype(np.float32))
