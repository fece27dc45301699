"""The one interface every masked text-to-image policy implements, and its sampler preset.

The sampler, the transition log-probs, the learner and the rollout workers only use what is
declared here, so a model family (ShapesWorld's own policy, Show-o, ...) plugs in by
implementing it. Image states are held in *code space*: 0..K-1 are the codebook's codes and
`mask_code` (= K) is the mask, whatever ids the model uses inside its own vocabulary.

Each family samples its own way; `SamplerPreset` says how (the guidance formula, the noise
schedule's rounding of how many tokens stay masked after each step), and the sampler follows it.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Callable, Protocol, runtime_checkable

import numpy as np
import torch

from maskrl.schedule import MaskRounding


class Guidance(StrEnum):
    """Classifier-free guidance on the logits, with scale s."""
    showo = "showo"  # Show-o and ShapesWorld: (1 + s) * cond - s * uncond
    diffusers = "diffusers"  # aMUSEd / MaskGIT in diffusers: uncond + s * (cond - uncond)


@dataclass(frozen=True)
class SamplerPreset:
    """A model family's sampling rules; `SamplingConfig` still sets steps, scale and noise."""
    guidance: Guidance = Guidance.showo
    mask_rounding: MaskRounding = MaskRounding.float64


def guidance_active(scale: float, guidance: Guidance) -> bool:
    """Whether a step runs the unconditional pass: Show-o guides at any s != 0; diffusers' pipelines
    only above s = 1 (at s <= 1 they use the conditional logits alone)."""
    return scale > 1 if guidance == Guidance.diffusers else scale != 0


def guided_logits(cond: torch.Tensor, uncond: torch.Tensor, scale: float, guidance: Guidance) -> torch.Tensor:
    if guidance == Guidance.showo:
        return (1 + scale) * cond - scale * uncond
    return uncond + scale * (cond - uncond)


ImageDecoder = Callable[[torch.Tensor], np.ndarray]  # (B, N) codes -> the images a reward scores


@runtime_checkable
class MaskedPolicy(Protocol):
    """A masked text-to-image policy (a torch module) as maskrl's sampler and learner use it."""

    mask_code: int  # code-space id of the mask token (= the codebook size K)
    num_image_tokens: int  # N = H * W
    grid_shape: tuple[int, int]  # (H, W) of the token grid
    preset: SamplerPreset
    lora_targets: tuple[str, ...]  # the linear layers LoRA adapts by default

    def encode_prompts(self, texts: list[str]) -> torch.Tensor:
        """(B, L) int64 conditioning ids; a prompt the model cannot take raises ValueError naming it."""

    def null_prompts(self, batch: int) -> torch.Tensor:
        """(B, L) the condition-free input used for classifier-free guidance."""

    def attention_mask(self, text_ids: torch.Tensor) -> torch.Tensor | None:
        """The attention mask for a batch of conditioning ids, built once per batch and reused."""

    def forward(self, text_ids: torch.Tensor, image_state: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L) ids, (B, N) code-space state -> (B, N, K) logits over the codebook."""

    def decode_images(self, tokens: torch.Tensor) -> np.ndarray:
        """(B, N) codes -> the images rewards score (RGB uint8 (B, H, W, 3), or the world's own grids)."""

    def enable_gradient_checkpointing(self) -> None:
        """Trade the learner's activation memory for recomputation (same gradients)."""

    @property
    def lora_host(self) -> torch.nn.Module:
        """The module LoRA adapters go into (the transformer); `lora_targets` names its linear layers."""
