"""Branched groups: rollouts/s and learner pairs/s with equal (prompt, state) rows computed once.

A branched group (`grpo.branch`, maskrl.branching) walks one state up to its branch step, and the
learner scores its branch step on that one state: ``maskrl.sampling.distinct_rows`` computes each
distinct row once and indexes the logits back. The baseline is the same calls with every row
computed (``distinct_rows`` replaced by the identity in this process); outputs are checked equal.
Same prompts, same random numbers, contestants interleaved; ratios are shared / every row.

    python bench/bench_core_branching.py                  # make run's: 16 a group, branch at steps 0-3, CFG 0, bf16
    python bench/bench_core_branching.py --cfg 3 --groups 2
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

import torch

import maskrl.sampling
from common import (base_parser, interleave, learner_minibatch, prompts, rate_table, rollout_learner_ratio,
                    sampling_config, setup)
from maskrl.branching import BranchConfig
from maskrl.grpo import GRPOConfig
from maskrl.grpo.objective import training_pairs
from maskrl.iteration import rollout_groups
from maskrl.sampling import Precision


@contextmanager
def every_row_computed():
    """The baseline: each row its own forward, equal or not."""
    shared = maskrl.sampling.distinct_rows
    maskrl.sampling.distinct_rows = lambda text_ids, state: (torch.arange(len(state)), torch.arange(len(state)))
    try:
        yield
    finally:
        maskrl.sampling.distinct_rows = shared


def main(argv=None) -> None:
    p = base_parser(__doc__.splitlines()[0], batch=16, repeats=3)
    p.set_defaults(cfg=0.0)
    p.add_argument("--groups", type=int, default=6, help="prompt groups a call (--batch is the group size)")
    p.add_argument("--branch-steps", type=int, nargs="+", default=[0, 1, 2, 3], help="steps a group may branch at")
    p.add_argument("--precision", type=Precision, default=Precision.bfloat16, choices=list(Precision))
    args = p.parse_args(argv)
    policy = setup(args)
    sampling = replace(sampling_config(args), precision=args.precision, micro_batch=args.batch * args.groups)
    grpo = GRPOConfig(group_size=args.batch, branch=BranchConfig(enabled=True, steps=args.branch_steps))
    groups = list(enumerate(prompts(args.groups, args.seed)))
    print(f"sampling: {sampling.steps} steps, cfg {sampling.cfg_scale}, {sampling.precision}; {args.groups} groups of "
          f"{args.batch}, branch at steps {args.branch_steps}")

    def rollouts():
        gen = torch.Generator().manual_seed(args.seed)
        return rollout_groups(policy, groups, args.batch, sampling, gen, 0, grpo.branch)

    batch = rollouts()
    with every_row_computed():
        assert torch.equal(rollouts().tokens, batch.tokens), "computing every row changed the rollouts"

    def every_row(fn):
        def run():
            with every_row_computed():
                return fn()
        return run

    times = interleave({"shared": rollouts, "every row": every_row(rollouts)}, args.repeats)
    images = dict.fromkeys(times, len(batch))
    rollout = rate_table(times, images, "rollouts", "every row", "branched rollouts (median of interleaved repeats)")

    batch = replace(batch, advantage=torch.randn(len(batch), generator=torch.Generator().manual_seed(args.seed)))
    traj, step = training_pairs(batch, grpo, torch.Generator())
    policy.train()

    def learner():
        learner_minibatch(policy, batch, traj, step, grpo, sampling)

    times = interleave({"shared": learner, "every row": every_row(learner)}, args.repeats)
    pairs = rate_table(times, dict.fromkeys(times, len(traj)), "pairs", "every row",
                       "learner on the branch steps, forward + backward (median of interleaved repeats)")
    rollout_learner_ratio("shared / every row", rollout, pairs, "shared", "every row")


if __name__ == "__main__":
    main()
