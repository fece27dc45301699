"""One place that records a metric; it feeds a JSONL file, TensorBoard and any extra sinks
(the Ray layer adds `ray.util.metrics`, so the dashboard shows the same numbers)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import numpy as np
from torch.utils.tensorboard import SummaryWriter

from maskrl.world import CATEGORIES

Sink = Callable[[int, dict[str, float]], None]


class MetricsLogger:
    def __init__(self, run_dir: str | Path, sinks: tuple[Sink, ...] = ()):
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(run_dir / "metrics.jsonl", "a", buffering=1)
        self._tb = SummaryWriter(str(run_dir / "tensorboard"))
        # one TensorBoard chart with the overall and every category's held-out rate
        curve = ["eval/overall", *(f"eval/{c}" for c in CATEGORIES)]
        self._tb.add_custom_scalars({"held-out ShapesEval": {"per category": ["Multiline", curve]}})
        self._sinks = sinks

    def log(self, iteration: int, metrics: dict[str, float]) -> None:
        clean = {k: float(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"iteration": iteration, **clean}) + "\n")
        for name, value in clean.items():
            if math.isfinite(value):
                self._tb.add_scalar(name, value, iteration)
        for sink in self._sinks:
            sink(iteration, clean)

    def image(self, iteration: int, tag: str, rgb: np.ndarray) -> None:
        """An (H, W, 3) uint8 image (a sample grid) in TensorBoard's Images tab."""
        self._tb.add_image(tag, rgb, iteration, dataformats="HWC")

    def close(self) -> None:
        self._jsonl.close()
        self._tb.close()


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def summary_line(iteration: int, metrics: dict[str, float]) -> str:
    keys = ("reward/mean", "reward/pass", "groups/filtered", "loss/clip_frac", "loss/kl_ref", "time/iteration")
    parts = [f"{k.split('/')[-1]}={metrics[k]:.3f}" for k in keys if k in metrics]
    return f"iter {iteration:4d} " + " ".join(parts)
