"""maskrl: Mask-GRPO for masked generative text-to-image models."""
