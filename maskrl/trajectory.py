"""`TrajectoryBatch`: a batch of compact trajectories and its versioned Arrow schema.

Every per-trajectory field is fixed width (fixed-size lists of int16 / float32), so a
record batch maps zero-copy into numpy and torch; this is what rollout workers put in
the Ray object store and learners read back. The schema version and the transition
variant travel in the schema metadata; a reader refuses any other version.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import warnings

import numpy as np
import pyarrow as pa
import torch

SCHEMA_VERSION = "3"  # 3: branch_step
_META_VERSION = b"maskrl.trajectory.version"
_META_VARIANT = b"maskrl.trajectory.variant"

# field -> Arrow element type; tensors keep the same dtype in memory, so reading is zero-copy.
_TENSORS = {
    "prompt_ids": pa.int16(),
    "tokens": pa.int16(),
    "reveal_step": pa.int16(),
    "cutoff": pa.float32(),
    "behaviour_terms": pa.float32(),
    "step_tokens": pa.int16(),  # only written when the variant records them (width 0 otherwise)
}
_SCALARS = {
    "prompt_index": pa.int64(),
    "group_id": pa.int64(),
    "reward": pa.float32(),
    "advantage": pa.float32(),
    "policy_version": pa.int32(),
    "branch_step": pa.int32(),  # first branch step of a branched group (maskrl.branching), -1 unbranched
}
_TORCH = {pa.int16(): torch.int16, pa.int32(): torch.int32, pa.int64(): torch.int64, pa.float32(): torch.float32}


class SchemaError(ValueError):
    pass


@dataclass
class TrajectoryBatch:
    prompts: list[str]
    prompt_ids: torch.Tensor  # (B, S) text slots of the policy's sequence
    prompt_index: torch.Tensor  # (B,) position of the prompt in the run's prompt stream
    group_id: torch.Tensor  # (B,) trajectories of one prompt share a group
    tokens: torch.Tensor  # (B, N) final image codes
    reveal_step: torch.Tensor  # (B, N) step that revealed each position
    cutoff: torch.Tensor  # (B, T) per-step log-confidence cutoff (see maskrl.transition)
    behaviour_terms: torch.Tensor  # (B, T * (N + 1)) per-step, per-unit log pi of the behaviour policy
    step_tokens: torch.Tensor  # (B, T * N) tokens sampled at each step (variant ar), else (B, 0)
    reward: torch.Tensor  # (B,) NaN until scored
    advantage: torch.Tensor  # (B,) zero until computed
    policy_version: torch.Tensor  # (B,) version of the weights that generated it
    variant: str
    branch_step: torch.Tensor | None = None  # (B,) first branch step, -1 unbranched (None: all -1)

    def __post_init__(self):
        if self.branch_step is None:
            self.branch_step = torch.full((len(self.prompts),), -1)
        for name, atype in {**_TENSORS, **_SCALARS}.items():
            setattr(self, name, torch.as_tensor(getattr(self, name)).to(_TORCH[atype]))

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def steps(self) -> int:
        return self.cutoff.shape[1]

    def behaviour(self, traj: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """(P, N + 1) behaviour log-prob units of the (trajectory, step) pairs."""
        return self.behaviour_terms.view(len(self), self.steps, -1)[traj, step]

    def behaviour_logprob(self) -> torch.Tensor:
        """(B, T) sequence-level behaviour log-prob of every step (its units summed)."""
        return self.behaviour_terms.view(len(self), self.steps, -1).sum(-1)

    def tokens_at(self, traj: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """(P, N) the tokens a transition scores: the step's samples if recorded, else the final ones."""
        if not self.step_tokens.shape[1]:
            return self.tokens[traj]
        return self.step_tokens.view(len(self), self.steps, -1)[traj, step]

    def to_arrow(self) -> pa.RecordBatch:
        columns, names = [pa.array(self.prompts, pa.string())], ["prompt"]
        for name, atype in _TENSORS.items():
            value = getattr(self, name)
            if not value.shape[1]:  # an unused optional column is not written
                continue
            columns.append(pa.FixedSizeListArray.from_arrays(pa.array(value.numpy().ravel(), atype), value.shape[1]))
            names.append(name)
        for name, atype in _SCALARS.items():
            columns.append(pa.array(getattr(self, name).numpy(), atype))
            names.append(name)
        meta = {_META_VERSION: SCHEMA_VERSION.encode(), _META_VARIANT: self.variant.encode()}
        return pa.RecordBatch.from_arrays(columns, names=names, metadata=meta)

    @classmethod
    def from_arrow(cls, batch: pa.RecordBatch | pa.Table) -> "TrajectoryBatch":
        if isinstance(batch, pa.Table):
            batches = batch.combine_chunks().to_batches()
            batch = batches[0] if batches else pa.RecordBatch.from_pylist([], schema=batch.schema)
        meta = batch.schema.metadata or {}
        version = meta.get(_META_VERSION, b"<none>").decode()
        if version != SCHEMA_VERSION:
            raise SchemaError(
                f"trajectory schema version {version!r} is not supported (this maskrl reads {SCHEMA_VERSION!r}); "
                "were rollout workers and learner started from different maskrl versions?"
            )
        values = {"prompts": batch.column("prompt").to_pylist(), "variant": meta[_META_VARIANT].decode()}
        for name, atype in {**_TENSORS, **_SCALARS}.items():
            if name == "step_tokens" and name not in batch.schema.names:
                values[name] = torch.zeros(len(batch), 0, dtype=torch.int16)
                continue
            if name not in batch.schema.names:
                raise SchemaError(f"trajectory record batch has no column {name!r}")
            col, is_list = batch.column(name), name in _TENSORS
            if (col.type.value_type if pa.types.is_fixed_size_list(col.type) and is_list else col.type) != atype:
                raise SchemaError(f"trajectory column {name!r} has type {col.type}, expected {atype} values")
            array = (col.flatten() if is_list else col).to_numpy(zero_copy_only=True)  # flatten honours slices
            values[name] = _as_torch(array.reshape(len(col), -1) if is_list else array)
        return cls(**values)

    def select(self, index: torch.Tensor | list[int]) -> "TrajectoryBatch":
        idx = torch.as_tensor(index, dtype=torch.long)
        changes = {name: getattr(self, name)[idx] for name in (*_TENSORS, *_SCALARS)}
        return replace(self, prompts=[self.prompts[i] for i in idx.tolist()], **changes)

    @classmethod
    def concat(cls, batches: list["TrajectoryBatch"]) -> "TrajectoryBatch":
        variants = {b.variant for b in batches}
        if len(variants) != 1:
            raise ValueError(f"cannot concatenate trajectories of different variants {sorted(variants)}")
        tensors = {n: torch.cat([getattr(b, n) for b in batches]) for n in (*_TENSORS, *_SCALARS)}
        return cls(prompts=[p for b in batches for p in b.prompts], variant=variants.pop(), **tensors)


def _as_torch(array: np.ndarray) -> torch.Tensor:
    """A tensor sharing the Arrow buffer (read-only memory: treat it as immutable)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable array": intended, never written
        return torch.from_numpy(array)
