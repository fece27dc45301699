"""The official Show-o as a `MaskedPolicy`: text-to-image logits from the release, pixels from MAGVIT-v2.

`load_showo_t2i` puts together three local release directories, with no conversion of keys or
layout: the Show-o weights (`showo_release.load_showo_release`, a `PhiForCausalLM`), the MAGVIT-v2
decoder (`magvit2.MagvitV2Decoder`) and the Phi-1.5 tokenizer, grown to Show-o's vocabulary.

Facts used, and where they come from (all public source of github.com/showlab/Show-o):

* `training/prompting_utils.py`, `UniversalPrompting`:
  - `__init__` grows the text tokenizer with `add_special_tokens({'pad_token': '[PAD]'})`, then
    `add_tokens` of `<|soi|> <|eoi|> <|sov|> <|eov|> <|t2i|> <|mmu|> <|t2v|> <|v2v|> <|lvg|>`, and
    keeps `max_text_len + 1` text slots ("we add a task token").
  - `t2i_gen_prompt`: the tokenizer's ids get `<bos>` in front unless they already start with it
    (an empty prompt is just `<bos>`), then the row is `<|t2i|> ... <eos>`, left-padded with
    `[PAD]` to the text slots, followed by `<|soi|>`, the image ids and `<|eoi|>`. A longer row is
    cut and re-ended with `<eos>` there; here it raises ValueError instead (see `encode_prompts`).
  - `create_attention_mask_predict_next(..., rm_pad_in_image=True)`: text rows are causal; tokens
    from `<|soi|>` to `<|eoi|>` attend to every position; no non-pad row attends to a pad (pad
    rows attend causally to the pads before them); returned as an additive mask.
* `inference_t2i.py`: the tokenizer is `AutoTokenizer.from_pretrained(llm_model_path)`, text slots
  from `dataset.preprocessing.max_seq_length`; the unconditional input for guidance is the same
  prompt built from `""`; image ids are codes plus `len(tokenizer)`; decoded pixels are read as
  [-1, 1] (`clamp((x + 1) / 2, 0, 1) * 255`, truncated to uint8: here rounded instead).
* `models/modeling_showo.py`, `t2i_generate`: image logits are the positions `-(N+1):-1` (the N
  image tokens before `<|eoi|>`) and columns `llm_vocab_size + 10 : -1` (the codebook, without the
  mask); guidance `(1 + s) * cond - s * uncond`; the mask is built once for the whole batch and
  the unconditional rows reuse their first `max_seq_length + 1` ids. `models/sampling.py`: cosine
  schedule `cos(t * pi / 2)` floored on a float32 tensor (hence `MaskRounding.float32`).
* `configs/showo_demo.yaml`, `configs/showo_demo_512x512.yaml`: `max_seq_length: 128`,
  `llm_model_path: microsoft/phi-1_5`, `num_vq_tokens` 256 at resolution 256 and 1024 at 512,
  `vq_model_name: showlab/magvitv2`.

So one sequence is 129 text slots + `<|soi|>` + N + `<|eoi|>`: 387 ids at 256 px, 1155 at 512 px.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import PhiForCausalLM, PreTrainedTokenizerFast

from maskrl.checkpoints import require_file
from maskrl.models.magvit2 import MagvitV2Config, MagvitV2Decoder
from maskrl.models.phi_policy import PhiPolicy
from maskrl.models.policy import Guidance, SamplerPreset
from maskrl.models.showo_release import CONVERT_HINT, PREFIX, ShowoReleaseConfig, load_showo_release
from maskrl.schedule import MaskRounding

MAX_TEXT_LEN = 128  # Show-o's dataset.preprocessing.max_seq_length; one more slot holds <|t2i|>
TOKENIZER_FILE = "tokenizer.json"


class ShowoT2IPolicy(PhiPolicy):
    """Show-o text-to-image on a release `PhiForCausalLM`; image states in code space (mask = K).

    `vq` (the MAGVIT-v2 decoder, or None when only logits are needed) is frozen and kept out of the
    module tree: it is not in `parameters()`, `state_dict()` or `num_parameters`, and `.to()` does
    not move it.
    """

    preset = SamplerPreset(guidance=Guidance.showo, mask_rounding=MaskRounding.float32)

    def __init__(self, lm: PhiForCausalLM, tokenizer: PreTrainedTokenizerFast, layout: ShowoReleaseConfig,
                 resolution: int = 256, vq: MagvitV2Decoder | None = None, max_text_len: int = MAX_TEXT_LEN):
        super().__init__()
        _check_tokenizer(tokenizer, layout)
        self.lm, self.tokenizer, self.layout = lm, tokenizer, layout
        self.num_image_tokens = layout.image_tokens(resolution)
        side = resolution // layout.pixels_per_code
        self.grid_shape = (side, side)
        self.mask_code = layout.codebook_size  # code + image_offset maps it onto the mask id
        self.text_slots = max_text_len + 1
        self.image_start = self.text_slots + 1  # after <|soi|>
        self.seq_len = self.image_start + self.num_image_tokens + 1  # + <|eoi|>
        if layout.num_vq_tokens != self.num_image_tokens:
            raise ValueError(f"the release generates {layout.num_vq_tokens} image tokens, resolution {resolution} "
                             f"needs {self.num_image_tokens}; load the release made for that resolution")
        if lm.config.vocab_size != layout.vocab_size:
            raise ValueError(f"model vocabulary {lm.config.vocab_size} != Show-o layout's {layout.vocab_size}")
        if lm.config.max_position_embeddings < self.seq_len:
            raise ValueError(f"a {self.seq_len}-token sequence exceeds the model's "
                             f"{lm.config.max_position_embeddings} positions")
        if vq is not None and (vq.config.codebook_size, vq.config.upscale) != (layout.codebook_size,
                                                                                layout.pixels_per_code):
            raise ValueError(f"VQ decoder has {vq.config.codebook_size} codes at {vq.config.upscale} px each; "
                             f"the release expects {layout.codebook_size} at {layout.pixels_per_code} px")
        object.__setattr__(self, "vq", vq.requires_grad_(False).eval() if vq is not None else None)
        special = layout.special_token_ids
        self._pad, self._t2i, self._soi, self._eoi = (special[t] for t in ("[PAD]", "<|t2i|>", "<|soi|>", "<|eoi|>"))

    # -- text ---------------------------------------------------------------------------
    def encode_prompts(self, texts: list[str]) -> torch.Tensor:
        """Free-text prompts -> (B, max_text_len + 1) ids: `[PAD].. <|t2i|> <bos> text <eos>`.

        Show-o silently truncates a row that does not fit; here a prompt over the budget
        (max_text_len - 2 text tokens) raises ValueError naming it and its token count, and so
        does a prompt that spells one of Show-o's added tokens ([PAD], <|soi|>, ...).
        """
        bos, eos = self.tokenizer.bos_token_id, self.tokenizer.eos_token_id
        rows = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
        out = torch.full((len(rows), self.text_slots), self._pad, dtype=torch.long)
        for i, (text, ids) in enumerate(zip(texts, rows)):
            if any(t >= self.layout.llm_vocab_size for t in ids):
                raise ValueError(f"prompt {text!r} contains Show-o's reserved tokens {self.layout.added_tokens}")
            row = [self._t2i] + ([] if ids[:1] == [bos] else [bos]) + ids + [eos]
            if len(row) > self.text_slots:
                raise ValueError(f"prompt {text!r} has {len(row) - 3} tokens; Show-o's text budget is "
                                 f"{self.text_slots - 3} (prompts are not truncated)")
            out[i, self.text_slots - len(row):] = torch.tensor(row)
        return out

    def null_prompts(self, batch: int) -> torch.Tensor:
        """The empty prompt `[PAD].. <|t2i|> <bos> <eos>`, Show-o's unconditional input for guidance."""
        return self.encode_prompts([""] * batch)

    # -- sequence -----------------------------------------------------------------------
    def input_ids(self, text_ids: torch.Tensor, image_state: torch.Tensor) -> torch.Tensor:
        """(B, text_slots) text + (B, N) code-space state -> (B, seq_len) vocabulary ids."""
        b, dev = text_ids.shape[0], text_ids.device
        soi = torch.full((b, 1), self._soi, dtype=torch.long, device=dev)
        eoi = torch.full((b, 1), self._eoi, dtype=torch.long, device=dev)
        # codes 0..K-1 -> image_offset.., and the mask code K -> image_offset + K = mask_token_id
        return torch.cat([text_ids, soi, image_state.long() + self.layout.image_offset, eoi], dim=1)

    def attention_mask(self, text_ids: torch.Tensor) -> torch.Tensor:
        """Show-o's omni-attention as an additive (B, 1, L, L) mask in the model's dtype.

        0 where a query may attend, the dtype's minimum elsewhere: text causal, `<|soi|>`..`<|eoi|>`
        attend everywhere, no non-pad token attends to a pad, pads attend to the pads up to themselves
        (as in Show-o; no row is empty, and pad rows reach no other token). Additive because transformers 5.x eager attention adds a 4D mask as it is,
        so a boolean one would not mask.
        """
        dev, dtype = text_ids.device, self.lm.dtype
        pos = torch.arange(self.seq_len, device=dev)
        pad = F.pad(text_ids == self._pad, (0, self.seq_len - self.text_slots))  # (B, L); no pads in the image
        sees = (pos[None, :] <= pos[:, None]) | (pos[:, None] >= self.text_slots)  # causal, or an image row
        allowed = sees[None] & (pad[:, :, None] == pad[:, None, :])
        mask = torch.zeros(allowed.shape, dtype=dtype, device=dev).masked_fill_(~allowed, torch.finfo(dtype).min)
        return mask[:, None]

    def forward(self, text_ids: torch.Tensor, image_state: torch.Tensor, attn_mask: torch.Tensor | None = None):
        """(B, text_slots) text, (B, N) code-space state -> (B, N, K) codebook logits (model dtype)."""
        if attn_mask is None:
            attn_mask = self.attention_mask(text_ids)
        ids = self.input_ids(text_ids, image_state)
        hidden = self.lm.model(input_ids=ids, attention_mask=attn_mask).last_hidden_state
        hidden = hidden[:, self.image_start: self.image_start + self.num_image_tokens]
        rows = slice(self.layout.image_offset, self.layout.mask_token_id)
        return F.linear(hidden, self.lm.lm_head.weight[rows], self.lm.lm_head.bias[rows])

    # -- pixels -------------------------------------------------------------------------
    def decode_images(self, tokens: torch.Tensor) -> np.ndarray:
        """(B, N) codes -> (B, H, W, 3) RGB uint8 through MAGVIT-v2 ([-1, 1] -> [0, 255], rounded)."""
        if self.vq is None:
            raise RuntimeError("this Show-o policy was loaded without a VQ decoder; pass vq_dir to "
                               "load_showo_t2i to decode images")
        return decode_pixels(self.vq, tokens, self.grid_shape)


def decode_pixels(vq: MagvitV2Decoder, tokens: torch.Tensor, grid_shape: tuple[int, int]) -> np.ndarray:
    """(B, N) codes -> (B, H, W, 3) RGB uint8 ([-1, 1] -> [0, 255], rounded), on the decoder's device."""
    codes = tokens.to(vq.quantize.embedding.device, torch.long).reshape(-1, *grid_shape)
    with torch.no_grad():
        pixels = vq.decode(codes)
    return ((pixels.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def _check_tokenizer(tokenizer: PreTrainedTokenizerFast, layout: ShowoReleaseConfig) -> None:
    """The grown tokenizer must give Show-o's ids: text, then [PAD] and the 9 specials, then images."""
    got = dict(zip(layout.added_tokens, tokenizer.convert_tokens_to_ids(list(layout.added_tokens))))
    if got != layout.special_token_ids or len(tokenizer) != layout.image_offset:
        raise ValueError(f"tokenizer gives {got} and {len(tokenizer)} ids, Show-o's layout needs "
                         f"{layout.special_token_ids} and {layout.image_offset}: is it microsoft/phi-1_5's "
                         f"({layout.llm_vocab_size} tokens before growing)?")
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError("tokenizer has no bos/eos token (Phi-1.5's are <|endoftext|>): "
                         "is its tokenizer_config.json in the directory?")


def load_showo_tokenizer(tokenizer_dir: str | Path, layout: ShowoReleaseConfig = ShowoReleaseConfig()):
    """Phi-1.5's tokenizer from a local directory, grown as Show-o grows it and checked against `layout`."""
    path = require_file(tokenizer_dir, "tokenizer", TOKENIZER_FILE)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)
    tokenizer.add_special_tokens({"pad_token": layout.added_tokens[0]})
    tokenizer.add_tokens(list(layout.added_tokens[1:]))
    _check_tokenizer(tokenizer, layout)
    return tokenizer


def load_showo_t2i(model_dir: str | Path, vq_dir: str | Path | None, tokenizer_dir: str | Path,
                   resolution: int = 256, dtype: torch.dtype = torch.float32, device="cpu", *,
                   vq_config: MagvitV2Config = MagvitV2Config()) -> ShowoT2IPolicy:
    """The release directories (showlab/show-o or show-o-512x512, showlab/magvitv2, microsoft/phi-1_5)
    -> `ShowoT2IPolicy` in eval mode. `vq_dir=None` loads no decoder (logits only). Everything is
    checked before the LM's weights are read: a missing directory or file names which one."""
    model_path = require_file(model_dir, "Show-o model", "config.json")
    layout = ShowoReleaseConfig.from_release(json.loads((model_path / "config.json").read_text()))
    if layout.num_vq_tokens != layout.image_tokens(resolution):
        raise ValueError(f"release {str(model_path)!r} generates {layout.num_vq_tokens} image tokens; resolution "
                         f"{resolution} needs {layout.image_tokens(resolution)}")
    tokenizer = load_showo_tokenizer(tokenizer_dir, layout)
    vq = None if vq_dir is None else MagvitV2Decoder.from_release(vq_weights_file(vq_dir), vq_config).to(device)
    lm = load_showo_release(model_path, dtype, device)
    return ShowoT2IPolicy(lm, tokenizer, layout, resolution, vq).eval()


def vq_weights_file(vq_dir: str | Path) -> Path:
    """The one .safetensors file of the MAGVIT-v2 release directory."""
    path = Path(vq_dir).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"VQ (model.vq_dir) directory {str(path)!r} does not exist (expected one holding the "
                                f"showlab/magvitv2 weights as a .safetensors file)")
    files = sorted(path.glob("*.safetensors"))
    if len(files) > 1:
        raise ValueError(f"VQ directory {str(path)!r} holds several .safetensors files: {[p.name for p in files]}")
    if not files:
        pickles = sorted(p.name for p in path.glob("*.bin"))
        found = f" (found {', '.join(pickles)})" if pickles else ""
        raise FileNotFoundError(f"VQ (model.vq_dir) directory {str(path)!r} has no .safetensors weights{found}; convert the "
                                f"release's .bin once with `{CONVERT_HINT}` and keep the result there")
    return files[0]


# -- the release as a maskrl checkpoint: a reference to its directories, nothing converted ------------
RELEASE_FORMAT = "maskrl-showo-release/1"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class ShowoReleaseDirs:
    """Where an official Show-o release lies on local disk (the `model` config keys of a Show-o run)."""
    model_dir: str  # showlab/show-o or show-o-512x512: config.json + safetensors
    vq_dir: str  # showlab/magvitv2: one .safetensors file
    tokenizer_dir: str  # microsoft/phi-1_5: tokenizer.json, tokenizer_config.json
    resolution: int = 256
    dtype: str = "float32"  # bfloat16 on GPUs
    vq_config: dict | None = None  # MagvitV2Config fields; None: the release's architecture (others: tests)

    def vq_architecture(self) -> MagvitV2Config:
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in (self.vq_config or {}).items()}
        return MagvitV2Config(**fields)


def check_release_dirs(dirs: ShowoReleaseDirs) -> None:
    """Each directory holds what it must (cheap: nothing is loaded); errors name the config key."""
    for key, what, file in (("model_dir", "Show-o model", "config.json"), ("tokenizer_dir", "tokenizer", TOKENIZER_FILE)):
        require_file(getattr(dirs, key), f"{what} (model.{key})", file)
    vq_weights_file(dirs.vq_dir)
    if dirs.dtype not in DTYPES:
        raise ValueError(f"model.dtype={dirs.dtype!r} is not one of {sorted(DTYPES)}")


def write_release_reference(dirs: ShowoReleaseDirs, out: str | Path) -> Path:
    """A checkpoint directory that names the release's directories (absolute paths): what every
    worker loads with `maskrl.models.load_policy`."""
    check_release_dirs(dirs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    absolute = {k: str(Path(v).expanduser().resolve()) for k, v in asdict(dirs).items() if k.endswith("_dir")}
    (out / "config.json").write_text(json.dumps({"format": RELEASE_FORMAT, **asdict(dirs), **absolute}, indent=2))
    return out


def load_release_reference(path: Path, meta: dict, device="cpu") -> ShowoT2IPolicy:
    """The policy a release reference names (a relative model_dir lies inside the checkpoint: full fine-tuning)."""
    dirs = ShowoReleaseDirs(**{k: meta[k] for k in ShowoReleaseDirs.__dataclass_fields__})
    policy = load_showo_t2i(path / dirs.model_dir, dirs.vq_dir, dirs.tokenizer_dir, dirs.resolution, DTYPES[dirs.dtype], device,
                            vq_config=dirs.vq_architecture())
    policy.release = replace(dirs, model_dir=str((path / dirs.model_dir).resolve()))
    return policy


def save_release_weights(policy: ShowoT2IPolicy, out: Path) -> dict:
    """Full fine-tuning: the weights in the release's own layout under `model/` (its config.json
    and `showo.`-prefixed safetensors), so the checkpoint loads as any release does."""
    model = out / "model"
    model.mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(policy.release.model_dir) / "config.json", model / "config.json")
    save_file({PREFIX + k: v.detach().contiguous() for k, v in policy.lm.state_dict().items()}, model / "pytorch_model.safetensors")
    return {"format": RELEASE_FORMAT, **asdict(replace(policy.release, model_dir="model"))}
