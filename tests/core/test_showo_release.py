"""Show-o release loading: key layout at full size, tiny releases in the official layout, strict errors, vocabulary."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import PhiForCausalLM

from maskrl.models.showo_release import (
    ReleaseKeyError, ShowoReleaseConfig, image_code_logits, load_showo_release, phi_config,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "showo_release_keys.txt"
# config.json as Show-o's config mixin writes it for showlab/show-o (configs/showo_demo.yaml values)
RELEASE_256 = {
    "_class_name": "Showo", "_version": "0.0.1", "codebook_size": 8192, "llm_model_path": "microsoft/phi-1_5",
    "llm_vocab_size": 50295, "mask_token_id": 58497, "num_vq_tokens": 256, "vocab_size": 58498, "w_clip_vit": False,
}
PHI_1_5_PARAMS = 1_418_270_720  # microsoft/phi-1_5 as released: 51,200-row vocabulary, untied head
TINY_LLM = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "hidden_act": "gelu_new", "partial_rotary_factor": 0.5, "max_position_embeddings": 64}
TINY_LAYOUT = ShowoReleaseConfig(llm_vocab_size=20, codebook_size=8, num_vq_tokens=4)


def _fixture() -> dict[str, tuple[int, ...]]:
    rows = [line.split() for line in FIXTURE.read_text().splitlines() if line and not line.startswith("#")]
    return {name: tuple(int(d) for d in shape.split(",")) for name, shape in rows}


def _tiny_release(root: Path, shards: int = 1, edit=None) -> tuple[Path, PhiForCausalLM]:
    """A release directory as published: Show-o config.json, `showo.`-prefixed safetensors; LLM config local."""
    llm_dir, release = root / "phi-tiny", root / "show-o-tiny"
    llm_dir.mkdir(parents=True)
    release.mkdir()
    (llm_dir / "config.json").write_text(json.dumps(TINY_LLM))
    config = {"_class_name": "Showo", "_version": "0.0.1", "codebook_size": TINY_LAYOUT.codebook_size,
              "llm_model_path": str(llm_dir), "llm_vocab_size": TINY_LAYOUT.llm_vocab_size,
              "mask_token_id": TINY_LAYOUT.mask_token_id, "num_vq_tokens": TINY_LAYOUT.num_vq_tokens,
              "vocab_size": TINY_LAYOUT.vocab_size, "w_clip_vit": False}
    (release / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    reference = PhiForCausalLM(phi_config(config)).eval()
    with torch.no_grad():  # LayerNorms start at 1/0: perturb them so a dropped q/k norm would show
        for name, p in reference.named_parameters():
            if "layernorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    state = {"showo." + k: v.contiguous() for k, v in reference.state_dict().items()}
    if edit:
        edit(state)
    if shards == 1:
        save_file(state, release / "pytorch_model.safetensors")
        return release, reference
    names = sorted(state)
    weight_map = {}
    for i in range(shards):
        file = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k] for k in names[i::shards]}
        save_file(part, release / file)
        weight_map.update(dict.fromkeys(part, file))
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
             "weight_map": weight_map}
    (release / "pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    return release, reference


def test_full_size_model_matches_the_release_key_fixture():
    config = phi_config(RELEASE_256)
    with torch.device("meta"):
        model = PhiForCausalLM(config)
    actual = {"showo." + k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert actual == _fixture()
    assert len(actual) == 2 + 24 * 18 + 2 + 1
    extra_vocab = (58498 - 51200) * (2 * 2048 + 1)  # embedding row + lm_head row and bias per added id
    qk_norms = 24 * 2 * 2 * 64  # q and k LayerNorm, weight and bias, per layer
    assert sum(p.numel() for p in model.parameters()) == PHI_1_5_PARAMS + extra_vocab + qk_norms
    assert config.qk_layernorm and not config.tie_word_embeddings and config._attn_implementation == "sdpa"
    assert config.rope_parameters["partial_rotary_factor"] == 0.5 and config.hidden_act == "gelu_new"


@pytest.mark.parametrize("shards", [1, 2])
def test_tiny_release_loads_and_reproduces_its_logits(tmp_path, shards):
    release, reference = _tiny_release(tmp_path, shards)
    model = load_showo_release(release)
    assert not model.training and model.config.qk_layernorm
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in reference.state_dict().items())
    ids = torch.randint(0, TINY_LAYOUT.vocab_size, (2, 12))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    half = load_showo_release(release, dtype=torch.bfloat16)
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


def test_missing_unexpected_and_misshapen_keys_are_all_named(tmp_path):
    def edit(state):
        del state["showo.model.layers.1.self_attn.k_layernorm.bias"]
        state["showo.model.layers.1.self_attn.extra.weight"] = torch.zeros(3)
        state["mm_projector.0.weight"] = torch.zeros(3)
        state["showo.lm_head.bias"] = torch.zeros(5)

    release, _ = _tiny_release(tmp_path, edit=edit)
    with pytest.raises(ReleaseKeyError) as err:
        load_showo_release(release)
    message = str(err.value)
    assert "missing (1): showo.model.layers.1.self_attn.k_layernorm.bias" in message
    assert "showo.model.layers.1.self_attn.extra.weight" in message and "mm_projector.0.weight" in message
    assert "showo.lm_head.bias (5,) != (39,)" in message
    assert err.value.unexpected == ["mm_projector.0.weight", "showo.model.layers.1.self_attn.extra.weight"]


def test_pickle_only_and_absent_directories_are_refused_with_the_way_out(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(RELEASE_256))
    (tmp_path / "pytorch_model.bin").write_bytes(b"never opened")
    with pytest.raises(FileNotFoundError, match=r"pytorch_model\.bin.*python -m maskrl\.rewards\.convert IN\.bin"):
        load_showo_release(tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_showo_release(tmp_path / "nowhere")
    (tmp_path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_showo_release(tmp_path)


def test_missing_shard_and_unknown_llm_are_named(tmp_path):
    release, _ = _tiny_release(tmp_path, shards=2)
    (release / "pytorch_model-00002-of-00002.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="pytorch_model-00002-of-00002.safetensors"):
        load_showo_release(release)
    with pytest.raises(FileNotFoundError, match="microsoft/phi-2"):
        phi_config({**RELEASE_256, "llm_model_path": "microsoft/phi-2"})


def test_vocabulary_layout_at_full_size():
    layout = ShowoReleaseConfig.from_release(RELEASE_256)
    assert layout.special_token_ids == {
        "[PAD]": 50295, "<|soi|>": 50296, "<|eoi|>": 50297, "<|sov|>": 50298, "<|eov|>": 50299,
        "<|t2i|>": 50300, "<|mmu|>": 50301, "<|t2v|>": 50302, "<|v2v|>": 50303, "<|lvg|>": 50304,
    }
    assert (layout.image_offset, layout.mask_token_id, layout.vocab_size) == (50305, 58497, 58498)
    assert (layout.image_tokens(256), layout.image_tokens(512)) == (256, 1024)
    assert ShowoReleaseConfig.from_release({**RELEASE_256, "num_vq_tokens": 1024}).num_vq_tokens == 1024
    with pytest.raises(ValueError, match="58497"):
        ShowoReleaseConfig.from_release({**RELEASE_256, "mask_token_id": 58496})
    with pytest.raises(ValueError, match="CLIP-ViT"):
        ShowoReleaseConfig.from_release({**RELEASE_256, "w_clip_vit": True})


def test_image_code_logits_take_exactly_the_codebook_columns():
    layout = ShowoReleaseConfig()
    logits = torch.arange(layout.vocab_size, dtype=torch.float32).expand(2, 3, -1)
    codes = image_code_logits(logits)
    assert codes.shape == (2, 3, 8192)
    assert torch.equal(codes[0, 0], torch.arange(50305, 58497, dtype=torch.float32))
    tiny = image_code_logits(torch.arange(TINY_LAYOUT.vocab_size).float(), TINY_LAYOUT)
    assert tiny.tolist() == list(range(30, 38))
