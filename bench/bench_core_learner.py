"""Learner throughput, (trajectory, step) pairs/s with forward AND backward: batched vs per pair.

One recorded batch of trajectories (``rollout_groups``), K random steps per trajectory
(``sample_steps``), then, same pairs, same policy, gradients accumulated as in training:

- ``batched``: ``maskrl.grpo.grpo_loss`` over the whole minibatch of pairs (the state before
  each step rebuilt in one vectorised op, all pairs scored in one forward), one backward;
- ``reference@1``: one forward + backward per pair, batch 1, as the public Mask-GRPO
  code does per sample: the state before step t is replayed from the per-step Python lists
  of revealed indices and tokens, and the transition log-prob is computed with separate
  gathers over those index tensors (candidate 1: plus the mass below the step's minimum
  confidence at the re-masked positions);
- ``reference@group`` (context): the public code's actual learner loop, which walks every
  step of one group's trajectories in order, one forward + backward per step at batch G.

    python bench/bench_core_learner.py                # 32 trajectories x 4 steps = 128 pairs
"""
from __future__ import annotations

from dataclasses import replace

import torch

from common import base_parser, interleave, learner_minibatch, rate_table, sampling_config, setup
from reference import guided_logits, reference_group, reference_lists, reference_logprob, reference_per_pair
from maskrl.grpo import GRPOConfig, sample_steps
from maskrl.iteration import PromptStream, rollout_groups
from maskrl.sampling import SamplingConfig


def main(argv=None) -> None:
    grpo = GRPOConfig()
    p = base_parser(__doc__.splitlines()[0], batch=32, repeats=3)
    p.add_argument("--pairs-per-traj", type=int, default=grpo.steps_per_traj, help="K random steps per trajectory")
    p.add_argument("--group", type=int, default=4, help="rollouts per prompt in the recorded batch")
    p.add_argument("--no-group-reference", action="store_true", help="skip the reference@group contestant")
    args = p.parse_args(argv)
    policy = setup(args)
    sampling = sampling_config(args)
    group = max(1, min(args.group, args.batch))
    gen = torch.Generator().manual_seed(args.seed)
    batch = rollout_groups(policy, PromptStream(args.seed).take(-(-args.batch // group)), group, sampling, gen, 0)
    batch = batch.select(torch.arange(args.batch))
    batch = replace(batch, advantage=torch.randn(len(batch), generator=gen))
    traj, step = sample_steps(len(batch), batch.steps, args.pairs_per_traj, gen)
    n_pairs = len(traj)
    print(f"sampling: steps {sampling.steps}, cfg {sampling.cfg_scale}, variant {sampling.variant}; "
          f"{len(batch)} trajectories x {min(args.pairs_per_traj, batch.steps)} steps = {n_pairs} pairs; "
          f"{args.repeats} interleaved repeats")

    lists = reference_lists(batch)
    text_ids = batch.prompt_ids.long()
    uncond1 = policy.null_prompts(1) if sampling.cfg_scale else None
    attn1 = policy.attention_mask(torch.cat([text_ids[:1], uncond1]) if uncond1 is not None else text_ids[:1])
    members = list(range(min(group, len(batch))))
    uncond_g = policy.null_prompts(len(members)) if sampling.cfg_scale else None
    attn_g = policy.attention_mask(torch.cat([text_ids[members], uncond_g]) if uncond_g is not None else text_ids[members])

    # sanity: at unchanged weights the per-pair reference path and the batched path agree for candidate 2
    with torch.no_grad():
        from maskrl.grpo import score_pairs

        c2 = SamplingConfig(**{**sampling.__dict__, "variant": "candidate2"})
        lp = score_pairs(policy, batch, traj[:2], step[:2], c2)[0].sum(1)
        for j in range(2):
            i, t = int(traj[j]), int(step[j])
            img = torch.full((1, policy.num_image_tokens), policy.mask_code, dtype=torch.long)
            for s in range(t):
                img[0, lists[i]["selected_indices"][s]] = lists[i]["selected_ids"][s]
            pr = (guided_logits(policy, text_ids[i : i + 1], img, attn1, uncond1, sampling.cfg_scale) / sampling.temperature).softmax(-1)
            ref = reference_logprob(pr, lists[i]["selected_indices"][t][None], lists[i]["selected_ids"][t][None], None, None, "candidate2")
            assert torch.allclose(ref, lp[j : j + 1], atol=1e-3, rtol=1e-4), (ref, lp[j])

    policy.train()

    def batched():
        learner_minibatch(policy, batch, traj, step, grpo, sampling)

    def per_pair():
        policy.zero_grad(set_to_none=True)
        reference_per_pair(policy, batch, lists, text_ids, uncond1, attn1, traj, step, sampling)

    def per_group():
        policy.zero_grad(set_to_none=True)
        reference_group(policy, batch, lists, text_ids, uncond_g, attn_g, members, sampling)

    contestants = {f"batched@{n_pairs}": batched, "reference@1": per_pair}
    pairs = {f"batched@{n_pairs}": n_pairs, "reference@1": n_pairs}
    if not args.no_group_reference:
        contestants[f"reference@group{len(members)}"] = per_group
        pairs[f"reference@group{len(members)}"] = len(members) * batch.steps
    times = interleave(contestants, args.repeats)
    rate = rate_table(times, pairs, "pairs", "reference@1",
                      "learner throughput, forward + backward (median of interleaved repeats)")
    ref = rate["reference@1"]
    print(f"\nspeedup (batched@{n_pairs} / reference@1): {rate[f'batched@{n_pairs}'] / ref:.2f}x  (target >= 4x)")


if __name__ == "__main__":
    main()
