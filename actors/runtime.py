"""Joining Ray: the cluster at RAY_ADDRESS when set, else a fresh local instance (dashboard on
the configured loopback host, token authentication on)."""
from __future__ import annotations

import logging
import os

import ray

from maskrl.train_config import ClusterConfig


def connect(cluster: ClusterConfig) -> tuple[bool, str | None]:
    """(whether this call started a local Ray instance, which the caller then shuts down; dashboard URL)."""
    if ray.is_initialized():  # e.g. a test session or a notebook that already joined
        return False, None
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        info = ray.init(address=address, runtime_env={"env_vars": env}, logging_level=logging.WARNING)
        return False, info.dashboard_url
    # Ray >= 2.52 supports token authentication; a local ray.init() then generates a token
    # (~/.ray/auth_token) and requires it from every client, the dashboard included.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    os.environ.update(env)  # local workers inherit the driver's environment
    info = ray.init(include_dashboard=True, dashboard_host=cluster.dashboard_host, logging_level=logging.WARNING)
    return True, info.dashboard_url
