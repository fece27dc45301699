"""Rewards behind one interface: decoded images and their prompts in, one float per image out."""
from maskrl.rewards.base import Reward, RewardOutput, build_reward
from maskrl.rewards.shapes_rule import ShapesRuleReward

__all__ = ["Reward", "RewardOutput", "ShapesRuleReward", "build_reward"]
