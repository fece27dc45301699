"""A tiny aMUSEd faked in the official diffusers layout (`model_index.json transformer/ vqvae/
text_encoder/ tokenizer/ scheduler/`), from seeded random weights, saved with the libraries' own
`save_pretrained`. Sizes are not the release's (8,192 codes, mask id 8255, 16 x 16 or 32 x 32
tokens), so the policy must read them from the configs: 32 codes, mask id 39 (the last of a
40-id vocabulary, as 8255 is of 8256), a 4 x 4 token grid, 8 x 8 px images."""
import json
from pathlib import Path

import torch
from diffusers import AmusedScheduler, UVit2DModel, VQModel
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

from maskrl.models.random_amused import TEXT_LEN, write_clip_tokenizer

CODES, MASK_ID, GRID, PIXELS = 32, 39, 4, 8


def fake_amused(root: Path, downsample: bool = False) -> Path:
    """The pipeline directory; `downsample=True` is amused-512's architecture (down/up-sampling UVit blocks)."""
    tokenizer = CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(root / "tokenizer")), local_files_only=True)
    torch.manual_seed(0)
    text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        projection_dim=12, max_position_embeddings=TEXT_LEN, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    transformer = UVit2DModel(
        hidden_size=16, cond_embed_dim=12, micro_cond_encode_dim=2, micro_cond_embed_dim=10, encoder_hidden_size=16,
        vocab_size=MASK_ID + 1, codebook_size=CODES, in_channels=8, block_out_channels=8, num_res_blocks=1,
        downsample=downsample, upsample=downsample, block_num_heads=2, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, sample_size=GRID)
    with torch.no_grad():  # a random init's codebook logits are near-uniform: spread them
        transformer.mlm_layer.conv2.weight.mul_(4)
    vqvae = VQModel(
        block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4, layers_per_block=1, norm_num_groups=4, num_vq_embeddings=CODES, sample_size=PIXELS,
        mid_block_add_attention=False, lookup_from_codebook=True)
    for name, part in (("text_encoder", text_encoder), ("transformer", transformer), ("vqvae", vqvae),
                       ("scheduler", AmusedScheduler(mask_token_id=MASK_ID))):
        part.save_pretrained(root / name)
    index = {"_class_name": "AmusedPipeline", "_diffusers_version": "0.25.0.dev0",
             "scheduler": ["diffusers", "AmusedScheduler"], "text_encoder": ["transformers", "CLIPTextModelWithProjection"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "transformer": ["diffusers", "UVit2DModel"],
             "vqvae": ["diffusers", "VQModel"]}
    (root / "model_index.json").write_text(json.dumps(index, indent=2))
    return root
