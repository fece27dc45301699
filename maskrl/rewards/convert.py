"""Convert a pickled PyTorch checkpoint (.pt/.pth/.bin) to safetensors, once, by hand.

    python -m maskrl.rewards.convert HPS_v2.1_compressed.pt hpsv2.1.safetensors

maskrl's rewards load weights from safetensors only. This tool reads the pickle with
`torch.load(weights_only=True)` (PyTorch's restricted unpickler: tensors and plain containers,
no code), unwraps a `state_dict` entry, strips a DataParallel `module.` prefix, and writes the
tensors. Run it only on files you trust.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch


def convert(src: str | Path, dst: str | Path, key: str | None = "state_dict") -> int:
    from safetensors.torch import save_file

    obj = torch.load(src, map_location="cpu", weights_only=True)
    if key and isinstance(obj, dict) and key in obj:
        obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{src}: expected a dict of tensors (or one under {key!r}), got {type(obj).__name__}")
    state = {(k[len("module."):] if k.startswith("module.") else k): v.contiguous() for k, v in obj.items()}
    save_file(state, str(dst))
    return len(state)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--key", default="state_dict", help="unwrap this entry if present (default: state_dict)")
    args = parser.parse_args(argv)
    n = convert(args.src, args.dst, args.key)
    print(f"wrote {n} tensors to {args.dst}")


if __name__ == "__main__":
    main()
