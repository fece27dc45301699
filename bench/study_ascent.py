"""Is the Mask-GRPO gradient an ascent direction of the sampler's real reward, and how noisy is it?

Two independent GRPO gradient estimates are taken on the same prompts (rollouts of the policy,
rewards, group advantages, K random unmasking steps of every trajectory, ratio 1). Their cosine says
how much of one estimate is signal (two pure-noise estimates have cosine ~0). Then the policy is
moved a fixed L2 distance along their mean, and along a random direction for control, and the
reward of the same prompts is measured with common random numbers (the same sampler seed), so
the difference is the step's effect and not sampling noise. `--by-tensor` says where in the
network the estimates agree (each parameter tensor's cosine); `--only REGEX` restricts both the
estimates and the steps to the matching parameters (does a small subspace carry a usable direction?).
`--metric fisher` sizes every step by the KL it causes in the sampler's token distributions and adds
the natural gradient F^-1 g (maskrl.grpo.natural): does a step in the policy's own metric ascend?
`--metric adam` steps as Adam's first update would from the E estimates: every parameter moves by
`distance` (a learning rate) times mean(g_i) / rms(g_i), so a coordinate the estimates agree on
moves the full rate and a noisy one little (the raw gradient's length sits in a few tensors).
`--positive-only` zeroes the negative advantages: are pushes down on below-average samples the damage?
`--noise-scale` sets the Gumbel noise on the reveal order: is that randomness what drowns the signal?
`--reward` trains and measures another reward (ShapesEval's pass rate is printed either way): with
`shapes_foreground`, which every position's token moves, the same estimator finds an ascent.
The printed rollouts-for-SNR-1, n (1 - c) / c from the cosine c of two n-rollout estimates, is how
many rollouts one estimate needs before its signal is as long as its noise. `--estimates E` > 2 takes
E independent estimates and uses the mean of their pairwise cosines (printed with its spread).
`--branch-steps` rolls each group out branched at one of these steps with common random numbers
and trains the branch steps alone (maskrl.branching, `--window` steps a branch); `--cfg-scale 0`
is the CFG-free estimator; `--precision bfloat16` runs the policy under bf16 autocast.

    python bench/study_ascent.py --variant candidate2 --prompts 12 --group 16 --eval-samples 16 --distances 0.1 0.3 1.0
"""
from __future__ import annotations

import argparse
import copy
import re
from dataclasses import replace

import numpy as np
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from maskrl.branching import BranchConfig
from maskrl.evaluation import load_checkpoint
from maskrl.grpo import GRPOConfig, grpo_update
from maskrl.grpo.natural import FisherProduct, conjugate_gradient, kl_length
from maskrl.iteration import PromptStream, prepare, rollout_groups, score
from maskrl.rewards import build_reward
from maskrl.rewards.base import RewardConfig
from maskrl.sampling import SamplingConfig, sample
from maskrl.world import detect_batch, parse_prompt, passes


def gradient(policy, prompts, cfg: GRPOConfig, sampling: SamplingConfig, reward, seed: int, positive_only: bool = False):
    """One GRPO gradient estimate (of the loss's negative: an ascent direction) from fresh rollouts,
    and the scored batch it came from; `positive_only` zeroes the negative advantages."""
    gen = torch.Generator().manual_seed(seed)
    policy.eval()
    batch, _ = score(rollout_groups(policy, prompts, cfg.group_size, sampling, gen, 0, cfg.branch), reward, policy.decode_images)
    policy.zero_grad()

    def accumulate(loss):
        loss.backward()
        return 0.0

    prepared = prepare(batch, cfg).batch
    if positive_only:
        prepared = replace(prepared, advantage=prepared.advantage.clamp_min(0))
    if not len(prepared):  # every group flat: no signal in this estimate
        return torch.zeros_like(parameters_to_vector(policy.parameters())), batch
    grpo_update(policy, None, prepared, cfg, sampling, accumulate, gen)
    return -parameters_to_vector(p.grad for p in policy.parameters()), batch


def moved(policy, step: torch.Tensor):
    """A copy of `policy` moved by `step` (flat, over all parameters)."""
    out = copy.deepcopy(policy)
    with torch.no_grad():
        vector_to_parameters(parameters_to_vector(out.parameters()) + step, out.parameters())
    return out


def fisher_metric(policy, batch, sampling: SamplingConfig, pairs: int, keep: torch.Tensor):
    """The token distributions' Fisher product (maskrl.grpo.natural) at `pairs` random (trajectory,
    step) pairs of `batch`, restricted to the subspace `keep`."""
    gen = torch.Generator().manual_seed(3)
    traj = torch.randint(len(batch), (pairs,), generator=gen)
    step = torch.randint(batch.steps, (pairs,), generator=gen)
    fisher = FisherProduct(policy, batch, traj, step, sampling)
    return lambda v: fisher(v * keep) * keep


def natural_directions(product, g1: torch.Tensor, g2: torch.Tensor, damping: float) -> tuple[torch.Tensor, torch.Tensor]:
    """F^-1 g1 and F^-1 g2 (damped conjugate gradient); prints their cosine in the metric F."""
    g = g1 + g2
    lam = damping * float(g @ product(g)) / float(g @ g)  # relative to F's curvature along the gradient
    n1, n2 = (conjugate_gradient(product, gi, iterations=20, damping=lam) for gi in (g1, g2))
    cos = float(n1 @ product(n2)) / (float(n1 @ product(n1)) * float(n2 @ product(n2))) ** 0.5
    print(f"natural gradient (damping {damping:g} x the curvature along g): cosine_F(F^-1 g1, F^-1 g2) {cos:+.3f}")
    return n1, n2


def reward_of(policy, texts: list[str], sampling: SamplingConfig, reward, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-image (reward, ShapesEval pass) on a fixed sampler seed: common random numbers across policies."""
    policy.eval()
    grids = policy.decode_images(sample(policy, texts, sampling, torch.Generator().manual_seed(seed)).tokens)
    passed = [passes(parse_prompt(t), d) for t, d in zip(texts, detect_batch(grids))]
    return reward(grids, texts).scores, np.array(passed, dtype=float)


def adam_direction(gs: list[torch.Tensor], eps: float = 1e-12) -> torch.Tensor:
    """Adam's first step per unit learning rate, with its moments taken over the E estimates:
    mean(g) / rms(g) elementwise, in [-1, 1] (sign(g) for one estimate)."""
    g = torch.stack(gs)
    return g.mean(0) / (g.square().mean(0).sqrt() + eps)


def snr_one(cos: float, rollouts: int) -> str:
    """Rollouts one estimate needs for signal as long as noise: E[cos] = s / (s + 1) at signal-to-noise
    power s, which grows as the rollouts; only meaningful where the cosine is clearly positive."""
    return f"; rollouts for SNR 1: {rollouts * (1 - cos) / cos:.0f}" if cos > 0 else ""


def subspace(policy, pattern: str) -> torch.Tensor:
    """0/1 mask over the flat parameter vector: 1 on the parameters whose name matches `pattern`."""
    parts = [torch.full((p.numel(),), float(bool(re.search(pattern, name)))) for name, p in policy.named_parameters()]
    keep = torch.cat(parts)
    if not keep.any():
        raise SystemExit(f"--only {pattern!r} matches no parameter name")
    print(f"subspace {pattern!r}: {int(keep.sum())} of {len(keep)} parameters")
    return keep


def print_tensor_cosines(policy, g1: torch.Tensor, g2: torch.Tensor) -> None:
    """Where the shared direction lives: cosine(g1, g2) restricted to each parameter tensor."""
    sizes = [p.numel() for p in policy.parameters()]
    rows = [(float(torch.nn.functional.cosine_similarity(a, b, dim=0)), name, a.numel(), float((a + b).norm()))
            for (name, _), a, b in zip(policy.named_parameters(), g1.split(sizes), g2.split(sizes))]
    for cos, name, n, norm in sorted(rows, reverse=True):
        print(f"    {cos:+.3f}  {name} ({n} values, |g1 + g2| {norm:.3f})")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="base")
    p.add_argument("--variant", default="candidate2")
    p.add_argument("--prompts", type=int, default=12, help="training prompts (stream seed 0)")
    p.add_argument("--group", type=int, default=16, help="rollouts per prompt per gradient estimate")
    p.add_argument("--eval-samples", type=int, default=16, help="samples per prompt to measure the reward")
    p.add_argument("--distances", type=float, nargs="+", default=[0.1, 0.3],
                   help="step sizes: L2 lengths of the parameter step, or with --metric fisher the mean KL a position")
    p.add_argument("--metric", choices=["l2", "fisher", "adam"], default="l2",
                   help="fisher: size steps in the token distributions' KL and add the natural gradient F^-1 g; "
                        "adam: distances are learning rates of Adam's first step from the estimates' moments")
    p.add_argument("--fisher-pairs", type=int, default=64, help="(trajectory, step) pairs the Fisher is taken at")
    p.add_argument("--damping", type=float, default=0.1, help="conjugate gradient's damping, relative to F along g")
    p.add_argument("--steps-per-traj", type=int, default=8, help="unmasking steps of each trajectory in the gradient")
    p.add_argument("--category", help="draw the prompts from this ShapesEval category only (default: all six)")
    p.add_argument("--cfg-scale", type=float, default=3.0)
    p.add_argument("--noise-scale", type=float, default=3.0,
                   help="Gumbel noise on the reveal order (exogenous to candidate 2's log-prob: does less of it help?)")
    p.add_argument("--branch-steps", type=int, nargs="+",
                   help="branched groups with common random numbers, t_b drawn from these steps; only they train")
    p.add_argument("--window", type=int, default=1, help="branch steps per group (with --branch-steps)")
    p.add_argument("--precision", default="float32", help="float32, or bfloat16 autocast")
    p.add_argument("--estimates", type=int, default=2, help="independent gradient estimates (pairwise cosines)")
    p.add_argument("--reward", default="shapes_rule", help="the reward trained and measured (a registered name)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", help="regex of parameter names: measure and step in their subspace alone (e.g. embed_tokens)")
    p.add_argument("--positive-only", action="store_true",
                   help="zero the negative advantages (do pushes down on below-average samples cause the damage?)")
    p.add_argument("--by-tensor", action="store_true", help="also print the cosine of each parameter tensor's part")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    policy = load_checkpoint(args.checkpoint)
    reward = build_reward(RewardConfig(name=args.reward))
    sampling = SamplingConfig(steps=16, cfg_scale=args.cfg_scale, noise_scale=args.noise_scale, variant=args.variant,
                              precision=args.precision)
    branch = BranchConfig(enabled=bool(args.branch_steps), window=args.window, steps=args.branch_steps or [])
    cfg = GRPOConfig(group_size=args.group, prompts_per_iter=args.prompts, steps_per_traj=args.steps_per_traj, epochs=1,
                     minibatch_pairs=64, branch=branch)
    prompts = PromptStream(0, {args.category: 1.0} if args.category else None).take(args.prompts)
    estimates = [gradient(policy, prompts, cfg, sampling, reward, seed=s, positive_only=args.positive_only)
                 for s in range(1, max(2, args.estimates) + 1)]
    batch = estimates[0][1]
    g1, g2 = estimates[0][0], estimates[1][0]
    if args.by_tensor:
        print_tensor_cosines(policy, g1, g2)
    keep = subspace(policy, args.only) if args.only else torch.ones_like(g1)
    gs = [g * keep for g, _ in estimates]
    g1, g2 = gs[0], gs[1]
    cos = float(torch.nn.functional.cosine_similarity(g1, g2, dim=0))
    where = f"branched at {args.branch_steps} (window {args.window})" if args.branch_steps else f"{args.steps_per_traj} random steps"
    print(f"{args.variant}, {args.reward}, CFG {args.cfg_scale}, noise {args.noise_scale}, {args.precision}, {where}: "
          f"{args.prompts} {args.category or ''} prompts x {args.group} rollouts per estimate; "
          f"|g1| {g1.norm():.3f} |g2| {g2.norm():.3f} cosine(g1, g2) {cos:+.3f}{snr_one(cos, len(batch))}")
    if len(gs) > 2:
        pairs = [float(torch.nn.functional.cosine_similarity(a, b, dim=0)) for i, a in enumerate(gs) for b in gs[i + 1 :]]
        mean, sd = float(np.mean(pairs)), float(np.std(pairs, ddof=1))
        print(f"{len(gs)} estimates: mean pairwise cosine {mean:+.3f} (sd {sd:.3f} over {len(pairs)} pairs)"
              f"{snr_one(mean, len(batch))}")
    g1, g2 = sum(gs[: len(gs) // 2]), sum(gs[len(gs) // 2 :])
    texts = [t for _, t in prompts for _ in range(args.eval_samples)]
    base_r, base_p = reward_of(policy, texts, sampling, reward, seed=99)
    print(f"start: reward {base_r.mean():.3f} pass {base_p.mean():.3f} ({len(texts)} images)")
    rand = torch.randn(g1.shape, generator=torch.Generator().manual_seed(5)) * keep
    directions = {"gradient": g1 + g2, "random": rand}
    if args.metric == "fisher":
        product = fisher_metric(policy, batch, sampling, args.fisher_pairs, keep)
        directions["natural"] = sum(natural_directions(product, g1, g2, args.damping))

        def step_of(direction, distance):  # sized in the mean per-position KL it causes
            return direction * (distance / kl_length(product, direction)) ** 0.5
    elif args.metric == "adam":
        directions["gradient"] = adam_direction(gs)
        directions["random"] = rand / rand.norm() * directions["gradient"].norm()  # the same L2 as the Adam step

        def step_of(direction, distance):  # `distance` is the learning rate
            return direction * distance
    else:
        def step_of(direction, distance):  # sized in parameter L2
            return direction / direction.norm() * distance
    for distance in args.distances:
        for name, direction in directions.items():
            step = step_of(direction, distance)
            r, q = reward_of(moved(policy, step), texts, sampling, reward, seed=99)
            d = r - base_r
            se = d.std(ddof=1) / np.sqrt(len(d))
            print(f"  step {distance:<5g} along {name:8s}: reward {r.mean():.3f} ({d.mean():+.3f} +- {1.96 * se:.3f}) "
                  f"pass {q.mean():.3f} ({q.mean() - base_p.mean():+.3f})  L2 {step.norm():.3f}")

if __name__ == "__main__":
    main()
