"""The Mask-GRPO optimiser (AdamW or SGD, cosine schedule with warm-up and a floor) and its plain
single-process step; the Ray learner hands the same optimiser to DeepSpeed."""
from __future__ import annotations

import torch
from transformers import get_cosine_with_min_lr_schedule_with_warmup

from maskrl.grpo.objective import GRPOConfig


def make_optimizer(policy: torch.nn.Module, g: GRPOConfig, iterations: int):
    """(The configured optimiser (AdamW, or SGD) over the policy's trainable parameters (only the
    adapters under LoRA), its per-iteration learning-rate schedule)."""
    params = [p for p in policy.parameters() if p.requires_grad]
    if g.optimizer == "sgd":
        optim = torch.optim.SGD(params, lr=g.lr, momentum=g.momentum, weight_decay=g.weight_decay)
    else:
        optim = torch.optim.AdamW(params, lr=g.lr, betas=g.betas, weight_decay=g.weight_decay)
    sched = get_cosine_with_min_lr_schedule_with_warmup(optim, g.warmup_iters, iterations, min_lr_rate=g.min_lr_ratio)
    return optim, sched


def adamw_step(policy: torch.nn.Module, optim: torch.optim.Optimizer, grad_clip: float):
    """`optimizer_step(loss) -> grad norm` for `grpo_update`: backward, clip, step."""
    def step(loss: torch.Tensor) -> float:
        optim.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), grad_clip)
        optim.step()
        return float(norm)

    return step
