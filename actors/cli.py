"""`maskrl train`: Mask-GRPO on Ray, registered into maskrl's command line as an entry point
(group `maskrl.commands`), so that the library itself never imports the Ray layer.

`maskrl train --config C` whose `out` already holds a run of the same recipe continues it from
its newest complete checkpoint, as `--resume OUT` does: running the same command again after
the driver (or the whole cluster) died picks the run up where it stopped, which is what a
RayJob retry does. A different recipe there is refused, naming the keys that differ; `--fresh`
starts over. The first line printed says which of these happened (`actors.runstate.plan_start`),
and the last lines are a summary: both held-out scores, the wall-clock, where the grids and
TensorBoard logs are, the next command to try, and `checkpoint: PATH`."""
from __future__ import annotations

import time
from pathlib import Path

from actors.runstate import CONFIG_FILE, DriverState, StartPlan, plan_start, recipe_of
from maskrl.cli import held_out_lines
from maskrl.config import ConfigError
from maskrl.train_config import TrainConfig, load_train_config


def add_train_command(sub) -> None:
    p = sub.add_parser("train", help="Mask-GRPO on Ray: rollout, reward and DeepSpeed learner pools")
    p.add_argument("--config", help="YAML recipe, e.g. configs/shapes_cpu.yaml; an `out` holding a run of the same "
                                    "recipe is continued from its last checkpoint")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint "
                                                       "(with its saved config; key=value overrides change it)")
    p.add_argument("--fresh", action="store_true", help="with --config: start over, replacing the run in `out`")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.set_defaults(func=_train)


def _train(args) -> None:
    started = time.perf_counter()
    if args.resume:
        if args.config or args.fresh:
            raise ValueError("pass --config to start a run or --resume RUN_DIR to continue one, not both "
                             "(and --fresh only with --config)")
        saved = Path(args.resume) / CONFIG_FILE
        if not saved.is_file():
            raise FileNotFoundError(f"run directory {args.resume!r} has no config.yaml; pass the directory of a `maskrl train` run")
        cfg = load_train_config(saved, [*args.overrides, f"out={args.resume}"])
        plan = _resume_plan(cfg)
    else:
        cfg = load_train_config(args.config, args.overrides)
        plan = plan_start(cfg.out, recipe_of(cfg), cfg.iterations, args.fresh, _saved_recipe(cfg.out, args.fresh))
    print(plan.line, flush=True)  # the first line: a new run, a continued one, or one started over
    from actors.driver import train  # Ray is imported once the config is known to be good

    result = train(cfg, resume=plan.resume)
    for line in summary(cfg, result, plan.start, time.perf_counter() - started):
        print(line)


def _saved_recipe(out: str, fresh: bool) -> dict | None:
    """The flattened recipe of the run in `out` (None: none there, or --fresh replaces it)."""
    saved = Path(out) / CONFIG_FILE
    if fresh or not saved.is_file():
        return None
    try:
        return recipe_of(load_train_config(saved))
    except ConfigError as err:
        raise ConfigError(f"config key 'out': the run in {out!r} has a {CONFIG_FILE} this version cannot read ({err}); "
                          f"pass --fresh to start over there, or choose another out") from None


def _resume_plan(cfg: TrainConfig) -> StartPlan:
    state = DriverState.latest(cfg.out, report=False)
    if state is None:
        DriverState.read(cfg.out)  # FileNotFoundError: no complete checkpoint to resume from
    return StartPlan(True, f"maskrl train: continuing the run in {cfg.out} from its checkpoint at iteration {state.iteration} "
                           f"of {cfg.iterations} (--resume)", state.iteration)


def _duration(seconds: float) -> str:
    minutes, s = divmod(round(seconds), 60)
    return f"{minutes} min {s} s" if minutes else f"{s} s"


def summary(cfg: TrainConfig, result, start: int, seconds: float) -> list[str]:
    """The closing block: held-out base and trained, wall-clock, where to look, what to try next;
    its last line is `checkpoint: PATH` (usable as `--checkpoint PATH`)."""
    trained = f"iterations {start + 1}-{cfg.iterations} in this command" if start < cfg.iterations else "nothing left to train"
    prompts = cfg.prompts_file or "configs/prompts/heldout_60.txt"  # a ShapesWorld run: held-out prompts
    return [
        "---- maskrl train: summary ----",
        *held_out_lines(result.base, result.final),
        f"wall-clock: {_duration(seconds)} ({trained})",
        f"grids: {result.grids} (iter_*.png; every image captioned with its rule reward and PASS/FAIL)",
        f"tensorboard: tensorboard --logdir {result.run / 'tensorboard'}",
        f"next: maskrl generate --checkpoint {result.checkpoint} --prompts {prompts} --out {result.run / 'images'}",
        f"checkpoint: {result.checkpoint}",
    ]
