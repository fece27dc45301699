"""Group-relative advantages and the filtering of groups that carry no learning signal."""
from __future__ import annotations

import torch


def _group_stats(rewards: torch.Tensor, group_ids: torch.Tensor):
    groups, inverse = torch.unique(group_ids, return_inverse=True)
    count = torch.zeros(len(groups), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(rewards, dtype=torch.float64))
    mean = torch.zeros(len(groups), dtype=torch.float64).index_add_(0, inverse, rewards.double()) / count
    sq = torch.zeros(len(groups), dtype=torch.float64).index_add_(0, inverse, (rewards.double() - mean[inverse]) ** 2)
    std = (sq / (count - 1).clamp_min(1)).sqrt()  # unbiased, as torch.std
    return inverse, mean, std


def group_advantages(
    rewards: torch.Tensor, group_ids: torch.Tensor, std_normalize: bool = True, global_std: bool = False, eps: float = 1e-6
) -> torch.Tensor:
    """A_i = (r_i - mean of its group) / (its group's std | the batch's std | 1)."""
    inverse, mean, std = _group_stats(rewards, group_ids)
    centred = rewards.double() - mean[inverse]
    if global_std:
        centred = centred / (rewards.double().std() + eps)
    elif std_normalize:
        centred = centred / (std[inverse] + eps)
    return centred.float()


def filter_groups(rewards: torch.Tensor, group_ids: torch.Tensor, min_std: float) -> tuple[torch.Tensor, int]:
    """Keep-mask of trajectories whose group's reward std is at least `min_std`, and how many groups went."""
    inverse, _, std = _group_stats(rewards, group_ids)
    keep_group = std >= min_std
    return keep_group[inverse], int((~keep_group).sum())
