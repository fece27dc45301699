"""Every seed a run derives, in one place: each is a pure function of the run's seed and the
position of the work, so work redone elsewhere (another worker, a resumed run, another rank)
draws exactly what it drew the first time."""
from __future__ import annotations

import numpy as np


def _derive(*key: int) -> int:
    return int(np.random.SeedSequence(list(key)).generate_state(1)[0])


def task_seed(seed: int, iteration: int, first_index: int) -> int:
    """The generator of the rollout task whose first group is stream index `first_index`."""
    return _derive(seed, iteration, first_index, 0x52)


def update_seed(seed: int, iteration: int) -> int:
    """The generator of iteration k's update (step sampling, minibatch order): same on every rank."""
    return _derive(seed, iteration, 0x6C)


def chunk_seed(seed: int, chunk: int) -> int:
    """The generator of evaluation prompt chunk `chunk` of a sample seeded `seed`."""
    return seed * 1_000_003 + chunk
