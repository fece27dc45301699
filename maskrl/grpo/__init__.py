"""Mask-GRPO: group-relative advantages, transition log-probs of sampled steps, the clipped objective."""
from maskrl.grpo.advantages import filter_groups, group_advantages
from maskrl.grpo.objective import GRPOConfig, clipped_surrogate, grpo_loss, k3_kl, sample_steps, score_pairs
from maskrl.grpo.update import grpo_update

__all__ = [
    "GRPOConfig", "clipped_surrogate", "filter_groups", "group_advantages", "grpo_loss", "grpo_update",
    "k3_kl", "sample_steps", "score_pairs",
]
