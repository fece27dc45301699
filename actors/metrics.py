"""A `MetricsLogger` sink that sets `ray.util.metrics` Gauges, so Ray's Prometheus endpoint and
the dashboard show the numbers the console, JSONL and TensorBoard show.

Every metric the driver logs becomes a gauge `maskrl_<name>` ("reward/mean" -> maskrl_reward_mean)
tagged with the run name; the ones the dashboard is mainly for are described in DESCRIPTIONS.
"""
from __future__ import annotations

import math
import re

from ray.util.metrics import Gauge

DESCRIPTIONS = {
    "reward/mean": "mean reward of the iteration's rollouts",
    "reward/std": "reward standard deviation of the iteration's rollouts",
    "eval/overall": "held-out ShapesEval (mean pass rate over categories)",
    "rollout/images_per_s": "rollout images per second, all rollout workers together",
    "time/learner_update": "seconds of the learner's update (exchange + GRPO steps)",
    "time/weight_sync": "seconds to publish the new weights to all rollout workers",
    "version/lag_max": "learner version minus the oldest trajectory version in the batch",
    "groups/filtered": "prompt groups dropped for too little reward spread",
}


def gauge_name(metric: str) -> str:
    return "maskrl_" + re.sub(r"[^a-zA-Z0-9_]", "_", metric)


class RayMetricsSink:
    """Callable(iteration, metrics) for `MetricsLogger(sinks=...)`; gauges are created on first use."""

    def __init__(self, run: str):
        self.tags = {"run": run}
        self.gauges: dict[str, Gauge] = {}

    def __call__(self, iteration: int, metrics: dict[str, float]) -> None:
        for name, value in {**metrics, "iteration": float(iteration)}.items():
            if not math.isfinite(value):
                continue
            gauge = self.gauges.get(name)
            if gauge is None:
                gauge = Gauge(gauge_name(name), description=DESCRIPTIONS.get(name, name), tag_keys=("run",))
                gauge.set_default_tags(self.tags)
                self.gauges[name] = gauge
            gauge.set(value)
