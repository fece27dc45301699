"""A tiny Show-o release faked in the official directory layouts (model, MAGVIT-v2, Phi-1.5
tokenizer), from seeded random weights: 64 px, a 4 x 4 token grid."""
import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PhiForCausalLM, PreTrainedTokenizerFast

from maskrl.models.magvit2 import MagvitV2Config, MagvitV2Decoder
from maskrl.models.showo_release import ShowoReleaseConfig, phi_config

EOT = "<|endoftext|>"  # Phi-1.5's bos = eos
TINY_LAYOUT = ShowoReleaseConfig(llm_vocab_size=257, num_vq_tokens=16)  # 256 bytes + <|endoftext|>; 64 px
TINY_LLM = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "hidden_act": "gelu_new", "partial_rotary_factor": 0.5, "max_position_embeddings": 160}
TINY_VQ = MagvitV2Config(ch=8, num_res_blocks=(1, 1, 1, 1, 1), norm_groups=4)  # 8,192 codes, 16 px each
def byte_chars() -> list[str]:
    """GPT-2's byte -> printable character map (Phi-1.5's tokenizer is a byte-level BPE), by byte value."""
    keep = [*range(33, 127), *range(161, 173), *range(174, 256)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def tokenizer_dir(directory: Path, vocab_size: int, eot_id: int) -> Path:
    """A byte-level BPE tokenizer directory like microsoft/phi-1_5's: byte b is id b, <|endoftext|> at eot_id."""
    chars = byte_chars()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({f"<filler{i}>": i for i in range(256, vocab_size) if i != eot_id})
    vocab[EOT] = eot_id
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens([EOT])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=EOT, eos_token=EOT, unk_token=EOT)
    tokenizer.save_pretrained(directory)
    return directory


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
    return {"model": model, "vq": vq, "tokenizer": tokenizer_dir(root / "phi-tok", 257, 256)}
