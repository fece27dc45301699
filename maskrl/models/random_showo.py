"""Random-init Show-o policies of any size, with no file from the release: what the GPU check
measures (a full-size Show-o 512 in bf16) and what tests build their tiny fake releases from.

The tokenizer is a byte-level BPE with Phi-1.5's shape (byte b is id b, `<|endoftext|>` as bos
and eos at Phi's id, filler tokens up to the text vocabulary's size), grown as Show-o grows it,
so prompts encode into Show-o's exact layout; only the text's token ids differ from Phi's.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PhiForCausalLM, PreTrainedTokenizerFast

from maskrl.models.magvit2 import MagvitV2Config, MagvitV2Decoder
from maskrl.models.showo_release import KNOWN_LLMS, ShowoReleaseConfig, showo_phi_config
from maskrl.models.showo_t2i import ShowoT2IPolicy, load_showo_tokenizer

EOT = "<|endoftext|>"
PHI_EOT_ID = 50256


def _byte_chars() -> list[str]:
    """GPT-2's byte -> printable character map (byte-level BPE), by byte value."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def write_byte_tokenizer(directory: Path, vocab_size: int, eot_id: int) -> Path:
    """A tokenizer directory shaped like microsoft/phi-1_5's (see the module docstring)."""
    vocab = {c: i for i, c in enumerate(_byte_chars())}
    vocab.update({f"<filler{i}>": i for i in range(256, vocab_size) if i != eot_id})
    vocab[EOT] = eot_id
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([EOT])
    PreTrainedTokenizerFast(tokenizer_object=core, bos_token=EOT, eos_token=EOT, unk_token=EOT).save_pretrained(directory)
    return directory


def random_showo(layout: ShowoReleaseConfig = ShowoReleaseConfig(num_vq_tokens=1024), llm: dict | str = "microsoft/phi-1_5",
                 resolution: int = 512, vq_config: MagvitV2Config | None = MagvitV2Config(), device="cpu",
                 dtype: torch.dtype = torch.float32, seed: int = 0) -> ShowoT2IPolicy:
    """A Show-o policy with seeded random weights: by default the full-size Show-o 512 (Phi-1.5 sizes,
    58,498 ids, 1,024 image tokens) with the release's MAGVIT-v2 architecture; `llm` may be a dict
    of PhiConfig sizes (tiny models)."""
    sizes = KNOWN_LLMS[llm] if isinstance(llm, str) else llm
    eot = PHI_EOT_ID if layout.llm_vocab_size > PHI_EOT_ID else layout.llm_vocab_size - 1
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = load_showo_tokenizer(write_byte_tokenizer(Path(tmp), layout.llm_vocab_size, eot), layout)
    config = showo_phi_config(sizes, layout)
    torch.manual_seed(seed)
    with torch.device(device):
        lm = PhiForCausalLM(config).to(dtype).eval()
        vq = MagvitV2Decoder(vq_config).to(dtype).eval() if vq_config is not None else None
    return ShowoT2IPolicy(lm, tokenizer, layout, resolution, vq)
