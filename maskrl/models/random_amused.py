"""Random-init aMUSEd policies with no file from the release: the full-size aMUSEd 256 / 512 that the
GPU check measures, and the CLIP tokenizer files tests build tiny fake releases with.

The architecture is the release's (diffusers' `UVit2DModel` defaults with the release's
`sample_size` and down/up-sampling, the 5-level VQ of 8,192 codes, CLIP-L's text encoder with
projection; `scripts/convert_amused.py` of diffusers); the tokenizer is byte-level CLIP without
merges, so prompts encode to the pipeline's layout (77 ids) but not to CLIP's ids.
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import AmusedScheduler, UVit2DModel, VQModel
from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

from maskrl.models.amused import AmusedPolicy

TEXT_LEN = 77  # CLIP's context, as released
RELEASE_MASK_ID = 8255


def write_clip_tokenizer(directory: Path) -> Path:
    """CLIP's tokenizer files (vocab.json, merges.txt, tokenizer_config.json) for a byte-level vocabulary
    without merges: every character is one token (`x</w>` at a word's end)."""
    directory.mkdir(parents=True, exist_ok=True)
    chars = sorted(ByteLevel.alphabet())  # the 256 characters standing for bytes
    vocab = {t: i for i, t in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    (directory / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "CLIPTokenizer",
                                                                 "model_max_length": TEXT_LEN}))
    return directory


def random_amused(side: int = 16, device="cpu", dtype: torch.dtype = torch.float32, seed: int = 0) -> AmusedPolicy:
    """aMUSEd 256 (`side` 16) or 512 (`side` 32, with the down/up-sampling blocks), seeded random weights."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(Path(tmp))), local_files_only=True)
    torch.manual_seed(seed)
    with torch.device(device):
        transformer = UVit2DModel(sample_size=side, downsample=side > 16, upsample=side > 16)
        vqvae = VQModel(block_out_channels=(128, 256, 256, 512, 768), down_block_types=("DownEncoderBlock2D",) * 5,
                        up_block_types=("UpDecoderBlock2D",) * 5, latent_channels=64, layers_per_block=2,
                        num_vq_embeddings=8192, mid_block_add_attention=False, lookup_from_codebook=True)
        text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=768, intermediate_size=3072, num_attention_heads=12, projection_dim=768,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    parts = (p.to(dtype).eval() for p in (transformer, vqvae, text_encoder))
    return AmusedPolicy(*parts, tokenizer, AmusedScheduler(mask_token_id=RELEASE_MASK_ID)).eval()
