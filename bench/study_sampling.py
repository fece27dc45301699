"""Held-out ShapesEval of one checkpoint under several sampling protocols (steps, CFG, temperature,
noise), with 95% intervals and seconds per image: how `maskrl generate`'s defaults were chosen.

    python bench/study_sampling.py --checkpoint base --prompts 240 --samples 2 \\
        --protocol steps=16,cfg_scale=0 --protocol steps=16,cfg_scale=3 --protocol steps=32,cfg_scale=3
"""
from __future__ import annotations

import argparse
import time

import torch

from maskrl.evaluation import evaluate, held_out_prompts, load_checkpoint
from maskrl.sampling import NoiseSchedule, Precision, SamplingConfig

FIELDS = {"steps": int, "cfg_scale": float, "temperature": float, "noise_scale": float, "noise_schedule": NoiseSchedule,
          "precision": Precision}


def parse_protocol(text: str) -> SamplingConfig:
    values = {}
    for item in text.split(","):
        key, _, value = item.partition("=")
        if key not in FIELDS:
            raise SystemExit(f"--protocol: unknown field {key!r}; expected some of {sorted(FIELDS)}")
        try:
            values[key] = FIELDS[key](value)
        except ValueError:
            raise SystemExit(f"--protocol: {key}={value!r} is not a {FIELDS[key].__name__}") from None
    return SamplingConfig(**values)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="base")
    p.add_argument("--prompts", type=int, default=240, help="category-balanced held-out prompts")
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--seed", type=int, default=1234, help="fixes the held-out sample and the draws")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--protocol", action="append", required=True, help="comma-separated SamplingConfig fields")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    policy = load_checkpoint(args.checkpoint)
    prompts = held_out_prompts(args.prompts, args.seed)
    print(f"checkpoint {args.checkpoint}; {args.prompts} prompts x {args.samples} samples; seed {args.seed}")
    print(f"{'protocol':<58} {'overall':>8} {'95% CI':>13} {'s/image':>8}  per category")
    for text in args.protocol:
        sampling = parse_protocol(text)
        start = time.perf_counter()
        r = evaluate(policy, prompts, args.samples, sampling, seed=args.seed)
        per_image = (time.perf_counter() - start) / r["images"]
        cats = " ".join(f"{c[:6]}={r[c]:.2f}" for c in r["ci95"])
        low, high = r["overall_ci95"]
        print(f"{text:<58} {r['overall']:8.3f} {low:6.3f}-{high:.3f} {per_image:8.3f}  {cats}", flush=True)


if __name__ == "__main__":
    main()
