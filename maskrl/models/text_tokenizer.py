"""Word-level text tokenizer over the ShapesWorld grammar.

Built with Hugging Face `tokenizers` (a WordLevel model) and wrapped as a
`transformers.PreTrainedTokenizerFast`, so it saves, loads and pads like any HF
tokenizer and a real BPE tokenizer can replace it for a real model. Ids are stable:
specials first, then the grammar's words in sorted order.
"""
from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from maskrl.world import VOCABULARY

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
# Show-o's task and image-delimiter tokens (t2i: text-to-image task, soi/eoi: start/end of image).
SHOWO_SPECIAL_TOKENS = ("<|t2i|>", "<|soi|>", "<|eoi|>")


def build_text_tokenizer(words: tuple[str, ...] = VOCABULARY) -> PreTrainedTokenizerFast:
    """A tokenizer that maps each grammar word to one id and wraps text as `<bos> ... <eos>`."""
    vocab = {tok: i for i, tok in enumerate((PAD, BOS, EOS, UNK, *SHOWO_SPECIAL_TOKENS, *words))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        additional_special_tokens=list(SHOWO_SPECIAL_TOKENS),
        padding_side="left",
    )
