"""The official Show-o release, loaded from a local directory into transformers' `PhiForCausalLM`.

`showlab/show-o` (256 px) and `showlab/show-o-512x512` ship a `config.json` written by Show-o's own
config mixin and the weights of its `Showo` module. That module wraps one Phi-1.5 with query/key
LayerNorm under the attribute `showo`, so once the `showo.` prefix is stripped the weights are
exactly the state dict of transformers' `PhiForCausalLM(qk_layernorm=True)`: no conversion step.

Facts used, and where they come from:

* github.com/showlab/Show-o `models/modeling_showo.py`: `Showo.__init__(w_clip_vit, vocab_size,
  llm_vocab_size, llm_model_path, codebook_size=8192, num_vq_tokens=256)` registers
  `mask_token_id = vocab_size - 1`, builds `self.showo = PhiForCausalLM(AutoConfig.from_pretrained(
  llm_model_path))` and resizes its embeddings to `vocab_size`. Release keys are therefore
  `showo.model.*` and `showo.lm_head.*`; with `w_clip_vit` an `mm_projector` (understanding only)
  is added. `t2i_generate` reads image logits as columns `llm_vocab_size + 10 : -1`, i.e. the
  codebook lies after the 10 added tokens and the last id is the mask.
* `models/phi.py` (Show-o's copy of the HF Phi): `PhiForCausalLM.__init__` forces
  `config.qk_layernorm = True` and `use_cache = False`; per layer `self_attn` holds `q_proj`,
  `k_proj`, `v_proj`, `dense` and the per-head `q_layernorm`, `k_layernorm`; `mlp` holds `fc1`,
  `fc2`; one `input_layernorm` (parallel attention + MLP residual); then `final_layernorm` and a
  biased `lm_head`. Rotary tables are non-persistent buffers, so the release holds no rotary keys.
* `models/modeling_utils.py`: the config mixin writes every `__init__` argument plus
  `mask_token_id`, `_class_name` and `_version` to `config.json`; Phi's sizes are not in it, they
  come from `llm_model_path`. Weight file names there: `pytorch_model.bin`,
  `pytorch_model.safetensors`.
* `training/prompting_utils.py` and `inference_t2i.py`: the Phi-1.5 tokenizer gets `[PAD]`, then
  `<|soi|> <|eoi|> <|sov|> <|eov|> <|t2i|> <|mmu|> <|t2v|> <|v2v|> <|lvg|>`, in that order, and
  image codes are offset by the grown tokenizer's length.
* `configs/showo_demo.yaml` / `configs/showo_demo_512x512.yaml`: `vocab_size 58498`,
  `llm_vocab_size 50295`, `llm_model_path microsoft/phi-1_5`, `codebook_size 8192`,
  `num_vq_tokens` 256 at resolution 256 and 1024 at 512 (MAGVIT-v2 codes one 16 x 16 pixel patch).
  50,295 + 10 + 8,192 + 1 = 58,498, so the mask id is 58,497.
* microsoft/phi-1_5 `config.json` (as dumped in public copies of its `PhiConfig`; the same sizes
  are transformers' `PhiConfig` defaults for microsoft/phi-1 in `models/phi/configuration_phi.py`):
  hidden 2048, 24 layers, 32 heads, MLP 8192, `gelu_new`, LayerNorm eps 1e-5, 2048 positions,
  rotary on half of each 64-dim head with theta 10000, untied embeddings, no dropout.
* transformers 5.x `models/phi/modeling_phi.py`: the same module names under `model.` and
  `lm_head`, q/k LayerNorm over the head dimension before the partial rotary, and the rotary
  `inv_freq` tables as non-persistent buffers (rebuilt here after a meta-device build).

The release's own `config.json` and weight files were not in the sources reachable here; the key
list in `tests/fixtures/showo_release_keys.txt` is derived from the code above, so the first real
load is the final check, and a mismatch fails naming every differing key.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import torch
from safetensors import safe_open
from transformers import PhiConfig, PhiForCausalLM
from transformers.models.phi.modeling_phi import PhiRotaryEmbedding

PREFIX = "showo."
PHI_LINEAR_LAYERS = ("q_proj", "k_proj", "v_proj", "dense", "fc1", "fc2")  # attention and MLP of every Phi block
CONVERT_HINT = "python -m maskrl.rewards.convert IN.bin OUT.safetensors"
_SHOWN_KEYS = 20  # keys named per category in a key-mismatch error; the exception holds all

# microsoft/phi-1_5's config.json, architecture fields only: the release names the LLM by hub id.
PHI_1_5 = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 24,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "hidden_act": "gelu_new",
    "layer_norm_eps": 1e-5,
    "max_position_embeddings": 2048,
    "partial_rotary_factor": 0.5,
    "rope_theta": 10000.0,
    "resid_pdrop": 0.0,
    "embd_pdrop": 0.0,
    "attention_dropout": 0.0,
    "tie_word_embeddings": False,
    "bos_token_id": None,
    "eos_token_id": None,
}
KNOWN_LLMS = {"microsoft/phi-1_5": PHI_1_5}


@dataclass(frozen=True)
class ShowoReleaseConfig:
    """Show-o's unified vocabulary: text | [PAD] + 9 specials | image codes | mask; ids follow from the sizes."""

    llm_vocab_size: int = 50295
    added_tokens: tuple[str, ...] = (
        "[PAD]", "<|soi|>", "<|eoi|>", "<|sov|>", "<|eov|>", "<|t2i|>", "<|mmu|>", "<|t2v|>", "<|v2v|>", "<|lvg|>",
    )
    codebook_size: int = 8192
    num_vq_tokens: int = 256
    pixels_per_code: int = 16  # MAGVIT-v2 codes one 16 x 16 patch

    @classmethod
    def from_release(cls, release_config: dict) -> ShowoReleaseConfig:
        """The layout a release's config.json describes, refusing one whose stated ids disagree."""
        if release_config.get("w_clip_vit"):
            raise ValueError("this is a Show-o release with a CLIP-ViT understanding branch; load a w_clip_vit=false one")
        layout = cls(llm_vocab_size=release_config["llm_vocab_size"], codebook_size=release_config["codebook_size"],
                     num_vq_tokens=release_config["num_vq_tokens"])
        stated = {"vocab_size": release_config["vocab_size"],
                  "mask_token_id": release_config.get("mask_token_id", layout.mask_token_id)}
        derived = {"vocab_size": layout.vocab_size, "mask_token_id": layout.mask_token_id}
        if stated != derived:
            raise ValueError(f"release config states {stated}, but its layout gives {derived}")
        return layout

    @property
    def image_offset(self) -> int:
        """Vocabulary id of image code 0."""
        return self.llm_vocab_size + len(self.added_tokens)

    @property
    def mask_token_id(self) -> int:
        return self.image_offset + self.codebook_size

    @property
    def vocab_size(self) -> int:
        return self.mask_token_id + 1

    @property
    def special_token_ids(self) -> dict[str, int]:
        return {tok: self.llm_vocab_size + i for i, tok in enumerate(self.added_tokens)}

    def image_tokens(self, resolution: int) -> int:
        """Codes per square image: 256 px -> 256, 512 px -> 1024."""
        if resolution % self.pixels_per_code:
            raise ValueError(f"resolution {resolution} is not a multiple of {self.pixels_per_code}")
        return (resolution // self.pixels_per_code) ** 2


class ReleaseKeyError(ValueError):
    """A release state dict that does not match the model; `missing`, `unexpected`, `wrong_shape` hold all."""

    def __init__(self, missing: list[str], unexpected: list[str], wrong_shape: list[str]):
        self.missing, self.unexpected, self.wrong_shape = missing, unexpected, wrong_shape
        parts = [_name_keys(title, keys) for title, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)) if keys]
        super().__init__("Show-o release weights do not match PhiForCausalLM(qk_layernorm=True): " + "; ".join(parts))


def _name_keys(title: str, keys: list[str]) -> str:
    """`title (n): a, b, ...`, cut after a few keys so a wholly wrong file gives a readable error."""
    more = f", ... and {len(keys) - _SHOWN_KEYS} more" if len(keys) > _SHOWN_KEYS else ""
    return f"{title} ({len(keys)}): " + ", ".join(keys[:_SHOWN_KEYS]) + more


def _llm_architecture(llm_model_path: str) -> dict:
    """Phi's sizes, as Show-o's AutoConfig would read them, without any download."""
    if llm_model_path in KNOWN_LLMS:
        return KNOWN_LLMS[llm_model_path]
    config_file = Path(llm_model_path) / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(
            f"llm_model_path {llm_model_path!r} is neither a known hub id ({', '.join(KNOWN_LLMS)}) nor a local "
            f"directory with a config.json; maskrl downloads nothing, so put that LLM's config.json there")
    return json.loads(config_file.read_text())


def phi_config(release_config: dict) -> PhiConfig:
    """The PhiConfig of a release: its LLM's sizes, the unified vocabulary, q/k LayerNorm as Show-o forces."""
    return showo_phi_config(_llm_architecture(release_config["llm_model_path"]), ShowoReleaseConfig.from_release(release_config))


def showo_phi_config(llm: dict, layout: ShowoReleaseConfig) -> PhiConfig:
    """Phi of the sizes `llm`, over Show-o's unified vocabulary, with q/k LayerNorm."""
    return PhiConfig(**{**llm, "vocab_size": layout.vocab_size, "qk_layernorm": True, "use_cache": False,
                        "attn_implementation": "sdpa"})


def _weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a release directory: the shards its index lists, or its single file."""
    indexes = sorted(model_dir.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise ValueError(f"{model_dir} holds several shard indexes: {[p.name for p in indexes]}")
    if indexes:
        shards = sorted(set(json.loads(indexes[0].read_text())["weight_map"].values()))
        files = [model_dir / name for name in shards]
        for path in files:
            if not path.is_file():
                raise FileNotFoundError(f"shard {str(path)!r}, listed in {indexes[0].name}, does not exist")
        return files
    singles = sorted(model_dir.glob("*.safetensors"))
    if len(singles) == 1:
        return singles
    if singles:
        raise ValueError(f"{model_dir} holds several .safetensors files and no index: {[p.name for p in singles]}")
    pickles = sorted(p.name for p in model_dir.glob("*.bin"))
    found = f" (found {', '.join(pickles)})" if pickles else ""
    raise FileNotFoundError(
        f"no .safetensors weights in {str(model_dir)!r}{found}. maskrl never unpickles a checkpoint; convert the "
        f"release's .bin once with `{CONVERT_HINT}` and keep the result in that directory")


def _read_state(files: list[Path], dtype: torch.dtype, device) -> dict[str, torch.Tensor]:
    """Release tensors under their release names, cast one at a time so at most one extra tensor is alive."""
    state = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                state[key] = f.get_tensor(key).to(device=device, dtype=dtype)
    return state


def _check_keys(model: PhiForCausalLM, state: dict[str, torch.Tensor]) -> None:
    """Strict key and shape check against the model's keys under `showo.`, as the release spells them."""
    expected = {PREFIX + k: v.shape for k, v in model.state_dict().items()}
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    wrong_shape = sorted(f"{k} {tuple(state[k].shape)} != {tuple(shape)}"
                         for k, shape in expected.items() if k in state and state[k].shape != shape)
    if missing or unexpected or wrong_shape:
        raise ReleaseKeyError(missing, unexpected, wrong_shape)


def load_showo_release(model_dir: str | Path, dtype: torch.dtype = torch.float32, device="cpu") -> PhiForCausalLM:
    """A release directory -> `PhiForCausalLM` in eval mode, weights allocated once (meta build + assign)."""
    path = Path(model_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"Show-o release directory {str(path)!r} does not exist")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"Show-o release directory {str(path)!r} has no config.json")
    config = phi_config(json.loads(config_file.read_text()))
    state = _read_state(_weight_files(path), dtype, device)
    with torch.device("meta"):
        model = PhiForCausalLM(config)
    _check_keys(model, state)
    model.load_state_dict({k[len(PREFIX):]: v for k, v in state.items()}, strict=True, assign=True)
    with torch.device(device):
        model.model.rotary_emb = PhiRotaryEmbedding(config)  # non-persistent, so still on meta
    stale = [name for name, t in chain(model.named_parameters(), model.named_buffers()) if t.is_meta]
    if stale:
        raise RuntimeError(f"tensors left unmaterialised after loading: {stale}")
    return model.eval()


def image_code_logits(lm_logits: torch.Tensor, layout: ShowoReleaseConfig = ShowoReleaseConfig()) -> torch.Tensor:
    """(..., vocab) LM logits -> (..., codebook) logits over image codes: text, specials and mask cut away."""
    return lm_logits[..., layout.image_offset: layout.image_offset + layout.codebook_size]
