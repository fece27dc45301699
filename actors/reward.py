"""Reward workers: decode a trajectory batch's tokens to images and score them with the
configured reward (`maskrl.iteration.score`); the scored batch goes back to the object store."""
from __future__ import annotations

import time

import pyarrow as pa
import ray
import torch

from actors import collective
from maskrl.iteration import score
from maskrl.models.store import image_decoder
from maskrl.rewards import build_reward
from maskrl.rewards.base import RewardConfig
from maskrl.trajectory import TrajectoryBatch


class RewardWorker:
    def __init__(self, reward: RewardConfig | str, checkpoint: str, threads: int):
        torch.set_num_threads(threads)
        self.reward, self.decode = build_reward(reward), image_decoder(checkpoint)

    def ready(self) -> bool:
        return True

    def address(self) -> tuple[str, str]:
        return collective.node_address()

    @ray.method(num_returns=2)
    def score(self, record: pa.RecordBatch):
        """(the batch with rewards, as a new record batch; {"images", "seconds", reward component means})."""
        start = time.perf_counter()
        scored, components = score(TrajectoryBatch.from_arrow(record), self.reward, self.decode)
        stats = {"images": len(scored), "seconds": time.perf_counter() - start, **components}
        return scored.to_arrow(), stats


RewardActor = ray.remote(RewardWorker)  # the class itself stays importable, so Ray pickles it by reference
