"""Rewards on open_clip models: `clip_score`, `hpsv2`, `aesthetic` and `shapes_clip`.

All four load an open_clip model the same way (`load_open_clip`), from local files only:

- `checkpoint` a `.safetensors` file: the weights of architecture `arch`, which is a built-in
  open_clip name (`ViT-B-32`, `ViT-H-14`, ...) or the path of an open_clip model-config JSON
  (`{"embed_dim", "vision_cfg", "text_cfg"}`), registered with `open_clip.add_model_config`;
- `checkpoint` a directory in open_clip's `local-dir:` layout: `open_clip_config.json`
  (`model_cfg`, `preprocess_cfg`) beside an `open_clip_model.safetensors` (and, where the config
  names an `hf_tokenizer_name`, the tokenizer's files). ShapesCLIP ships in this layout.

Images are converted with `maskrl.rewards.pixels` and the model's own preprocessing.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from omegaconf import MISSING

from maskrl.rewards.base import (
    MissingCheckpointError, RewardOutput, check_batch, require_path, require_safetensors,
)
from maskrl.rewards.pixels import input_side, preprocess

SHAPES_CLIP_DEFAULT = Path(__file__).resolve().parents[1] / "assets" / "shapes_clip"
SHAPES_CLIP_TRAIN = "python -m maskrl.rewards.train_shapes_clip --out maskrl/assets/shapes_clip --steps 800 --threads 1"


@dataclass
class LoadedClip:
    model: torch.nn.Module
    preprocess: object  # PIL image -> (3, H, W) tensor
    tokenizer: object  # list[str] -> (B, L) token ids
    side: int  # model input side in pixels
    device: torch.device


def _arch_name(reward: str, arch: str) -> str:
    """A built-in open_clip architecture name, or a model-config JSON registered under its stem."""
    import open_clip

    path = Path(arch).expanduser()
    if arch.endswith(".json"):
        require_path(reward, "arch (an open_clip model-config JSON)", path,
                     "Pass a built-in open_clip architecture name or the path of a model-config JSON.")
        with open(path) as f:
            cfg = json.load(f)
        if not all(k in cfg for k in ("embed_dim", "vision_cfg", "text_cfg")):
            raise ValueError(f"reward {reward!r}: {str(path)!r} is not an open_clip model config "
                             "(it needs embed_dim, vision_cfg and text_cfg)")
        open_clip.add_model_config(path)
        return path.stem
    if open_clip.get_model_config(arch) is None:
        raise ValueError(f"reward {reward!r}: unknown open_clip architecture {arch!r}; pass one of "
                         f"open_clip.list_models() or the path of a model-config JSON")
    return arch


def load_open_clip(reward: str, checkpoint: str | None, arch: str, device: str = "cpu", precision: str = "fp32",
                   how: str = "") -> LoadedClip:
    """An open_clip model, its inference preprocessing and tokenizer, from local files only."""
    import open_clip

    how = how or ("Download the weights (an open_clip .safetensors file, or a folder with open_clip_config.json "
                  "and open_clip_model.safetensors) and set options.checkpoint to its local path.")
    if checkpoint is not None and Path(checkpoint).expanduser().is_dir():
        folder = Path(checkpoint).expanduser()
        require_path(reward, "checkpoint config", folder / "open_clip_config.json", how)
        if not list(folder.glob("*.safetensors")):
            for pickled in sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pt*")):
                require_safetensors(reward, "checkpoint", pickled)  # raises, saying how to convert it
            raise MissingCheckpointError(reward, "checkpoint weights", folder / "open_clip_model.safetensors", how)
        name, kwargs = f"local-dir:{folder}", {}
    else:
        ckpt = require_safetensors(reward, "checkpoint", require_path(reward, "checkpoint", checkpoint, how))
        name, kwargs = _arch_name(reward, arch), {"pretrained": str(ckpt)}
    # pretrained_text/image=False: never fetch tower weights from a hub; the checkpoint has them all.
    model, _, transform = open_clip.create_model_and_transforms(
        name, device=device, precision=precision, pretrained_image=False, pretrained_text=False, **kwargs)
    model.eval().requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(name)
    return LoadedClip(model, transform, tokenizer, input_side(model.visual.image_size), torch.device(device))


class _OpenClipReward:
    """Embeds images and prompts with an open_clip model (unique prompts are embedded once)."""

    name = "open_clip"

    def __init__(self, clip: LoadedClip, batch_size: int):
        self.clip, self.batch_size = clip, batch_size

    @torch.no_grad()
    def image_features(self, images: np.ndarray) -> torch.Tensor:
        c, out = self.clip, []
        for i in range(0, len(images), self.batch_size):
            pixels = preprocess(images[i:i + self.batch_size], c.preprocess, c.side).to(c.device)
            out.append(c.model.encode_image(pixels, normalize=True).float())
        return torch.cat(out) if out else torch.zeros(0, 1)

    @torch.no_grad()
    def text_features(self, prompts: list[str]) -> torch.Tensor:
        c = self.clip
        unique = sorted(set(prompts))
        index = {p: i for i, p in enumerate(unique)}
        feats = torch.cat([c.model.encode_text(c.tokenizer(unique[i:i + self.batch_size]).to(c.device), normalize=True).float()
                           for i in range(0, len(unique), self.batch_size)])
        return feats[torch.tensor([index[p] for p in prompts])]

    def cosine(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        images = check_batch(images, prompts)
        if not len(images):
            return np.zeros(0, np.float32)
        return (self.image_features(images) * self.text_features(list(prompts))).sum(-1).cpu().numpy()


@dataclass
class ClipScoreOptions:
    checkpoint: str = MISSING  # a .safetensors of `arch`, or a folder in open_clip's local-dir layout
    arch: str = "ViT-B-32"  # built-in open_clip architecture, or the path of a model-config JSON
    w: float = 2.5  # CLIP-S = w * max(cos, 0) (Hessel et al., 2021); w=100 is torchmetrics' CLIPScore
    device: str = "cpu"
    precision: str = "fp32"
    batch_size: int = 32


class ClipScoreReward(_OpenClipReward):
    """CLIPScore (Hessel et al., 2021): w * max(cos(image, prompt), 0), w = 2.5 by default.

    Components: `cos`, the raw cosine similarity.
    """

    name = "clip_score"
    Options = ClipScoreOptions

    def __init__(self, checkpoint: str, arch: str = "ViT-B-32", w: float = 2.5, device: str = "cpu",
                 precision: str = "fp32", batch_size: int = 32):
        super().__init__(load_open_clip(self.name, checkpoint, arch, device, precision), batch_size)
        self.w = w

    def __call__(self, images: np.ndarray, prompts: list[str]) -> RewardOutput:
        cos = self.cosine(images, prompts)
        return RewardOutput(scores=self.w * np.maximum(cos, 0.0), components={"cos": cos})


@dataclass
class HPSv2Options:
    checkpoint: str = MISSING  # HPS_v2(.1)_compressed converted to .safetensors (see maskrl.rewards.convert)
    arch: str = "ViT-H-14"  # HPSv2 is a fine-tuned open_clip ViT-H-14; another arch only for tests
    device: str = "cpu"
    precision: str = "fp32"
    batch_size: int = 16


class HPSv2Reward(_OpenClipReward):
    """Human Preference Score v2 (Wu et al., 2023): the cosine of the fine-tuned ViT-H-14's image and
    prompt embeddings, as in HPSv2's own `score` (typically 0.2-0.35)."""

    name = "hpsv2"
    Options = HPSv2Options
    how = ("Download HPS_v2.1_compressed.pt (huggingface.co/xswu/HPSv2), convert it once with "
           "`python -m maskrl.rewards.convert HPS_v2.1_compressed.pt hpsv2.1.safetensors`, and set options.checkpoint.")

    def __init__(self, checkpoint: str, arch: str = "ViT-H-14", device: str = "cpu", precision: str = "fp32",
                 batch_size: int = 16):
        super().__init__(load_open_clip(self.name, checkpoint, arch, device, precision, self.how), batch_size)

    def __call__(self, images: np.ndarray, prompts: list[str]) -> RewardOutput:
        return RewardOutput(scores=self.cosine(images, prompts))


@dataclass
class AestheticOptions:
    checkpoint: str = MISSING  # the open_clip image encoder's weights (.safetensors or local-dir folder)
    head: str = MISSING  # .safetensors of the linear/MLP head on the image embedding
    arch: str = "ViT-L-14"  # LAION's predictors use ViT-L/14 embeddings (768-d)
    activation: str = "none"  # between the head's linear layers: none (LAION's MLP has none) | relu | gelu
    normalize: bool = True  # L2-normalise the embedding before the head, as LAION's predictors do
    device: str = "cpu"
    precision: str = "fp32"
    batch_size: int = 32


def load_head(reward: str, path: str, activation: str, in_dim: int) -> torch.nn.Sequential:
    """A linear or MLP head from safetensors: its 2-D `*weight` tensors in numeric order form the linear
    layers (`weight`/`bias` for one layer; `layers.0.weight`, `layers.2.weight`, ... for LAION's MLP)."""
    from safetensors.torch import load_file

    acts = {"none": None, "relu": torch.nn.ReLU, "gelu": torch.nn.GELU}
    if activation not in acts:
        raise ValueError(f"reward {reward!r}: activation must be one of {sorted(acts)}, got {activation!r}")
    how = "Save the head's state_dict as safetensors (see maskrl.rewards.convert) and set options.head to it."
    state = load_file(str(require_safetensors(reward, "head", require_path(reward, "head", path, how))))
    weights = sorted((k for k, v in state.items() if k.endswith("weight") and v.ndim == 2),
                     key=lambda k: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", k)])
    if not weights:
        raise ValueError(f"reward {reward!r}: head {path!r} holds no 2-D weight tensors")
    layers, dim = [], in_dim
    for i, key in enumerate(weights):
        w, bias = state[key], state.get(key[:-len("weight")] + "bias")
        if w.shape[1] != dim:
            raise ValueError(f"reward {reward!r}: head layer {key!r} takes {w.shape[1]} inputs, expected {dim}")
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
        lin.load_state_dict({"weight": w} if bias is None else {"weight": w, "bias": bias})
        layers.append(lin)
        if acts[activation] is not None and i < len(weights) - 1:
            layers.append(acts[activation]())
        dim = w.shape[0]
    if dim != 1:
        raise ValueError(f"reward {reward!r}: head {path!r} outputs {dim} values, expected 1")
    return torch.nn.Sequential(*layers).eval().requires_grad_(False)


class AestheticReward(_OpenClipReward):
    """An aesthetic predictor: an open_clip image encoder and a linear/MLP head on its embedding
    (LAION aesthetic predictor v1 linear / improved-aesthetic-predictor MLP). Prompts are unused."""

    name = "aesthetic"
    Options = AestheticOptions

    def __init__(self, checkpoint: str, head: str, arch: str = "ViT-L-14", activation: str = "none",
                 normalize: bool = True, device: str = "cpu", precision: str = "fp32", batch_size: int = 32):
        clip = load_open_clip(self.name, checkpoint, arch, device, precision)
        super().__init__(clip, batch_size)
        self.head = load_head(self.name, head, activation, clip.model.visual.output_dim).to(clip.device)
        self.normalize = normalize

    @torch.no_grad()
    def __call__(self, images: np.ndarray, prompts: list[str]) -> RewardOutput:
        images = check_batch(images, prompts)
        c, out = self.clip, []
        for i in range(0, len(images), self.batch_size):
            pixels = preprocess(images[i:i + self.batch_size], c.preprocess, c.side).to(c.device)
            emb = c.model.encode_image(pixels, normalize=self.normalize).float()
            out.append(self.head(emb).squeeze(-1))
        return RewardOutput(scores=torch.cat(out).cpu().numpy() if out else np.zeros(0, np.float32))


@dataclass
class ShapesClipOptions:
    path: Optional[str] = None  # a ShapesCLIP folder; default: the shipped maskrl/assets/shapes_clip
    scale: float = 1.0  # reward = scale * cos(image, prompt), unclipped (negative when it mismatches)
    device: str = "cpu"
    batch_size: int = 256


class ShapesClipReward(_OpenClipReward):
    """The learned ShapesWorld reward: cosine of ShapesCLIP's image and prompt embeddings.

    ShapesCLIP (maskrl.rewards.shapes_clip) is a small open_clip CLIP trained in the repo on
    ShapesWorld image-caption pairs; ShapesEval stays the independent judge.
    """

    name = "shapes_clip"
    Options = ShapesClipOptions

    def __init__(self, path: str | None = None, scale: float = 1.0, device: str = "cpu", batch_size: int = 256):
        folder = Path(path).expanduser() if path else SHAPES_CLIP_DEFAULT
        how = (f"Train it with `{SHAPES_CLIP_TRAIN}` (from the repository root; writes the shipped default), "
               f"or set options.path to a folder that train_shapes_clip wrote.")
        require_path(self.name, "ShapesCLIP folder", folder, how, directory=True)
        super().__init__(load_open_clip(self.name, str(folder), "", device, "fp32", how), batch_size)
        self.scale = scale

    def __call__(self, images: np.ndarray, prompts: list[str]) -> RewardOutput:
        return RewardOutput(scores=self.scale * self.cosine(images, prompts))
