"""Branched group rollouts with common random numbers (maskrl.branching): shared prefixes, equal
continuations, exact recorded log-probs, and a loss over the branch steps alone."""
from dataclasses import replace

import pytest
import torch

from maskrl.branching import BranchConfig, StepNoise, branch_pairs, check_branch, common_noise
from maskrl.config import ConfigError
from maskrl.grpo import GRPOConfig, grpo_update, score_pairs
from maskrl.grpo import objective
from maskrl.iteration import PromptStream, rollout_groups
from maskrl.sampling import SamplingConfig, distinct_rows, sample
from maskrl.train_config import load_train_config
from maskrl.trajectory import TrajectoryBatch
from maskrl.transition import VARIANTS

STEPS = 6


def branched(policy, variant="candidate2", window=1, steps=(2,), group=4, prompts=2, seed=0, **sampling):
    cfg = SamplingConfig(steps=STEPS, variant=variant, **sampling)
    branch = BranchConfig(enabled=True, window=window, steps=list(steps))
    batch = rollout_groups(policy, PromptStream(3).take(prompts), group, cfg, torch.Generator().manual_seed(seed), 0, branch)
    return batch, cfg


def test_a_group_shares_its_prefix_and_branches_at_its_step(tiny_policy):
    batch, _ = branched(tiny_policy, steps=(2,), group=4)
    assert (batch.branch_step == 2).all()
    for g in range(2):
        rows = batch.reveal_step[4 * g : 4 * (g + 1)]
        before = rows[0] < 2  # what the shared prefix revealed
        assert all(torch.equal(r < 2, before) for r in rows)
        assert all(torch.equal(t[before], batch.tokens[4 * g][before]) for t in batch.tokens[4 * g : 4 * (g + 1)])
        revealed_at_branch = [r == 2 for r in rows]  # own Gumbel noise: the members reveal different sets
        assert any(not torch.equal(revealed_at_branch[0], other) for other in revealed_at_branch[1:])


def test_members_with_equal_branch_draws_stay_identical_and_others_differ(tiny_policy):
    """Common random numbers: after the branch step a member is a function of its state alone."""
    cfg = SamplingConfig(steps=STEPS)
    n = tiny_policy.num_image_tokens
    noise = common_noise(torch.tensor([1]), 3, 1, STEPS, n, torch.Generator().manual_seed(4))
    for table in (noise.token, noise.order):  # member 1 draws what member 0 draws at the branch step
        table[1, 1] = table[1, 0]
    out = sample(tiny_policy, ["a red circle"] * 3, cfg, torch.Generator().manual_seed(0), noise)
    assert torch.equal(out.tokens[0], out.tokens[1]) and torch.equal(out.reveal_step[0], out.reveal_step[1])
    assert not torch.equal(out.reveal_step[0], out.reveal_step[2])
    assert torch.equal(out.reveal_step[0] == 0, out.reveal_step[2] == 0)  # shared before the branch
    # the generator is not used: the given numbers are all the randomness
    again = sample(tiny_policy, ["a red circle"] * 3, cfg, torch.Generator().manual_seed(99), noise)
    assert torch.equal(again.tokens, out.tokens)


def test_common_noise_is_shared_outside_the_window_only():
    noise = common_noise(torch.tensor([0, 3]), 2, 2, STEPS, 5, torch.Generator().manual_seed(0))
    assert isinstance(noise, StepNoise) and noise.token.shape == (STEPS, 4, 5)
    for table in (noise.token, noise.order):
        for g, start in ((0, 0), (1, 3)):
            a, b = table[:, 2 * g], table[:, 2 * g + 1]
            own = torch.zeros(STEPS, dtype=torch.bool)
            own[start : start + 2] = True
            assert torch.equal(a[~own], b[~own]) and (a[own] != b[own]).all()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("cfg_scale", [0.0, 2.0])
def test_recomputed_logprob_equals_recorded_for_branched_rollouts(tiny_policy, variant, cfg_scale):
    batch, sampling = branched(tiny_policy, variant=variant, window=2, steps=(0, 3), cfg_scale=cfg_scale)
    batch = TrajectoryBatch.from_arrow(batch.to_arrow())  # as the learner reads it
    traj, step = branch_pairs(batch.branch_step, 2)
    with torch.no_grad():
        recomputed, units = score_pairs(tiny_policy, batch, traj, step, sampling)
    recorded = batch.behaviour(traj, step)
    assert units.any(dim=1).all()
    torch.testing.assert_close(recomputed, recorded, atol=1e-5, rtol=0)


def test_the_loss_covers_the_branch_steps_only(tiny_policy, monkeypatch):
    batch, sampling = branched(tiny_policy, window=2, steps=(1, 3), group=4)
    batch.reward = torch.arange(len(batch), dtype=torch.float32)
    batch.advantage = torch.linspace(-1, 1, len(batch))
    scored = []
    real = objective.score_pairs

    def recording(policy, b, traj, step, s):
        scored.extend(zip(traj.tolist(), step.tolist()))
        return real(policy, b, traj, step, s)

    monkeypatch.setattr(objective, "score_pairs", recording)
    cfg = GRPOConfig(group_size=4, epochs=2, minibatch_pairs=5, branch=BranchConfig(enabled=True, window=2, steps=[1, 3]))
    grpo_update(tiny_policy, None, batch, cfg, sampling, lambda loss: 0.0, torch.Generator().manual_seed(0))
    expected = {(i, int(batch.branch_step[i]) + k) for i in range(len(batch)) for k in range(2)}
    assert set(scored) == expected and len(scored) == 2 * len(expected)  # every branch pair, once an epoch


def test_a_branched_batch_needs_a_branched_learner(tiny_policy):
    batch, sampling = branched(tiny_policy)
    with pytest.raises(ValueError, match="grpo.branch.enabled=False"):
        grpo_update(tiny_policy, None, batch, GRPOConfig(), sampling, lambda loss: 0.0, torch.Generator())


def test_branched_rollouts_are_bit_reproducible_and_travel_in_arrow(tiny_policy):
    a, _ = branched(tiny_policy, steps=(0, 1, 2, 3), prompts=3, seed=5)
    b, _ = branched(tiny_policy, steps=(0, 1, 2, 3), prompts=3, seed=5)
    for name in ("tokens", "reveal_step", "cutoff", "behaviour_terms", "branch_step"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(TrajectoryBatch.from_arrow(a.to_arrow()).branch_step, a.branch_step)
    unbranched = rollout_groups(tiny_policy, PromptStream(3).take(1), 2, SamplingConfig(steps=STEPS), torch.Generator(), 0)
    assert (unbranched.branch_step == -1).all()


def test_a_group_larger_than_a_micro_batch_stays_in_one_forward(tiny_policy):
    batch, _ = branched(tiny_policy, steps=(2,), group=3, prompts=2, micro_batch=2)
    for g in range(2):
        rows = batch.reveal_step[3 * g : 3 * (g + 1)]
        assert all(torch.equal(r < 2, rows[0] < 2) for r in rows)


def test_bad_branch_settings_are_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"branch.steps \[15\]"):
        check_branch(BranchConfig(enabled=True, window=2, steps=[15]), 16)
    with pytest.raises(ConfigError, match="grpo.branch.*window=0"):
        load_train_config(None, ["grpo.branch.enabled=true", "grpo.branch.window=0"])


def test_distinct_rows_indexes_each_row_to_its_first_equal():
    text = torch.tensor([[1], [2], [1], [3], [2]])
    state = torch.tensor([[0, 1], [0, 1], [0, 1], [5, 5], [0, 1]])
    first, inverse = distinct_rows(text, state)
    assert first.tolist() == [0, 1, 3] and inverse.tolist() == [0, 1, 0, 2, 1]


class RowCounter:
    """Wraps a policy's forward to record how many rows each call computes."""

    def __init__(self, policy, monkeypatch):
        self.calls, real = [], policy.forward

        def forward(text_ids, state, mask=None):
            self.calls.append(len(text_ids))
            return real(text_ids, state, mask)

        monkeypatch.setattr(policy, "forward", forward)


def test_a_branched_group_computes_its_shared_steps_once(tiny_policy, monkeypatch):
    rows = RowCounter(tiny_policy, monkeypatch)
    branched(tiny_policy, steps=(2,), group=4, prompts=2)  # both groups in one micro-batch
    assert rows.calls[:3] == [2, 2, 2]  # steps 0..2: one state a group (step 2 draws per member)
    assert rows.calls[3] > 2 and len(rows.calls) == STEPS  # after the branch the members differ


@pytest.mark.parametrize("cfg_scale", [0.0, 2.0])
def test_the_learner_scores_a_shared_state_once_with_the_brute_force_gradient(tiny_policy, monkeypatch, cfg_scale):
    """A group's branch pairs share one state: scored in one row, their log-probs and the gradient
    of any weighting of them equal those of each pair scored alone."""
    batch, sampling = branched(tiny_policy, steps=(1,), group=4, prompts=2, cfg_scale=cfg_scale)
    traj, step = branch_pairs(batch.branch_step, 1)
    weights = torch.linspace(-1, 2, len(traj))
    params = [p for p in tiny_policy.parameters() if p.requires_grad]

    def scored(pairs):
        terms, _ = score_pairs(tiny_policy, batch, traj[pairs], step[pairs], sampling)
        return terms.sum(dim=1)

    rows = RowCounter(tiny_policy, monkeypatch)
    together = scored(torch.arange(len(traj)))
    assert rows.calls == [2 * (2 if cfg_scale else 1)]  # one state a group (and its unconditional row)
    grads = torch.autograd.grad((together * weights).sum(), params)
    alone = [scored(torch.tensor([i])) for i in range(len(traj))]
    brute = torch.autograd.grad(sum(a.sum() * w for a, w in zip(alone, weights)), params)
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-5, rtol=0)
    for g, b in zip(grads, brute):
        torch.testing.assert_close(g, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("branch", [False, True])
@pytest.mark.parametrize("variant", ["candidate1", "candidate2"])
def test_bf16_recorded_and_recomputed_logprobs_agree_exactly(tiny_policy, variant, branch):
    sampling = SamplingConfig(steps=STEPS, variant=variant, precision="bfloat16", cfg_scale=2.0)
    branching = BranchConfig(enabled=branch, steps=[2])
    batch = rollout_groups(tiny_policy, PromptStream(1).take(2), 2, sampling, torch.Generator().manual_seed(0), 0, branching)
    traj = torch.arange(len(batch)).repeat_interleave(STEPS)
    step = torch.arange(STEPS).repeat(len(batch))
    with torch.no_grad():
        recomputed, _ = score_pairs(tiny_policy, batch, traj, step, sampling)
    assert torch.equal(recomputed, batch.behaviour(traj, step))
    fp32 = replace(sampling, precision="float32")
    with torch.no_grad():
        in_fp32, _ = score_pairs(tiny_policy, batch, traj, step, fp32)
    assert not torch.equal(in_fp32, recomputed)  # the bf16 path is really in bf16
