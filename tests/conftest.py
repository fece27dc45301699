import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")

import pytest
import torch

from maskrl.models import ShowoConfig, ShowoPolicy

torch.set_num_threads(2)

TINY = ShowoConfig(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)


@pytest.fixture
def tiny_policy() -> ShowoPolicy:
    torch.manual_seed(0)
    policy = ShowoPolicy(TINY)
    policy.eval()
    return policy
