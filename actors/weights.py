"""Weight publishing: the learner's trainable state (the whole state dict, or only the LoRA
adapters; maskrl.models.lora) as numpy arrays (object-store transport), or the same tensors
bucketed and broadcast over a `ray.util.collective` group.

Object store: `to_numpy` gives numpy views of the (CPU) tensors, no copy; Ray writes each of them
out of band into one object (one copy) and every worker maps that object and gets zero-copy views,
which `load_numpy` copies into its parameters (one copy). That is the fewest copies a worker that
owns its weights can get: packing the arrays into one buffer first would add a copy on the sender.
A CPU rollout worker does not need to own them: `adopt_numpy` makes the views its weights
(read-only; inference only), so a publish is the one copy of `ray.put`.

Collective: tensors of FUSE_BELOW bytes or more travel alone and in place (the sender broadcasts
from its parameter, a receiver into its own); runs of smaller ones are fused into buckets of at
most `bucket_bytes`, packed into one scratch buffer reused by every bucket. Both ends derive the
layout from their own `trainable_state` (same architecture, same key order), so only the payloads
travel; a small header (version, element count, bucket count) is broadcast first and checked.
"""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import torch
from ray.util import collective

from maskrl.models.lora import trainable_state

FUSE_BELOW = 2**20  # a smaller tensor shares a bucket: copying it in and out costs less than a broadcast of its own


def to_numpy(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """CPU numpy views (a copy only off the CPU): what `ray.put` stores once and every worker maps zero-copy."""
    return {k: v.detach().to("cpu").contiguous().numpy() for k, v in state.items()}


def _check_fits(own: dict[str, torch.Tensor], weights: dict[str, np.ndarray]) -> None:
    """The policy's names and shapes, or an error naming the keys (copy_ would broadcast a wrong shape silently)."""
    missing, extra = sorted(own.keys() - weights.keys()), sorted(weights.keys() - own.keys())
    if missing or extra:
        raise ValueError(f"published weights do not match the policy: missing {len(missing)} {missing[:5]}, "
                         f"unexpected {len(extra)} {extra[:5]}")
    shapes = [f"{k} {tuple(weights[k].shape)} != {tuple(t.shape)}" for k, t in own.items() if tuple(weights[k].shape) != tuple(t.shape)]
    if shapes:
        raise ValueError(f"published weights do not match the policy's shapes: {shapes[:5]}")


@torch.no_grad()
def load_numpy(module: torch.nn.Module, weights: dict[str, np.ndarray]) -> None:
    """One copy per tensor, from the zero-copy view of the object store into the parameter."""
    own = trainable_state(module)
    _check_fits(own, weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # object-store arrays are read-only; we only read them
        for name, target in own.items():
            target.copy_(torch.from_numpy(weights[name]))


@torch.no_grad()
def adopt_numpy(module: torch.nn.Module, weights: dict[str, np.ndarray]) -> None:
    """No copy at all (a CPU worker that only samples): the module's tensors become the read-only
    zero-copy views of the object store, which stays pinned while they live. A later in-place
    write (the collective transport) must first `own_weights`."""
    own = trainable_state(module)
    _check_fits(own, weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only arrays: the module never writes them
        module.load_state_dict({k: torch.from_numpy(weights[k]) for k in own}, assign=True, strict=False)  # keys checked above


@torch.no_grad()
def own_weights(module: torch.nn.Module) -> None:
    """Writable private copies of the module's tensors (after `adopt_numpy`)."""
    module.load_state_dict({k: v.clone() for k, v in module.state_dict().items()}, assign=True)


def bucket_layout(state: dict[str, torch.Tensor], bucket_bytes: int) -> list[list[str]]:
    """Runs of consecutive same-dtype tensors fused into buckets of at most `bucket_bytes`; a tensor of
    FUSE_BELOW bytes or more (or of the bucket size) is a bucket of its own."""
    buckets, size, dtype, open_ = [], 0, None, False
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        small = nbytes < min(FUSE_BELOW, bucket_bytes)
        if small and open_ and t.dtype == dtype and size + nbytes <= bucket_bytes:
            buckets[-1].append(name)
            size += nbytes
        else:
            buckets.append([name])
            size, dtype, open_ = nbytes, t.dtype, small
    return buckets


def _device(group: str) -> str:
    return getattr(collective.get_group_handle(group), "device", "cpu")


def _header(version: int, state: dict[str, torch.Tensor], n_buckets: int) -> torch.Tensor:
    return torch.tensor([version, sum(t.numel() for t in state.values()), n_buckets], dtype=torch.int64)


def _in_place(tensors: list[torch.Tensor], device: str) -> bool:
    """A lone contiguous tensor on the group's device is broadcast as it is: no copy at either end."""
    return len(tensors) == 1 and tensors[0].is_contiguous() and tensors[0].device == torch.device(device)


def _scratch(buckets: list[list[torch.Tensor]], device: str) -> torch.Tensor:
    """One byte buffer for every bucket that is packed (the largest of them), instead of one allocation per bucket."""
    packed = [sum(t.numel() * t.element_size() for t in b) for b in buckets if not _in_place(b, device)]
    return torch.empty(max(packed, default=0), dtype=torch.uint8, device=device)


def _wire(tensors: list[torch.Tensor], scratch: torch.Tensor, device: str) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
    """The 1-D tensor a bucket travels in, and the (tensor, its view in it) pairs to copy: none for a
    tensor broadcast in place, else every tensor's slice of the front of the scratch buffer."""
    if _in_place(tensors, device):
        return tensors[0].view(-1), []
    wire = scratch[: sum(t.numel() * t.element_size() for t in tensors)].view(tensors[0].dtype)
    offsets = itertools.accumulate((t.numel() for t in tensors), initial=0)
    return wire, [(t, wire[o : o + t.numel()].view_as(t)) for t, o in zip(tensors, offsets)]


@torch.no_grad()
def broadcast_send(state: dict[str, torch.Tensor], version: int, group: str, bucket_bytes: int) -> int:
    """Rank 0 of `group`: broadcast `state` bucket by bucket; returns the bytes sent per receiver."""
    device = _device(group)
    buckets = [[state[n].detach() for n in names] for names in bucket_layout(state, bucket_bytes)]
    collective.broadcast(_header(version, state, len(buckets)).to(device), 0, group)
    scratch = _scratch(buckets, device)
    sent = 0
    for tensors in buckets:
        wire, copies = _wire(tensors, scratch, device)
        for t, view in copies:
            view.copy_(t)
        collective.broadcast(wire, 0, group)
        sent += wire.numel() * wire.element_size()
    return sent


@torch.no_grad()
def broadcast_recv(module: torch.nn.Module, version: int, group: str, bucket_bytes: int) -> None:
    """Any other rank: receive the buckets into `module`'s own tensors."""
    device = _device(group)
    own = trainable_state(module)
    buckets = [[own[n] for n in names] for names in bucket_layout(own, bucket_bytes)]
    header = torch.zeros(3, dtype=torch.int64, device=device)
    collective.broadcast(header, 0, group)
    expected = _header(version, own, len(buckets)).to(device)
    if not torch.equal(header, expected):
        raise RuntimeError(f"weight broadcast header {header.tolist()} != expected {expected.tolist()} (version, elements, buckets)")
    scratch = _scratch(buckets, device)
    for tensors in buckets:
        wire, copies = _wire(tensors, scratch, device)
        collective.broadcast(wire, 0, group)
        for t, view in copies:
            t.copy_(view)
