"""Show-o text-to-image policy: Show-o's sequence layout and omni-attention, codebook logits, decoding,
and the loader's checks, on a tiny release faked in the official directory layouts."""
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import PhiForCausalLM

from maskrl.grpo import score_pairs
from maskrl.iteration import rollout_groups
from maskrl.models.policy import Guidance, MaskedPolicy
from maskrl.models.showo_release import ShowoReleaseConfig, phi_config
from maskrl.models.lora import LoraConfig, for_training, trainable_state
from maskrl.models.random_showo import write_byte_tokenizer
from maskrl.models.showo_t2i import ShowoReleaseDirs, ShowoT2IPolicy, load_showo_t2i, load_showo_tokenizer, write_release_reference
from maskrl.models.store import image_decoder, load_policy, save_policy
from maskrl.sampling import SamplingConfig
from maskrl.schedule import MaskRounding, masked_counts
from tests.fake_showo import TINY_LAYOUT, TINY_LLM, TINY_VQ, fake_showo_release

PAD, SOI, EOI, T2I = 257, 258, 259, 262  # TINY_LAYOUT's [PAD] <|soi|> <|eoi|> <|t2i|>
TEXT, L = 129, 147  # text slots (max_seq_length 128 + <|t2i|>); + <|soi|> 16 <|eoi|>


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> dict[str, Path]:
    return fake_showo_release(tmp_path_factory.mktemp("showo_t2i"))


def _load(release, **kw) -> ShowoT2IPolicy:
    args = {"model_dir": release["model"], "vq_dir": release["vq"], "tokenizer_dir": release["tokenizer"],
            "resolution": 64, "vq_config": TINY_VQ, **kw}
    return load_showo_t2i(**args)


@pytest.fixture(scope="module")
def policy(release) -> ShowoT2IPolicy:
    return _load(release)


def _state(seed: int, masked: float = 0.5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 8192, (2, 16), generator=g)
    return torch.where(torch.rand(2, 16, generator=g) < masked, 8192, codes)


def test_policy_interface_and_attributes(policy):
    assert isinstance(policy, MaskedPolicy) and not policy.training
    assert (policy.mask_code, policy.num_image_tokens, policy.grid_shape, policy.seq_len) == (8192, 16, (4, 4), L)
    assert policy.preset.guidance == Guidance.showo and policy.preset.mask_rounding == MaskRounding.float32
    assert policy.num_parameters == sum(p.numel() for p in policy.lm.parameters())  # the VQ is not a parameter
    assert not any(k.startswith("vq") for k in policy.state_dict())
    assert policy.tokenizer.convert_tokens_to_ids(["[PAD]", "<|soi|>", "<|lvg|>"]) == [257, 258, 266]
    assert len(policy.tokenizer) == TINY_LAYOUT.image_offset == 267


def test_prompt_and_null_prompt_layout(policy):
    text = policy.encode_prompts(["a red cat", ""])
    body = [T2I, 256, *b"a red cat", 256]  # <|t2i|> <bos> bytes <eos>, left-padded
    assert text.dtype == torch.long and text.shape == (2, TEXT)
    assert text[0].tolist() == [PAD] * (TEXT - len(body)) + body
    assert text[1].tolist() == [PAD] * (TEXT - 3) + [T2I, 256, 256]
    assert torch.equal(policy.null_prompts(3), text[1].expand(3, -1))
    state = torch.tensor([[0, 8191, 8192] + [5] * 13])
    ids = policy.input_ids(text[:1], state)[0].tolist()
    assert ids[TEXT:] == [SOI, 267, 267 + 8191, TINY_LAYOUT.mask_token_id] + [272] * 13 + [EOI]


def test_prompt_budget_is_exact_and_never_truncates(policy):
    full = policy.encode_prompts(["x" * 126])  # 126 text tokens: no padding left
    assert full[0, :2].tolist() == [T2I, 256] and full[0, -1].item() == 256
    with pytest.raises(ValueError, match=r"prompt 'xxx.*' has 127 tokens; Show-o's text budget is 126"):
        policy.encode_prompts(["ok", "x" * 127])
    with pytest.raises(ValueError, match=r"prompt 'a <\|soi\|> b' contains Show-o's reserved tokens"):
        policy.encode_prompts(["a <|soi|> b"])


def _omni_attention(text_ids: torch.Tensor) -> torch.Tensor:
    """Show-o's create_attention_mask_predict_next(rm_pad_in_image=True), one entry at a time."""
    allowed = torch.zeros(text_ids.shape[0], L, L, dtype=torch.bool)
    for b, row in enumerate(text_ids.tolist()):
        pad = [t == PAD for t in row] + [False] * (L - TEXT)
        for q in range(L):
            for k in range(L):
                if q >= TEXT:  # <|soi|> .. <|eoi|>: every non-pad key
                    allowed[b, q, k] = not pad[k]
                elif pad[q]:  # a pad sees the pads up to itself
                    allowed[b, q, k] = k <= q and pad[k]
                else:  # text: causal, pads removed
                    allowed[b, q, k] = k <= q and not pad[k]
    return allowed


def test_attention_mask_is_additive_omni_attention(policy):
    text = torch.cat([policy.encode_prompts(["a red cat", "x" * 126]), policy.null_prompts(1)])
    mask = policy.attention_mask(text)
    assert mask.shape == (3, 1, L, L) and mask.dtype == torch.float32
    expected = _omni_attention(text)
    assert torch.equal(mask[:, 0] == 0, expected)
    assert (mask[:, 0][~expected] == torch.finfo(torch.float32).min).all()


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_gets_no_attention_weight(release, attn):
    """Eager attention adds a 4D mask as it is (a boolean one would not mask there): pads must still get 0."""
    policy = _load(release)
    policy.lm.set_attn_implementation(attn)
    text, state = policy.encode_prompts(["a red cat", "a blue square on the left"]), _state(1)
    with torch.no_grad():
        before = policy(text, state)
        policy.lm.model.embed_tokens.weight[PAD].normal_(0, 100.0)
        after = policy(text, state)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    if attn == "eager":
        with torch.no_grad():
            out = policy.lm.model(input_ids=policy.input_ids(text, state), attention_mask=policy.attention_mask(text),
                                  output_attentions=True)
        pad = torch.cat([text == PAD, torch.zeros(2, L - TEXT, dtype=torch.bool)], dim=1)
        non_pad_to_pad = ~pad[:, :, None] & pad[:, None, :]  # (B, L, L)
        assert len(out.attentions) == TINY_LLM["num_hidden_layers"]
        for weights in out.attentions:  # (B, heads, L, L)
            assert (weights.transpose(0, 1)[:, non_pad_to_pad] == 0).all()
            torch.testing.assert_close(weights.sum(-1), torch.ones_like(weights.sum(-1)))


def test_forward_is_the_full_lm_logits_at_image_positions_and_codebook_columns(policy):
    text, state = policy.encode_prompts(["a red cat", ""]), _state(2)
    with torch.no_grad():
        logits = policy(text, state)
        full = policy.lm(input_ids=policy.input_ids(text, state), attention_mask=policy.attention_mask(text)).logits
    assert logits.shape == (2, 16, 8192) and logits.dtype == torch.float32
    torch.testing.assert_close(logits, full[:, TEXT + 1: L - 1, 267: 267 + 8192])
    with torch.no_grad():  # the text conditions the image; image tokens see each other both ways
        other_text = policy(policy.encode_prompts(["a blue dog", ""]), state)
        last_changed = state.clone()
        last_changed[:, -1] = (state[:, -1] + 1) % 8192
        other_image = policy(text, last_changed)
    assert not torch.allclose(other_text[0], logits[0]) and torch.equal(other_text[1], logits[1])
    assert not torch.allclose(other_image[:, 0], logits[:, 0])


def test_bfloat16_policy_builds_its_mask_in_bfloat16(release, policy):
    half = _load(release, dtype=torch.bfloat16, vq_dir=None)
    text, state = half.encode_prompts(["a red cat", ""]), _state(3)
    assert half.attention_mask(text).dtype == torch.bfloat16
    with torch.no_grad():
        logits = half(text, state)
        torch.testing.assert_close(logits.float(), policy(text, state), rtol=0, atol=2e-2)
    assert logits.dtype == torch.bfloat16


def test_decode_images_gives_rgb_uint8(release, policy):
    codes = torch.randint(0, 8192, (2, 16))
    images = policy.decode_images(codes)
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8
    pixels = policy.vq.decode(codes.reshape(2, 4, 4))
    assert np.array_equal(images, ((pixels + 1) * 127.5).round().permute(0, 2, 3, 1).numpy().astype(np.uint8))
    with pytest.raises(ValueError, match="outside 0..8191"):
        policy.decode_images(torch.full((1, 16), 8192))
    with pytest.raises(RuntimeError, match="without a VQ decoder"):
        _load(release, vq_dir=None).decode_images(codes)


def test_missing_directories_and_files_are_named(release, tmp_path):
    for key, name in (("model_dir", "Show-o model directory"), ("vq_dir", r"VQ \(model.vq_dir\) directory"),
                      ("tokenizer_dir", "tokenizer directory")):
        with pytest.raises(FileNotFoundError, match=f"{name} .*nowhere.* does not exist"):
            _load(release, **{key: tmp_path / "nowhere"})
    (tmp_path / "pytorch_model.bin").write_bytes(b"never opened")
    with pytest.raises(FileNotFoundError, match=r"VQ \(model.vq_dir\) directory .*no \.safetensors weights \(found pytorch_model\.bin"):
        _load(release, vq_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="tokenizer directory .* has no tokenizer.json"):
        _load(release, tokenizer_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="Show-o model directory .* has no config.json"):
        _load(release, model_dir=tmp_path)


def test_resolution_and_tokenizer_must_fit_the_release(release, tmp_path):
    with pytest.raises(ValueError, match="generates 16 image tokens; resolution 128 needs 64"):
        _load(release, resolution=128)
    wrong = write_byte_tokenizer(tmp_path / "tok", 258, 256)  # one text token too many
    with pytest.raises(ValueError, match=r"'\[PAD\]': 258.*Show-o's layout needs \{'\[PAD\]': 257"):
        _load(release, tokenizer_dir=wrong)


@pytest.mark.parametrize("resolution, tokens, length", [(256, 256, 387), (512, 1024, 1155)])
def test_full_size_layout(tmp_path, resolution, tokens, length):
    """The real vocabulary (Phi-1.5: 50,295 ids, <|endoftext|> = 50256) on a meta-device LM, no weights."""
    layout = ShowoReleaseConfig(num_vq_tokens=tokens)
    directory = write_byte_tokenizer(tmp_path, 50295, 50256)
    with torch.device("meta"):
        lm = PhiForCausalLM(phi_config({"llm_model_path": "microsoft/phi-1_5", "llm_vocab_size": 50295,
                                        "codebook_size": 8192, "num_vq_tokens": tokens, "vocab_size": 58498}))
    policy = ShowoT2IPolicy(lm, load_showo_tokenizer(directory, layout), layout, resolution)
    side = resolution // 16
    assert (policy.num_image_tokens, policy.grid_shape, policy.mask_code) == (tokens, (side, side), 8192)
    assert policy.seq_len == length
    row = policy.encode_prompts(["a cat"])[0].tolist()
    assert row[-8:] == [50300, 50256, *b"a cat", 50256] and set(row[:-8]) == {50295}
    ids = policy.input_ids(policy.null_prompts(1), torch.tensor([[0, 8192] * (tokens // 2)]))[0].tolist()
    assert ids[126:131] == [50300, 50256, 50256, 50296, 50305] and ids[131] == 58497 and ids[-1] == 50297


@pytest.mark.parametrize("variant", ["candidate1", "candidate2"])
def test_maskrl_samples_and_scores_show_o_with_its_preset(policy, variant):
    """The generic sampler and learner on Show-o: free-text prompts, Show-o's guidance, float32 mask
    counts; the learner's recomputed transition log-probs equal the recorded ones; images decode."""
    sampling = SamplingConfig(steps=3, cfg_scale=1.75, variant=variant, noise_schedule="compound")
    prompts = [(0, "A photo of a corgi, wearing sunglasses."), (1, "two cats")]
    batch = rollout_groups(policy, prompts, 2, sampling, torch.Generator().manual_seed(0), 0)
    assert batch.tokens.shape == (4, 16) and 0 <= int(batch.tokens.min()) and int(batch.tokens.max()) < 8192
    left = masked_counts(16, 3, MaskRounding.float32)  # the preset's rounding sets each step's reveal count
    revealed = torch.stack([(batch.reveal_step == t).sum(1) for t in range(3)], 1)
    assert revealed.tolist() == [[16 - left[0], left[0] - left[1], left[1]]] * 4
    traj, step = torch.arange(4).repeat_interleave(3), torch.arange(3).repeat(4)
    with torch.no_grad():
        recomputed, _ = score_pairs(policy, batch, traj, step, sampling)
    torch.testing.assert_close(recomputed, batch.behaviour(traj, step), atol=1e-5, rtol=0)
    assert policy.decode_images(batch.tokens).shape == (4, 64, 64, 3)


def test_release_reference_loads_trains_with_lora_and_saves_as_maskrl_checkpoints(release, policy, tmp_path):
    """A Show-o run's starting checkpoint names the release directories (nothing converted); LoRA
    checkpoints hold only adapters on top of it, full fine-tuning ones the release layout; reward
    workers decode through the reference without the policy."""
    dirs = ShowoReleaseDirs(str(release["model"]), str(release["vq"]), str(release["tokenizer"]), resolution=64,
                            vq_config=dataclasses.asdict(TINY_VQ))
    ref = write_release_reference(dirs, tmp_path / "ref")
    loaded = load_policy(ref)
    state = _state(0)
    text = loaded.encode_prompts(["a corgi", "two cats"])
    torch.testing.assert_close(loaded(text, state), policy(text, state))
    tokens = torch.randint(0, 8192, (2, 16), generator=torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(image_decoder(ref)(tokens), policy.decode_images(tokens))

    adapted = for_training(load_policy(ref), LoraConfig(rank=2), ref)
    with torch.no_grad():
        for k, v in trainable_state(adapted).items():
            v.normal_(0, 0.1)
    out = save_policy(adapted, tmp_path / "lora")
    assert sorted(p.name for p in out.iterdir()) == ["adapter.safetensors", "config.json"]
    torch.testing.assert_close(load_policy(out)(text, state), adapted(text, state))
    np.testing.assert_array_equal(image_decoder(out)(tokens), policy.decode_images(tokens))

    full = load_policy(ref)
    with torch.no_grad():
        full.lm.lm_head.bias.add_(0.5)
    saved = save_policy(full, tmp_path / "full")
    assert (saved / "model" / "pytorch_model.safetensors").is_file()
    torch.testing.assert_close(load_policy(saved)(text, state), full(text, state))

    with pytest.raises(FileNotFoundError, match=r"tokenizer \(model.tokenizer_dir\)"):
        write_release_reference(dataclasses.replace(dirs, tokenizer_dir=str(tmp_path / "nowhere")), tmp_path / "bad")
