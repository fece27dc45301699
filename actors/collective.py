"""A `ray.util.collective` backend on a *private* torch.distributed process group.

Why not Ray's built-in GLOO backend: it runs `dist.init_process_group` (the process's
default group) and makes every later group a subgroup of it. A learner rank already owns
the default group (DeepSpeed's data-parallel world), so it could never join a second
world of {learner rank 0, rollout workers}. This backend builds a standalone
`ProcessGroupGloo` / `ProcessGroupNCCL` from its own TCPStore, leaving the default group
alone; it is registered with `ray.util.collective.register_collective_backend`, so the
broadcast itself goes through the ordinary `ray.util.collective` API.

Rendezvous: rank 0 opens the store and publishes `host:port` in Ray's internal KV under
the group name; the others read it there. Hosts are loopback when every member runs on
one node (the driver decides, see `actors.pools.rendezvous_hosts`).

One node, CPU (gloo): a broadcast goes through shared memory instead of loopback TCP, which
moves ~1 GB/s here against ~11 GB/s for a memcpy (see `_SharedSlots`); gloo only synchronises.
"""
from __future__ import annotations

import datetime
import mmap
import os
import tempfile
import time
from typing import Callable

import ray
import torch
import torch.distributed as dist
from ray.experimental import internal_kv
from ray.util import collective
from ray.util.collective.collective_group.base_collective_group import BaseGroup

GLOO, NCCL = "MASKRL_GLOO", "MASKRL_NCCL"
TIMEOUT_S = 300.0
SLOT_BYTES = 64 * 2**20  # a shared-memory broadcast moves this much per step (one gloo barrier each)
SHM_DIR = "/dev/shm"
_hosts: dict[str, tuple[str, str]] = {}  # group name -> (store host, this member's bind host)


def _kv_key(group: str) -> str:
    return f"maskrl_collective_store_{group}"


class _SharedSlots:
    """Two slots of SLOT_BYTES in one file under /dev/shm, mapped by every member of a one-node group.

    A broadcast is pipelined through them, chunk by chunk: the root copies chunk i into one slot,
    all meet at a barrier, then the others copy chunk i out while the root fills the other slot
    with chunk i + 1 (the next barrier tells it the others are done with chunk i's slot). The slots
    alternate across calls too, so one chunk costs one barrier. One copy in and one copy out per
    member. The file is unlinked once every member has mapped it: nothing is left behind whichever
    process dies."""

    def __init__(self, store, rank: int):
        if rank == 0:
            fd, self.path = tempfile.mkstemp(prefix="maskrl-collective-", dir=SHM_DIR)
            os.ftruncate(fd, 2 * SLOT_BYTES)  # sparse: memory is used only as far as broadcasts reach
            store.set("shm", self.path)
        else:
            self.path = store.get("shm").decode()
            fd = os.open(self.path, os.O_RDWR)
        try:
            self.slots = torch.frombuffer(mmap.mmap(fd, 2 * SLOT_BYTES), dtype=torch.uint8).view(2, SLOT_BYTES)
        finally:
            os.close(fd)
        self.chunks_done = 0  # the same on every member: which slot comes next

    @staticmethod
    def usable(store, rank: int, world_size: int) -> bool:
        """Whether every member runs on this node (and /dev/shm exists); every member gets the same answer."""
        store.set(f"node{rank}", ray.get_runtime_context().get_node_id())
        nodes = {store.get(f"node{r}") for r in range(world_size)}
        return len(nodes) == 1 and os.path.isdir(SHM_DIR)

    def broadcast(self, tensor: torch.Tensor, root: bool, barrier: Callable[[int], None]) -> None:
        """`barrier(nbytes)` also checks that every member passed as many bytes."""
        if not tensor.is_contiguous():
            raise ValueError("a broadcast tensor must be contiguous")
        data = tensor.reshape(-1).view(torch.uint8)
        starts = range(0, max(data.numel(), 1), SLOT_BYTES)  # one step even when empty: the sizes are checked
        for i, start in enumerate(starts):
            n = min(SLOT_BYTES, data.numel() - start)
            slot = self.slots[(self.chunks_done + i) % 2, :n]
            if root:
                slot.copy_(data[start : start + n])
            barrier(data.numel())
            if not root:
                data[start : start + n].copy_(slot)
        self.chunks_done += len(starts)


class _TorchGroup(BaseGroup):
    """broadcast / barrier / allreduce on a process group that is not the default one."""

    device = "cpu"

    def __init__(self, world_size: int, rank: int, group_name: str):
        super().__init__(world_size, rank, group_name)
        store_host, bind_host = _hosts.pop(group_name)
        timeout = datetime.timedelta(seconds=TIMEOUT_S)
        if rank == 0:
            store = dist.TCPStore(store_host, 0, world_size, True, timeout, wait_for_workers=False)
            internal_kv._internal_kv_put(_kv_key(group_name), f"{store_host}:{store.port}", overwrite=True)
        else:
            deadline = time.time() + TIMEOUT_S
            while (meta := internal_kv._internal_kv_get(_kv_key(group_name))) is None:
                if time.time() > deadline:
                    raise TimeoutError(f"no rendezvous address for collective group {group_name!r} after {TIMEOUT_S}s")
                time.sleep(0.05)
            host, port = meta.decode().rsplit(":", 1)
            store = dist.TCPStore(host, int(port), world_size, False, timeout)
        self._store = store
        self._pg = self._make(store, rank, world_size, bind_host, timeout)
        self._shm = _SharedSlots(store, rank) if self.device == "cpu" and _SharedSlots.usable(store, rank, world_size) else None
        self.barrier()
        if rank == 0:
            internal_kv._internal_kv_del(_kv_key(group_name))
            if self._shm:
                os.unlink(self._shm.path)  # every member has mapped it

    def _make(self, store, rank, world_size, bind_host, timeout):
        opts = dist.ProcessGroupGloo._Options()
        opts._devices = [dist.ProcessGroupGloo.create_device(hostname=bind_host)]
        opts._timeout = timeout
        return dist.ProcessGroupGloo(store, rank, world_size, opts)

    @classmethod
    def check_backend_availability(cls) -> bool:
        return dist.is_available()

    def destroy_group(self):
        self._pg = self._store = self._shm = None

    @staticmethod
    def _one(tensor) -> torch.Tensor:
        (t,) = tensor
        return torch.from_numpy(t) if not isinstance(t, torch.Tensor) else t

    def broadcast(self, tensor, broadcast_options=None):
        opts = dist.BroadcastOptions()
        opts.rootRank = broadcast_options.root_rank if broadcast_options else 0
        t = self._one(tensor)
        if self._shm:
            self._shm.broadcast(t, self.rank == opts.rootRank, self._same_size_barrier)
        else:
            self._pg.broadcast([t], opts).wait()

    def _same_size_barrier(self, nbytes: int) -> None:
        """A barrier that fails on every member unless all of them broadcast `nbytes` (gloo checks the
        sizes itself; a broadcast through shared memory must)."""
        bounds = torch.tensor([nbytes, -nbytes], dtype=torch.int64)
        opts = dist.AllreduceOptions()
        opts.reduceOp = dist.ReduceOp.MAX
        self._pg.allreduce([bounds], opts).wait()
        if bounds[0] != -bounds[1]:
            raise RuntimeError(f"broadcast of {nbytes} bytes here, but the members' sizes range from {-int(bounds[1])} to {int(bounds[0])}")

    def allreduce(self, tensor, allreduce_options=None):
        self._pg.allreduce([self._one(tensor)]).wait()

    def barrier(self, barrier_options=None):
        flag = torch.zeros(1, device=self.device)
        self._pg.allreduce([flag]).wait()

    def reduce(self, *args, **kwargs):
        raise NotImplementedError("maskrl's weight group only broadcasts")

    allgather = reducescatter = send = recv = reduce


class TorchGlooGroup(_TorchGroup):
    @classmethod
    def backend(cls):
        return GLOO


class TorchNcclGroup(_TorchGroup):
    device = "cuda"

    @classmethod
    def backend(cls):
        return NCCL

    @classmethod
    def check_backend_availability(cls) -> bool:
        return dist.is_nccl_available() and torch.cuda.is_available()

    def _make(self, store, rank, world_size, bind_host, timeout):
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world_size, opts)


def register() -> None:
    """Idempotent; must run in every process that joins a group (the registry is per process)."""
    from ray.util.collective.backend_registry import _global_registry

    for name, cls in ((GLOO, TorchGlooGroup), (NCCL, TorchNcclGroup)):
        if not _global_registry.is_registered(name):
            collective.register_collective_backend(name, cls)


def join(world_size: int, rank: int, group_name: str, store_host: str, bind_host: str, backend: str = GLOO) -> None:
    """Join (from inside an actor) the group `group_name` through `ray.util.collective`."""
    register()
    _hosts[group_name] = (store_host, bind_host)
    collective.init_collective_group(world_size, rank, backend=backend, group_name=group_name)


def leave(group_name: str) -> None:
    if collective.is_group_initialized(group_name):
        collective.destroy_collective_group(group_name)


def abandon(group_name: str) -> None:
    """Mark a group whose broadcast broke (a member died): members that have not entered it yet
    skip it instead of waiting for the dead one until the timeout (see `is_abandoned`)."""
    internal_kv._internal_kv_put(f"maskrl_collective_abandoned_{group_name}", b"1", overwrite=True)


def is_abandoned(group_name: str) -> bool:
    return bool(internal_kv._internal_kv_exists(f"maskrl_collective_abandoned_{group_name}"))


def node_address() -> tuple[str, str]:
    """(node id, node IP) of the calling process."""
    return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()
