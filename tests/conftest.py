import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import pytest
import torch

from maskrl.models import ShowoPolicy
from tests.helpers import TINY, local_ray, tiny_checkpoint

torch.set_num_threads(2)


@pytest.fixture
def tiny_policy() -> ShowoPolicy:
    torch.manual_seed(0)
    policy = ShowoPolicy(TINY)
    policy.eval()
    return policy


@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray instance for one test module."""
    with local_ray() as r:
        yield r


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    """A tiny random policy as a checkpoint directory, for one test module."""
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny"))
