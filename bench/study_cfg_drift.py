"""How far a trained checkpoint moved from the base: the conditional, the unconditional and the
classifier-free-guided token distributions, as the mean KL(trained || base) per masked position.

States are the base's own (16 steps, CFG 3) final images of held-out prompts, each re-masked at a
random fraction, so every unmasking stage is represented. Guidance `(1 + s) c - s u` amplifies a
change of c - u by up to 1 + 2s; this shows by how much it did for a run.

    python bench/study_cfg_drift.py --checkpoint runs/shapes_cpu/checkpoints/iter_00010
"""
from __future__ import annotations

import argparse

import torch

from maskrl.evaluation import held_out_prompts, load_checkpoint
from maskrl.sampling import SamplingConfig, evaluation_sampling, sample, step_logprobs, text_inputs


def mean_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, where: torch.Tensor) -> float:
    p, q = torch.log_softmax(p_logits, -1), torch.log_softmax(q_logits, -1)
    return float((p.exp() * (p - q)).sum(-1)[where].mean())


def guided(policy, text, state, s: float) -> torch.Tensor:
    """The log-probs the sampler draws from at guidance scale s (LoRA's base_unconditional included)."""
    sampling = SamplingConfig(cfg_scale=s)
    null, mask = text_inputs(policy, text, sampling)
    return step_logprobs(policy, text, null, state, mask, sampling)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="the trained checkpoint")
    p.add_argument("--base", default="base")
    p.add_argument("--prompts", type=int, default=24, help="held-out prompts (seed 1234)")
    p.add_argument("--scales", type=float, nargs="+", default=[0.0, 3.0], help="guidance scales s to compare")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    base, trained = load_checkpoint(args.base), load_checkpoint(args.checkpoint)
    prompts = [q.text for q in held_out_prompts(args.prompts, 1234)]
    tokens = sample(base, prompts, evaluation_sampling(), torch.Generator().manual_seed(0)).tokens
    gen = torch.Generator().manual_seed(1)
    share = torch.rand(len(prompts), 1, generator=gen)
    state = torch.where(torch.rand(tokens.shape, generator=gen) < share, base.mask_code, tokens)
    masked = state == base.mask_code
    text, null = base.encode_prompts(prompts), base.null_prompts(len(prompts))
    with torch.no_grad():
        ub, ut = base(null, state), trained(null, state)
        print(f"{args.checkpoint} vs {args.base}: mean KL(trained || base) per masked position, {args.prompts} held-out prompts")
        print(f"  unconditional network  {mean_kl(ut, ub, masked):.4f}")
        for s in args.scales:
            print(f"  sampled, s = {s:<4g}      {mean_kl(guided(trained, text, state, s), guided(base, text, state, s), masked):.4f}"
                  + ("   (the conditional alone)" if s == 0 else ""))


if __name__ == "__main__":
    main()
