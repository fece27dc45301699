"""End to end: `maskrl train` with `make run`'s config on a fresh local Ray instance (2 rollout
workers, 1 reward worker, 2 DeepSpeed learner ranks, CPU) trains every iteration on-policy,
moves the policy off the base, prints both held-out scores with intervals and ends with a usable
`checkpoint: PATH` line. Slow: minutes on a 2-core machine.

Needs the shipped base model (`checkpoint: base`); MASKRL_E2E_CHECKPOINT=DIR runs it on another
checkpoint directory (e.g. a pre-training run's `last`).
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from maskrl.checkpoints import resolve_checkpoint
from maskrl.metrics import read_metrics
from maskrl.models import load_policy
from tests.helpers import REPO as ROOT



@pytest.mark.slow
def test_maskrl_train_on_local_ray_end_to_end(tmp_path):
    checkpoint = os.environ.get("MASKRL_E2E_CHECKPOINT", "base")
    resolve_checkpoint(checkpoint)  # the shipped base model is part of the repository: missing is a failure
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # start a local instance
    cmd = [sys.executable, "-m", "maskrl.cli", "train", "--config", "configs/shapes_cpu.yaml",
           f"checkpoint={checkpoint}", f"out={run}", "iterations=6", "eval.prompts=40", "grpo.prompts_per_iter=4"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("checkpoint: "), lines[-5:]
    for name in ("base", "trained"):  # e.g. "base held-out ShapesEval: 0.412 (95% CI 0.371-0.452, 80 images)"
        assert any(line.startswith(f"{name} held-out ShapesEval: ") and "95% CI" in line and "80 images" in line
                   for line in lines), lines[-6:]
    trained = load_policy(lines[-1].removeprefix("checkpoint: "))  # usable as --checkpoint PATH
    base = load_policy(resolve_checkpoint(checkpoint))
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), base.state_dict().values()))

    rows = [r for r in read_metrics(run) if "reward/mean" in r]
    assert [r["iteration"] for r in rows] == list(range(1, 7))
    assert all(r["version/lag_max"] == 0 and r.get("loss/approx_kl", 0.0) >= 0 for r in rows)
    assert json.loads((run / "summary.json").read_text())["final"]["eval/images"] == 80
    assert sorted(p.name for p in (run / "grids").glob("*.png")) == ["iter_00000.png", "iter_00006.png"]  # grid_every 10: the last


@pytest.mark.slow
def test_the_probe_recipe_raises_its_reward_on_ray(tmp_path):
    """configs/shapes_probe.yaml, smaller: the learnability probe's reward climbs over three iterations on
    Ray (single-process it went 0.16 -> 0.33), so rewards reach their trajectories and weights their workers."""
    run = tmp_path / "probe"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    cmd = [sys.executable, "-m", "maskrl.cli", "train", "--config", "configs/shapes_probe.yaml", f"out={run}",
           "iterations=3", "prompt_pool=4", "grpo.prompts_per_iter=4"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:]
    rewards = [r["reward/mean"] for r in read_metrics(run) if "reward/mean" in r]
    assert len(rewards) == 3 and rewards[2] > rewards[0] + 0.05, rewards
