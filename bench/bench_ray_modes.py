"""Synchronous vs one-step-asynchronous iteration time, at equal settings, with the real driver.

Two short `actors.driver.train` runs on one local Ray instance with `make run`'s pools (2 rollout
workers, 1 reward worker, 2 learner ranks, ZeRO-2, CPU): `cluster.mode=sync` then `async`.
Reported: the mean `time/iteration` over all but the first iteration, rollout images/s, the
learner's update time and the version lag. `grpo.min_group_std=-1` keeps every group (a random
policy scores 0 everywhere, and flat groups would otherwise be filtered and leave the learner
idle), so the learner does its full work in both modes.

    python bench/bench_ray_modes.py [--prompts 8 --iterations 4]
"""
from __future__ import annotations

import statistics
import tempfile

from common import base_parser, saved, setup, start_ray, table
from maskrl.config import load_config
from maskrl.train_config import TrainConfig


def run(checkpoint: str, mode: str, args) -> list[dict]:
    from actors.driver import train
    from maskrl.metrics import read_metrics

    out = tempfile.mkdtemp(prefix=f"maskrl-bench-{mode}-")
    cfg = load_config(TrainConfig, "configs/shapes_cpu.yaml", [
        f"checkpoint={checkpoint}", f"out={out}", f"iterations={args.iterations}", f"cluster.mode={mode}",
        f"grpo.prompts_per_iter={args.prompts}", f"grpo.group_size={args.group}", f"sampling.steps={args.steps}",
        f"grpo.branch.steps={list(range(min(4, args.steps)))}",  # make run's early branch steps, within --steps
        "grpo.min_group_std=-1", "grid_every=0", f"checkpoint_every={args.iterations}",
        "eval.prompts=6", "eval.samples=1", "eval.sampling.steps=2",
    ])
    train(cfg)
    return [m for m in read_metrics(out) if m["iteration"] > 0]


def main(argv=None) -> None:
    p = base_parser(__doc__.splitlines()[0], batch=0, repeats=1)
    p.add_argument("--prompts", type=int, default=8, help="prompt groups per iteration")
    p.add_argument("--group", type=int, default=8, help="rollouts per prompt")
    p.add_argument("--iterations", type=int, default=4)
    args = p.parse_args(argv)
    policy = setup(args)
    if args.tiny:
        args.prompts, args.group, args.iterations = 2, 2, 2
    checkpoint = saved(policy)
    ray = start_ray()
    results = {mode: run(checkpoint, mode, args) for mode in ("sync", "async")}
    ray.shutdown()
    rows = []
    for mode, ms in results.items():
        steady = ms[1:] or ms
        mean = lambda key: statistics.mean(m[key] for m in steady)  # noqa: E731
        rows.append([mode, mean("time/iteration"), mean("rollout/images_per_s"), mean("time/learner_update"),
                     mean("time/weight_sync"), f"{max(m['version/lag_max'] for m in ms):.0f}"])
    table(["mode", "s / iteration", "rollout images/s", "learner update s", "weight sync s", "max lag"], rows,
          title=f"{args.prompts} prompts x {args.group} rollouts, {args.steps} steps; mean over iterations 2..{args.iterations}")
    print(f"\nspeedup (sync / async, time per iteration): {rows[0][1] / rows[1][1]:.2f}x")


if __name__ == "__main__":
    main()
