"""Rollout throughput (images/s): the batched recording sampler vs a reference-style batch-1 loop.

Contestants, same policy, same prompts, same number of steps, same CFG:

- ``sampler@B``: ``maskrl.sampling.sample`` on B prompts at once (records tokens, reveal
  steps, cutoffs and the behaviour log-prob of every step for ``--variant``);
- ``sampler@1``: the same function called one image at a time;
- ``reference``: a loop written in the style of the public Mask-GRPO / Show-o code
  (``t2i_generate_grpo``): one image at a time, the prompt re-tokenised per image, the
  confidences argsorted and the re-mask set built in a Python loop with ``.item()``,
  and per step Python lists of the index tensors of newly revealed positions, their
  sampled tokens, the re-masked positions, the minimum confidence, and a per-step
  log-prob computed with its own gather. It is the baseline, not product code.

Ratios are of medians over interleaved repeats, measured in this process.

    python bench/bench_core_rollout.py                # defaults: B=64, the trainer's rollout steps/CFG
    python bench/bench_core_rollout.py --cfg 2 --steps 16
"""
from __future__ import annotations

import math

import torch

from bench_core_common import base_parser, interleave, prompts, rate_table, sampling_config, setup
from maskrl.sampling import sample


def _cosine(t: torch.Tensor) -> torch.Tensor:
    return torch.cos(t * math.pi * 0.5)


def _gumbel_like(t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    u = torch.zeros_like(t).uniform_(0, 1, generator=generator)
    return -torch.log(-torch.log(u.clamp(min=1e-20)).clamp(min=1e-20))


@torch.no_grad()
def reference_generate(policy, prompt: str, steps: int, cfg_scale: float, noise_scale: float, generator: torch.Generator):
    """One image, reference style. Returns the final tokens and the per-step Python lists."""
    n, mask_id = policy.num_image_tokens, policy.mask_code
    # per image: tokenise the prompt (and the empty prompt for CFG), build the attention mask
    text_ids = policy.encode_prompts([prompt])
    if cfg_scale > 0:
        uncond_ids = policy.null_prompts(1)
        attention_mask = policy.attention_mask(torch.cat([text_ids, uncond_ids]))
    else:
        uncond_ids, attention_mask = None, policy.attention_mask(text_ids)
    image_ids = torch.full((1, n), mask_id, dtype=torch.long)

    selected_indices_list, selected_ids_list, min_probs_list, masking_list, logprob_list = [], [], [], [], []
    sampled_ids = image_ids
    for step in range(steps):
        if uncond_ids is not None:
            cond_logits, uncond_logits = policy(
                torch.cat([text_ids, uncond_ids]), torch.cat([image_ids, image_ids]), attention_mask
            ).chunk(2)
            logits = (1 + cfg_scale) * cond_logits - cfg_scale * uncond_logits
        else:
            logits = policy(text_ids, image_ids, attention_mask)
        probs = logits.softmax(dim=-1)
        sampled_ids = torch.multinomial(probs.reshape(-1, logits.size(-1)), 1, generator=generator)[:, 0].view(*logits.shape[:-1])
        unknown_map = image_ids == mask_id
        sampled_ids = torch.where(unknown_map, sampled_ids, image_ids)

        ratio = 1.0 * (step + 1) / steps
        mask_ratio = _cosine(torch.tensor(ratio))
        selected_probs = torch.gather(probs, -1, sampled_ids.long()[..., None]).squeeze(-1)
        selected_probs = torch.where(unknown_map, selected_probs, torch.finfo(selected_probs.dtype).max)
        mask_len = (n * mask_ratio).floor().unsqueeze(0)
        mask_len = torch.max(torch.tensor([1]), torch.min(unknown_map.sum(dim=-1, keepdim=True) - 1, mask_len))

        # mask_by_random_topk: Gumbel noise on log-confidence, annealed linearly to 0
        temperature = noise_scale * (1.0 - ratio)
        confidence = torch.log(selected_probs.clamp(min=1e-20)) + temperature * _gumbel_like(selected_probs, generator)
        sorted_indices = torch.argsort(confidence, dim=-1)
        masking = torch.zeros((1, n), dtype=torch.bool)
        min_probs = torch.zeros(1)
        for i in range(1):
            k = int(mask_len[i].item())
            masking[i, sorted_indices[i, :k]] = True
            min_probs[i] = selected_probs[i, sorted_indices[i, k]]

        select_position = (unknown_map & ~masking).squeeze(0)
        selected_indices = torch.nonzero(select_position, as_tuple=False).squeeze(1)
        selected_ids = sampled_ids.squeeze(0)[select_position]
        # per-step behaviour log-prob of the newly revealed tokens, its own gather
        step_logprob = torch.log(probs[0, selected_indices, selected_ids]).sum()
        selected_indices_list.append(selected_indices.detach())
        selected_ids_list.append(selected_ids.detach())
        min_probs_list.append(min_probs.item())
        logprob_list.append(step_logprob.detach())

        image_ids = torch.where(masking, mask_id, sampled_ids)
        masking_list.append(torch.nonzero(masking.squeeze(0), as_tuple=False).squeeze(1).detach())
    return sampled_ids, selected_indices_list, selected_ids_list, min_probs_list, masking_list, logprob_list


def main(argv=None) -> None:
    p = base_parser(__doc__.splitlines()[0], batch=64, repeats=3)
    p.add_argument("--ref-images", type=int, default=16, help="images per measurement of the batch-1 contestants")
    args = p.parse_args(argv)
    policy = setup(args)
    sampling = sampling_config(args)
    texts = prompts(max(args.batch, args.ref_images), args.seed)
    ref_texts = texts[: args.ref_images]
    gen = torch.Generator().manual_seed(args.seed)
    print(f"sampling: steps {sampling.steps}, cfg {sampling.cfg_scale}, noise {sampling.noise_scale}, "
          f"variant {sampling.variant}; batch {args.batch}; batch-1 contestants {args.ref_images} images; "
          f"{args.repeats} interleaved repeats")

    # sanity: the reference loop produces complete images
    final = reference_generate(policy, ref_texts[0], sampling.steps, sampling.cfg_scale, sampling.noise_scale, gen)[0]
    assert final.shape == (1, policy.num_image_tokens) and (final < policy.mask_code).all()

    contestants = {
        f"sampler@{args.batch}": lambda: sample(policy, texts[: args.batch], sampling, gen),
        "sampler@1": lambda: [sample(policy, [t], sampling, gen) for t in ref_texts],
        "reference@1": lambda: [
            reference_generate(policy, t, sampling.steps, sampling.cfg_scale, sampling.noise_scale, gen) for t in ref_texts
        ],
    }
    images = {f"sampler@{args.batch}": args.batch, "sampler@1": len(ref_texts), "reference@1": len(ref_texts)}
    times = interleave(contestants, args.repeats)
    rate = rate_table(times, images, "images", "reference@1", "rollout throughput (median of interleaved repeats)")
    ref = rate["reference@1"]
    batched = rate[f"sampler@{args.batch}"]
    print(f"\nsampler images/s: batch 1 {rate['sampler@1']:.2f}, batch {args.batch} {batched:.2f} "
          f"(batching gain {batched / rate['sampler@1']:.2f}x)")
    print(f"speedup (sampler@{args.batch} / reference@1): {batched / ref:.2f}x  (target >= 8x)")


if __name__ == "__main__":
    main()
