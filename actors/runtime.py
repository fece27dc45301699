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
    # Token authentication: Ray 2.60 turns it on by default for a local instance (unless
    # RAY_AUTH_MODE=disabled), generating ~/.ray/auth_token and requiring it from every client,
    # the dashboard included. (Setting RAY_AUTH_MODE here would be too late: Ray reads it at import.)
    os.environ.update(env)  # local workers inherit the driver's environment
    info = ray.init(address="local", include_dashboard=True, dashboard_host=cluster.dashboard_host, logging_level=logging.WARNING)
    return True, info.dashboard_url
