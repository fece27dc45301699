"""The Ray/DeepSpeed part of a run's config: one pool schema for every role, enum-typed choices.

Every pool (rollout workers, reward workers, learner ranks) is sized the same way: `workers`,
`cpus_per_worker`, `gpus_per_worker`, optional custom `resources` and a placement `strategy`;
the learner adds its DeepSpeed settings. A choice outside its enum fails when the config is
loaded (OmegaConf names the key and the allowed values), before Ray is joined.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any


class Strategy(StrEnum):
    """Placement-group strategy of a pool."""
    PACK = "PACK"
    SPREAD = "SPREAD"
    STRICT_PACK = "STRICT_PACK"
    STRICT_SPREAD = "STRICT_SPREAD"


# sync: on-policy, the rollouts of iteration k use weights k - 1; async: the rollouts of k + 1
# overlap the update on k (version lag <= 1). (`async` is a keyword: the functional form names it.)
Mode = StrEnum("Mode", [("sync", "sync"), ("async", "async")])


class Transport(StrEnum):
    object_store = "object_store"  # learner rank 0 puts the weights once, every worker reads them
    collective = "collective"  # bucketed ray.util.collective broadcast from learner rank 0


class Backend(StrEnum):
    auto = "auto"  # nccl on GPU, gloo on CPU
    gloo = "gloo"
    nccl = "nccl"


class ZeroStage(IntEnum):
    ZERO0 = 0
    ZERO1 = 1
    ZERO2 = 2
    ZERO3 = 3


@dataclass
class PoolConfig:
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    # Ray custom resources each worker's bundle also takes: pins the pool to the nodes that
    # declare them (e.g. {maskrl_rollout_node: 0.001} with `ray start --resources`).
    resources: dict[str, float] = field(default_factory=dict)
    strategy: Strategy = Strategy.PACK


@dataclass
class LearnerConfig(PoolConfig):
    """The learner pool: one DeepSpeed rank per worker."""
    workers: int = 2
    zero_stage: ZeroStage = ZeroStage.ZERO2
    backend: Backend = Backend.auto
    collective_timeout_s: float = 600.0  # a collective among the ranks gives up after this long
    bf16: bool = False  # GPUs: bf16 weights and activations, fp32 master weights in the optimiser (DeepSpeed bf16)
    gradient_checkpointing: bool = False  # recompute each block's activations in the backward: memory for time
    deepspeed: dict[str, Any] = field(default_factory=dict)  # merged over the generated DeepSpeed config


@dataclass
class ClusterConfig:
    rollout: PoolConfig = field(default_factory=lambda: PoolConfig(workers=2))
    reward: PoolConfig = field(default_factory=PoolConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    mode: Mode = Mode.sync
    weight_transport: Transport = Transport.object_store
    weight_bucket_mb: float = 32.0  # bucket size of the collective weight broadcast
    max_restarts: int = 3  # a dead rollout/reward worker is replaced at most this many times per pool (per rebuild)
    # a lost learner rank (or its node): the pools are rebuilt and the run continues from the last
    # complete checkpoint, at most this many times per run
    max_recoveries: int = 3
    # rollout worker i shares learner rank i's bundle (and GPU): needs rollout.workers ==
    # learner.workers; the shared placement group follows learner.strategy
    colocate: bool = False
    dashboard_host: str = "127.0.0.1"
    groups_per_task: int = 0  # prompt groups per rollout task; 0: the iteration's groups split evenly over the workers
    placement_timeout_s: float = 120.0  # how long a placement group may wait for resources before failing
