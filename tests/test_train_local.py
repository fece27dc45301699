"""End to end in one process: Mask-GRPO from the shipped base model raises mean reward."""
import json

import pytest

from maskrl.config import load_config
from maskrl.metrics import read_metrics
from maskrl.train_config import TrainConfig
from maskrl.train_local import train_local


@pytest.mark.slow
def test_short_mask_grpo_run_raises_mean_reward(tmp_path):
    cfg = load_config(TrainConfig, "configs/shapes_local.yaml", [f"out={tmp_path}", "iterations=8", "eval.prompts=12"])
    final = train_local(cfg)
    rows = [r for r in read_metrics(tmp_path) if "reward/mean" in r]
    assert len(rows) == 8 and (final / "model.safetensors").is_file()
    first, last = rows[:3], rows[-3:]
    mean = lambda rs: sum(r["reward/mean"] for r in rs) / len(rs)  # noqa: E731
    assert mean(last) > mean(first), [r["reward/mean"] for r in rows]
    assert json.loads((tmp_path / "summary.json").read_text())["final"]
