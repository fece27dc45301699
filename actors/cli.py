"""`maskrl train`: Mask-GRPO on Ray, registered into maskrl's command line as an entry point
(group `maskrl.commands`), so that the library itself never imports the Ray layer."""
from __future__ import annotations

from pathlib import Path

from maskrl.cli import held_out_line
from maskrl.train_config import load_train_config


def add_train_command(sub) -> None:
    p = sub.add_parser("train", help="Mask-GRPO on Ray: rollout, reward and DeepSpeed learner pools")
    p.add_argument("--config", help="YAML recipe, e.g. configs/shapes_cpu.yaml")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.set_defaults(func=_train)


def _train(args) -> None:
    if args.resume:
        if args.config:
            raise ValueError("pass --config to start a run or --resume RUN_DIR to continue one, not both")
        saved = Path(args.resume) / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"run directory {args.resume!r} has no config.yaml; pass the directory of a `maskrl train` run")
        cfg = load_train_config(saved, [*args.overrides, f"out={args.resume}"])
    else:
        cfg = load_train_config(args.config, args.overrides)
    from actors.driver import train  # Ray is imported once the config is known to be good

    result = train(cfg, resume=bool(args.resume))
    print(held_out_line("base", result.base))
    print(held_out_line("trained", result.final))
    print(f"grids: {result.grids}")
    print(f"checkpoint: {result.checkpoint}")
