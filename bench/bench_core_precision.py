"""fp32 vs bf16 autocast (sampling.precision): sampler rollouts/s and learner pairs/s, one run.

On a CPU with AMX (amx_bf16) the policy's linear layers run in bf16 under
``torch.autocast("cpu", dtype=torch.bfloat16)``; log-softmax and log-probs stay fp32 in both
(maskrl.sampling.step_logprobs). Same prompts, same pairs, contestants interleaved; the printed
ratios are bf16 / fp32 in the same process.

    python bench/bench_core_precision.py             # 16 images a call, CFG 3 (make run's rollouts)
    python bench/bench_core_precision.py --cfg 0     # CFG-free training
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from common import (base_parser, interleave, learner_minibatch, prompts, rate_table, rollout_learner_ratio,
                    sampling_config, setup)
from maskrl.grpo import GRPOConfig, sample_steps
from maskrl.iteration import PromptStream, rollout_groups
from maskrl.sampling import Precision, sample

PRECISIONS = tuple(Precision)


def main(argv=None) -> None:
    p = base_parser(__doc__.splitlines()[0], batch=16, repeats=3)
    p.add_argument("--pairs", type=int, default=96, help="(trajectory, step) pairs of one learner minibatch")
    args = p.parse_args(argv)
    policy = setup(args)
    base = sampling_config(args)
    texts = prompts(args.batch, args.seed)
    configs = {str(x): replace(base, precision=x, micro_batch=args.batch) for x in PRECISIONS}
    cpuinfo = Path("/proc/cpuinfo")
    amx = "amx_bf16" in cpuinfo.read_text() if cpuinfo.exists() else "unknown"
    print(f"sampling: {base.steps} steps, cfg {base.cfg_scale}, variant {base.variant}; {args.batch} images a call; "
          f"CPU amx_bf16: {amx}")

    def sampler(cfg):
        return lambda: sample(policy, texts, cfg, torch.Generator().manual_seed(args.seed))

    times = interleave({k: sampler(c) for k, c in configs.items()}, args.repeats)
    rollout = rate_table(times, dict.fromkeys(configs, args.batch), "rollouts", "float32", "sampler (median of interleaved repeats)")

    gen = torch.Generator().manual_seed(args.seed)
    batch = rollout_groups(policy, PromptStream(args.seed).take(-(-args.pairs // 4)), 4, base, gen, 0)
    batch = replace(batch, advantage=torch.randn(len(batch), generator=gen))
    traj, step = sample_steps(len(batch), batch.steps, 1, gen)
    traj, step = traj[: args.pairs], step[: args.pairs]
    grpo = GRPOConfig()
    policy.train()

    def learner(cfg):
        return lambda: learner_minibatch(policy, batch, traj, step, grpo, cfg)

    times = interleave({k: learner(c) for k, c in configs.items()}, args.repeats)
    pairs = rate_table(times, dict.fromkeys(configs, len(traj)), "pairs", "float32",
                       "learner, forward + backward (median of interleaved repeats)")
    rollout_learner_ratio("bf16 / fp32", rollout, pairs, "bfloat16", "float32")


if __name__ == "__main__":
    main()
