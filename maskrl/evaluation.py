"""Loading a checkpoint for sampling, batched generation and held-out ShapesEval."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from tqdm import tqdm

from maskrl.checkpoints import resolve_checkpoint
from maskrl.models import ShowoPolicy, load_policy
from maskrl.models.policy import MaskedPolicy
from maskrl.sampling import SamplingConfig, sample
from maskrl.seeds import chunk_seed
from maskrl.world import CATEGORIES, Prompt, PromptSampler, pass_list, pass_rates
from maskrl.world.intervals import shapes_eval_intervals

def load_checkpoint(name: str) -> MaskedPolicy:
    policy = load_policy(resolve_checkpoint(name))
    policy.eval()
    return policy


def held_out_prompts(n: int, seed: int) -> list[Prompt]:
    """A category-balanced prompt sample (category i % 6 for prompt i), fixed by `seed`."""
    rng = np.random.default_rng(seed)
    samplers = [PromptSampler({c: 1.0}) for c in CATEGORIES]
    return [samplers[i % len(CATEGORIES)].sample(rng) for i in range(n)]


CHUNK = 32  # prompts per independently seeded chunk: any split of the chunks over workers draws the same images


def generate(
    policy: MaskedPolicy, prompts: list[str], samples: int, sampling: SamplingConfig, seed: int,
    progress: bool = False, first_chunk: int = 0,
) -> np.ndarray:
    """(len(prompts), samples, ...) images (`policy.decode_images`: ShapesWorld's 16 x 16 palette
    grids, a real model's RGB); sample k of prompt i is [i, k]. Prompts are
    drawn in chunks of CHUNK, chunk c seeded by chunk_seed(seed, first_chunk + c), so generating
    a chunk alone (`first_chunk`) gives exactly the images it gets in the whole list."""
    grids = []
    for c, start in enumerate(tqdm(range(0, len(prompts), CHUNK), desc="generate", disable=not progress)):
        texts = [p for p in prompts[start : start + CHUNK] for _ in range(samples)]
        rollout = sample(policy, texts, sampling, torch.Generator().manual_seed(chunk_seed(seed, first_chunk + c)))
        grids.append(policy.decode_images(rollout.tokens))
    return np.concatenate(grids).reshape(len(prompts), samples, *grids[0].shape[1:])


def chunk_passes(policy: ShowoPolicy, prompts: list[Prompt], chunk: int, samples: int, sampling: SamplingConfig,
                 seed: int) -> list[bool]:
    """Whether each image of one prompt chunk passes (prompt-major, `samples` a prompt)."""
    part = prompts[chunk * CHUNK : (chunk + 1) * CHUNK]
    grids = generate(policy, [p.text for p in part], samples, sampling, seed, first_chunk=chunk)
    return pass_list([p for p in part for _ in range(samples)], grids.reshape(-1, *grids.shape[2:]))


def chunks_of(prompts: list) -> range:
    return range(-(-len(prompts) // CHUNK))


def chunk_length(prompts: list, chunk: int) -> int:
    """Prompts in chunk `chunk` (the last may be short)."""
    return len(prompts[chunk * CHUNK : (chunk + 1) * CHUNK])


def summarise(prompts: list[Prompt], samples: int, passed: list[bool]) -> dict:
    """ShapesEval of prompt-major pass results: the rates, `overall_ci95` and per-category `ci95`
    (95% intervals, maskrl.world.intervals), the image counts."""
    entries = [i for i in range(len(prompts)) for _ in range(samples)]
    images = [prompts[i] for i in entries]
    intervals = shapes_eval_intervals(images, passed, entries)
    overall_ci = intervals.pop("overall")
    return {**pass_rates(images, passed), "overall_ci95": overall_ci, "ci95": intervals, "images": len(images)}


def evaluate(policy: ShowoPolicy, prompts: list[Prompt], samples: int, sampling: SamplingConfig, seed: int,
             progress: bool = False) -> dict:
    """Held-out ShapesEval of `samples` images a prompt (see `summarise`)."""
    passed = [ok for c in tqdm(chunks_of(prompts), desc="evaluate", disable=not progress)
              for ok in chunk_passes(policy, prompts, c, samples, sampling, seed)]
    return summarise(prompts, samples, passed)


def flat_metrics(result: dict, prefix: str = "eval/") -> dict[str, float]:
    """An `evaluate` result as flat scalar metrics: rates, `*_ci95_low`/`*_ci95_high`, images."""
    out = {f"{prefix}{k}": v for k, v in result.items() if isinstance(v, float)}
    for name, (low, high) in {"overall": result["overall_ci95"], **result["ci95"]}.items():
        out[f"{prefix}{name}_ci95_low"], out[f"{prefix}{name}_ci95_high"] = low, high
    return out | {f"{prefix}images": float(result["images"])}


def eval_protocols(e) -> dict:
    """metric prefix -> the `EvalConfig` each protocol runs: `eval/` is `e` itself, and each of
    `e.cfg_scales` adds `eval/cfg{s}/`, `e.sampling` at guidance s on the first `e.extra_prompts`
    prompts of the same held-out sample (all `e.prompts` when it is 0 or larger), e.g. a CFG-free policy
    as trained, or the default CFG 3 beside it."""
    extra = replace(e, prompts=min(e.extra_prompts or e.prompts, e.prompts), cfg_scales=[], extra_prompts=0)
    return {"eval/": e, **{f"eval/cfg{s:g}/": replace(extra, sampling=replace(e.sampling, cfg_scale=float(s)))
                           for s in e.cfg_scales}}


def eval_metrics(policy: ShowoPolicy, e) -> dict[str, float]:
    """Held-out ShapesEval of `policy` under an `EvalConfig` `e`, every protocol, as flat metrics."""
    return {k: v for prefix, p in eval_protocols(e).items()
            for k, v in flat_metrics(evaluate(policy, held_out_prompts(p.prompts, p.seed), p.samples, p.sampling, seed=p.seed),
                                     prefix).items()}
