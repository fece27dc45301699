"""Weight broadcast: seconds and MB/s from the learner to all rollout workers, through the object
store (ray.put once, every worker loads) and the bucketed `ray.util.collective` broadcast (gloo),
against a local memcpy of the same bytes.

Runs the real pools of `actors/` (2 learner ranks under DeepSpeed ZeRO-2, 2 rollout workers, 1
reward worker) and times `Runtime.publish(version, wait=True)`: gathering the full state on the
learner, moving it, and every worker loading it into its policy. Models: the measured policy
(the base model or a random one of its size) and, with --hidden, a wider random one so that the
transfer is not all fixed costs.

    python bench/bench_ray_weights.py [--hidden 512 --layers 8]
"""
from __future__ import annotations

from pathlib import Path

import torch

from bench_core_common import interleave, median, table
from bench_ray_common import base_parser, saved, setup, start_ray
from maskrl.models import ShowoConfig, ShowoPolicy
from maskrl.train_config import ClusterConfig, LearnerConfig, PoolConfig, TrainConfig


def measure(ray, checkpoint: str, nbytes: int, repeats: int, bucket_mb: float) -> list:
    import tempfile

    from actors.driver import Runtime
    from actors.runstate import EventLog

    cfg = TrainConfig(checkpoint=checkpoint, track_kl=False, cluster=ClusterConfig(
        rollout=PoolConfig(workers=2, cpus_per_worker=0.5), reward=PoolConfig(workers=1, cpus_per_worker=0.25),
        learner=LearnerConfig(ranks=2, cpus_per_rank=0.25, zero_stage=2), weight_bucket_mb=bucket_mb,
    ))
    rt = Runtime(cfg, checkpoint, version=0, optimizer_dir=None, events=EventLog(Path(tempfile.mkdtemp())))
    try:
        def publish(transport: str):
            def run():
                rt.cfg.cluster.weight_transport = transport
                rt.publish(0, wait=True)
            return run

        src = torch.randn(nbytes // 4)
        dst = torch.empty_like(src)
        times = interleave({"object_store": publish("object_store"), "collective": publish("collective"),
                            "memcpy": lambda: dst.copy_(src)}, repeats)
    finally:
        rt.shutdown()
    rows = []
    for name, label in (("object_store", "object store (put once, 2 workers load)"),
                        ("collective", f"ray.util.collective gloo broadcast ({bucket_mb:g} MB buckets)"),
                        ("memcpy", "local memcpy of the same bytes")):
        t = median(times[name])
        rows.append([label, t, f"{nbytes / t / 2**20:,.1f}"])
    return rows


def main(argv=None) -> None:
    p = base_parser(__doc__.splitlines()[0], batch=0, repeats=5)
    p.add_argument("--hidden", type=int, default=512, help="hidden size of the larger random model (0: skip it)")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--bucket-mb", type=float, default=32.0)
    args = p.parse_args(argv)
    policy = setup(args)
    models = [("measured policy", policy)]
    if args.hidden and not args.tiny:
        big = ShowoPolicy(ShowoConfig(hidden_size=args.hidden, num_layers=args.layers, num_heads=8, intermediate_size=4 * args.hidden))
        models.append((f"random, hidden {args.hidden}, {args.layers} layers", big))
    ray = start_ray()
    for label, model in models:
        nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        rows = measure(ray, saved(model), nbytes, args.repeats, args.bucket_mb)
        table(["transport", "seconds", "MB/s"], rows,
              title=f"{label}: {model.num_parameters / 1e6:.1f} M params, {nbytes / 2**20:.1f} MB fp32, to 2 rollout workers")
        obj, col, cpy = (r[1] for r in rows)
        print(f"\nslowdown vs memcpy: object store {obj / cpy:,.0f}x, collective {col / cpy:,.0f}x")
    ray.shutdown()


if __name__ == "__main__":
    main()
