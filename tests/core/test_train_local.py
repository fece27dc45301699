"""End to end in one process: Mask-GRPO from the shipped base model with the README's recipe runs,
updates the policy away from the base, evaluates with intervals and writes captioned grids.
(That its updates optimise the reward is tests/core/test_learning.py's job: a held-out gain needs far
more than this test's budget.)"""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from maskrl.config import load_config
from maskrl.checkpoints import resolve_checkpoint
from maskrl.metrics import read_metrics
from maskrl.train_config import TrainConfig
from maskrl.train_local import train_local


@pytest.mark.slow
def test_short_mask_grpo_run_updates_the_policy_and_reports(tmp_path):
    cfg = load_config(TrainConfig, "configs/shapes_local.yaml",
                      [f"out={tmp_path}", "iterations=3", "eval.prompts=12", "grid_every=3", "grpo.prompts_per_iter=4"])
    final = train_local(cfg)
    rows = [r for r in read_metrics(tmp_path) if "reward/mean" in r]
    assert len(rows) == 3 and all(0 <= r["reward/mean"] <= 1 for r in rows)
    kls = [r["loss/kl_ref"] for r in rows[1:] if "loss/kl_ref" in r]  # an iteration whose groups were all flat has none
    assert kls and all(0 < kl < math.inf for kl in kls)  # moved off the base, per-unit KL finite
    trained, base = load_file(final / "model.safetensors"), load_file(resolve_checkpoint("base") / "model.safetensors")
    assert any(not torch.equal(trained[k], base[k]) for k in base)
    summary = json.loads((tmp_path / "summary.json").read_text())
    for part in ("base", "final"):
        m = summary[part]
        assert m["eval/images"] == 24 and m["eval/overall_ci95_low"] <= m["eval/overall"] <= m["eval/overall_ci95_high"]
    assert sorted(p.name for p in (tmp_path / "grids").glob("*.png")) == ["iter_00000.png", "iter_00003.png"]
