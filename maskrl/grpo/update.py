"""One Mask-GRPO update on a scored, advantage-annotated batch, for any optimiser backend.

`optimizer_step(loss) -> grad norm` is the only thing a backend supplies: a plain torch
optimiser (AdamW or SGD) in the single-process trainer, a DeepSpeed engine's backward/step in the Ray learner. With
`rank`/`world_size` each rank takes its slice of every minibatch, so the gradient the
ranks average is the single-process minibatch gradient.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable

import torch

from maskrl.grpo.objective import GRPOConfig, grpo_loss, minibatch_size, training_pairs
from maskrl.sampling import SamplingConfig
from maskrl.trajectory import TrajectoryBatch


def grpo_update(
    policy,
    reference,
    batch: TrajectoryBatch,
    cfg: GRPOConfig,
    sampling: SamplingConfig,
    optimizer_step: Callable[[torch.Tensor], float],
    generator: torch.Generator,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, float]:
    traj, step = training_pairs(batch, cfg, generator)
    per_epoch: list[dict[str, list[float]]] = []
    policy.train()
    for _ in range(cfg.epochs):
        seen = defaultdict(list)
        order = torch.randperm(len(traj), generator=generator)
        for start in range(0, len(order), cfg.minibatch_pairs):
            mb = order[start : start + cfg.minibatch_pairs]
            mine = mb[rank * len(mb) // world_size : (rank + 1) * len(mb) // world_size]
            if not len(mine):  # a short last minibatch: this rank still joins the gradient all-reduce
                optimizer_step(sum(p.sum() for p in policy.parameters()) * 0.0)
                continue
            size = minibatch_size(batch, traj[mb], step[mb], sampling)
            loss, metrics = grpo_loss(policy, reference, batch, traj[mine], step[mine], cfg, sampling, size)
            # each rank's loss is its share of the minibatch's; ranks average gradients (and the
            # learner averages metrics), so scale back up
            metrics["grad_norm"] = optimizer_step(loss * world_size)
            metrics["policy_loss"] = metrics["policy_loss"] * world_size
            for name, value in metrics.items():
                seen[name].append(float(value))
        per_epoch.append(seen)
    out = {name: sum(v for e in per_epoch for v in e[name]) / sum(len(e[name]) for e in per_epoch) for name in per_epoch[0]}
    first = per_epoch[0]["clip_frac"]
    return out | {"clip_frac_first_epoch": sum(first) / len(first), "pairs": float(len(traj))}
