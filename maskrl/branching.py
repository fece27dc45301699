"""Branched group rollouts with common random numbers (Flow-GRPO-Fast / TempFlow-GRPO for masks).

Today's estimator credits a whole image's reward to all of its ~256 decisions at every step.
Branching makes the reward differences inside a group come from one place: the G rollouts of
a prompt share everything but a window of `window` steps starting at a branch step t_b, drawn
once per group.

- Before t_b every member uses the group's shared random numbers, so the members walk the same
  states (same prompt, same state, same numbers): the sampler computes those steps once for the
  group, and the learner its branch step once (maskrl.sampling.distinct_rows);
- at steps t_b .. t_b + window - 1 each member draws its own numbers (its token uniforms and
  its Gumbel reveal-order noise): the group branches there;
- after the window every member uses the group's shared numbers again (common random numbers),
  so two members whose states agree after the window stay identical to the end, and members
  differ only through what their branch steps did.

Only the branch steps enter the loss (`branch_pairs`). Which likelihood is exact: the transition
log-prob of a branch step (maskrl.transition, any variant, exactly as unbranched) is the exact
log-probability of that step's outcome given its state, because each member's own numbers at
that step are independent draws. The steps after the window are deterministic given the shared
numbers, so the reward is a function R(s_{t_b + window}, xi) of the branch outcome and of noise xi
that the group shares; the score-function estimate through the branch step's log-prob is then
unbiased for the gradient of E[R] through that step alone (the later steps' own dependence on
the policy is not credited, by design). The prefix steps' log-probs are recorded but never trained.

Token draws use the inverse CDF of one uniform per position (the multinomial draw would consume
a generator row by row, so equal rows would not get equal tokens).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class BranchConfig:
    enabled: bool = False  # off: every step independent, K random steps per trajectory train (exact as before)
    window: int = 1  # consecutive branch steps per group; all of them train
    # t_b is drawn uniformly from these steps per group (empty: every step that fits the window)
    steps: list[int] = field(default_factory=list)


def check_branch(cfg: BranchConfig, steps: int) -> None:
    """Refuse a window or branch steps that do not fit a `steps`-step sampler, naming the key."""
    if cfg.window < 1 or cfg.window > steps:
        raise ValueError(f"branch.window={cfg.window} must be between 1 and the sampler's {steps} steps")
    bad = [s for s in cfg.steps if not 0 <= s <= steps - cfg.window]
    if bad:
        raise ValueError(f"branch.steps {bad} do not fit: a window of {cfg.window} must start in 0..{steps - cfg.window}")


def branch_choices(cfg: BranchConfig, steps: int) -> torch.Tensor:
    return torch.tensor(cfg.steps or range(steps - cfg.window + 1), dtype=torch.long)


@dataclass
class StepNoise:
    """Per-step uniforms of B rows: `token` (T, B, N) drawn into tokens by inverse CDF, `order`
    (T, B, N) into the Gumbel reveal-order noise."""

    token: torch.Tensor
    order: torch.Tensor

    def rows(self, index: slice) -> "StepNoise":
        return StepNoise(self.token[:, index], self.order[:, index])


def common_noise(branch_step: torch.Tensor, group_size: int, window: int, steps: int, positions: int,
                 generator: torch.Generator) -> StepNoise:
    """The random numbers of `len(branch_step)` groups of `group_size` rows (group-major): shared by a
    group at every step but its window, where each row draws its own."""
    groups = len(branch_step)

    def uniforms(*shape):
        return torch.rand(*shape, generator=generator).clamp(1e-20, 1 - 1e-7)

    shared = [uniforms(steps, groups, positions).repeat_interleave(group_size, dim=1) for _ in range(2)]
    own = [uniforms(window, groups * group_size, positions) for _ in range(2)]
    rows = torch.arange(groups * group_size)
    start = branch_step.repeat_interleave(group_size)
    for offset in range(window):
        for table, mine in zip(shared, own):
            table[start + offset, rows] = mine[offset]
    return StepNoise(*shared)


def draw_branch_steps(cfg: BranchConfig, groups: int, steps: int, generator: torch.Generator) -> torch.Tensor:
    """(groups,) t_b of each group, uniform over the configured choices."""
    choices = branch_choices(cfg, steps)
    return choices[torch.randint(len(choices), (groups,), generator=generator)]


def branch_pairs(branch_step: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (trajectory, step) pairs that train: every trajectory's window of branch steps."""
    traj = torch.arange(len(branch_step)).repeat_interleave(window)
    step = branch_step.long().repeat_interleave(window) + torch.arange(window).repeat(len(branch_step))
    return traj, step
