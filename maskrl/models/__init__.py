"""Policies and tokenizers: the Show-o architecture on Phi, the word-level text tokenizer,
and ShapesWorld's palette tokenizer."""
from maskrl.models.text_tokenizer import SHOWO_SPECIAL_TOKENS, build_text_tokenizer
from maskrl.models.visual_tokenizer import PaletteTokenizer
from maskrl.models.showo import ShowoConfig, ShowoPolicy
from maskrl.models.store import load_policy, save_policy

__all__ = [
    "SHOWO_SPECIAL_TOKENS", "build_text_tokenizer", "PaletteTokenizer",
    "ShowoConfig", "ShowoPolicy", "load_policy", "save_policy",
]
