"""MAGVIT-v2 decoder: release key layout, decoding shape/range, the LFQ bit map, strict safetensors loading."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from maskrl.models.magvit2 import (
    CheckpointKeyError, MagvitV2Config, MagvitV2Decoder, bits_to_codes, codes_to_bits,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "magvitv2_decoder_keys.txt"
# five levels as in the release (so 16 pixels per code), narrow enough to run in milliseconds
TINY = MagvitV2Config(ch=8, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=(1, 1, 1, 1, 1), norm_groups=4)
RELEASE_DECODER_PARAMS = 39_947_833  # decoder half of the ~95.4 M-parameter release (encoder ~55.4 M)


def _fixture() -> dict[str, tuple[str, tuple[int, ...]]]:
    rows = [line.split() for line in FIXTURE.read_text().splitlines() if line and not line.startswith("#")]
    return {name: (kind, tuple(int(d) for d in shape.split(","))) for name, kind, shape in rows}


def _tiny(seed: int = 0) -> MagvitV2Decoder:
    torch.manual_seed(seed)
    return MagvitV2Decoder(TINY).eval()


def test_full_size_module_matches_the_release_key_fixture():
    with torch.device("meta"):
        model = MagvitV2Decoder()
    params = dict(model.named_parameters())
    actual = {k: ("param" if k in params else "buffer", tuple(v.shape)) for k, v in model.state_dict().items()}
    assert actual == _fixture()
    assert sum(p.numel() for p in params.values()) == RELEASE_DECODER_PARAMS
    # names read in showlab/Show-o models/modeling_magvitv2.py: levels indexed by resolution, lowest last
    for key in ("decoder.post_quant_conv.weight", "decoder.mid.attn_1.proj_out.weight",
                "decoder.up.4.upsample.conv.weight", "decoder.up.3.block.0.nin_shortcut.weight",
                "quantize.embedding", "quantize.power_vals"):
        assert key in actual
    assert not any(k.startswith("decoder.up.0.upsample") or ".attn." in k for k in actual)
    assert actual["decoder.conv_in.weight"][1][1] == actual["quantize.embedding"][1][1] == 13
    assert model.config.codebook_size == 8192 and model.config.upscale == 16


def test_tiny_decoder_maps_codes_to_pixels_of_the_right_shape_and_range():
    model = _tiny()
    codes = torch.randint(0, TINY.codebook_size, (2, 2, 3))
    pixels = model.decode(codes)
    assert pixels.shape == (2, 3, 32, 48) and pixels.dtype == torch.float32
    assert torch.isfinite(pixels).all() and pixels.min() >= -1 and pixels.max() <= 1
    assert pixels.std() > 0
    with pytest.raises(ValueError, match="outside 0..8191"):
        model.decode(torch.full((1, 2, 2), 8192))
    with pytest.raises(ValueError, match=r"\(B, H, W\) int64"):
        model.decode(codes.flatten(1))


def test_lfq_bits_are_most_significant_first_and_round_trip():
    codes = torch.arange(2 ** 13)
    bits = codes_to_bits(codes, 13)
    assert torch.equal(bits_to_codes(bits), codes)
    assert bits[1].tolist() == [0] * 12 + [1] and bits[4096].tolist() == [1] + [0] * 12
    model = _tiny()
    vectors = model.quantize.codes_to_vectors(torch.tensor([0, 1, 4096, 8191]))
    assert set(vectors.unique().tolist()) == {-1.0, 1.0}  # +-1, no scale
    assert vectors[1].tolist() == [-1.0] * 12 + [1.0] and vectors[2].tolist() == [1.0] + [-1.0] * 12
    grid = torch.randint(0, 2 ** 13, (2, 3, 4))
    latents = model.codes_to_vectors(grid)
    assert latents.shape == (2, 13, 3, 4)
    assert torch.equal(model.quantize.vectors_to_codes(latents.permute(0, 2, 3, 1)), grid)


def test_strict_loading_names_missing_extra_and_misshaped_keys():
    model, state = _tiny(), _tiny(1).state_dict()
    missing = dict(state)
    del missing["decoder.conv_out.bias"]
    with pytest.raises(CheckpointKeyError, match=r"missing \(1\): decoder\.conv_out\.bias") as err:
        model.load_release_state(missing)
    assert err.value.unexpected == [] and err.value.wrong_shape == []
    extra = dict(state, **{"decoder.up.0.attn.0.q.weight": torch.zeros(8, 8, 1, 1)})
    with pytest.raises(CheckpointKeyError, match=r"unexpected \(1\): decoder\.up\.0\.attn\.0\.q\.weight"):
        model.load_release_state(extra)
    misshaped = dict(state, **{"decoder.conv_out.bias": torch.zeros(4)})
    with pytest.raises(CheckpointKeyError, match=r"wrong shape \(1\): decoder\.conv_out\.bias \(4,\) != \(3,\)"):
        model.load_release_state(misshaped)
    reordered = dict(state, **{"quantize.embedding": -state["quantize.embedding"]})
    with pytest.raises(ValueError, match="bit rule"):
        model.load_release_state(reordered)


def test_safetensors_release_round_trips_exactly_ignoring_the_encoder(tmp_path):
    source = _tiny(1)
    state = dict(source.state_dict(), **{"encoder.conv_in.weight": torch.randn(8, 3, 3, 3)})
    path = tmp_path / "magvitv2.safetensors"
    save_file(state, str(path))
    loaded = MagvitV2Decoder.from_release(path, TINY)
    assert not loaded.training
    for key, value in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    codes = torch.randint(0, TINY.codebook_size, (1, 2, 2))
    assert torch.equal(loaded.decode(codes), source.decode(codes))


def test_pickles_are_refused_and_a_missing_file_is_named(tmp_path):
    pickle = tmp_path / "pytorch_model.bin"
    pickle.write_bytes(b"not read")
    with pytest.raises(ValueError, match=r"never unpickles.*python -m maskrl\.rewards\.convert .*pytorch_model\.bin"):
        MagvitV2Decoder.from_release(pickle)
    absent = tmp_path / "absent.safetensors"
    with pytest.raises(FileNotFoundError, match=str(absent)):
        MagvitV2Decoder.from_release(absent)


@pytest.mark.slow
def test_full_size_random_decoder_decodes_a_256_px_image():
    """The release's architecture at full size (39.9 M parameters, random weights): 16 x 16 codes
    become one 256 x 256 RGB image in [-1, 1]."""
    torch.manual_seed(0)
    model = MagvitV2Decoder().eval()
    with torch.no_grad():
        pixels = model.decode(torch.randint(0, 8192, (1, 16, 16)))
    assert pixels.shape == (1, 3, 256, 256) and torch.isfinite(pixels).all()
    assert pixels.min() >= -1 and pixels.max() <= 1 and pixels.std() > 0
