"""Tokenizers, the Show-o policy's layout and omni-attention, checkpoints, configs."""
import pytest
import torch

from maskrl.config import ConfigError, load_config
from maskrl.models import PaletteTokenizer, ShowoConfig, ShowoPolicy, build_text_tokenizer, load_policy, save_policy
from maskrl.models.policy import Guidance, MaskedPolicy, guided_logits
from maskrl.pretrain import PretrainConfig
from maskrl.world import VOCABULARY, PromptSampler, render_batch
from tests.helpers import TINY


def test_text_tokenizer_is_word_level_over_the_grammar(tmp_path):
    tok = build_text_tokenizer()
    ids = tok("a red circle to the left of a square")["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) == 11
    assert len({tok.convert_tokens_to_ids(w) for w in VOCABULARY}) == len(VOCABULARY)
    assert tok.unk_token_id in tok("a pink circle")["input_ids"]
    tok.save_pretrained(tmp_path)
    assert type(tok).from_pretrained(tmp_path)("three crosses")["input_ids"] == tok("three crosses")["input_ids"]


def test_palette_tokenizer_round_trip_and_interface():
    import numpy as np

    grids = render_batch(PromptSampler().sample_many(5, np.random.default_rng(0)), np.random.default_rng(1))
    vt = PaletteTokenizer()
    codes = vt.encode(grids)
    assert codes.shape == (5, 256) and vt.codebook_size == 7 and vt.grid_shape == (16, 16)
    assert (vt.decode(codes) == grids).all()
    with pytest.raises(ValueError, match="mask token"):
        vt.decode(torch.full((1, 256), 7))


def test_sequence_layout_follows_showo(tiny_policy):
    text = tiny_policy.encode_prompts(["a circle", "a circle to the left of a square"])
    ids = tiny_policy.input_ids(text, torch.zeros(2, 256, dtype=torch.long))
    tok = tiny_policy.tokenizer
    assert ids.shape == (2, tiny_policy.seq_len)
    row = ids[0].tolist()
    t2i = row.index(tok.convert_tokens_to_ids("<|t2i|>"))
    assert row[:t2i] == [tok.pad_token_id] * t2i  # left padding
    assert row[t2i + 1] == tok.bos_token_id and row[tiny_policy.text_slots - 1] == tok.eos_token_id
    assert row[tiny_policy.text_slots] == tok.convert_tokens_to_ids("<|soi|>") and row[-1] == tok.convert_tokens_to_ids("<|eoi|>")
    assert ids[1, 0] == tok.convert_tokens_to_ids("<|t2i|>")  # the longest prompt fills every slot


def test_omni_attention_image_bidirectional_text_causal(tiny_policy):
    text = tiny_policy.encode_prompts(["a red circle"])
    state = torch.full((1, 256), tiny_policy.mask_code)
    changed = state.clone()
    changed[0, -1] = 3  # the last image token
    with torch.no_grad():
        h0 = tiny_policy.hidden_states(text, state)
        h1 = tiny_policy.hidden_states(text, changed)
    img = slice(tiny_policy.image_start, tiny_policy.image_start + 1)
    assert (h0[:, img] - h1[:, img]).abs().max() > 1e-4  # the first image token sees a later one
    torch.testing.assert_close(h0[:, : tiny_policy.text_slots], h1[:, : tiny_policy.text_slots], atol=0, rtol=0)
    # text is causal: a later word does not change an earlier text position
    other = tiny_policy.encode_prompts(["a red square"])
    with torch.no_grad():
        h2 = tiny_policy.hidden_states(other, state)
    last_same = tiny_policy.text_slots - 3  # "red" sits just before "square" <eos>
    torch.testing.assert_close(h0[:, : last_same + 1], h2[:, : last_same + 1], atol=0, rtol=0)
    assert (h0[:, last_same + 1] - h2[:, last_same + 1]).abs().max() > 1e-4


def test_padding_is_never_attended(tiny_policy):
    text = tiny_policy.encode_prompts(["a circle"])
    state = torch.randint(0, 7, (1, 256))
    with torch.no_grad():
        before = tiny_policy(text, state)
        tiny_policy.lm.model.embed_tokens.weight[tiny_policy.tokenizer.pad_token_id] += 5.0
        after = tiny_policy(text, state)
    torch.testing.assert_close(before, after, atol=1e-6, rtol=0)


@pytest.mark.parametrize("bf16", [False, True])
def test_additive_mask_gives_the_boolean_masks_logits_bit_for_bit(tiny_policy, bf16):
    """The mask is additive (SDPA would convert a boolean one in every layer); 0 exactly where the
    omni-attention allows, and the logits equal the boolean mask's in fp32 and under bf16 autocast."""
    text = tiny_policy.encode_prompts(["a circle", "a circle to the left of a square"])
    mask = tiny_policy.attention_mask(text)
    assert mask.dtype == torch.float32 and set(mask.unique().tolist()) == {0.0, float("-inf")}
    state = torch.randint(0, 8, (2, 256), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        additive, boolean = tiny_policy(text, state, mask), tiny_policy(text, state, mask == 0)
    assert torch.equal(additive, boolean)


def test_save_load_round_trips_bit_exactly(tiny_policy, tmp_path):
    save_policy(tiny_policy, tmp_path / "ckpt")
    loaded = load_policy(tmp_path / "ckpt")
    for (name, a), (_, b) in zip(tiny_policy.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    text, state = tiny_policy.encode_prompts(["two squares"]), torch.randint(0, 8, (1, 256))
    with torch.no_grad():
        assert torch.equal(tiny_policy(text, state), loaded.eval()(text, state))
    assert not list((tmp_path / "ckpt").glob("*.bin")) and not list((tmp_path / "ckpt").glob("*.pt"))


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_policy(tmp_path / "nowhere")


def test_config_rejects_unknown_and_mistyped_keys(tmp_path):
    with pytest.raises(ConfigError, match="model.hiden_size"):
        load_config(PretrainConfig, overrides=["model.hiden_size=3"])
    with pytest.raises(ConfigError, match="'steps'"):
        load_config(PretrainConfig, overrides=["steps=many"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 0.1\nbatchsize: 3\n")
    with pytest.raises(ConfigError, match=r"batchsize.*bad\.yaml"):
        load_config(PretrainConfig, bad)
    assert load_config(PretrainConfig, overrides=["model.num_layers=3"]).model.num_layers == 3


def test_prompt_too_long_or_off_vocabulary_is_rejected(tiny_policy):
    with pytest.raises(ValueError, match="outside the tokenizer"):
        tiny_policy.encode_prompts(["a pink circle"])
    short = ShowoPolicy(ShowoConfig(**{**TINY.__dict__, "max_text_len": 5}))
    with pytest.raises(ValueError, match="max_text_len is 5"):
        short.encode_prompts(["a circle to the left of a square"])


def test_guidance_formulas_of_the_presets(tiny_policy):
    """Show-o's (1 + s) c - s u is diffusers' u + s' (c - u) at s' = 1 + s; ShapesWorld's policy is a
    MaskedPolicy with Show-o's formula."""
    cond, uncond = torch.randn(2, 5, 7), torch.randn(2, 5, 7)
    torch.testing.assert_close(guided_logits(cond, uncond, 3.0, Guidance.showo), 4 * cond - 3 * uncond)
    torch.testing.assert_close(guided_logits(cond, uncond, 4.0, Guidance.diffusers), guided_logits(cond, uncond, 3.0, Guidance.showo))
    assert isinstance(tiny_policy, MaskedPolicy) and tiny_policy.preset.guidance == Guidance.showo


def test_gradient_checkpointing_gives_the_same_gradients(tiny_policy):
    """Recomputed activations change memory, not the gradient."""
    text = tiny_policy.encode_prompts(["a red circle", "two blue squares"])
    state = torch.randint(0, tiny_policy.mask_code + 1, (2, tiny_policy.num_image_tokens), generator=torch.Generator().manual_seed(0))

    def grads():
        tiny_policy.zero_grad(set_to_none=True)
        tiny_policy.train()
        tiny_policy(text, state).logsumexp(-1).sum().backward()
        return {n: p.grad.clone() for n, p in tiny_policy.named_parameters()}

    plain = grads()
    tiny_policy.enable_gradient_checkpointing()
    assert tiny_policy.lm.is_activation_checkpointing
    checkpointed = grads()
    for name, g in plain.items():
        torch.testing.assert_close(checkpointed[name], g, rtol=1e-5, atol=1e-7, msg=name)
