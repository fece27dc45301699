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

from bench_core_common import base_parser, interleave, prompts, rate_table, sampling_config, setup
from maskrl.grpo import GRPOConfig, grpo_loss, minibatch_size, sample_steps
from maskrl.iteration import PromptStream, rollout_groups
from maskrl.sampling import SamplingConfig


def reference_lists(batch, t_steps: int):
    """Per trajectory, per step: revealed indices, their tokens, re-masked indices, min confidence."""
    out = []
    for i in range(len(batch)):
        reveal, tokens = batch.reveal_step[i].long(), batch.tokens[i].long()
        sel_idx = [torch.nonzero(reveal == t, as_tuple=False).squeeze(1) for t in range(t_steps)]
        out.append({
            "selected_indices": sel_idx,
            "selected_ids": [tokens[idx] for idx in sel_idx],
            "masking": [torch.nonzero(reveal > t, as_tuple=False).squeeze(1) for t in range(t_steps)],
            "min_probs": batch.cutoff[i].exp().tolist(),
        })
    return out


def _logits(policy, text_ids, image_ids, attn, uncond_ids, cfg_scale):
    if uncond_ids is not None:
        cond, uncond = policy(torch.cat([text_ids, uncond_ids]), torch.cat([image_ids, image_ids]), attn).chunk(2)
        return (1 + cfg_scale) * cond - cfg_scale * uncond
    return policy(text_ids, image_ids, attn)


def _reference_logprob(probs, used_idx, used_ids, masking_idx, min_probs, variant):
    """(B,) transition log-probs from (B, N, K) probs and (B, n) index tensors, reference style."""
    b = torch.arange(probs.shape[0])[:, None]
    out = torch.log(probs[b, used_idx, used_ids]).sum(dim=1)
    if variant == "candidate1":
        masked_probs = probs[b, masking_idx, :]
        low = masked_probs < min_probs
        out = out + torch.log((masked_probs * low).sum(dim=-1).clamp_min(1e-30)).sum(dim=1)
    return out


def reference_per_pair(policy, batch, lists, text_ids, uncond_ids, attn1, traj, step, sampling: SamplingConfig):
    """One forward + backward per (trajectory, step) pair at batch 1."""
    n, mask_id = policy.num_image_tokens, policy.mask_code
    variant = "candidate2" if sampling.variant == "ar" else sampling.variant  # AR: all masked -> same cost
    old = batch.behaviour_logprob()
    for i, t in zip(traj.tolist(), step.tolist()):
        rec = lists[i]
        image_ids = torch.full((1, n), mask_id, dtype=torch.long)
        for s in range(t):  # replay the trajectory up to step t
            image_ids[0, rec["selected_indices"][s]] = rec["selected_ids"][s]
        logits = _logits(policy, text_ids[i : i + 1], image_ids, attn1, uncond_ids, sampling.cfg_scale)
        probs = (logits / sampling.temperature).softmax(dim=-1)
        new_lp = _reference_logprob(probs, rec["selected_indices"][t][None], rec["selected_ids"][t][None],
                                    rec["masking"][t][None], rec["min_probs"][t], variant)
        ratio = torch.exp(new_lp - old[i, t])
        adv = batch.advantage[i]
        loss = -torch.min(adv * ratio, adv * ratio.clamp(0.8, 1.28)).mean() / len(traj)
        loss.backward()


def reference_group(policy, batch, lists, text_ids, uncond_ids, attn_g, group: list[int], sampling: SamplingConfig):
    """The public code's loop: every step of one group in order, forward + backward at batch G."""
    n, mask_id, g = policy.num_image_tokens, policy.mask_code, len(group)
    variant = "candidate2" if sampling.variant == "ar" else sampling.variant
    image_ids = torch.full((g, n), mask_id, dtype=torch.long)
    for t in range(batch.steps):
        logits = _logits(policy, text_ids[group], image_ids, attn_g, uncond_ids, sampling.cfg_scale)
        probs = (logits / sampling.temperature).softmax(dim=-1)
        # the reference stacks per-sample index tensors (equal lengths: every image reveals the same count)
        used_idx = torch.stack([lists[i]["selected_indices"][t] for i in group])
        used_ids = torch.stack([lists[i]["selected_ids"][t] for i in group])
        masking = torch.stack([lists[i]["masking"][t] for i in group])
        min_probs = torch.tensor([lists[i]["min_probs"][t] for i in group]).view(g, 1, 1)
        new_lp = _reference_logprob(probs, used_idx, used_ids, masking, min_probs, variant)
        ratio = torch.exp(new_lp - new_lp.detach())
        adv = batch.advantage[group]
        loss = -torch.min(adv * ratio, adv * ratio.clamp(0.8, 1.28)).mean() / batch.steps
        loss.backward()
        image_ids = image_ids.clone()
        image_ids[torch.arange(g)[:, None], used_idx] = used_ids  # state for the next step


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

    lists = reference_lists(batch, batch.steps)
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
            pr = (_logits(policy, text_ids[i : i + 1], img, attn1, uncond1, sampling.cfg_scale) / sampling.temperature).softmax(-1)
            ref = _reference_logprob(pr, lists[i]["selected_indices"][t][None], lists[i]["selected_ids"][t][None], None, None, "candidate2")
            assert torch.allclose(ref, lp[j : j + 1], atol=1e-3, rtol=1e-4), (ref, lp[j])

    policy.train()

    def batched():
        policy.zero_grad(set_to_none=True)
        loss, _ = grpo_loss(policy, None, batch, traj, step, grpo, sampling, minibatch_size(batch, traj, step, sampling))
        loss.backward()

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
