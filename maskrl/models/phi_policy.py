"""What every policy built on transformers' Phi shares (ShapesWorld's and Show-o's): LoRA on its
attention and MLP linears, activation checkpointing, the parameter count. Subclasses set `self.lm`."""
from __future__ import annotations

from torch import nn

from maskrl.models.showo_release import PHI_LINEAR_LAYERS


class PhiPolicy(nn.Module):
    lora_targets = PHI_LINEAR_LAYERS
    lm: nn.Module

    @property
    def lora_host(self) -> nn.Module:
        return self.lm

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each Phi block's activations in the backward pass (training mode only)."""
        self.lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
