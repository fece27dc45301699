"""Checkpoint resolution, batched generation and held-out ShapesEval."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from maskrl.models import PaletteTokenizer, ShowoPolicy, load_policy
from maskrl.sampling import SamplingConfig, sample
from maskrl.world import CATEGORIES, Prompt, PromptSampler, pass_list, shapes_eval
from maskrl.world.intervals import shapes_eval_intervals

ASSETS = Path(__file__).parent / "assets"
NAMED_CHECKPOINTS = {"base": ASSETS / "base"}


def resolve_checkpoint(name: str) -> Path:
    """`base` -> the shipped base model; anything else must be a checkpoint directory."""
    path = NAMED_CHECKPOINTS.get(name, Path(name))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"checkpoint {name!r} not found (looked for {str(path / 'config.json')!r}); "
            f"pass a maskrl checkpoint directory or one of {sorted(NAMED_CHECKPOINTS)}"
        )
    return path


def load_checkpoint(name: str) -> ShowoPolicy:
    policy = load_policy(resolve_checkpoint(name))
    policy.eval()
    return policy


def held_out_prompts(n: int, seed: int) -> list[Prompt]:
    """A category-balanced prompt sample (category i % 6 for prompt i), fixed by `seed`."""
    rng = np.random.default_rng(seed)
    samplers = [PromptSampler({c: 1.0}) for c in CATEGORIES]
    return [samplers[i % len(CATEGORIES)].sample(rng) for i in range(n)]


def generate(
    policy: ShowoPolicy, prompts: list[str], samples: int, sampling: SamplingConfig, seed: int,
    batch_size: int = 64, progress: bool = False,
) -> np.ndarray:
    """(len(prompts), samples, 16, 16) palette grids; sample k of prompt i is row i*samples+k."""
    texts = [p for p in prompts for _ in range(samples)]
    gen, grids = torch.Generator().manual_seed(seed), []
    for start in tqdm(range(0, len(texts), batch_size), desc="generate", disable=not progress):
        rollout = sample(policy, texts[start : start + batch_size], sampling, gen)
        grids.append(PaletteTokenizer().decode(rollout.tokens))
    return np.concatenate(grids).reshape(len(prompts), samples, *grids[0].shape[1:])


def evaluate(policy: ShowoPolicy, prompts: list[Prompt], samples: int, sampling: SamplingConfig, seed: int,
             progress: bool = False) -> dict:
    """ShapesEval of `samples` images a prompt: the rates, `overall_ci95` and per-category `ci95`
    (95% intervals, maskrl.world.intervals), and the image counts."""
    grids = generate(policy, [p.text for p in prompts], samples, sampling, seed, progress=progress)
    return score_images([p for p in prompts for _ in range(samples)], grids.reshape(-1, *grids.shape[2:]))


def score_images(prompts: list[Prompt], grids) -> dict:
    """ShapesEval with its 95% intervals for one image per prompt entry (repeat a prompt for its samples)."""
    intervals = shapes_eval_intervals(prompts, pass_list(prompts, grids))
    overall_ci = intervals.pop("overall")
    return {**shapes_eval(prompts, grids), "overall_ci95": overall_ci, "ci95": intervals, "images": len(prompts)}


def flat_metrics(result: dict, prefix: str = "eval/") -> dict[str, float]:
    """An `evaluate` result as flat scalar metrics: rates, `*_ci95_low`/`*_ci95_high`, images."""
    out = {f"{prefix}{k}": v for k, v in result.items() if isinstance(v, float)}
    for name, (low, high) in {"overall": result["overall_ci95"], **result["ci95"]}.items():
        out[f"{prefix}{name}_ci95_low"], out[f"{prefix}{name}_ci95_high"] = low, high
    return out | {f"{prefix}images": float(result["images"])}
