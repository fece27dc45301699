"""What several test modules share: the repository root, a tiny checkpoint, a tiny run config
(the default pool shape at a few seconds an iteration), a local Ray instance, and the check
that a disturbed run lost nothing against an undisturbed one."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from safetensors.torch import load_file

from maskrl.grpo import GRPOConfig
from maskrl.metrics import read_metrics
from maskrl.models import ShowoConfig, ShowoPolicy, save_policy
from maskrl.sampling import SamplingConfig
from maskrl.train_config import ClusterConfig, EvalConfig, LearnerConfig, PoolConfig, TrainConfig

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
TINY = ShowoConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def tiny_checkpoint(directory) -> str:
    torch.manual_seed(0)
    save_policy(ShowoPolicy(TINY), directory)
    return str(directory)


def tiny_config(checkpoint: str, out, **cluster) -> TrainConfig:
    """2 rollout workers, 1 reward worker, 2 learner ranks, all tiny: a run of a few seconds an iteration."""
    return TrainConfig(
        checkpoint=checkpoint, out=str(out), iterations=3, seed=0, track_kl=False, checkpoint_every=1, grid_every=0,
        grpo=GRPOConfig(group_size=4, prompts_per_iter=4, steps_per_traj=2, epochs=1, minibatch_pairs=16, lr=1e-3, warmup_iters=0),
        sampling=SamplingConfig(steps=4),
        eval=EvalConfig(every=0, prompts=40, samples=1, sampling=SamplingConfig(steps=4)),  # 2 chunks
        cluster=ClusterConfig(
            rollout=PoolConfig(workers=2, cpus_per_worker=0.25),
            reward=PoolConfig(workers=1, cpus_per_worker=0.25),
            learner=LearnerConfig(workers=2, cpus_per_worker=0.25, zero_stage=2),
            **cluster,
        ),
    )


@contextlib.contextmanager
def local_ray(num_cpus: int = 2):
    import ray

    from actors.runtime import init_ray  # a slow raylet is waited for, a failed start retried once

    init_ray(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level="warning")
    try:
        yield ray
    finally:
        ray.shutdown()


def iterations(run) -> list[dict]:
    return [m for m in read_metrics(run) if m["iteration"] > 0]


def assert_nothing_lost(result, undisturbed) -> list[dict]:
    """Every planned iteration exactly once, with the undisturbed run's data, rewards and weights."""
    ms, base = iterations(result.run), iterations(undisturbed.run)
    assert [m["iteration"] for m in ms] == [1, 2, 3]  # none repeated, none skipped
    for key in ("stream/position", "batch/groups", "batch/trajectories", "rollout/images", "reward/mean", "version/learner"):
        assert [m[key] for m in ms] == [m[key] for m in base], key
    a = load_file(result.checkpoint / "model.safetensors")
    b = load_file(undisturbed.checkpoint / "model.safetensors")
    assert all((a[k] == b[k]).all() for k in a)
    return ms
