"""ShapesWorld: the project's exactly specified text-to-image world (see SHAPES_WORLD.md)."""

from .detect import Detection, detect, detect_batch, detect_with_junk, relation_holds
from .evaluate import clause_credits, dense_reward, dense_reward_batch, pass_list, pass_rates, passes, shapes_eval
from .grammar import (
    CATEGORIES, COLORS, NUMBERS, PLURALS, RELATIONS, SHAPES, VOCABULARY, ObjectSpec, Prompt,
    PromptError, PromptSampler, enumerate_prompts, parse_prompt, relation_holds_at,
)
from .render import BITMAPS, GRID, PALETTE, read_png, render, render_batch, to_rgb, write_png

__all__ = [
    "BITMAPS", "CATEGORIES", "COLORS", "GRID", "NUMBERS", "PALETTE", "PLURALS", "RELATIONS", "SHAPES",
    "VOCABULARY", "Detection", "ObjectSpec", "Prompt", "PromptError", "PromptSampler", "clause_credits",
    "dense_reward", "dense_reward_batch", "detect", "detect_batch", "detect_with_junk", "enumerate_prompts",
    "parse_prompt", "pass_list", "pass_rates", "passes", "read_png", "relation_holds", "relation_holds_at", "render", "render_batch",
    "shapes_eval", "to_rgb", "write_png",
]
