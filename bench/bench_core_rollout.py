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

import torch

from common import base_parser, interleave, prompts, rate_table, sampling_config, setup
from reference import reference_generate
from maskrl.sampling import sample


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
