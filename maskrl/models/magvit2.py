"""Show-o's MAGVIT-v2 image tokenizer, decoding half: image codes -> pixels.

Show-o generates a 256 px image as a 16 x 16 grid of codes from an 8,192-entry codebook and turns
it into pixels with the decoder of its MAGVIT-v2 tokenizer (release `showlab/magvitv2`, loaded in
Show-o by `MAGVITv2.from_pretrained`). This module is an independent PyTorch implementation of that
decoder and of the lookup-free quantiser's code -> vector map, laid out so that the release's state
dict loads with a strict key check. The encoder is not needed to decode and its keys are skipped.

Facts used, and where they come from (all public source of github.com/showlab/Show-o):

* `models/modeling_magvitv2.py`
  - `MAGVITv2` holds three children named `encoder`, `decoder` and `quantize`, so release keys
    start with `encoder.`, `decoder.` or `quantize.`.
  - `LFQuantizer` (`codebook_dim=13`, so 2**13 = 8,192 codes) keeps two persistent buffers,
    `embedding` (8192, 13) float and `power_vals` (13,) integer. Row c of `embedding` holds the
    13 binary digits of c, most significant first (channel 0 is bit 12), each mapped 0 -> -1,
    1 -> +1; no further scale. The inverse sums `power_vals = 2**(12..0)` over channels > 0.
    `get_codebook_entry` reads a flat (B, H*W) code row in row-major order as an (H, W) grid and
    returns (B, 13, H, W).
  - `VQGANDecoder` defaults: ch 128, ch_mult (1, 1, 2, 2, 4), num_res_blocks (4, 4, 3, 4, 3) per
    level, z_channels 13, out_ch 3, no timestep embedding (temb_ch 0), dropout 0. Its
    `attn_resolutions=[5]` never equals a feature-map size (16..256), so the upsampling levels hold
    no attention modules (no keys). Children and order of operations: `post_quant_conv` (1x1,
    13 -> 13) -> `conv_in` (3x3, 13 -> 512) -> `mid.block_1`, `mid.attn_1`, `mid.block_2` ->
    levels `up[4]` down to `up[0]`, each its `block[i]` residual blocks then, except level 0,
    `upsample` -> `norm_out` -> swish -> `conv_out` (3x3 -> 3). `up` is indexed by level (the
    lowest resolution is `up.4`), four 2x upsamplings make the 16x factor.
* `models/common_modules.py`
  - Normalize: GroupNorm with 32 groups, eps 1e-6, affine. Nonlinearity: swish, x * sigmoid(x).
  - ResnetBlock: norm1 -> swish -> conv1 (3x3) -> norm2 -> swish -> conv2 (3x3), plus the input,
    passed through a 1x1 `nin_shortcut` where the channel count changes.
  - AttnBlock: `norm`, 1x1 `q`, `k`, `v`, `proj_out`; one head over all positions, logits scaled
    by channels**-0.5, output added to the input.
  - Upsample: nearest-neighbour 2x, then a 3x3 `conv`.
* `inference_t2i.py`: generated codes are clamped into the codebook and decoded with
  `decode_code`, and pixels are clamped with `clamp((x + 1) / 2, 0, 1)`, i.e. the decoder's output
  is read as [-1, 1]. Here out-of-range codes are an error rather than clamped.
* `configs/showo_demo.yaml`: `vq_model_name: "showlab/magvitv2"`, codebook_size 8192,
  num_vq_tokens 256 (16 x 16 codes for resolution 256).

`tests/fixtures/magvitv2_decoder_keys.txt` lists the resulting key names and shapes. They are
derived from the source above (the `quantize.*` entries from its persistent buffers); the release
file itself could not be opened here, so the first real load is the final check, and a mismatch
fails loudly with the keys named.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

IGNORED_PREFIXES = ("encoder.",)  # the release's encoder half: not needed to decode
_SHOWN_KEYS = 20  # keys named per category in a key-mismatch error; the exception holds all


@dataclass(frozen=True)
class MagvitV2Config:
    """Decoder hyper-parameters; the defaults are the release's, smaller ones are for tests."""

    code_bits: int = 13  # LFQ bits = latent channels; codebook size 2**code_bits
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: tuple[int, ...] = (4, 4, 3, 4, 3)
    out_ch: int = 3
    norm_groups: int = 32

    def __post_init__(self):
        if len(self.ch_mult) != len(self.num_res_blocks):
            raise ValueError(f"ch_mult {self.ch_mult} and num_res_blocks {self.num_res_blocks} differ in length")
        if any(self.ch * m % self.norm_groups for m in self.ch_mult):
            raise ValueError(f"every level's width ch * ch_mult must divide into {self.norm_groups} groups")

    @property
    def codebook_size(self) -> int:
        return 2 ** self.code_bits

    @property
    def upscale(self) -> int:
        """Pixels per code along each side (16 for the release)."""
        return 2 ** (len(self.ch_mult) - 1)


class CheckpointKeyError(ValueError):
    """A state dict that does not match the decoder; `missing`, `unexpected`, `wrong_shape` hold all."""

    def __init__(self, missing: list[str], unexpected: list[str], wrong_shape: list[str]):
        self.missing, self.unexpected, self.wrong_shape = missing, unexpected, wrong_shape
        parts = [_name_keys(title, keys) for title, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)) if keys]
        ignored = ", ".join(f"{p}*" for p in IGNORED_PREFIXES)
        super().__init__(f"MAGVIT-v2 state dict does not match the decoder ({ignored} ignored): " + "; ".join(parts))


def _name_keys(title: str, keys: list[str]) -> str:
    """`title (n): a, b, ...`, cut after a few keys so a wholly wrong file gives a readable error."""
    more = f", ... and {len(keys) - _SHOWN_KEYS} more" if len(keys) > _SHOWN_KEYS else ""
    return f"{title} ({len(keys)}): " + ", ".join(keys[:_SHOWN_KEYS]) + more


# -- the lookup-free quantiser's code <-> bits map --------------------------------------------------

def _bit_weights(bits: int, device=None) -> torch.Tensor:
    """2**(bits-1) ... 2**0: channel 0 carries the most significant bit, as in the release."""
    return 2 ** torch.arange(bits - 1, -1, -1, dtype=torch.long, device=device)


def codes_to_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """(...) integer codes -> (..., bits) of 0/1, most significant first."""
    shifts = torch.arange(bits - 1, -1, -1, dtype=torch.long, device=codes.device)
    return (codes.long().unsqueeze(-1) >> shifts) & 1


def bits_to_codes(bits: torch.Tensor) -> torch.Tensor:
    """(..., bits) of 0/1, most significant first -> (...) int64 codes."""
    return (bits.long() * _bit_weights(bits.shape[-1], bits.device)).sum(-1)


class LookupFreeQuantizer(nn.Module):
    """Codes <-> +-1 vectors. The tables are persistent buffers in the source, so the release's state
    dict carries them (`quantize.embedding`, `quantize.power_vals`); they are loaded and checked."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits
        self.register_buffer("embedding", codes_to_bits(torch.arange(2 ** bits), bits).float() * 2 - 1)
        self.register_buffer("power_vals", _bit_weights(bits))

    def codes_to_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """(...) codes -> (..., bits) float vectors of -1/+1, read from the stored table like Show-o."""
        return self.embedding[codes]

    def vectors_to_codes(self, vectors: torch.Tensor) -> torch.Tensor:
        """(..., bits) latents -> (...) codes: a channel > 0 is a set bit."""
        return ((vectors > 0).long() * self.power_vals).sum(-1)

    def check_table(self) -> None:
        """Refuse a loaded table that is not the bit rule: it would mean another bit order or scale."""
        expected = codes_to_bits(torch.arange(2 ** self.bits, device=self.embedding.device), self.bits) * 2 - 1
        if not torch.equal(self.embedding, expected.to(self.embedding.dtype)) or \
                not torch.equal(self.power_vals, _bit_weights(self.bits, self.power_vals.device)):
            raise ValueError("the checkpoint's quantize.embedding / quantize.power_vals differ from the "
                             "MSB-first +-1 bit rule; is it a MAGVIT-v2 release with another code layout?")


# -- the convolutional decoder ----------------------------------------------------------------------

def _norm(channels: int, groups: int) -> nn.GroupNorm:
    """The release's GroupNorm (eps 1e-6); `groups` is 32 there, smaller only for tiny test configs."""
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    """Pre-activation residual block; a 1x1 shortcut only where the width changes."""

    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.norm1 = _norm(c_in, groups)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = _norm(c_out, groups)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all spatial positions, residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(channels, groups)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(channels, channels, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        # (B, 1, HW, C): one head; SDPA's default scale is C**-0.5, the release's
        q, k, v = (proj(y).flatten(2).transpose(1, 2).unsqueeze(1) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Upsample(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Middle(nn.Module):
    """Residual, attention, residual at the lowest resolution (keys `mid.block_1/attn_1/block_2`)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _UpLevel(nn.Module):
    """One resolution: residual blocks, then a 2x upsampling on every level but the last (level 0)."""

    def __init__(self, c_in: int, c_out: int, n_blocks: int, upsample: bool, groups: int):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(c_in if i == 0 else c_out, c_out, groups) for i in range(n_blocks))
        self.upsample = Upsample(c_out) if upsample else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.block:
            x = block(x)
        return self.upsample(x)


class ConvDecoder(nn.Module):
    """Latent (B, bits, H, W) -> unbounded pixels (B, out_ch, upscale*H, upscale*W)."""

    def __init__(self, cfg: MagvitV2Config):
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.post_quant_conv = nn.Conv2d(cfg.code_bits, cfg.code_bits, 1)
        self.conv_in = nn.Conv2d(cfg.code_bits, widths[-1], 3, padding=1)
        self.mid = _Middle(widths[-1], cfg.norm_groups)
        # `up[i]` is level i; they run from the last (lowest resolution, widest) to level 0
        c_in = widths[1:] + widths[-1:]
        self.up = nn.ModuleList(
            _UpLevel(c_in[i], widths[i], cfg.num_res_blocks[i], upsample=i > 0, groups=cfg.norm_groups)
            for i in range(len(widths)))
        self.norm_out = _norm(widths[0], cfg.norm_groups)
        self.conv_out = nn.Conv2d(widths[0], cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(self.post_quant_conv(z)))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class MagvitV2Decoder(nn.Module):
    """Codes -> pixels with the release's key layout (`quantize.*`, `decoder.*`)."""

    def __init__(self, config: MagvitV2Config = MagvitV2Config()):
        super().__init__()
        self.config = config
        self.quantize = LookupFreeQuantizer(config.code_bits)
        self.decoder = ConvDecoder(config)

    def codes_to_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, H, W) codes -> (B, bits, H, W) latents of -1/+1, the decoder's input."""
        return self.quantize.codes_to_vectors(codes).permute(0, 3, 1, 2)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, H, W) int64 codes -> (B, 3, 16H, 16W) pixels in [-1, 1] (clamped, as Show-o reads them)."""
        self._check_codes(codes)
        pixels = self.decoder(self.codes_to_vectors(codes))
        return pixels.clamp(-1.0, 1.0)

    def _check_codes(self, codes: torch.Tensor) -> None:
        """A mask token or a text id left among the codes would index outside the table."""
        if codes.ndim != 3 or codes.dtype != torch.long:
            raise ValueError(f"expected (B, H, W) int64 codes, got {tuple(codes.shape)} {codes.dtype}")
        n = self.config.codebook_size
        if codes.numel() and (codes.min() < 0 or codes.max() >= n):
            raise ValueError(f"codes outside 0..{n - 1}: was a mask token or a text id left in the image?")

    def load_release_state(self, state: dict[str, torch.Tensor]) -> None:
        """Strict load: every decoder/quantiser key present with its shape, nothing else but the encoder."""
        kept = {k: v for k, v in state.items() if not k.startswith(IGNORED_PREFIXES)}
        expected = self.state_dict()
        missing = sorted(expected.keys() - kept.keys())
        unexpected = sorted(kept.keys() - expected.keys())
        wrong_shape = [f"{k} {tuple(kept[k].shape)} != {tuple(expected[k].shape)}"
                       for k in sorted(expected.keys() & kept.keys()) if kept[k].shape != expected[k].shape]
        if missing or unexpected or wrong_shape:
            raise CheckpointKeyError(missing, unexpected, wrong_shape)
        self.load_state_dict(kept, strict=True)
        self.quantize.check_table()

    @classmethod
    def from_release(cls, path: str | Path, config: MagvitV2Config = MagvitV2Config()) -> "MagvitV2Decoder":
        """The release's weights from a local .safetensors file, in eval mode on the CPU."""
        from safetensors.torch import load_file

        path = Path(path).expanduser()
        if path.suffix != ".safetensors":
            raise ValueError(
                f"MAGVIT-v2 weights {str(path)!r} are not a .safetensors file. maskrl never unpickles a "
                f"checkpoint; convert the release's pytorch_model.bin once with `python -m maskrl.rewards.convert "
                f"{path} {path.with_suffix('.safetensors')}` and pass the result.")
        if not path.is_file():
            raise FileNotFoundError(
                f"MAGVIT-v2 weights not found at {str(path)!r}; download the showlab/magvitv2 release on a "
                f"machine with access and, if it is a .bin, convert it with `python -m maskrl.rewards.convert`.")
        model = cls(config)
        model.load_release_state(load_file(str(path)))
        return model.eval()
