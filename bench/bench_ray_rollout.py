"""Rollout images/s with 1 and 2 rollout workers (the `actors.rollout.RolloutWorker` actor).

One iteration's prompt groups (the trainer's defaults: 16 prompts x 8 rollouts, 12 steps) are
split evenly over the workers, each worker running `generate` (the recording sampler, one torch
thread) and returning an Arrow record batch to the object store; timed from dispatch until every
record batch is stored. The two pool sizes are measured interleaved; the figure is the median.
On a 2-core machine shared with other jobs, 2 workers can at most double 1 worker's rate.

    python bench/bench_ray_rollout.py
"""
from __future__ import annotations

import numpy as np

from common import base_parser, interleave, median, sampling_config, saved, setup, start_ray, table
from maskrl.iteration import PromptStream
from maskrl.train_config import TrainConfig


def main(argv=None) -> None:
    defaults = TrainConfig().grpo
    p = base_parser(__doc__.splitlines()[0], batch=defaults.prompts_per_iter * defaults.group_size, repeats=3)
    p.add_argument("--group", type=int, default=defaults.group_size, help="rollouts per prompt (batch = prompts x group)")
    args = p.parse_args(argv)
    policy = setup(args)
    sampling = sampling_config(args)
    checkpoint = saved(policy)
    ray = start_ray()
    from actors.rollout import RolloutActor
    from maskrl.models.lora import LoraConfig

    prompts = PromptStream(args.seed).take(max(1, args.batch // args.group))
    images = len(prompts) * args.group
    pools = {n: [RolloutActor.options(num_cpus=0.5).remote(checkpoint, 0, sampling, LoraConfig(), args.threads) for _ in range(n)] for n in (1, 2)}
    ray.get([w.ready.remote() for ws in pools.values() for w in ws])

    def rollout(workers):
        def run():
            chunks = [c for c in np.array_split(np.arange(len(prompts)), len(workers)) if len(c)]
            refs = [w.generate.remote([prompts[i] for i in c], args.group, args.seed, 0)[0] for w, c in zip(workers, chunks)]
            ray.wait(refs, num_returns=len(refs), fetch_local=False)
        return run

    times = interleave({f"{n} worker{'s' * (n > 1)}": rollout(ws) for n, ws in pools.items()}, args.repeats)
    rows = [[name, median(t), images / median(t)] for name, t in times.items()]
    table(["rollout pool", "seconds / iteration batch", "images/s"], rows,
          title=f"{images} images ({len(prompts)} prompts x {args.group}), {sampling.steps} steps, {args.threads} torch thread per worker")
    print(f"\nscaling (2 workers / 1 worker, images/s): {rows[1][2] / rows[0][2]:.2f}x")
    ray.shutdown()


if __name__ == "__main__":
    main()
