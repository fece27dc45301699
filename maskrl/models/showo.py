"""The Show-o architecture on transformers' `PhiForCausalLM`, sized for ShapesWorld.

One unified vocabulary: text tokens (with Show-o's specials) | image codebook | one
mask token. A text-to-image sequence follows Show-o's layout, text left-padded so
image tokens sit at fixed positions::

    <pad>.. <|t2i|> <bos> words <eos> <|soi|> img_0 .. img_{N-1} <|eoi|>

Attention is Show-o's omni-attention: causal over the text, bidirectional among the
image tokens (soi..eoi), padding never attended to; it is passed to Phi as a 4D
boolean mask. Only image logits are computed, and only over the codebook rows of the
LM head. Image states are held in *code space*: 0..K-1 are codes, K is the mask.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PhiConfig, PhiForCausalLM, PreTrainedTokenizerFast

from maskrl.models.policy import SamplerPreset
from maskrl.models.phi_policy import PhiPolicy
from maskrl.models.text_tokenizer import build_text_tokenizer
from maskrl.models.visual_tokenizer import PaletteTokenizer

FORMAT = "maskrl-showo/1"


@dataclass
class ShowoConfig:
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 512
    max_text_len: int = 10  # tokens incl. <bos>/<eos>; the longest ShapesWorld prompt is 8 words
    codebook_size: int = 7
    grid_size: int = 16
    rotary_fraction: float = 0.5
    # Phi's gelu_new as one fused op (same tanh-approximate GELU): ~30% faster forward on CPU.
    hidden_act: str = "gelu_pytorch_tanh"
    # Learned row+column embeddings added to image tokens: gives the 1D RoPE sequence the
    # grid's 2D neighbourhood from step 0 (measured: base models learn shapes far sooner).
    image_pos_embed: bool = True


class ShowoPolicy(PhiPolicy):
    """ShapesWorld's policy (a `maskrl.models.policy.MaskedPolicy`); its images are palette grids."""

    preset = SamplerPreset()  # Show-o's guidance formula, float64 mask counts (what it was trained with)

    def __init__(self, config: ShowoConfig, tokenizer: PreTrainedTokenizerFast | None = None):
        super().__init__()
        self.config = config
        self.tokenizer = tokenizer or build_text_tokenizer()
        self.code_offset = len(self.tokenizer)
        self.mask_code = config.codebook_size  # code-space id of the mask token
        self.num_image_tokens = config.grid_size**2
        self.grid_shape = (config.grid_size, config.grid_size)
        self.text_slots = config.max_text_len + 1  # + <|t2i|>
        self.image_start = self.text_slots + 1  # after <|soi|>
        self.seq_len = self.image_start + self.num_image_tokens + 1  # + <|eoi|>
        ids = self.tokenizer.convert_tokens_to_ids
        self._t2i, self._soi, self._eoi = ids("<|t2i|>"), ids("<|soi|>"), ids("<|eoi|>")
        self.lm = PhiForCausalLM(
            PhiConfig(
                vocab_size=self.code_offset + config.codebook_size + 1,
                hidden_size=config.hidden_size,
                intermediate_size=config.intermediate_size,
                num_hidden_layers=config.num_layers,
                num_attention_heads=config.num_heads,
                max_position_embeddings=self.seq_len,
                partial_rotary_factor=config.rotary_fraction,
                hidden_act=config.hidden_act,
                resid_pdrop=0.0,
                embd_pdrop=0.0,
                attention_dropout=0.0,
                pad_token_id=self.tokenizer.pad_token_id,
                bos_token_id=self.tokenizer.bos_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                attn_implementation="sdpa",
            )
        )
        if config.image_pos_embed:
            self.row_embed = nn.Parameter(torch.randn(config.grid_size, config.hidden_size) * 0.02)
            self.col_embed = nn.Parameter(torch.randn(config.grid_size, config.hidden_size) * 0.02)

    # -- text ---------------------------------------------------------------------------
    def encode_prompts(self, texts: list[str]) -> torch.Tensor:
        """Prompts -> (B, text_slots) ids: left padding, then <|t2i|> <bos> words <eos>."""
        enc = self.tokenizer(list(texts), padding="max_length", max_length=self.config.max_text_len)
        rows = enc["input_ids"]
        for text, row in zip(texts, rows):
            if len(row) > self.config.max_text_len:
                raise ValueError(f"prompt {text!r} has {len(row)} tokens; max_text_len is {self.config.max_text_len}")
            if self.tokenizer.unk_token_id in row:
                raise ValueError(f"prompt {text!r} has a word outside the tokenizer's vocabulary")
        ids = torch.tensor(rows, dtype=torch.long)
        pad = ids == self.tokenizer.pad_token_id
        first = (~pad).float().argmax(dim=1)  # position of <bos>
        slots = torch.full((len(texts), self.text_slots), self.tokenizer.pad_token_id, dtype=torch.long)
        slots[:, 1:] = ids
        slots[torch.arange(len(texts)), first] = self._t2i  # <|t2i|> just before <bos>
        return slots

    def null_prompts(self, batch: int) -> torch.Tensor:
        """The empty prompt: condition-free text used for CFG and condition dropout."""
        return self.encode_prompts([""] * batch)

    # -- sequence -----------------------------------------------------------------------
    def input_ids(self, text_ids: torch.Tensor, image_state: torch.Tensor) -> torch.Tensor:
        b = text_ids.shape[0]
        soi = torch.full((b, 1), self._soi, dtype=torch.long, device=text_ids.device)
        eoi = torch.full((b, 1), self._eoi, dtype=torch.long, device=text_ids.device)
        return torch.cat([text_ids, soi, image_state.long() + self.code_offset, eoi], dim=1)

    def attention_mask(self, text_ids: torch.Tensor) -> torch.Tensor:
        """Omni-attention as an additive (B, 1, L, L) float32 mask (0 = may attend, -inf = may not).

        Additive, not boolean: SDPA turns a boolean mask into this one in every layer of every
        forward (a sampler builds the mask once per batch); float32 serves bf16 queries too, with
        the same attention output bit for bit."""
        length, dev = self.seq_len, text_ids.device
        pos = torch.arange(length, device=dev)
        causal = pos[None, :] <= pos[:, None]
        in_image = pos >= self.text_slots  # soi .. eoi
        allowed = causal | (in_image[:, None] & in_image[None, :])
        key_ok = torch.ones(text_ids.shape[0], length, dtype=torch.bool, device=dev)
        key_ok[:, : self.text_slots] = text_ids != self.tokenizer.pad_token_id
        mask = allowed[None] & key_ok[:, None, :]
        mask |= torch.eye(length, dtype=torch.bool, device=dev)[None]  # pad rows attend to themselves
        return torch.zeros(mask.shape, device=dev).masked_fill_(~mask, float("-inf"))[:, None]

    def hidden_states(self, text_ids: torch.Tensor, image_state: torch.Tensor, attn_mask: torch.Tensor | None = None):
        """(B, L, hidden) final hidden states of the whole T2I sequence."""
        ids = self.input_ids(text_ids, image_state)
        embeds = self.lm.model.embed_tokens(ids)
        if self.config.image_pos_embed:
            pos2d = (self.row_embed[:, None, :] + self.col_embed[None, :, :]).reshape(self.num_image_tokens, -1)
            after = self.seq_len - self.image_start - self.num_image_tokens
            embeds = embeds + F.pad(pos2d, (0, 0, self.image_start, after))  # zero outside the image
        if attn_mask is None:
            attn_mask = self.attention_mask(text_ids)
        return self.lm.model(inputs_embeds=embeds, attention_mask=attn_mask).last_hidden_state

    def forward(self, text_ids: torch.Tensor, image_state: torch.Tensor, attn_mask: torch.Tensor | None = None):
        """(B, text_slots) text, (B, N) image state in code space -> (B, N, K) codebook logits."""
        hidden = self.hidden_states(text_ids, image_state, attn_mask)
        hidden = hidden[:, self.image_start : self.image_start + self.num_image_tokens]
        rows = slice(self.code_offset, self.code_offset + self.config.codebook_size)
        return F.linear(hidden, self.lm.lm_head.weight[rows], self.lm.lm_head.bias[rows])

    def decode_images(self, tokens: torch.Tensor) -> np.ndarray:
        """(B, N) codes -> (B, 16, 16) palette grids, the images ShapesWorld's rewards score."""
        return PaletteTokenizer().decode(tokens)


def save_shapes_policy(policy: ShowoPolicy, out: Path) -> dict:
    """model.safetensors and the tokenizer files; returns config.json's content."""
    save_file({k: v.detach().contiguous() for k, v in policy.state_dict().items()}, out / "model.safetensors")
    policy.tokenizer.save_pretrained(out)
    return {"format": FORMAT, "config": asdict(policy.config)}


def load_shapes_policy(path: Path, meta: dict) -> ShowoPolicy:
    for name in ("model.safetensors", "tokenizer.json"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"checkpoint {str(path)!r} has no {name}")
    policy = ShowoPolicy(ShowoConfig(**meta["config"]), PreTrainedTokenizerFast.from_pretrained(path))
    policy.load_state_dict(load_file(path / "model.safetensors"))
    return policy
