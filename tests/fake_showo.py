"""A tiny Show-o release faked in the official directory layouts (model, MAGVIT-v2, Phi-1.5
tokenizer), from seeded random weights: 64 px, a 4 x 4 token grid."""
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import PhiForCausalLM

from maskrl.models.magvit2 import MagvitV2Config, MagvitV2Decoder
from maskrl.models.random_showo import write_byte_tokenizer
from maskrl.models.showo_release import ShowoReleaseConfig, phi_config
from maskrl.rewards.base import RewardOutput

TINY_LAYOUT = ShowoReleaseConfig(llm_vocab_size=257, num_vq_tokens=16)  # 256 bytes + <|endoftext|>; 64 px
TINY_LLM = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "hidden_act": "gelu_new", "partial_rotary_factor": 0.5, "max_position_embeddings": 160}
TINY_VQ = MagvitV2Config(ch=8, num_res_blocks=(1, 1, 1, 1, 1), norm_groups=4)  # 8,192 codes, 16 px each
def fake_showo_release(root: Path) -> dict[str, Path]:
    """model / vq / tokenizer directories as released."""
    llm, model, vq = root / "phi-tiny", root / "show-o-tiny", root / "magvitv2-tiny"
    for d in (llm, model, vq):
        d.mkdir()
    (llm / "config.json").write_text(json.dumps(TINY_LLM))
    config = {"_class_name": "Showo", "_version": "0.0.1", "codebook_size": 8192, "llm_model_path": str(llm),
              "llm_vocab_size": 257, "mask_token_id": TINY_LAYOUT.mask_token_id, "num_vq_tokens": 16,
              "vocab_size": TINY_LAYOUT.vocab_size, "w_clip_vit": False}
    (model / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    lm = PhiForCausalLM(phi_config(config))
    save_file({"showo." + k: v.contiguous() for k, v in lm.state_dict().items()}, model / "pytorch_model.safetensors")
    (vq / "config.json").write_text("{}")
    save_file(MagvitV2Decoder(TINY_VQ).state_dict(), vq / "pytorch_model.safetensors")
    return {"model": model, "vq": vq, "tokenizer": write_byte_tokenizer(root / "phi-tok", 257, 256)}


class RedReward:
    """A weight-free reward on RGB images (a plug-in named 'tests.fake_showo:RedReward'): how much
    redder than green and blue an image is, in [-1, 1]."""

    name = "red"

    def __call__(self, images, prompts):
        rgb = np.asarray(images, dtype=np.float32) / 255
        return RewardOutput(scores=(rgb[..., 0] - rgb[..., 1:].mean(-1)).mean(axis=(1, 2)), components={})
