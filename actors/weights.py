"""Weight publishing: a full state dict as numpy arrays (object-store transport), or the same
tensors flattened into fixed-size buckets and broadcast over a `ray.util.collective` group.

Both ends derive the bucket layout from their own `state_dict()` (same architecture, same
key order), so only the bucket payloads travel; a small header (version, element count,
bucket count) is broadcast first and checked by every receiver.
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
from ray.util import collective


def to_numpy(state: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """CPU numpy copies: what `ray.put` stores once and every worker maps zero-copy."""
    return {k: v.detach().to("cpu").contiguous().numpy() for k, v in state.items()}


@torch.no_grad()
def load_numpy(module: torch.nn.Module, weights: dict[str, np.ndarray]) -> None:
    own = module.state_dict()
    if own.keys() != weights.keys():
        missing, extra = sorted(own.keys() - weights.keys()), sorted(weights.keys() - own.keys())
        raise ValueError(f"published weights do not match the policy: missing {missing[:3]}, unexpected {extra[:3]}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # object-store arrays are read-only; we only read them
        for name, target in own.items():
            target.copy_(torch.from_numpy(weights[name]))


def bucket_layout(state: dict[str, torch.Tensor], bucket_bytes: int) -> list[list[str]]:
    """Consecutive same-dtype tensors grouped into buckets of at most `bucket_bytes` (or one tensor)."""
    buckets, current, size, dtype = [], [], 0, None
    for name, t in state.items():
        nbytes = t.numel() * t.element_size()
        if current and (t.dtype != dtype or size + nbytes > bucket_bytes):
            buckets.append(current)
            current, size = [], 0
        current.append(name)
        size, dtype = size + nbytes, t.dtype
    if current:
        buckets.append(current)
    return buckets


def _device(group: str) -> str:
    return getattr(collective.get_group_handle(group), "device", "cpu")


def _header(version: int, state: dict[str, torch.Tensor], n_buckets: int) -> torch.Tensor:
    return torch.tensor([version, sum(t.numel() for t in state.values()), n_buckets], dtype=torch.int64)


@torch.no_grad()
def broadcast_send(state: dict[str, torch.Tensor], version: int, group: str, bucket_bytes: int) -> int:
    """Rank 0 of `group`: broadcast `state` bucket by bucket; returns the bytes sent per receiver."""
    device = _device(group)
    layout = bucket_layout(state, bucket_bytes)
    collective.broadcast(_header(version, state, len(layout)).to(device), 0, group)
    sent = 0
    for names in layout:
        flat = torch.cat([state[n].detach().reshape(-1) for n in names]).to(device)
        collective.broadcast(flat, 0, group)
        sent += flat.numel() * flat.element_size()
    return sent


@torch.no_grad()
def broadcast_recv(module: torch.nn.Module, version: int, group: str, bucket_bytes: int) -> None:
    """Any other rank: receive the buckets into `module`'s own tensors."""
    device = _device(group)
    own = module.state_dict()
    layout = bucket_layout(own, bucket_bytes)
    header = torch.zeros(3, dtype=torch.int64, device=device)
    collective.broadcast(header, 0, group)
    expected = _header(version, own, len(layout)).to(device)
    if not torch.equal(header, expected):
        raise RuntimeError(f"weight broadcast header {header.tolist()} != expected {expected.tolist()} (version, elements, buckets)")
    for names in layout:
        flat = torch.empty(sum(own[n].numel() for n in names), dtype=own[names[0]].dtype, device=device)
        collective.broadcast(flat, 0, group)
        offset = 0
        for n in names:
            k = own[n].numel()
            own[n].copy_(flat[offset : offset + k].view_as(own[n]))
            offset += k
