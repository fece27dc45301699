"""Weight sync: seconds and MiB/s of one full publish from a sender to 2 receivers, through the object
store and through the bucketed `ray.util.collective` broadcast, against a local memcpy of the same bytes.

The sender and the receivers are plain Ray actors calling the functions learner rank 0 and the rollout
workers call (actors.weights, actors.collective): a publish is timed from the sender's call until both
receivers hold the weights. The state is `--tensors` float32 matrices of 1024 columns, each with a
1024-float bias, together `--sizes-mb` MiB. Receivers' weights are checked bit for bit afterwards.
All members run on this node, so the collective group (gloo) moves the data through shared memory.

A receiver that keeps its own copy makes a publish move the payload through memory 1 + receivers
times (out of the sender, into each receiver); on a 2-core machine concurrent copies add little
bandwidth (one copy ~11 GB/s, two at once ~12 GB/s together), which bounds that at roughly 40-50% of
a memcpy. A CPU rollout worker only reads its weights, so it adopts the object store's zero-copy
views instead (actors.weights.adopt_numpy): a publish is then the one copy of `ray.put`. GPU
workers copy to the device, as the "copy" row does.

    python bench/bench_ray_weights.py [--sizes-mb 3 100 1024] [--quick]
"""
from __future__ import annotations

import argparse
import hashlib
import uuid

import torch

from common import interleave, median, start_ray, table

COLS = 1024  # floats per row of every matrix
RECEIVERS = 2


def shapes(nbytes: int, tensors: int) -> list[tuple[int, ...]]:
    """`tensors` (rows, COLS) matrices and their (COLS,) biases, together about `nbytes`."""
    rows = max(1, round(nbytes / (tensors * COLS * 4)) - 1)
    return [s for _ in range(tensors) for s in ((rows, COLS), (COLS,))]


class Member:
    """A module of the given shapes, and the weight-sync calls of learner rank 0 and a rollout worker."""

    def __init__(self, shapes: list[tuple[int, ...]], random: bool):
        from torch import nn

        torch.set_num_threads(1)
        torch.manual_seed(0)
        self.module = nn.Module().requires_grad_(False)
        for i, shape in enumerate(shapes):
            self.module.register_parameter(f"p{i}", nn.Parameter(torch.rand(shape) if random else torch.zeros(shape), requires_grad=False))

    def join(self, world_size: int, rank: int, group: str) -> None:
        from actors import collective

        collective.join(world_size, rank, group, "127.0.0.1", "127.0.0.1", collective.GLOO)

    def publish(self):
        from actors import weights

        return weights.to_numpy(self.module.state_dict())

    def load(self, version: int, published, adopt: bool) -> None:
        """As a rollout worker: a CPU one adopts the object store's views, a GPU one copies."""
        from actors import weights

        (weights.adopt_numpy if adopt else weights.load_numpy)(self.module, published)

    def send(self, version: int, group: str, bucket_bytes: int) -> None:
        from actors import weights

        weights.broadcast_send(self.module.state_dict(), version, group, bucket_bytes)

    def receive(self, version: int, group: str, bucket_bytes: int) -> None:
        from actors import weights

        weights.broadcast_recv(self.module, version, group, bucket_bytes)

    def digest(self) -> str:
        h = hashlib.blake2b()
        for t in self.module.state_dict().values():
            h.update(t.numpy().data)
        return h.hexdigest()


def measure(ray, nbytes: int, args) -> tuple[int, dict[str, list[float]]]:
    """(payload bytes, seconds per repeat of each transport and of the memcpy)."""
    actor = ray.remote(num_cpus=0.25)(Member)
    layout = shapes(nbytes, args.tensors)
    sender = actor.remote(layout, random=True)
    # receivers of each kind of their own: a collective writes in place, adopted weights are read-only
    copying, adopting, broadcast = ([actor.remote(layout, random=False) for _ in range(RECEIVERS)] for _ in range(3))
    group, bucket = f"bench-weights-{uuid.uuid4().hex[:8]}", int(args.bucket_mb * 2**20)
    ray.get([m.join.remote(1 + RECEIVERS, r, group) for r, m in enumerate([sender, *broadcast])])

    def object_store(receivers, adopt: bool):
        def publish():
            ref = sender.publish.remote()
            ray.wait([ref], fetch_local=False)  # as the driver: the workers load once rank 0 has put it
            ray.get([r.load.remote(0, ref, adopt) for r in receivers])
        return publish

    def collective():
        ray.get([sender.send.remote(0, group, bucket), *[r.receive.remote(0, group, bucket) for r in broadcast]])

    src = torch.rand(sum(torch.Size(s).numel() for s in layout))
    dst = torch.zeros_like(src)
    times = interleave({"object store, adopt": object_store(adopting, True), "object store, copy": object_store(copying, False),
                        "collective": collective, "memcpy": lambda: dst.copy_(src)}, args.repeats)
    members = [sender, *copying, *adopting, *broadcast]
    digests = ray.get([m.digest.remote() for m in members])
    if len(set(digests)) != 1:
        raise RuntimeError(f"a receiver's weights differ from the sender's: {digests}")
    for m in members:
        ray.kill(m)
    return src.numel() * src.element_size(), times


def rows(nbytes: int, times: dict[str, list[float]], bucket_mb: float) -> list[list]:
    copy = median(times["memcpy"])
    labels = {"object store, adopt": "object store (put once, CPU workers adopt it)",
              "object store, copy": "object store (put once, each copies: GPU workers)",
              "collective": f"collective, gloo group ({bucket_mb:g} MiB buckets)", "memcpy": "local memcpy"}
    out = []
    for name, label in labels.items():
        t = median(times[name])
        out.append([f"{nbytes / 2**20:,.1f} MiB", label, t, f"{nbytes / t / 2**20:,.0f}", f"{100 * copy / t:.0f}%"])
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes-mb", type=float, nargs="+", default=[3, 100, 1024], help="payloads (MiB)")
    p.add_argument("--tensors", type=int, default=8, help="weight matrices (each with a bias) per payload")
    p.add_argument("--repeats", type=int, default=7, help="timed publishes per transport (median), after one warm-up")
    p.add_argument("--bucket-mb", type=float, default=32.0, help="bucket size of the collective broadcast (cluster.weight_bucket_mb)")
    p.add_argument("--threads", type=int, default=1, help="torch threads of this process (its memcpy)")
    p.add_argument("--quick", action="store_true", help="smoke test: one 1 MiB payload, 1 repeat")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes_mb, args.repeats = [1.0], 1
    torch.set_num_threads(args.threads)
    ray = start_ray()
    store = ray.cluster_resources().get("object_store_memory", 0)
    if store < 2 * max(args.sizes_mb) * 2**20:
        print(f"note: the object store ({store / 2**30:.1f} GiB) cannot hold two payloads; Ray will spill and slow down")
    try:
        results = [rows(*measure(ray, int(mb * 2**20), args), args.bucket_mb) for mb in args.sizes_mb]
    finally:
        ray.shutdown()
    table(["payload", "transport", "seconds", "MiB/s", "% of memcpy"], [r for rs in results for r in rs],
          title=f"weight sync to {RECEIVERS} receivers, median of {args.repeats}")


if __name__ == "__main__":
    main()
