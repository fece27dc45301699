"""Bytes per trajectory: the compact Arrow encoding vs the reference's per-step Python lists.

- Arrow: ``TrajectoryBatch.to_arrow()`` of B trajectories recorded by the batched sampler
  (``rollout_groups``): in-memory buffer sizes, and the serialized IPC stream that a Ray
  object store would hold, per trajectory; the full record (prompt text and ids, reward,
  advantage, version) and the four trajectory columns alone.
- Reference: B trajectories from the reference-style batch-1 loop of
  ``bench_core_rollout.py`` (the public Mask-GRPO layout): the final tokens and, per step,
  the index tensor of newly revealed positions, their sampled tokens, the index tensor of
  re-masked positions, the minimum confidence and a per-step log-prob tensor. Measured as
  the pickled size of those Python lists of tensors (what Ray would ship), the same lists
  as numpy arrays, and their raw payload.

    python bench/bench_core_bytes.py
"""
from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import torch

from common import base_parser, prompts, sampling_config, setup, table
from reference import reference_generate
from maskrl.iteration import PromptStream, rollout_groups

TRAJECTORY_COLUMNS = ("tokens", "reveal_step", "cutoff", "behaviour_terms")


def ipc_size(rb: pa.RecordBatch) -> int:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rb.schema) as writer:
        writer.write_batch(rb)
    return sink.getvalue().size


def to_numpy(obj):
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_numpy(x) for x in obj)
    return obj


def payload(obj) -> int:
    """Raw bytes of the tensors (8 per Python float)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, np.ndarray):
        return obj.nbytes
    if isinstance(obj, (list, tuple)):
        return sum(payload(x) for x in obj)
    return 8


def pickled(obj) -> int:
    return len(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def main(argv=None) -> None:
    p = base_parser(__doc__.splitlines()[0], batch=32, repeats=1)
    p.add_argument("--group", type=int, default=4, help="rollouts per prompt")
    args = p.parse_args(argv)
    policy = setup(args)
    sampling = sampling_config(args)
    gen = torch.Generator().manual_seed(args.seed)
    group = max(1, min(args.group, args.batch))
    batch = rollout_groups(policy, PromptStream(args.seed).take(-(-args.batch // group)), group, sampling, gen, 0)
    batch = batch.select(torch.arange(args.batch))
    b = len(batch)
    print(f"sampling: steps {sampling.steps}, cfg {sampling.cfg_scale}, variant {sampling.variant}; {b} trajectories")

    rb = batch.to_arrow()
    traj_rb = rb.select(list(TRAJECTORY_COLUMNS))
    arrow_rows = [
        ["arrow record batch, buffers", rb.get_total_buffer_size() / b],
        ["arrow record batch, nbytes", rb.nbytes / b],
        ["arrow record batch, IPC stream", ipc_size(rb) / b],
        ["arrow trajectory columns, nbytes", traj_rb.nbytes / b],
        ["arrow trajectory columns, IPC stream", ipc_size(traj_rb) / b],
    ]

    texts = prompts(b, args.seed)
    records = []
    for text in texts:
        final, sel_idx, sel_ids, min_probs, masking, logprobs = reference_generate(
            policy, text, sampling.steps, sampling.cfg_scale, sampling.noise_scale, gen)
        records.append({"tokens": final, "selected_indices": sel_idx, "selected_ids": sel_ids,
                        "min_probs": min_probs, "masking": masking, "logprobs": logprobs})
    per_part = {k: [rec[k] for rec in records] for k in records[0]}
    ref_rows = [
        ["reference lists, pickled torch", sum(pickled(rec) for rec in records) / b],
        ["reference lists, pickled numpy", sum(pickled(to_numpy(rec)) for rec in records) / b],
        ["reference lists, raw payload", sum(payload(list(rec.values())) for rec in records) / b],
    ]
    part_rows = [[f"  {k}", sum(pickled(x) for x in v) / b, sum(pickled(to_numpy(x)) for x in v) / b,
                  sum(payload(x) for x in v) / b] for k, v in per_part.items()]

    arrow_ipc = ipc_size(rb) / b
    table(["encoding", "bytes / trajectory"], [[n, f"{v:,.0f}"] for n, v in arrow_rows + ref_rows],
          title=f"bytes per trajectory ({policy.num_image_tokens} image tokens, {sampling.steps} steps)")
    table(["reference part", "pickled torch", "pickled numpy", "raw payload"],
          [[r[0]] + [f"{x:,.0f}" for x in r[1:]] for r in part_rows], title="reference breakdown (bytes / trajectory)")
    ref_pickled = ref_rows[0][1]
    print(f"\ncompaction (reference pickled torch / arrow IPC, full record): {ref_pickled / arrow_ipc:.1f}x")
    print(f"compaction (reference raw payload / arrow trajectory columns): {ref_rows[2][1] / (traj_rb.nbytes / b):.1f}x")


if __name__ == "__main__":
    main()
