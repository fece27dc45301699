"""Policies and tokenizers: the Show-o architecture on Phi, the word-level text tokenizer,
and the visual tokenizer interface with its ShapesWorld palette implementation."""
from maskrl.models.text_tokenizer import SHOWO_SPECIAL_TOKENS, build_text_tokenizer
from maskrl.models.visual_tokenizer import PaletteTokenizer, VisualTokenizer
from maskrl.models.showo import ShowoConfig, ShowoPolicy
from maskrl.models.store import load_policy, save_policy

__all__ = [
    "SHOWO_SPECIAL_TOKENS", "build_text_tokenizer", "PaletteTokenizer", "VisualTokenizer",
    "ShowoConfig", "ShowoPolicy", "load_policy", "save_policy",
]
