"""ShapesEval pass rules (SHAPES_WORLD.md section 4) and a dense RL reward built on them."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .detect import Detection, detect_with_junk, relation_holds
from .grammar import CATEGORIES, MIN_RELATION_OFFSET, ObjectSpec, Prompt, relation_offsets

WRONG_COLOR_CREDIT = 0.5   # right shape, wrong colour
MAX_NEAR_MISS_CREDIT = 0.5  # relation pointing the right way but short of the rule (exclusive bound)
COUNT_DECAY = 0.5          # counting credit per object off
CLUTTER_PENALTY = 0.05     # per junk component or object beyond the prompt's count
MAX_CLUTTER_PENALTY = 0.15  # < 1/6, the gap between the best failing and the worst passing score


def _matches(spec: ObjectSpec, det: Detection) -> bool:
    return det.shape == spec.shape and spec.color in (None, det.color)


def passes(prompt: Prompt, detections: Sequence[Detection]) -> bool:
    """Whether detected objects satisfy the prompt per the spec's pass table."""
    if prompt.category == "counting":
        return sum(d.shape == prompt.objects[0].shape for d in detections) == prompt.number
    if prompt.category == "position":
        a_spec, b_spec = prompt.objects
        return any(relation_holds(prompt.relation, a, b) for a in detections if _matches(a_spec, a)
                   for b in detections if _matches(b_spec, b))
    return all(any(_matches(spec, d) for d in detections) for spec in prompt.objects)


def _as_detections(grid_or_detections) -> tuple[Sequence[Detection], int]:
    if isinstance(grid_or_detections, np.ndarray):
        return detect_with_junk(grid_or_detections)
    return grid_or_detections, 0


def pass_list(prompts: Sequence[Prompt], grids) -> list[bool]:
    """Whether each image passes its prompt."""
    if len(prompts) != len(grids):
        raise ValueError(f"{len(prompts)} prompts but {len(grids)} images")
    if not prompts:
        raise ValueError("shapes_eval needs at least one prompt")
    return [passes(prompt, _as_detections(grid)[0]) for prompt, grid in zip(prompts, grids)]


def shapes_eval(prompts: Sequence[Prompt], grids) -> dict:
    """Per-category pass rates and their unweighted mean ("overall").

    `grids` holds one (16, 16) palette-index array (or one list of detections) per prompt.

    Categories with no prompts are left out of both the rates and the mean, so a run
    over a subset of categories reports the mean over the categories it covers.
    """
    return pass_rates(prompts, pass_list(prompts, grids))


def pass_rates(prompts: Sequence[Prompt], passed: Sequence[bool]) -> dict:
    """`shapes_eval`'s result from whether each image passed its prompt."""
    results: dict[str, list[bool]] = {}
    for prompt, ok in zip(prompts, passed):
        results.setdefault(prompt.category, []).append(bool(ok))
    rates = {c: float(np.mean(results[c])) for c in CATEGORIES if c in results}
    return {"overall": float(np.mean(list(rates.values()))), **rates,
            "counts": {c: len(results[c]) for c in rates}}


def _object_credit(spec: ObjectSpec, detections: Sequence[Detection]) -> float:
    """1 for a matching object, WRONG_COLOR_CREDIT for the right shape in the wrong colour."""
    return max((1.0 if _matches(spec, d) else WRONG_COLOR_CREDIT
                for d in detections if d.shape == spec.shape), default=0.0)


def _relation_credit(relation: str, a: Detection, b: Detection) -> float:
    """1 when the relation holds; below MAX_NEAR_MISS_CREDIT when B is only somewhat that way."""
    along, across = relation_offsets(relation, b.cx - a.cx, b.cy - a.cy)
    if along >= MIN_RELATION_OFFSET and along >= across:
        return 1.0
    if along <= 0:
        return 0.0
    return MAX_NEAR_MISS_CREDIT * min(along / MIN_RELATION_OFFSET, along / max(across, 1))


def clause_credits(prompt: Prompt, detections: Sequence[Detection]) -> list[float]:
    """Credit in [0, 1] for each clause of the prompt; all 1.0 exactly when it passes."""
    if prompt.category == "counting":
        count = sum(d.shape == prompt.objects[0].shape for d in detections)
        return [COUNT_DECAY ** abs(count - prompt.number) if count else 0.0]
    credits = [_object_credit(spec, detections) for spec in prompt.objects]
    if prompt.category == "position":
        a_spec, b_spec = prompt.objects
        credits.append(max((_relation_credit(prompt.relation, a, b)
                            for a in detections if a.shape == a_spec.shape
                            for b in detections if b.shape == b_spec.shape), default=0.0))
    return credits


def dense_reward(prompt: Prompt, grid_or_detections) -> float:
    """Dense RL reward in [0, 1]: mean clause credit minus a small clutter penalty.

    Clauses: each named object (1 if present as named, 0.5 if only its colour is wrong);
    for position also the relation (1 if it holds, < 0.5 pointing the right way but short,
    0 otherwise); for counting one clause, 0.5 ** |count - number| (0 with none at all).
    Clutter: 0.05 per junk component and per object beyond the prompt's object count,
    capped at 0.15. Every failing image scores < 5/6 and every passing one >= 0.85, so a
    pass always outranks a failure; 1.0 means a pass with no clutter (any clean render).
    A list of detections instead of a grid carries no junk count.
    """
    detections, junk = _as_detections(grid_or_detections)
    credits = clause_credits(prompt, detections)
    extra = max(0, len(detections) - len(prompt.objects))
    penalty = min(MAX_CLUTTER_PENALTY, CLUTTER_PENALTY * (junk + extra))
    return max(0.0, float(np.mean(credits)) - penalty)


def dense_reward_batch(prompts: Sequence[Prompt], grids) -> np.ndarray:
    if len(prompts) != len(grids):
        raise ValueError(f"{len(prompts)} prompts but {len(grids)} images")
    return np.array([dense_reward(p, g) for p, g in zip(prompts, grids)], dtype=np.float32)
