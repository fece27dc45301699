"""One Mask-GRPO update on a scored, advantage-annotated batch, for any optimiser backend.

`optimizer_step(loss) -> grad norm` is the only thing a backend supplies: plain AdamW in
the single-process trainer, a DeepSpeed engine's backward/step in the Ray learner. With
`rank`/`world_size` each rank takes its slice of every minibatch, so the gradient the
ranks average is the single-process minibatch gradient.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable

import torch

from maskrl.grpo.objective import GRPOConfig, grpo_loss, sample_steps
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
    traj, step = sample_steps(len(batch), batch.steps, cfg.steps_per_traj, generator)
    sums, counts = defaultdict(float), defaultdict(int)
    policy.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(traj), generator=generator)
        for start in range(0, len(order), cfg.minibatch_pairs):
            mb = order[start : start + cfg.minibatch_pairs]
            mine = mb[rank * len(mb) // world_size : (rank + 1) * len(mb) // world_size]
            loss, metrics = grpo_loss(policy, reference, batch, traj[mine], step[mine], cfg, sampling)
            metrics["grad_norm"] = optimizer_step(loss)
            for name, value in metrics.items():
                key = f"{name}_epoch{epoch}" if name == "clip_frac" and epoch == 0 else name
                for k in {name, key}:
                    sums[k] += float(value)
                    counts[k] += 1
    return {k: sums[k] / counts[k] for k in sums} | {"pairs": float(len(traj))}
