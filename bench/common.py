"""What every benchmark shares (not a benchmark itself): the parser, the measured policy,
same-process interleaved timing, tables, and for the Ray benches a local Ray instance.

Every core bench measures a ratio against a baseline run in the same process, with the
measurements interleaved and summarised by their median: this machine's cores are shared
with other jobs (a pre-training run, Ray actors), so absolute figures drift from minute
to minute while same-process, interleaved ratios stay meaningful.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch

from maskrl.grpo import grpo_loss, minibatch_size
from maskrl.models import ShowoConfig, ShowoPolicy, save_policy
from maskrl.train_config import TrainConfig

# The model of tests/conftest.py: for smoke tests of the benches themselves.
TINY = ShowoConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


def base_parser(description: str, batch: int, repeats: int) -> argparse.ArgumentParser:
    """Arguments every core bench takes; defaults of the sampler are the trainer's rollout defaults."""
    rollout = TrainConfig().sampling
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--batch", type=int, default=batch, help="images / trajectories per batched call")
    p.add_argument("--steps", type=int, default=rollout.steps, help="unmasking steps (the trainer's rollout default)")
    p.add_argument("--cfg", type=float, default=rollout.cfg_scale, help="classifier-free guidance scale (0: off)")
    p.add_argument("--variant", default=rollout.variant, help="transition log-prob variant the sampler records")
    p.add_argument("--repeats", type=int, default=repeats, help="interleaved measurements per contestant (median)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads; 1 by default because the cores are shared (2 contended OpenMP threads "
                        "measured ~60x slower at batch 1 here)")
    p.add_argument("--checkpoint", default="base", help="policy checkpoint; falls back to a random default-size model")
    p.add_argument("--tiny", action="store_true", help="tiny random model (smoke tests)")
    p.add_argument("--seed", type=int, default=0)
    return p


def sampling_config(args):
    from maskrl.sampling import SamplingConfig

    rollout = TrainConfig().sampling
    return SamplingConfig(steps=args.steps, cfg_scale=args.cfg, temperature=rollout.temperature,
                          noise_scale=rollout.noise_scale, variant=args.variant)


def setup(args) -> ShowoPolicy:
    """Threads, seed, and the policy (printing which one is measured)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.tiny:
        policy, source = ShowoPolicy(TINY), "tiny random-init ShowoPolicy (--tiny)"
    else:
        from maskrl.checkpoints import resolve_checkpoint
        from maskrl.evaluation import load_checkpoint

        try:
            path = resolve_checkpoint(args.checkpoint)
            policy, source = load_checkpoint(args.checkpoint), f"checkpoint {path}"
        except FileNotFoundError as err:
            policy = ShowoPolicy(ShowoConfig())
            source = f"random-init ShowoPolicy(ShowoConfig()) of the default size ({err.__class__.__name__}: {err})"
    policy.eval()
    c = policy.config
    print(f"model: {source}")
    print(f"       {policy.num_parameters / 1e6:.2f} M params, hidden {c.hidden_size}, {c.num_layers} layers, "
          f"{policy.num_image_tokens} image tokens, sequence {policy.seq_len}, codebook {c.codebook_size}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), os.cpu_count() = {os.cpu_count()}")
    return policy


def prompts(n: int, seed: int = 0) -> list[str]:
    """n realistic ShapesWorld prompts (the trainer's prompt stream)."""
    from maskrl.iteration import PromptStream

    return [p for _, p in PromptStream(seed).take(n)]


def learner_minibatch(policy, batch, traj, step, grpo, sampling) -> None:
    """What the learner does for one minibatch of (trajectory, step) pairs: the GRPO loss, backward."""
    policy.zero_grad(set_to_none=True)
    loss, _ = grpo_loss(policy, None, batch, traj, step, grpo, sampling, minibatch_size(batch, traj, step, sampling))
    loss.backward()


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleave(contestants: dict[str, Callable[[], object]], repeats: int, warmup: bool = True) -> dict[str, list[float]]:
    """Seconds of each contestant per repeat, run round-robin (order reversed every other round)."""
    names = list(contestants)
    if warmup:
        for name in names:
            contestants[name]()
    times = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            times[name].append(timed(contestants[name]))
    return times


def median(xs) -> float:
    return statistics.median(xs)


def table(header: list[str], rows: list[list], title: str | None = None) -> None:
    """Print a small aligned table."""
    cells = [[str(h) for h in header]] + [[c if isinstance(c, str) else f"{c:,.3f}" if isinstance(c, float) else f"{c:,}" for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    if title:
        print(f"\n{title}")
    for i, row in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))


def rate_table(times: dict[str, list[float]], work: dict[str, int], unit: str, baseline: str, title: str) -> dict[str, float]:
    """Print each contestant's median throughput and its ratio to `baseline`; return the rates."""
    rate = {k: work[k] / median(v) for k, v in times.items()}
    table(
        ["contestant", unit, "median s", "min s", "max s", f"{unit}/s", f"vs {baseline}"],
        [[k, work[k], median(v), min(v), max(v), rate[k], f"{rate[k] / rate[baseline]:.2f}x"] for k, v in times.items()],
        title=title,
    )
    return rate


def rollout_learner_ratio(label: str, rollouts: dict[str, float], pairs: dict[str, float], new: str, old: str) -> None:
    """The ratio line of a bench that measures the sampler and the learner: new / old rates."""
    print(f"\n{label}: rollouts/s {rollouts[new] / rollouts[old]:.2f}x, learner pairs/s {pairs[new] / pairs[old]:.2f}x")


# -- the Ray benches ------------------------------------------------------------------------------
def start_ray(num_cpus: int | None = None):
    import ray

    from actors.runtime import init_ray  # a slow raylet is waited for, a failed start retried once

    init_ray(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level="warning", log_to_driver=False)
    print(f"ray {ray.__version__}: local instance, {ray.cluster_resources().get('CPU', 0):g} logical CPUs")
    return ray


def saved(policy) -> str:
    """The measured policy as a checkpoint directory the actors can load."""
    directory = Path(tempfile.mkdtemp(prefix="maskrl-bench-")) / "policy"
    save_policy(policy, directory)
    return str(directory)


def mb(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.2f} MB"
