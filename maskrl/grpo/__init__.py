"""Mask-GRPO: group-relative advantages, transition log-probs of sampled steps, the clipped objective."""
from maskrl.grpo.advantages import filter_groups, group_advantages
from maskrl.grpo.objective import (
    RATIOS, GRPOConfig, check_grpo, clipped_surrogate, grpo_loss, k3_kl, log_ratios, minibatch_size, pair_logprobs,
    pair_units, sample_steps, score_pairs,
)
from maskrl.grpo.update import grpo_update

__all__ = [
    "RATIOS", "GRPOConfig", "check_grpo", "clipped_surrogate", "filter_groups", "group_advantages", "grpo_loss",
    "grpo_update", "k3_kl", "log_ratios", "minibatch_size", "pair_logprobs", "pair_units", "sample_steps", "score_pairs",
]
