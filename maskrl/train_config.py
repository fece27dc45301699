"""The configuration of a Mask-GRPO run (single-process or on Ray)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from maskrl.config import ConfigError
from maskrl.grpo import GRPOConfig, check_grpo
from maskrl.rewards.base import RewardConfig
from maskrl.sampling import SamplingConfig, check_sampling


@dataclass
class EvalConfig:
    every: int = 10  # iterations between held-out ShapesEval runs (0: only before and after)
    prompts: int = 60
    samples: int = 2
    seed: int = 1234  # the held-out sample is fixed by this seed, not by the run's seed
    before: bool = True  # also evaluate the starting checkpoint (iteration 0)
    # `maskrl generate`'s defaults: 16 steps, CFG 3 (bench/study_sampling.py)
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(steps=16, cfg_scale=3.0))


@dataclass
class PoolConfig:
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    # Ray custom resources each worker's bundle also takes: pins the pool to the nodes that
    # declare them (e.g. {maskrl_rollout_node: 0.001} with `ray start --resources`).
    resources: dict[str, float] = field(default_factory=dict)
    strategy: str = "PACK"  # the pool's placement-group strategy: PACK | SPREAD | STRICT_PACK | STRICT_SPREAD


@dataclass
class LearnerConfig:
    ranks: int = 1
    gpus_per_rank: float = 0.0
    cpus_per_rank: float = 1.0
    zero_stage: int = 2
    backend: str = "auto"  # auto: nccl on GPU, gloo on CPU
    resources: dict[str, float] = field(default_factory=dict)  # as PoolConfig.resources
    strategy: str = "PACK"  # as PoolConfig.strategy
    collective_timeout_s: float = 600.0  # a collective among the ranks gives up after this long
    deepspeed: dict[str, Any] = field(default_factory=dict)  # merged over the generated DeepSpeed config


@dataclass
class ClusterConfig:
    rollout: PoolConfig = field(default_factory=lambda: PoolConfig(workers=2))
    reward: PoolConfig = field(default_factory=PoolConfig)
    learner: LearnerConfig = field(default_factory=lambda: LearnerConfig(ranks=2))
    mode: str = "sync"  # sync (on-policy) | async (rollouts of k+1 overlap learning on k)
    weight_transport: str = "object_store"  # object_store | collective
    max_restarts: int = 3  # a dead rollout/reward worker is replaced at most this many times per pool (per rebuild)
    # a lost learner rank (or its node): the pools are rebuilt and the run continues from the last
    # complete checkpoint, at most this many times per run
    max_recoveries: int = 3
    # rollout worker i shares learner rank i's bundle (and GPU): needs rollout.workers == learner.ranks;
    # the shared placement group follows learner.strategy
    colocate: bool = False
    dashboard_host: str = "127.0.0.1"
    weight_bucket_mb: float = 32.0  # bucket size of the collective weight broadcast
    groups_per_task: int = 0  # prompt groups per rollout task; 0: the iteration's groups split evenly over the workers
    placement_timeout_s: float = 120.0  # how long a placement group may wait for resources before failing


@dataclass
class TrainConfig:
    checkpoint: str = "base"
    out: str = "runs/train"
    iterations: int = 20
    seed: int = 0
    threads: int = 2  # torch threads per process
    reward: RewardConfig = field(default_factory=RewardConfig)  # name, options, runtime_env
    category_weights: dict[str, float] | None = None
    track_kl: bool = True  # load the frozen reference policy to log KL even when kl_coef is 0
    checkpoint_every: int = 5
    grid_every: int = 5  # iterations between PNG sample grids
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    # rollouts sample as evaluation does: the unmasking schedule is the decision process
    rollout: SamplingConfig = field(default_factory=lambda: SamplingConfig(steps=16, cfg_scale=3.0))
    eval: EvalConfig = field(default_factory=EvalConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


def check_train_config(cfg: TrainConfig) -> None:
    """The library's own choices (variant, noise schedule, ratio, dual clip), checked before
    anything starts; the error names the key."""
    for prefix, check, part in (("rollout", check_sampling, cfg.rollout),
                                ("eval.sampling", check_sampling, cfg.eval.sampling), ("grpo", check_grpo, cfg.grpo)):
        try:
            check(part)
        except ValueError as err:
            raise ConfigError(f"config key '{prefix}': {err}") from None
