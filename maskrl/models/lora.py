"""LoRA adapters (peft) on a policy's transformer: only the adapters train, travel and are saved.

`add_lora` freezes the policy and injects peft's LoRA layers into the linear layers named by
`target_modules` of the policy's `lora_host` (its transformer; by default the family's
`lora_targets`: attention and MLP). The adapters' tensors (the names holding ``lora_``) are then
the policy's *trainable state*: what the optimiser steps, what a weight publish sends to the
rollout workers, and what a checkpoint stores, with a reference to the full-weight checkpoint
they adapt (its name or path, and the size and SHA-256 of its weights, checked at load). With
`rank: 0` (full fine-tuning) the whole state dict is the trainable state.
"""
from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import peft
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file

from maskrl.checkpoints import checkpoint_name, file_digest, resolve_checkpoint

ADAPTER_FILE = "adapter.safetensors"
ADAPTER_MARK = "lora_"  # peft names every adapter tensor ...lora_A... / ...lora_B...
INIT_SEED = 0


@dataclass
class LoraConfig:
    # no dropout: the learner's recomputed log-probs must equal the sampler's (the ratio starts at 1)
    rank: int = 0  # 0: full fine-tuning (every weight trains, travels and is saved)
    alpha: float = 16.0  # the adapter's output is scaled by alpha / rank
    target_modules: list[str] = field(default_factory=list)  # empty: the policy family's `lora_targets`
    # guidance's unconditional pass runs on the base (adapters bypassed): RL moves the conditional
    # model only, where (1 + s) c - s u would amplify any drift of u (bench/study_cfg_drift.py)
    base_unconditional: bool = False


def check_lora(cfg: LoraConfig) -> None:
    """Refuse values peft cannot use, naming the field."""
    if cfg.rank < 0:
        raise ValueError(f"rank must be 0 (full fine-tuning) or positive, got {cfg.rank}")
    if cfg.rank and cfg.alpha <= 0:
        raise ValueError(f"alpha must be positive, got {cfg.alpha}")
    if cfg.base_unconditional and not cfg.rank:
        raise ValueError("base_unconditional bypasses the adapters in guidance's unconditional pass: it needs rank > 0")


def has_lora(policy: torch.nn.Module) -> bool:
    return getattr(policy, "lora", None) is not None


def add_lora(policy: torch.nn.Module, cfg: LoraConfig, base_dir: str | Path) -> torch.nn.Module:
    """Freeze `policy` (loaded from the checkpoint `base_dir`) and give its transformer trainable
    adapters; B starts at zero, so the adapted policy equals the base. A's random start is seeded:
    every process (learner ranks, rollout workers, a rerun) builds the same adapters."""
    if has_lora(policy):
        raise ValueError("the policy has LoRA adapters already")
    cfg = resolved(policy, cfg)
    policy.requires_grad_(False)
    spec = peft.LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0, target_modules=list(cfg.target_modules))
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(INIT_SEED)
            peft.inject_adapter_in_model(spec, policy.lora_host)
    except ValueError as err:  # peft: no module matched
        raise ValueError(f"lora.target_modules={list(cfg.target_modules)}: {err}") from None
    base_dir = Path(base_dir)
    policy.lora = cfg
    policy.lora_base = {"checkpoint": checkpoint_name(base_dir), **file_digest(_identity_file(base_dir))}
    return policy


def resolved(policy: torch.nn.Module, cfg: LoraConfig) -> LoraConfig:
    """`cfg` with its target modules spelled out (empty: the policy family's)."""
    return replace(cfg, target_modules=sorted(cfg.target_modules or policy.lora_targets))


def _identity_file(base_dir: Path) -> Path:
    """The file that identifies a base: its weights, or the config.json of a release reference (whose
    weights lie in the release's own directory)."""
    weights = base_dir / "model.safetensors"
    return weights if weights.is_file() else base_dir / "config.json"


@contextlib.contextmanager
def adapters_off(policy: torch.nn.Module):
    """The base model alone inside (every adapter bypassed); which tensors train is left as it was."""
    layers = [m for m in policy.lora_host.modules() if isinstance(m, BaseTunerLayer)]
    trainable = [p for p in policy.parameters() if p.requires_grad]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)  # peft makes every active adapter trainable again ...
        policy.requires_grad_(False)
        for p in trainable:  # ... so restore exactly what trained before
            p.requires_grad_(True)


def trainable_state(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a run changes: the adapters under LoRA, else the whole state dict (same order on
    every process that built the same policy, which the collective transport relies on)."""
    state = policy.state_dict()
    return {k: v for k, v in state.items() if ADAPTER_MARK in k} if has_lora(policy) else state


def for_training(policy: torch.nn.Module, cfg: LoraConfig, source: str | Path) -> torch.nn.Module:
    """The policy loaded from checkpoint `source`, set up as the run's `lora` config says: adapters
    added (rank > 0) or kept (a checkpoint of a LoRA run, whose settings must be the run's)."""
    if has_lora(policy):
        held, wanted = asdict(resolved(policy, policy.lora)), asdict(resolved(policy, cfg))
        if held != wanted:
            raise ValueError(f"checkpoint {str(source)!r} holds LoRA adapters {held}; "
                             f"the run's config key 'lora' says {wanted}: set it to the checkpoint's")
        return policy
    return add_lora(policy, cfg, source) if cfg.rank else policy


def save_adapters(policy: torch.nn.Module, directory: Path) -> dict:
    """Write the adapter tensors; returns what config.json records about them."""
    save_file({k: v.detach().contiguous() for k, v in trainable_state(policy).items()}, directory / ADAPTER_FILE)
    return {**asdict(policy.lora), "base": policy.lora_base}


def load_adapters(policy: torch.nn.Module, directory: Path, meta: dict) -> torch.nn.Module:
    """Add the adapters recorded in `meta` (config.json's `lora`) to `policy`, the base they were
    trained on, and load their tensors; every adapter tensor must be in the file, nothing else."""
    base = meta["base"]
    base_dir = resolve_checkpoint(base["checkpoint"])
    found = file_digest(_identity_file(base_dir))
    if (found["bytes"], found["sha256"]) != (base["bytes"], base["sha256"]):
        raise ValueError(f"checkpoint {str(directory)!r} holds LoRA adapters of {base['checkpoint']!r}, whose "
                         f"{_identity_file(base_dir).name} has changed since (sha256 {found['sha256'][:12]}, expected {base['sha256'][:12]})")
    add_lora(policy, LoraConfig(**{k: v for k, v in meta.items() if k != "base"}), base_dir)
    saved, own = load_file(directory / ADAPTER_FILE), trainable_state(policy)
    missing, unexpected = sorted(own.keys() - saved.keys()), sorted(saved.keys() - own.keys())
    if missing or unexpected:
        raise ValueError(f"{str(directory / ADAPTER_FILE)!r} does not fit the adapters: missing {missing[:5]}, unexpected {unexpected[:5]}")
    policy.load_state_dict(saved, strict=False)
    return policy
