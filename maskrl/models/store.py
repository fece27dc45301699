"""Checkpoint directories of every policy family: one `load_policy`, `save_policy` and `image_decoder`.

A directory's config.json names its format:

* ``maskrl-showo/1``: ShapesWorld's policy (model.safetensors and its tokenizer files);
* ``maskrl-showo-release/1``: the local directories of an official Show-o release (model,
  MAGVIT-v2, Phi-1.5 tokenizer) and its resolution; nothing converted or copied. A full
  fine-tuning checkpoint holds the weights in the release's layout under ``model/``;
* ``maskrl-amused-release/1``: the local directory of an aMUSEd release (diffusers' pipeline
  layout); a full fine-tuning checkpoint holds its own transformer under ``transformer/``;
* ``maskrl-lora/1``: LoRA adapters (adapter.safetensors) and the checkpoint they adapt.

A directory written by maskrl's trainer also has a manifest; a truncated or unfinished copy is
refused before anything is read (maskrl.checkpoints).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from maskrl.checkpoints import MANIFEST, resolve_checkpoint, verify
from maskrl.models.lora import ADAPTER_FILE, has_lora, load_adapters, save_adapters
from maskrl.models.policy import ImageDecoder, MaskedPolicy
from maskrl.models.showo import FORMAT as SHAPES_FORMAT, ShowoPolicy, load_shapes_policy, save_shapes_policy
from maskrl.models.magvit2 import MagvitV2Decoder
from maskrl.models.showo_t2i import (
    RELEASE_FORMAT, ShowoReleaseDirs, ShowoT2IPolicy, decode_pixels, load_release_reference, save_release_weights, vq_weights_file,
)
from maskrl.models.visual_tokenizer import PaletteTokenizer

LORA_FORMAT = "maskrl-lora/1"
AMUSED_FORMAT = "maskrl-amused-release/1"


def _load_amused(path: Path, meta: dict) -> MaskedPolicy:
    from maskrl.models.amused import load_amused_reference  # diffusers is imported only for aMUSEd

    return load_amused_reference(path, meta)


LOADERS = {SHAPES_FORMAT: load_shapes_policy, RELEASE_FORMAT: load_release_reference, AMUSED_FORMAT: _load_amused}


def read_meta(directory: str | Path) -> tuple[Path, dict]:
    """(path, config.json) of a checkpoint directory, after its manifest check; errors name the directory."""
    path = Path(directory)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} has no config.json; pass a directory written by maskrl "
                                "(`--checkpoint base` names the shipped base model)")
    if (path / MANIFEST).is_file():
        verify(path, deep=False)
    meta = json.loads((path / "config.json").read_text())
    if meta.get("format") not in (*LOADERS, LORA_FORMAT):
        raise ValueError(f"checkpoint {str(path)!r} has format {meta.get('format')!r}, expected one of {[*LOADERS, LORA_FORMAT]}")
    return path, meta


def load_policy(directory: str | Path) -> MaskedPolicy:
    """Any checkpoint directory -> its policy (no unpickling)."""
    path, meta = read_meta(directory)
    if meta["format"] == LORA_FORMAT:
        if not (path / ADAPTER_FILE).is_file():
            raise FileNotFoundError(f"checkpoint {str(path)!r} has no {ADAPTER_FILE}")
        return load_adapters(load_policy(resolve_checkpoint(meta["lora"]["base"]["checkpoint"])), path, meta["lora"])
    return LOADERS[meta["format"]](path, meta)


def save_policy(policy: MaskedPolicy, directory: str | Path, extra: dict | None = None) -> Path:
    """Write `policy` as a checkpoint directory: only the adapters under LoRA, else its family's full weights."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    if has_lora(policy):
        meta = {"format": LORA_FORMAT, "lora": save_adapters(policy, out)}
    elif isinstance(policy, ShowoPolicy):
        meta = save_shapes_policy(policy, out)
    elif isinstance(policy, ShowoT2IPolicy):
        meta = save_release_weights(policy, out)
    else:
        from maskrl.models.amused import AmusedPolicy, save_amused_weights

        if not isinstance(policy, AmusedPolicy):
            raise TypeError(f"no checkpoint format for {type(policy).__name__}")
        meta = save_amused_weights(policy, out)
    (out / "config.json").write_text(json.dumps({**meta, **(extra or {})}, indent=2))
    return out


def image_decoder(directory: str | Path) -> ImageDecoder:
    """What a reward worker needs of a checkpoint: tokens -> images, without loading the policy."""
    path, meta = read_meta(directory)
    if meta["format"] == LORA_FORMAT:
        return image_decoder(resolve_checkpoint(meta["lora"]["base"]["checkpoint"]))
    if meta["format"] == SHAPES_FORMAT:
        return PaletteTokenizer().decode
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if meta["format"] == AMUSED_FORMAT:
        from maskrl.models.amused import DTYPES, load_amused_decoder  # diffusers is imported only for aMUSEd

        return load_amused_decoder(meta["directory"], DTYPES[meta["dtype"]], device)
    dirs = ShowoReleaseDirs(**{k: meta[k] for k in ShowoReleaseDirs.__dataclass_fields__})
    vq = MagvitV2Decoder.from_release(vq_weights_file(dirs.vq_dir), dirs.vq_architecture()).to(device)
    side = dirs.resolution // vq.config.upscale
    return lambda tokens: decode_pixels(vq, tokens, (side, side))
