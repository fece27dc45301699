"""Train ShapesCLIP on ShapesWorld image-caption pairs with open_clip's contrastive loss.

    python -m maskrl.rewards.train_shapes_clip --out maskrl/assets/shapes_clip --steps 800 --threads 1

Each step renders one image per prompt for a batch of prompts drawn category by category: every
category gets a share of the batch (water-filled: small categories whole, color_attr the rest),
and within a category no two prompts mean the same thing. The loss is the mean over categories of
`open_clip.ClipLoss` on that category's slice, so the in-batch negatives of an image are the other
captions of its own category (the captions it must be told apart from, and none of them true of
it); a caption from another category can be true of an image ("a circle" of "a red circle"),
which is why categories are not mixed inside one contrastive softmax.

At the end the model is saved (safetensors + open_clip config + tokenizer), loaded back through
the `shapes_clip` reward's loader, evaluated (image -> text retrieval among each category's
prompts) and the model card written (README.md, card.json).
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
import time
from functools import lru_cache

import numpy as np
import torch

from maskrl.rewards import shapes_clip as sc
from maskrl.rewards.pixels import normalised_pixels
from maskrl.world import CATEGORIES, PALETTE, Prompt, render_batch


@lru_cache(maxsize=None)
def _classes(category: str) -> list[list[Prompt]]:
    return sc.meaning_classes(category)


def quotas(batch_size: int) -> dict[str, int]:
    """Images per category: equal shares, a category capped at its number of distinct meanings."""
    sizes = sorted(CATEGORIES, key=lambda c: len(_classes(c)))
    left, out = batch_size, {}
    for i, cat in enumerate(sizes):
        out[cat] = min(len(_classes(cat)), left // (len(sizes) - i))
        left -= out[cat]
    return {c: out[c] for c in CATEGORIES}


def draw(rng: np.random.Generator, quota: dict[str, int]) -> dict[str, list[Prompt]]:
    """Per category, `quota` prompts of distinct meanings (a random wording of each)."""
    batch = {}
    for cat, k in quota.items():
        classes = _classes(cat)
        batch[cat] = [classes[i][rng.integers(len(classes[i]))] for i in rng.choice(len(classes), k, replace=False)]
    return batch


def grids_to_pixels(images: np.ndarray) -> torch.Tensor:
    """(B, 16, 16) grids -> (B, 3, 16, 16) normalised floats; equal to ShapesCLIP's open_clip preprocessing."""
    return normalised_pixels(images, 1, sc.PREPROCESS_CFG["mean"], sc.PREPROCESS_CFG["std"])


def corrupt(images: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """Recolour each cell with probability p to a uniformly random palette index (background too)."""
    if p <= 0:
        return images
    images = images.copy()
    mask = rng.random(images.shape) < p
    images[mask] = rng.integers(0, len(PALETTE), int(mask.sum()))
    return images


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def _hardware() -> str:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name} ({os.cpu_count()} cores)"


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(description="Train ShapesCLIP (maskrl's learned ShapesWorld reward).")
    p.add_argument("--out", required=True, help="output folder (the shipped model: maskrl/assets/shapes_clip)")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=192, help="images per step, over all categories")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min_lr_ratio", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight_decay", type=float, default=0.05)
    p.add_argument("--cell_noise", type=float, default=0.02, help="fraction of cells recoloured at random")
    p.add_argument("--width", type=int, default=96)
    p.add_argument("--vision_layers", type=int, default=4)
    p.add_argument("--text_layers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log_every", type=int, default=100)
    p.add_argument("--eval_every", type=int, default=500, help="quick retrieval check (32 images a category); 0: off")
    p.add_argument("--eval_images", type=int, default=100, help="images per category in the final evaluation")
    p.add_argument("--eval_seed", type=int, default=12345)
    return p.parse_args(argv)


def train(args, argv: list[str]) -> dict:
    import open_clip

    from maskrl.rewards.clip import ShapesClipReward

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    tokenizer = sc.shapes_tokenizer()
    cfg = sc.model_config(len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id, args.width,
                          args.vision_layers, args.text_layers)
    model = sc.build_model(cfg)
    # Tokenize exactly as at load time: open_clip's HFTokenizer over the saved tokenizer files.
    sc.save(model, tokenizer, cfg, args.out)
    tok = open_clip.get_tokenizer(f"local-dir:{args.out}")
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = open_clip.ClipLoss()
    quota = quotas(args.batch)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"ShapesCLIP: {n_params / 1e6:.2f} M parameters; images per step by category: {quota}", flush=True)

    start, loss_avg, images_seen = time.perf_counter(), None, 0
    model.train()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        batch = draw(rng, quota)
        prompts = [p for cat in CATEGORIES for p in batch[cat]]
        images = corrupt(render_batch(prompts, rng), args.cell_noise, rng)
        img, txt, scale = model(grids_to_pixels(images), tok([p.text for p in prompts]))[:3]
        losses, i = [], 0
        for cat in CATEGORIES:
            n = len(batch[cat])
            if n > 1:
                losses.append(loss_fn(img[i:i + n], txt[i:i + n], scale))
            i += n
        loss = torch.stack(losses).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        images_seen += len(prompts)
        loss_avg = loss.item() if loss_avg is None else 0.95 * loss_avg + 0.05 * loss.item()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            print(f"step {step + 1}/{args.steps} loss {loss_avg:.4f} lr {lr_at(step, args):.2e} "
                  f"logit_scale {model.logit_scale.exp().item():.1f} {time.perf_counter() - start:.0f}s", flush=True)
        if args.eval_every and (step + 1) % args.eval_every == 0 and step + 1 < args.steps:
            model.eval()
            acc = sc.retrieval_accuracy(_live_score(model, tok), 32, args.eval_seed)
            print("  retrieval top1 " + " ".join(f"{c}={v['top1']:.2f}" for c, v in acc.items()), flush=True)
            model.train()
    train_seconds = time.perf_counter() - start

    model.eval()
    sc.save(model, tokenizer, cfg, args.out)
    reward = ShapesClipReward(path=args.out, batch_size=512)  # the shipped loading path, end to end
    acc = sc.retrieval_accuracy(sc.clip_score_fn(reward), args.eval_images, args.eval_seed)
    info = {
        "command": "python -m maskrl.rewards.train_shapes_clip " + shlex.join(argv),
        "args": vars(args), "parameters": n_params, "images_seen": images_seen,
        "train_seconds": round(train_seconds, 1), "final_loss": loss_avg, "hardware": _hardware(),
        "torch": torch.__version__, "open_clip": open_clip.__version__, "model_cfg": cfg,
        "eval_images_per_category": args.eval_images, "eval_seed": args.eval_seed, "retrieval": acc,
    }
    sc.write_card(args.out, info)
    print(f"trained in {train_seconds / 60:.1f} min; retrieval top1 by category: "
          + " ".join(f"{c}={v['top1']:.3f}" for c, v in acc.items()), flush=True)
    print(f"wrote {args.out} (model card: {os.path.join(args.out, 'README.md')})", flush=True)
    return info


def _live_score(model, tok):
    @torch.no_grad()
    def score(images, texts):
        img = model.encode_image(grids_to_pixels(images), normalize=True)
        txt = model.encode_text(tok(texts), normalize=True)
        return (img @ txt.T).numpy()

    return score


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    return train(parse_args(argv), argv)


if __name__ == "__main__":
    main()
