"""aMUSEd (amused/amused-256, amused/amused-512) as a `MaskedPolicy`, through diffusers' own classes.

`load_amused` reads a local copy of the release in diffusers' pipeline layout (`model_index.json`,
`transformer/ vqvae/ text_encoder/ tokenizer/ scheduler/`) with each part's `from_pretrained`;
nothing is converted. maskrl's generic sampler then drives the policy as `AmusedPipeline` drives
the same parts: `AmusedPolicy.preset` and `pipeline_noise_scale` give its guidance, mask counts and
noise.

Facts used, and where they come from (diffusers 0.42.1 source; the release's numbers from
`scripts/convert_amused.py` and `tests/pipelines/amused/test_amused.py` of github.com/huggingface/diffusers):

* `pipelines/deprecated/amused/pipeline_amused.py`, `AmusedPipeline.__call__` (the pipeline is
  deprecated since 0.33.1 but still ships and imports):
  - prompts: `tokenizer(prompt, padding="max_length", truncation=True, max_length=tokenizer.model_max_length)`
    (CLIP's 77); the text encoder (`CLIPTextModelWithProjection`) is called on the ids alone, no
    attention mask, and conditions with `text_embeds` (-> `pooled_text_emb`) and the penultimate
    `hidden_states[-2]` (-> `encoder_hidden_states`). The negative prompt defaults to `""`, encoded
    the same way; guidance (only when `guidance_scale > 1`) is `uncond + s * (cond - uncond)`.
  - `micro_conds` = `[width, height, crop_x, crop_y, aesthetic_score]` = `[W, H, 0, 0, 6]` by default,
    in the text states' dtype, where `height = width = transformer.config.sample_size * vae_scale_factor`
    and `vae_scale_factor = 2 ** (len(vqvae.config.block_out_channels) - 1)`; the latents are the
    `(B, H / f, W / f)` token grid, starting all `scheduler.config.mask_token_id`.
  - pixels: `vqvae.decode(latents, force_not_quantize=True, shape=(B, H / f, W / f, latent_channels)).sample.clip(0, 1)`
    (in float32 when a float16 VQ has `force_upcast`), then `VaeImageProcessor(do_normalize=False)`:
    `(x * 255).round()` to uint8, channels last.
* `models/unets/uvit_2d.py`, `UVit2DModel.forward(input_ids, encoder_hidden_states, pooled_text_emb, micro_conds)`:
  `(B, H, W)` ids (embedding rows `vocab_size`, 8256 in the release) -> `(B, codebook_size, H, W)`
  logits (8192: the mask and the unused ids get no column). Its built-in gradient checkpointing calls
  a `*args`-only closure with keyword arguments, so it raises TypeError (see
  `enable_gradient_checkpointing`).
* `schedulers/scheduling_amused.py`, `AmusedScheduler`: `mask_token_id` (8255 in the release: the MUSE
  transformer config's, which `scripts/convert_amused.py` hands to the scheduler);
  per step, one multinomial draw of every token from `softmax(logits)`, then for step i of T
  `floor(N * cos(pi/2 * (i + 1) / T))` tokens stay masked (at most one less than before, at least
  one; none after the last step), computed on float32 tensors: `MaskRounding.float32`, which gives
  the scheduler's counts for N = 16, 64, 256, 1024 and every T <= 64 tried (float64 does not, e.g.
  N = 16, T = 3). The re-masked tokens are the lowest `log p + t_i * Gumbel`, `t_i = linspace(2, 0, T)[i]`
  (its "temperature"): maskrl's linear noise with `pipeline_noise_scale(T)`, drawn in the same order.
* `models/autoencoders/vq_model.py`, `VQModel`: `num_vq_embeddings` codes (8192), looked up from the
  codebook (`lookup_from_codebook=True`); the release's 5 levels make f = 16: 16 x 16 tokens at
  256 px (transformer `sample_size` 16), 32 x 32 at 512 px (`sample_size` 32, down/up-sampling blocks).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import torch
from diffusers import AmusedScheduler, UVit2DModel, VQModel
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import CLIPTextModelWithProjection, CLIPTokenizer

from maskrl.checkpoints import require_file
from maskrl.models.policy import Guidance, SamplerPreset
from maskrl.models.store import AMUSED_FORMAT
from maskrl.schedule import MaskRounding

AESTHETIC_SCORE = 6  # AmusedPipeline's micro_conditioning_aesthetic_score default; crop (0, 0)
WEIGHTS = "diffusion_pytorch_model.safetensors"
LAYOUT = {  # subfolder -> the files it must hold (safetensors only: nothing is unpickled)
    "transformer": ("config.json", WEIGHTS),
    "vqvae": ("config.json", WEIGHTS),
    "text_encoder": ("config.json", "model.safetensors"),
    "tokenizer": ("vocab.json", "merges.txt"),
    "scheduler": ("scheduler_config.json",),
}


def pipeline_noise_scale(steps: int) -> float:
    """`SamplingConfig.noise_scale` that makes maskrl's linear schedule, `s * (1 - (t + 1) / T)`, the
    scheduler's `linspace(2, 0, T)[t] = 2 * (T - 1 - t) / (T - 1)`: s = 2T / (T - 1)."""
    return 2 * steps / max(steps - 1, 1)


class AmusedPolicy(nn.Module):
    """aMUSEd text-to-image on diffusers' `UVit2DModel`; image states in code space (mask = K).

    Only the transformer is a submodule: the CLIP text encoder and the VQ decoder are frozen and kept
    out of the module tree, so `parameters()`, `state_dict()` (what maskrl trains, publishes and
    checkpoints) and `.to()` are the transformer's alone. `load_amused` puts all parts on one device.
    `scheduler` is kept for its config (the mask id) and to rebuild `AmusedPipeline` from the parts.
    """

    preset = SamplerPreset(guidance=Guidance.diffusers, mask_rounding=MaskRounding.float32)
    lora_targets = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2")  # attention and MLP layers

    def __init__(self, transformer: UVit2DModel, vqvae: VQModel, text_encoder: CLIPTextModelWithProjection,
                 tokenizer: CLIPTokenizer, scheduler: AmusedScheduler):
        super().__init__()
        self.transformer = transformer
        config = transformer.config
        self.mask_code = config.codebook_size
        self.mask_token_id = scheduler.config.mask_token_id
        if vqvae.config.num_vq_embeddings != self.mask_code:
            raise ValueError(f"the transformer predicts {self.mask_code} codes, the VQ has {vqvae.config.num_vq_embeddings}")
        if not self.mask_code <= self.mask_token_id < config.vocab_size:
            raise ValueError(f"mask_token_id {self.mask_token_id} is not an image id the transformer embeds beyond "
                             f"its {self.mask_code} codes (vocab_size {config.vocab_size})")
        if scheduler.config.masking_schedule != "cosine":
            raise ValueError(f"the scheduler's masking_schedule is {scheduler.config.masking_schedule!r}; maskrl's is cosine")
        self.grid_shape = (config.sample_size, config.sample_size)
        self.num_image_tokens = config.sample_size ** 2
        side = config.sample_size * 2 ** (len(vqvae.config.block_out_channels) - 1)  # pixels
        self.micro_conditioning = (side, side, 0, 0, AESTHETIC_SCORE)
        self.text_len = tokenizer.model_max_length
        if self.text_len > text_encoder.config.max_position_embeddings:
            raise ValueError(f"tokenizer pads to {self.text_len} ids, the text encoder has "
                             f"{text_encoder.config.max_position_embeddings} positions")
        self.tokenizer, self.scheduler = tokenizer, scheduler
        object.__setattr__(self, "text_encoder", text_encoder.requires_grad_(False).eval())
        object.__setattr__(self, "vqvae", vqvae.requires_grad_(False).eval())
        self._decoder = AmusedDecoder(vqvae, self.grid_shape)
        self._text_cache: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    # -- text ---------------------------------------------------------------------------
    def encode_prompts(self, texts: list[str]) -> torch.Tensor:
        """Free-text prompts -> (B, 77) CLIP ids `<start> text <end> <pad>..`, as the pipeline pads them.

        The pipeline truncates a longer prompt; here it raises ValueError naming it and its token count.
        """
        if not texts:
            return torch.zeros(0, self.text_len, dtype=torch.long)
        rows = self.tokenizer(list(texts), padding="max_length", max_length=self.text_len, truncation=False)["input_ids"]
        for text, ids in zip(texts, rows):
            if len(ids) > self.text_len:
                raise ValueError(f"prompt {text!r} has {len(ids) - 2} tokens; CLIP's text budget is "
                                 f"{self.text_len - 2} (prompts are not truncated)")
        return torch.tensor(rows, dtype=torch.long)

    def null_prompts(self, batch: int) -> torch.Tensor:
        """The empty prompt, the pipeline's default negative prompt (its unconditional input)."""
        return self.encode_prompts([""] * batch)

    def attention_mask(self, text_ids: torch.Tensor) -> None:
        """None: the text encoder is called without a mask, as in the pipeline, and UVit2D takes none."""
        return None

    def text_conditioning(self, text_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(encoder_hidden_states (B, 77, D), pooled_text_emb (B, P)) as the pipeline computes them.

        The text encoder is frozen, so its outputs depend on the ids alone: those of the last batch
        are kept and reused while the same ids come back (every step of a sampling run).
        """
        cached = self._text_cache
        if not (cached is not None and cached[0].shape == text_ids.shape and cached[0].device == text_ids.device
                and torch.equal(cached[0], text_ids)):
            with torch.no_grad():
                out = self.text_encoder(text_ids.to(self.text_encoder.device), return_dict=True, output_hidden_states=True)
            cached = self._text_cache = (text_ids.clone(), out.hidden_states[-2], out.text_embeds)
        return cached[1], cached[2]

    # -- logits -------------------------------------------------------------------------
    def forward(self, text_ids: torch.Tensor, image_state: torch.Tensor, attn_mask: torch.Tensor | None = None):
        """(B, 77) ids, (B, N) code-space state -> (B, N, K) codebook logits (model dtype).

        `attn_mask` is unused (always None, see `attention_mask`).
        """
        dev, dtype = self.transformer.device, self.transformer.dtype
        hidden, pooled = (t.to(dev, dtype) for t in self.text_conditioning(text_ids))
        ids = image_state.long().masked_fill(image_state == self.mask_code, self.mask_token_id)
        micro = torch.tensor(self.micro_conditioning, dtype=hidden.dtype, device=hidden.device).expand(len(ids), -1)
        logits = self.transformer(ids.reshape(-1, *self.grid_shape), encoder_hidden_states=hidden,
                                  pooled_text_emb=pooled, micro_conds=micro)
        return logits.flatten(2).transpose(1, 2)  # (B, K, H, W) -> (B, H * W, K)

    # -- pixels -------------------------------------------------------------------------
    def decode_images(self, tokens: torch.Tensor) -> np.ndarray:
        return self._decoder(tokens)

    # -- training -----------------------------------------------------------------------
    @property
    def lora_host(self) -> nn.Module:
        return self.transformer

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the UVit blocks' and transformer layers' activations in the backward pass.

        diffusers 0.42's own switch (`transformer.enable_gradient_checkpointing()`) raises TypeError in
        `UVit2DModel.forward` (its checkpoint closure takes `*args` but is called with keywords), so each
        block's `forward` is wrapped here instead; module names, hence state-dict keys, do not change.
        """
        blocks = [self.transformer.down_block, *self.transformer.transformer_layers, self.transformer.up_block]
        for block in blocks:
            if not isinstance(block.forward, functools.partial):  # not wrapped yet
                block.forward = functools.partial(_checkpointed, block.forward)

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


class AmusedDecoder:
    """aMUSEd codes -> RGB through the VQ alone: all a reward worker loads (no transformer, no CLIP)."""

    def __init__(self, vqvae: VQModel, grid_shape: tuple[int, int]):
        self.vqvae, self.grid_shape = vqvae.requires_grad_(False).eval(), grid_shape

    def __call__(self, tokens: torch.Tensor) -> np.ndarray:
        """(B, N) codes -> (B, H, W, 3) RGB uint8, as the pipeline decodes and rounds."""
        codebook = self.vqvae.config.num_vq_embeddings
        codes = tokens.to(self.vqvae.device, torch.long).reshape(-1, *self.grid_shape)
        if len(codes) and not (0 <= int(codes.min()) and int(codes.max()) < codebook):
            raise ValueError(f"codes outside 0..{codebook - 1} (a mask left in the tokens?)")
        shape = (*codes.shape, self.vqvae.config.latent_channels)
        with torch.no_grad():
            pixels = self.vqvae.decode(codes, force_not_quantize=True, shape=shape).sample.clip(0, 1)
        return (pixels.permute(0, 2, 3, 1).float().cpu() * 255).round().to(torch.uint8).numpy()


def _checkpointed(forward, *args, **kwargs):
    if torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def check_amused_dir(directory: str | Path) -> Path:
    """Every subfolder and file the release must hold, checked before anything is read: a missing one is named."""
    root = require_file(directory, "aMUSEd (model.model_dir)", "model_index.json")
    for sub, files in LAYOUT.items():
        for file in files:
            require_file(root / sub, f"aMUSEd {sub}", file)
    return root


def load_amused(directory: str | Path, dtype: torch.dtype = torch.float32, device="cpu",
                transformer_dir: str | Path | None = None) -> AmusedPolicy:
    """A local copy of amused/amused-256 or amused-512 (diffusers' pipeline layout) -> `AmusedPolicy`
    in eval mode, every part in `dtype` on `device` (the VQ in float32 where the pipeline would upcast
    it). `transformer_dir`: a fine-tuned transformer (`save_pretrained` layout) instead of the release's."""
    root = check_amused_dir(directory)
    local = {"local_files_only": True, "use_safetensors": True}
    transformer = UVit2DModel.from_pretrained(transformer_dir, dtype=dtype, **local) if transformer_dir else \
        UVit2DModel.from_pretrained(root, subfolder="transformer", dtype=dtype, **local)
    vqvae = _load_vq(root, dtype)
    text_encoder = CLIPTextModelWithProjection.from_pretrained(root / "text_encoder", dtype=dtype, **local)
    tokenizer = CLIPTokenizer.from_pretrained(str(root / "tokenizer"), local_files_only=True)
    scheduler = AmusedScheduler.from_pretrained(root, subfolder="scheduler", local_files_only=True)
    policy = AmusedPolicy(transformer.to(device), vqvae.to(device), text_encoder.to(device), tokenizer, scheduler)
    policy.release = (str(root.resolve()), dtype)
    return policy.eval()


def _load_vq(root: Path, dtype: torch.dtype) -> VQModel:
    """The release's VQ, in float32 where the pipeline would upcast it."""
    vq_config = VQModel.load_config(root, subfolder="vqvae", local_files_only=True)
    vq_dtype = torch.float32 if dtype == torch.float16 and vq_config.get("force_upcast") else dtype
    return VQModel.from_pretrained(root, subfolder="vqvae", dtype=vq_dtype, local_files_only=True, use_safetensors=True)


def load_amused_decoder(directory: str | Path, dtype: torch.dtype = torch.float32, device="cpu") -> AmusedDecoder:
    """The release's VQ decoder alone, on the token grid its transformer config names."""
    root = check_amused_dir(directory)
    side = UVit2DModel.load_config(root, subfolder="transformer", local_files_only=True)["sample_size"]
    return AmusedDecoder(_load_vq(root, dtype).to(device), (side, side))


# -- the release as a maskrl checkpoint: a reference to its directory, nothing converted ---------------
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def write_amused_reference(directory: str | Path, dtype: str, out: str | Path) -> Path:
    """A checkpoint directory naming the release directory (absolute): what every worker loads."""
    root = check_amused_dir(directory)
    if dtype not in DTYPES:
        raise ValueError(f"model.dtype={dtype!r} is not one of {sorted(DTYPES)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps({"format": AMUSED_FORMAT, "directory": str(root.resolve()), "dtype": dtype}, indent=2))
    return out


def load_amused_reference(path: Path, meta: dict, device="cpu") -> AmusedPolicy:
    """The release a reference names; a full fine-tuning checkpoint's own transformer under `transformer/`."""
    mine = path / "transformer" if meta.get("transformer") else None
    return load_amused(meta["directory"], DTYPES[meta["dtype"]], device, transformer_dir=mine)


def save_amused_weights(policy: AmusedPolicy, out: Path) -> dict:
    """Full fine-tuning: the transformer in diffusers' layout under `transformer/`; the other parts
    stay the release's."""
    policy.transformer.save_pretrained(out / "transformer", safe_serialization=True)
    directory, dtype = policy.release
    return {"format": AMUSED_FORMAT, "directory": directory, "transformer": True,
            "dtype": next(k for k, v in DTYPES.items() if v == dtype)}
