"""Rollout workers: a policy of a known version and the recording sampler.

`generate` turns whole prompt groups into trajectories with `maskrl.iteration.rollout_groups`
and returns them as an Arrow record batch, which Ray stores in the object store: the caller
gets an object ref and passes it on (to a reward worker, then the learner) without reading it.
"""
from __future__ import annotations

import time

import numpy as np
import ray
import torch

from actors import collective, weights
from maskrl.branching import BranchConfig
from maskrl.evaluation import chunk_passes, generate, held_out_prompts, load_checkpoint
from maskrl.iteration import rollout_groups
from maskrl.models.lora import LoraConfig, for_training
from maskrl.sampling import SamplingConfig
from maskrl.train_config import EvalConfig


class VersionMismatch(RuntimeError):
    pass


class BroadcastAbandoned(RuntimeError):
    """The weight group's broadcast broke before this worker joined it; its weights come another way."""


class RolloutWorker:
    def __init__(self, checkpoint: str, version: int, sampling: SamplingConfig, lora: LoraConfig, threads: int,
                 use_gpu: bool = False, branch: BranchConfig | None = None):
        torch.set_num_threads(threads)
        self.device = "cuda" if use_gpu else "cpu"
        # the learner's architecture (adapters included): published weights are its trainable state
        self.policy = for_training(load_checkpoint(checkpoint), lora, checkpoint).to(self.device).requires_grad_(False)
        self.version, self.sampling, self.branch = version, sampling, branch
        self.adopted = False  # the weights are read-only views of the object store (adopt_numpy)

    def ready(self) -> int:
        return self.version

    def address(self) -> tuple[str, str]:
        return collective.node_address()

    def load_weights(self, version: int, state: dict[str, np.ndarray]) -> float:
        """Returns the seconds spent loading."""
        start = time.perf_counter()
        if self.device == "cpu":  # sampling only reads the weights: use the object store's in place
            weights.adopt_numpy(self.policy, state)
        else:
            weights.load_numpy(self.policy, state)
        self.adopted = self.device == "cpu"
        self.version = version
        return time.perf_counter() - start

    def join_group(self, world_size: int, rank: int, name: str, store_host: str, bind_host: str, backend: str) -> None:
        collective.join(world_size, rank, name, store_host, bind_host, backend)

    def leave_group(self, name: str) -> None:
        collective.leave(name)

    def receive_weights(self, version: int, group: str, bucket_bytes: int) -> float:
        """Returns the seconds spent in the broadcast (including waiting for the sender)."""
        if collective.is_abandoned(group):
            raise BroadcastAbandoned(f"weight group {group} was abandoned before version {version} reached this worker")
        start = time.perf_counter()
        if self.adopted:  # the broadcast writes in place: into memory of this worker's own
            weights.own_weights(self.policy)
            self.adopted = False
        try:
            weights.broadcast_recv(self.policy, version, group, bucket_bytes)
        except BaseException:
            self.version = -1  # some buckets may be overwritten already: no task may run on these weights
            raise
        self.version = version
        return time.perf_counter() - start

    @ray.method(num_returns=2)
    def generate(self, prompts: list[tuple[int, str]], group_size: int, seed: int, version: int):
        """(record batch of len(prompts) * group_size trajectories, small stats); group id = stream index."""
        if version != self.version:
            raise VersionMismatch(f"asked for rollouts of policy version {version}, this worker holds {self.version}")
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(seed)
        batch = rollout_groups(self.policy, prompts, group_size, self.sampling, gen, self.version, self.branch)
        record = batch.to_arrow()
        stats = {"images": len(batch), "seconds": time.perf_counter() - start, "bytes": record.nbytes}
        return record, stats

    def eval_chunk(self, cfg: EvalConfig, chunk: int, version: int) -> list[bool]:
        """Pass results of one chunk of the held-out prompts (maskrl.evaluation.chunk_passes)."""
        if version != self.version:
            raise VersionMismatch(f"asked to evaluate policy version {version}, this worker holds {self.version}")
        prompts = held_out_prompts(cfg.prompts, cfg.seed)
        return chunk_passes(self.policy, prompts, chunk, cfg.samples, cfg.sampling, cfg.seed)

    def sample_grid(self, prompts: list[str], samples: int, sampling: SamplingConfig, seed: int) -> np.ndarray:
        """(len(prompts), samples, 16, 16) uint8 palette grids: a few images for the run's PNG grids."""
        return generate(self.policy, prompts, samples, sampling, seed).astype(np.uint8)


RolloutActor = ray.remote(RolloutWorker)  # the class itself stays importable, so Ray pickles it by reference
