"""The `maskrl` command line."""
from __future__ import annotations

import argparse
import sys

from maskrl.config import ConfigError, load_config


def _pretrain(args) -> None:
    from maskrl.pretrain import PretrainConfig, pretrain

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    print(f"checkpoint: {pretrain(cfg)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskrl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pretrain", help="pre-train a base policy with the masked-token objective")
    p.add_argument("--config", help="YAML recipe (PretrainConfig)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.set_defaults(func=_pretrain)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"maskrl {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
