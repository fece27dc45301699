"""ShapesCLIP: a small CLIP (open_clip's `CLIP` class) for ShapesWorld image-caption pairs.

Architecture (`model_config()`): a ViT on the 16 x 16 RGB render (patch 4, so 16 patch tokens;
width 96, 4 layers) and a causal text transformer (width 96, 2 layers) over the ShapesWorld word
tokenizer (`maskrl.models.build_text_tokenizer`, one id per grammar word), pooled at `<eos>`;
64-d joint embedding. About 0.7 M parameters, under 3 MB of float32.

Saved in open_clip's `local-dir:` layout, so stock open_clip loads it:

    open_clip_config.json        {"model_cfg": ..., "preprocess_cfg": ...}; text_cfg names an
                                 hf_tokenizer_name, so open_clip.get_tokenizer reads the folder's
    open_clip_model.safetensors  the weights (never a pickle)
    tokenizer.json, tokenizer_config.json, ...
    README.md, card.json         the model card: command, training time, retrieval accuracy

    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:maskrl/assets/shapes_clip")
    tokenizer = open_clip.get_tokenizer("local-dir:maskrl/assets/shapes_clip")

Retrieval accuracy (`retrieval_accuracy`): for clean renders of each category, the top-1 of
image -> text retrieval among all of that category's prompts (`enumerate_prompts(category)`).
Some prompts are rewordings of one another ("a circle and a square" / "a square and a circle",
"a circle to the left of a square" / "a square to the right of a circle"); a retrieved rewording
counts as correct in `top1`, not in `top1_exact` (whose ceiling is then 0.5 for those categories).
`matched_above_mismatched`: the image's own caption scores above every caption of its category
that is false for the image (by ShapesEval's rules).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from maskrl.world import CATEGORIES, Prompt, detect, enumerate_prompts, passes, render_batch

CONTEXT_LENGTH = 12  # <bos> + at most 8 words + <eos>, padded
TOKENIZER_TAG = "maskrl/shapes-words"  # any non-empty hf_tokenizer_name makes open_clip read the folder's tokenizer
PREPROCESS_CFG = {"size": 16, "mode": "RGB", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                  "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}
_INVERSE = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below", "below": "above"}


def shapes_tokenizer():
    """The ShapesWorld word tokenizer, right-padded (ids: <pad> 0, <bos> 1, <eos> 2, then words)."""
    from maskrl.models.text_tokenizer import build_text_tokenizer

    tok = build_text_tokenizer()
    tok.padding_side = "right"
    return tok


def model_config(vocab_size: int, eos_id: int, pad_id: int, width: int = 96, vision_layers: int = 4,
                 text_layers: int = 2, embed_dim: int = 64, patch_size: int = 4) -> dict:
    """open_clip model_cfg of ShapesCLIP."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": 16, "patch_size": patch_size, "width": width, "head_width": 32,
                       "layers": vision_layers, "mlp_ratio": 4.0},
        "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": vocab_size, "width": width,
                     "heads": width // 32, "layers": text_layers, "mlp_ratio": 4.0, "pool_type": "eos",
                     "eos_id": eos_id, "pad_id": pad_id, "hf_tokenizer_name": TOKENIZER_TAG},
    }


def build_model(cfg: dict):
    import open_clip

    model = open_clip.CLIP(**cfg)
    open_clip.model.set_model_preprocess_cfg(model, PREPROCESS_CFG)
    return model


def save(model, tokenizer, cfg: dict, out: str | Path) -> Path:
    """Write the local-dir layout: config, safetensors weights, tokenizer files."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    # The generic class name, so transformers 4.x (whose AutoTokenizer lacks "TokenizersBackend") loads it too.
    tok_cfg = out / "tokenizer_config.json"
    tok_cfg.write_text(json.dumps({**json.loads(tok_cfg.read_text()), "tokenizer_class": "PreTrainedTokenizerFast"}, indent=2))
    with open(out / "open_clip_config.json", "w") as f:
        json.dump({"model_cfg": cfg, "preprocess_cfg": PREPROCESS_CFG}, f, indent=2)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"), metadata={"format": "pt", "model": "ShapesCLIP"})
    return out


def meaning(prompt: Prompt) -> tuple:
    """Equal for prompts that are rewordings of one another (same objects, same constraints)."""
    objs = tuple((o.shape, o.color) for o in prompt.objects)
    if prompt.category in ("two_object", "color_attr"):
        return prompt.category, tuple(sorted(objs, key=str))
    if prompt.category == "position":
        a, b = objs
        return prompt.category, min((a, prompt.relation, b), (b, _INVERSE[prompt.relation], a), key=str)
    return prompt.category, objs, prompt.number


def meaning_classes(category: str) -> list[list[Prompt]]:
    """The category's prompts grouped by meaning (rewordings together), in a fixed order."""
    groups: dict[tuple, list[Prompt]] = {}
    for p in enumerate_prompts(category):
        groups.setdefault(meaning(p), []).append(p)
    return list(groups.values())


@torch.no_grad()
def retrieval_accuracy(score_fn, images_per_category: int = 64, seed: int = 12345,
                       categories: tuple[str, ...] = CATEGORIES) -> dict[str, dict[str, float]]:
    """Image -> text retrieval among each image's category's prompts, on fresh clean renders.

    `score_fn(images (N,16,16), texts list[str]) -> (N, T) similarities`. Returns, per category and
    as "mean" (unweighted over categories): top1, top1_exact, matched_above_mismatched.
    """
    rng = np.random.default_rng(seed)
    result: dict[str, dict[str, float]] = {}
    for cat in categories:
        prompts = enumerate_prompts(cat)
        own = rng.integers(len(prompts), size=images_per_category)
        images = render_batch([prompts[i] for i in own], rng)
        sims = np.asarray(score_fn(images, [p.text for p in prompts]))
        best = sims.argmax(1)
        meanings = [meaning(p) for p in prompts]
        top1 = np.mean([meanings[b] == meanings[o] for b, o in zip(best, own)])
        above = []
        for img, row, o in zip(images, sims, own):
            dets = detect(img)
            false = np.array([not passes(p, dets) for p in prompts])
            above.append(bool(row[o] > row[false].max()) if false.any() else True)
        result[cat] = {"top1": float(top1), "top1_exact": float(np.mean(best == own)),
                       "matched_above_mismatched": float(np.mean(above))}
    result["mean"] = {k: float(np.mean([result[c][k] for c in categories])) for k in result[categories[0]]}
    return result


def clip_score_fn(reward) -> callable:
    """`score_fn` for `retrieval_accuracy` from an open_clip reward (e.g. ShapesClipReward)."""

    def score(images: np.ndarray, texts: list[str]) -> np.ndarray:
        return (reward.image_features(images) @ reward.text_features(texts).T).cpu().numpy()

    return score


def write_card(out: str | Path, info: dict) -> Path:
    """README.md (human) and card.json (machine) beside the weights."""
    out = Path(out)
    with open(out / "card.json", "w") as f:
        json.dump(info, f, indent=2)
    acc = info["retrieval"]
    rows = "\n".join(f"| {c} | {v['top1']:.3f} | {v['top1_exact']:.3f} | {v['matched_above_mismatched']:.3f} |"
                     for c, v in acc.items())
    text = f"""# ShapesCLIP

A small CLIP (open_clip `CLIP` classes, {info['parameters'] / 1e6:.2f} M parameters) trained from scratch on
ShapesWorld image-caption pairs (`maskrl.world.PromptSampler` grammar, `render_batch` clean renders with
{info['args']['cell_noise']:.0%} of cells recoloured at random) with open_clip's contrastive `ClipLoss`.
It is maskrl's learned ShapesWorld reward (`shapes_clip`); ShapesEval stays the independent judge.

- command: `{info['command']}`
- training: {info['args']['steps']} steps, {info['images_seen']:,} images, {info['train_seconds'] / 60:.1f} min
  on {info['hardware']} (torch {info['torch']}, open_clip {info['open_clip']}, {info['args']['threads']} thread(s))
- final contrastive loss: {info['final_loss']:.4f}
- load: `open_clip.create_model_and_transforms("local-dir:<this folder>")`, `open_clip.get_tokenizer("local-dir:<this folder>")`

## Image -> text retrieval among each category's prompts

{info['eval_images_per_category']} fresh clean renders per category (seed {info['eval_seed']}). `top1`: the
retrieved prompt means the image's caption (a rewording such as "a square and a circle" for "a circle and a
square" counts); `top1_exact`: it is the caption itself; `matched_above_mismatched`: the caption scores above
every caption of its category that is false for the image.

| category | top1 | top1_exact | matched_above_mismatched |
|---|---|---|---|
{rows}

## Limits

Trained on clean renders only: the imperfect images of an RL policy (blobs, junk cells, extra objects)
are out of its training distribution, which is where a policy can hack it. Judge with ShapesEval.
"""
    (out / "README.md").write_text(text)
    return out / "README.md"
