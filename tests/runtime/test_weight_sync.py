"""Weight sync (actors.weights, actors.collective): both transports deliver the sender's tensors bit
for bit, and a policy that does not fit the published weights is named.

The object-store path is pure numpy/torch (Ray only stores the arrays); the collective one runs a
sender and two receivers as Ray actors, through shared memory (one node) and through gloo's TCP,
with slots of a few hundred bytes so that broadcasts span several slots and calls.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import ray
import torch
from torch import nn

from actors import weights
from tests.helpers import local_ray

SHAPES = {"a_w": ((7, 33), torch.float32), "a_b": ((33,), torch.float32), "steps": ((5,), torch.int64),
          "big": ((96, 64), torch.float32), "mask": ((11,), torch.bool), "tail": ((3, 5), torch.float64)}
SLOT_BYTES = 512  # a broadcast of `big` (24 KiB) takes 48 slots


def module(seed: int | None) -> nn.Module:
    """A module holding SHAPES: random values drawn from `seed`, or zeros (a receiver before any sync)."""
    gen = torch.Generator().manual_seed(seed or 0)
    m = nn.Module()
    for name, (shape, dtype) in SHAPES.items():
        value = torch.randn(shape, generator=gen) * 100 if seed is not None else torch.zeros(shape)
        m.register_buffer(name, value.gt(0) if dtype == torch.bool else value.to(dtype))
    return m


def state_of(m: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


# -- object store ----------------------------------------------------------------------------------
def test_object_store_round_trip_is_exact_and_copies_once():
    sender, receiver = module(1), module(None)
    published = weights.to_numpy(sender.state_dict())
    assert all(np.shares_memory(published[k], v.numpy()) for k, v in sender.state_dict().items())  # no copy on the sender
    for array in published.values():
        array.flags.writeable = False  # as the object store hands them out
    weights.load_numpy(receiver, published)
    assert_same(state_of(receiver), state_of(sender))


def test_a_cpu_worker_adopts_the_published_arrays_without_a_copy_and_owns_them_again_to_receive():
    sender, worker = module(1), module(None)
    published = weights.to_numpy(sender.state_dict())
    for array in published.values():
        array.flags.writeable = False
    weights.adopt_numpy(worker, published)
    assert all(np.shares_memory(published[k], v.numpy()) for k, v in worker.state_dict().items())  # no copy
    assert_same(state_of(worker), state_of(sender))
    weights.own_weights(worker)  # before a collective writes in place
    assert not any(np.shares_memory(published[k], v.numpy()) for k, v in worker.state_dict().items())
    worker.big.add_(1)  # writable again
    assert_same({k: v for k, v in state_of(worker).items() if k != "big"}, {k: v for k, v in state_of(sender).items() if k != "big"})
    with pytest.raises(ValueError, match=r"missing 1 \['big'\]"):
        weights.adopt_numpy(worker, {k: v for k, v in published.items() if k != "big"})


def test_mismatched_names_and_shapes_are_named():
    published = weights.to_numpy(module(1).state_dict())
    published["extra.weight"] = published.pop("big")
    with pytest.raises(ValueError, match=r"missing 1 \['big'\], unexpected 1 \['extra.weight'\]"):
        weights.load_numpy(module(None), published)
    published = weights.to_numpy(module(1).state_dict())
    published["tail"] = published["tail"][:2]
    with pytest.raises(ValueError, match=r"tail \(2, 5\) != \(3, 5\)"):
        weights.load_numpy(module(None), published)


def test_large_tensors_travel_alone_small_ones_fused():
    mib = weights.FUSE_BELOW
    state = {"s1": torch.zeros(10), "s2": torch.zeros(10), "big": torch.zeros(mib // 4), "s3": torch.zeros(10),
             "i": torch.zeros(3, dtype=torch.int64), "s4": torch.zeros(10)}
    assert weights.bucket_layout(state, bucket_bytes=32 * mib) == [["s1", "s2"], ["big"], ["s3"], ["i"], ["s4"]]
    assert weights.bucket_layout(state, bucket_bytes=40) == [["s1"], ["s2"], ["big"], ["s3"], ["i"], ["s4"]]


# -- collective ------------------------------------------------------------------------------------
class Member:
    """A sender or receiver of the weight group, as learner rank 0 and the rollout workers."""

    def __init__(self, seed: int | None):
        self.module = module(seed)

    def join(self, world_size: int, rank: int, group: str, shared_memory: bool) -> str | None:
        """Joins; returns the shared-memory file's path when the group uses one."""
        from actors import collective

        collective.SLOT_BYTES = SLOT_BYTES
        collective.SHM_DIR = "/dev/shm" if shared_memory else "/nonexistent"
        collective.join(world_size, rank, group, "127.0.0.1", "127.0.0.1", collective.GLOO)
        slots = ray.util.collective.get_group_handle(group)._shm
        return slots.path if slots else None

    def send(self, version: int, group: str, bucket_bytes: int) -> int:
        return weights.broadcast_send(self.module.state_dict(), version, group, bucket_bytes)

    def receive(self, version: int, group: str, bucket_bytes: int) -> dict[str, torch.Tensor]:
        weights.broadcast_recv(self.module, version, group, bucket_bytes)
        return state_of(self.module)

    def broadcast(self, numel: int, group: str) -> None:
        from ray.util import collective

        collective.broadcast(torch.zeros(numel), 0, group)


@pytest.fixture(scope="module")
def ray_instance():
    with local_ray(num_cpus=2) as r:
        yield r


@pytest.mark.parametrize("shared_memory", [True, False], ids=["shared-memory", "tcp"])
def test_collective_round_trip_is_exact(ray_instance, shared_memory):
    actor = ray.remote(num_cpus=0.1)(Member)
    members = [actor.remote(1), actor.remote(None), actor.remote(None)]
    group = f"test-weights-{'shm' if shared_memory else 'tcp'}"
    paths = ray.get([m.join.remote(3, r, group, shared_memory) for r, m in enumerate(members)])
    if shared_memory:
        assert len(set(paths)) == 1 and paths[0].startswith("/dev/shm/")
        assert not os.path.exists(paths[0])  # unlinked once everyone mapped it
    else:
        assert paths == [None] * 3
    expected = state_of(module(1))
    for bucket_bytes in (64, 4096):  # fused buckets of few and of many tensors; `big` alone, in place
        sent, *received = ray.get([members[0].send.remote(3, group, bucket_bytes),
                                   *[m.receive.remote(3, group, bucket_bytes) for m in members[1:]]])
        assert sent == sum(t.numel() * t.element_size() for t in expected.values())
        for state in received:
            assert_same(state, expected)
    if shared_memory:  # gloo checks sizes itself; shared memory checks them at its barrier, on every member
        refs = [m.broadcast.remote(n, group) for m, n in zip(members, (16, 16, 17))]
        for ref in refs:
            with pytest.raises(ray.exceptions.RayTaskError, match="sizes range from 64 to 68"):
                ray.get(ref)
    for m in members:
        ray.kill(m)
