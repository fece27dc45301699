"""Rewards behind one interface: decoded images and their prompts in, one float per image out.

    build_reward("shapes_rule")                                  # by name (+ keyword options)
    build_reward(load_reward_config("configs/rewards/composite.yaml"))   # from YAML

Rewards: shapes_rule, shapes_foreground, shapes_clip, clip_score, hpsv2, pickscore, aesthetic, composite
(see base.py for the interface and config, configs/rewards/ for examples). Heavy libraries
(open_clip, transformers) are imported only when such a reward is built.
"""
from maskrl.rewards.base import (
    MissingCheckpointError, Reward, RewardConfig, RewardOutput, available_rewards, build_reward,
    load_reward_config, merge_runtime_envs, register_reward,
)
from maskrl.rewards.shapes_rule import ShapesRuleReward

__all__ = [
    "MissingCheckpointError", "Reward", "RewardConfig", "RewardOutput", "ShapesRuleReward", "available_rewards",
    "build_reward", "load_reward_config", "merge_runtime_envs", "register_reward",
]
