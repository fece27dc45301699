"""Shared helpers of the Ray benchmarks (bench_ray_*.py); not a benchmark itself.

They follow the core benches' conventions (bench_core_common): the shipped base model when it
exists, else a random default-size policy; one torch thread per process; contestants measured
in the same process, interleaved, summarised by their median.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import torch

from bench_core_common import base_parser, setup  # noqa: F401  (re-exported for the ray benches)
from maskrl.models import save_policy
from maskrl.trajectory import TrajectoryBatch


def start_ray(num_cpus: int | None = None):
    import ray

    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, logging_level="warning", log_to_driver=False)
    print(f"ray {ray.__version__}: local instance, {ray.cluster_resources().get('CPU', 0):g} logical CPUs")
    return ray


def saved(policy) -> str:
    """The measured policy as a checkpoint directory the actors can load."""
    directory = Path(tempfile.mkdtemp(prefix="maskrl-bench-")) / "policy"
    save_policy(policy, directory)
    return str(directory)


def reference_lists(batch: TrajectoryBatch) -> list[dict]:
    """The same trajectories in the public Mask-GRPO code's layout (bench_core_rollout.reference_generate):
    per trajectory the final tokens and, per step, the revealed indices and their tokens, the re-masked
    indices, the minimum confidence (a Python float) and the step's log-prob tensor."""
    records = []
    for b in range(len(batch)):
        reveal, tokens = batch.reveal_step[b].long(), batch.tokens[b].long()
        steps = range(batch.steps)
        records.append({
            "tokens": tokens[None].clone(),
            "selected_indices": [torch.nonzero(reveal == t).squeeze(1) for t in steps],
            "selected_ids": [tokens[reveal == t] for t in steps],
            "min_probs": [float(batch.cutoff[b, t].exp()) for t in steps],
            "masking": [torch.nonzero(reveal > t).squeeze(1) for t in steps],
            "logprobs": [batch.behaviour_logprob()[b, t].clone() for t in steps],
        })
    return records


def mb(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.2f} MB"
