"""`pickscore`: PickScore (Kirstain et al., 2023) through transformers' `CLIPModel` and `CLIPProcessor`.

Both load with `from_pretrained(<local dir>, local_files_only=True)`: `model_dir` holds the model
(`config.json` + `model.safetensors`, e.g. yuvalkirstain/PickScore_v1), `processor_dir` the
processor (PickScore uses laion/CLIP-ViT-H-14-laion2B-s32B-b79K's; defaults to `model_dir`).
Download both once, e.g. `huggingface-cli download yuvalkirstain/PickScore_v1 --local-dir ...`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from omegaconf import MISSING

from maskrl.rewards.base import RewardOutput, check_batch, require_path
from maskrl.rewards.pixels import input_side, to_pil

_HOW = ("Download it once (e.g. `huggingface-cli download yuvalkirstain/PickScore_v1 --local-dir DIR` and "
        "`huggingface-cli download laion/CLIP-ViT-H-14-laion2B-s32B-b79K --local-dir PROC_DIR`) and set "
        "options.model_dir / options.processor_dir to the local folders.")


@dataclass
class PickScoreOptions:
    model_dir: str = MISSING  # local save_pretrained folder of the CLIPModel (PickScore_v1)
    processor_dir: Optional[str] = None  # local CLIPProcessor folder; default: model_dir
    device: str = "cpu"
    dtype: str = "float32"  # float32 | float16 | bfloat16
    batch_size: int = 16


class PickScoreReward:
    """PickScore: logit_scale.exp() * cos(image, prompt) (about 18-23 for real images)."""

    name = "pickscore"
    Options = PickScoreOptions

    def __init__(self, model_dir: str, processor_dir: str | None = None, device: str = "cpu",
                 dtype: str = "float32", batch_size: int = 16):
        from transformers import CLIPModel, CLIPProcessor

        model_path = require_path(self.name, "model_dir", model_dir, _HOW, directory=True)
        require_path(self.name, "model config", model_path / "config.json", _HOW)
        if not list(model_path.glob("*.safetensors")):
            raise FileNotFoundError(f"reward 'pickscore': no .safetensors weights in {str(model_path)!r}. {_HOW}")
        proc_path = require_path(self.name, "processor_dir", processor_dir or model_dir, _HOW, directory=True)
        self.device, self.batch_size = torch.device(device), batch_size
        self.model = CLIPModel.from_pretrained(model_path, local_files_only=True, dtype=getattr(torch, dtype),
                                               use_safetensors=True).to(self.device).eval().requires_grad_(False)
        self.processor = CLIPProcessor.from_pretrained(proc_path, local_files_only=True)
        self.side = input_side(self.model.config.vision_config.image_size)
        self.max_length = self.model.config.text_config.max_position_embeddings

    @staticmethod
    def _pooled(out) -> torch.Tensor:
        # transformers 5 returns a ModelOutput whose pooler_output is the projected embedding; 4.x a tensor.
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    @torch.no_grad()
    def __call__(self, images: np.ndarray, prompts: list[str]) -> RewardOutput:
        images = check_batch(images, prompts)
        scores = []
        for i in range(0, len(images), self.batch_size):
            pil = to_pil(images[i:i + self.batch_size], self.side)
            img_in = self.processor(images=pil, return_tensors="pt").to(self.device)
            txt_in = self.processor(text=list(prompts[i:i + self.batch_size]), padding=True, truncation=True,
                                    max_length=self.max_length, return_tensors="pt").to(self.device)
            img = self._pooled(self.model.get_image_features(pixel_values=img_in["pixel_values"].to(self.model.dtype)))
            txt = self._pooled(self.model.get_text_features(**txt_in))
            img = torch.nn.functional.normalize(img.float(), dim=-1)
            txt = torch.nn.functional.normalize(txt.float(), dim=-1)
            scores.append(self.model.logit_scale.exp().float() * (img * txt).sum(-1))
        return RewardOutput(scores=torch.cat(scores).cpu().numpy() if scores else np.zeros(0, np.float32))
