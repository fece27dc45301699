"""Trajectory exchange through the Ray object store: one iteration's batch, rollout worker ->
reward worker -> learner, as Arrow record batches vs the reference's per-step Python lists.

- maskrl: the rollout actor returns `TrajectoryBatch.to_arrow()` (stored once in the object
  store), the reward actor reads it zero-copy (`from_arrow`), attaches rewards and returns a new
  record batch, the learner actor `ray.get`s it and rebuilds the batch (`from_arrow`, `concat`):
  exactly the path of `actors/`.
- reference: the same trajectories in the public code's layout (per trajectory, per step: revealed
  indices, their tokens, re-masked indices, min confidence, log-prob; see reference.reference_lists), passed
  along the same three actors as Python objects (pickled by Ray), rewards attached per record.

Timed from the driver: submit the three calls, wait for the learner's answer; interleaved, median.
The share of iteration time uses `--iteration-seconds`, or the mean `time/iteration` of a run
(`--run RUN_DIR`), or else a lower bound measured here: this batch's rollout time in this process
divided by the number of rollout workers (2) - so the printed share is an upper bound.

    python bench/bench_ray_exchange.py [--run runs/shapes_cpu]
"""
from __future__ import annotations

import pickle
import statistics
import time
from dataclasses import replace

import torch

from common import base_parser, interleave, mb, median, sampling_config, setup, start_ray, table
from reference import reference_lists
from maskrl.iteration import PromptStream, rollout_groups
from maskrl.train_config import TrainConfig
from maskrl.trajectory import TrajectoryBatch


class Hop:
    """Rollout, reward or learner stand-in: each does what the real actor does with the data."""

    def hold(self, batch: TrajectoryBatch) -> None:
        self.batch, self.lists = batch, reference_lists(batch)

    def emit_arrow(self):
        return self.batch.to_arrow()

    def rescore_arrow(self, record):
        batch = TrajectoryBatch.from_arrow(record)
        return replace(batch, reward=torch.rand(len(batch))).to_arrow()

    def learn_arrow(self, refs) -> int:
        import ray

        return len(TrajectoryBatch.concat([TrajectoryBatch.from_arrow(r) for r in ray.get(refs)]))

    def emit_lists(self):
        return self.lists

    def rescore_lists(self, records):
        return [{**r, "reward": float(torch.rand(()))} for r in records]

    def learn_lists(self, refs) -> int:
        import ray

        return sum(len(records) for records in ray.get(refs))

    def noop(self, x=None):
        return 0


def main(argv=None) -> None:
    defaults = TrainConfig().grpo
    p = base_parser(__doc__.splitlines()[0], batch=defaults.prompts_per_iter * defaults.group_size, repeats=5)
    p.add_argument("--group", type=int, default=defaults.group_size, help="rollouts per prompt (batch = prompts x group)")
    p.add_argument("--run", help="a `maskrl train` run directory: its mean time/iteration is the reference")
    p.add_argument("--iteration-seconds", type=float, help="iteration time to compare against")
    p.add_argument("--rollout-workers", type=int, default=2)
    args = p.parse_args(argv)
    policy = setup(args)
    sampling = sampling_config(args)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    batch = rollout_groups(policy, PromptStream(args.seed).take(max(1, args.batch // args.group)), args.group, sampling, gen, 0)
    rollout_s = time.perf_counter() - start
    print(f"batch: {len(batch)} trajectories ({len(batch) // args.group} prompts x {args.group}), {sampling.steps} steps; "
          f"generated in {rollout_s:.1f} s here")

    ray = start_ray(num_cpus=3)
    Actor = ray.remote(num_cpus=1)(Hop)
    rollout, reward, learner = Actor.remote(), Actor.remote(), Actor.remote()
    ray.get(rollout.hold.remote(batch))

    def arrow():
        assert ray.get(learner.learn_arrow.remote([reward.rescore_arrow.remote(rollout.emit_arrow.remote())])) == len(batch)

    def lists():
        assert ray.get(learner.learn_lists.remote([reward.rescore_lists.remote(rollout.emit_lists.remote())])) == len(batch)

    def empty():
        ray.get(learner.noop.remote(reward.noop.remote(rollout.noop.remote())))

    times = interleave({"arrow": arrow, "lists": lists, "empty": empty}, args.repeats)
    record, records = batch.to_arrow(), reference_lists(batch)
    arrow_bytes = len(pickle.dumps(record, protocol=5))
    list_bytes = len(pickle.dumps(records, protocol=5))
    t_arrow, t_lists, t_empty = (median(times[k]) for k in ("arrow", "lists", "empty"))
    table(
        ["encoding", "bytes / iteration", "bytes / trajectory", "seconds (3 actors, 2 hops)", "MB/s"],
        [
            ["maskrl arrow record batch", mb(arrow_bytes), f"{arrow_bytes / len(batch):,.0f}", t_arrow, f"{2 * arrow_bytes / t_arrow / 2**20:,.1f}"],
            ["reference per-step lists", mb(list_bytes), f"{list_bytes / len(batch):,.0f}", t_lists, f"{2 * list_bytes / t_lists / 2**20:,.1f}"],
            ["(empty calls, same 3 actors)", "-", "-", t_empty, "-"],
        ],
        title="one iteration's trajectories, rollout -> reward -> learner through the object store",
    )
    print(f"\nspeedup (reference lists / arrow, exchange time): {t_lists / t_arrow:.1f}x; bytes {list_bytes / arrow_bytes:.1f}x smaller")
    if args.iteration_seconds:
        it_s, source = args.iteration_seconds, "--iteration-seconds"
    elif args.run:
        from maskrl.metrics import read_metrics

        its = [m["time/iteration"] for m in read_metrics(args.run) if "time/iteration" in m]
        it_s, source = statistics.mean(its), f"mean time/iteration of {args.run} ({len(its)} iterations)"
    else:
        it_s, source = rollout_s / args.rollout_workers, f"lower bound: this batch's rollout time / {args.rollout_workers} workers"
    print(f"iteration time: {it_s:.2f} s ({source})")
    print(f"exchange share of iteration time (arrow): {100 * t_arrow / it_s:.2f}% (target < 2%); "
          f"reference lists: {100 * t_lists / it_s:.2f}%")
    ray.shutdown()


if __name__ == "__main__":
    main()
