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


def test_branched_cfg_free_bf16_run_is_bit_reproducible_and_reports_both_protocols(tmp_path):
    """The learning recipe's levers together: branched groups, CFG-free rollouts, bf16 autocast."""
    recipe = ["iterations=2", "eval.prompts=6", "eval.samples=1", "eval.cfg_scales=[3]", "eval.extra_prompts=4", "grid_every=0",
              "grpo.prompts_per_iter=2", "grpo.group_size=4", "grpo.branch.enabled=true", "grpo.branch.steps=[0,1]",
              "sampling.cfg_scale=0", "sampling.precision=bfloat16", "grpo.lr=1e-3", "track_kl=false", "threads=1"]
    weights = []
    for run in ("a", "b"):
        cfg = load_config(TrainConfig, "configs/shapes_local.yaml", [f"out={tmp_path / run}", *recipe])
        weights.append(load_file(train_local(cfg) / "model.safetensors"))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    base = load_file(resolve_checkpoint("base") / "model.safetensors")
    assert any(not torch.equal(weights[0][k], base[k]) for k in base)
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    for part in ("base", "final"):
        assert summary[part]["eval/images"] == 6 and summary[part]["eval/cfg3/images"] == 4
