"""The `maskrl` command line: pretrain, generate, eval, train-local, release-checkpoint, and the
commands other layers register (`train`, on Ray, from the actors package)."""
from __future__ import annotations

import argparse
import json
import sys
from importlib.metadata import entry_points
from pathlib import Path

from maskrl.config import ConfigError, load_config
from maskrl.sampling import NOISE_SCHEDULES, evaluation_sampling


COMMANDS = "maskrl.commands"  # entry points: add_command(subparsers) of the layers built on maskrl


class CommandError(Exception):
    """A failure the command explains in its message (e.g. Ray could not start on a loaded
    machine, naming the setting to raise): printed as one error, without a traceback."""


def _pretrain(args) -> None:
    from maskrl.pretrain import PretrainConfig, pretrain

    cfg = load_config(PretrainConfig, args.config, args.overrides)
    print(f"checkpoint: {pretrain(cfg)}")


def _read_prompts(path: str, check) -> list:
    """The prompt file's lines, each through `check` (the ShapesWorld grammar, or a real model's
    tokenizer); a bad line is an error naming the file and line."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"prompt file {path!r} does not exist")
    prompts = []
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        try:
            prompts.append(check(line))
        except ValueError as err:  # PromptError is one
            raise ValueError(f"{path}:{number}: {err}") from None
    if not prompts:
        raise ValueError(f"prompt file {path!r} holds no prompts")
    return prompts


def _free_text(policy):
    def check(line: str) -> str:
        policy.encode_prompts([line])  # too long, or reserved tokens: named by the policy
        return line
    return check


def _sampling(args):
    from maskrl.sampling import SamplingConfig

    return SamplingConfig(steps=args.steps, cfg_scale=args.cfg, noise_scale=args.noise,
                          noise_schedule=args.noise_schedule, temperature=args.temperature)


def _generate(args) -> None:
    from PIL import Image

    from maskrl.evaluation import generate, load_checkpoint
    from maskrl.models import ShowoPolicy
    from maskrl.world import parse_prompt, write_png

    policy = load_checkpoint(args.checkpoint)
    shapes_world = isinstance(policy, ShowoPolicy)
    texts = [p.text if shapes_world else p for p in _read_prompts(args.prompts, parse_prompt if shapes_world else _free_text(policy))]
    images = generate(policy, texts, args.samples, _sampling(args), args.seed, progress=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, per_prompt in enumerate(images):
        for k, image in enumerate(per_prompt):
            if shapes_world:  # a palette grid, drawn `--scale` pixels a cell (SHAPES_WORLD.md 5)
                write_png(image, out / f"{i:05d}_{k}.png", scale=args.scale)
            else:
                Image.fromarray(image).save(out / f"{i:05d}_{k}.png")
    print(f"wrote {images.shape[0] * images.shape[1]} images to {out}")


def _eval(args) -> None:
    from maskrl.evaluation import evaluate, load_checkpoint
    from maskrl.models import ShowoPolicy
    from maskrl.world import parse_prompt

    policy = load_checkpoint(args.checkpoint)
    if args.reward:
        print(json.dumps(_reward_eval(policy, args), indent=2))
        return
    if not isinstance(policy, ShowoPolicy):
        raise ValueError(f"checkpoint {args.checkpoint!r} is not a ShapesWorld policy, which ShapesEval scores: "
                         "name a reward (--reward clip_score --reward-option checkpoint=...)")
    prompts = _read_prompts(args.prompts, parse_prompt)
    print(json.dumps(evaluate(policy, prompts, args.samples, _sampling(args), args.seed, progress=True), indent=2))


def _release_checkpoint(args) -> None:
    from maskrl.run_model import Family, ModelConfig, write_model_reference

    model = ModelConfig(Family(args.family), args.model_dir, args.vq_dir or "", args.tokenizer_dir or "", args.resolution, args.dtype)
    if model.family == Family.showo and not (args.vq_dir and args.tokenizer_dir):
        raise ValueError("a Show-o release needs --vq-dir (showlab/magvitv2) and --tokenizer-dir (microsoft/phi-1_5)")
    print(f"checkpoint: {write_model_reference(model, Path(args.out))}")


def _reward_eval(policy, args) -> dict:
    """A real model on a free-text prompt file: the mean of the reward over its images, with a 95%
    interval that treats each prompt's samples as one cluster."""
    import numpy as np

    from maskrl.evaluation import generate
    from maskrl.rewards import build_reward
    from maskrl.world.intervals import Z95

    texts = _read_prompts(args.prompts, _free_text(policy))
    options = dict(option.split("=", 1) for option in args.reward_option)
    reward = build_reward(args.reward, **{k: _yaml_value(v) for k, v in options.items()})
    images = generate(policy, texts, args.samples, _sampling(args), args.seed, progress=True)
    flat = images.reshape(-1, *images.shape[2:])
    scores = np.asarray(reward(flat, [t for t in texts for _ in range(args.samples)]).scores, dtype=np.float64)
    per_prompt = np.nanmean(scores.reshape(len(texts), args.samples), axis=1)
    mean = float(np.nanmean(per_prompt))
    half = Z95 * float(np.nanstd(per_prompt, ddof=1)) / np.sqrt(len(texts)) if len(texts) > 1 else float("nan")
    return {"reward": args.reward, "mean": mean, "ci95": [mean - half, mean + half], "images": int(flat.shape[0]),
            "nonfinite": int((~np.isfinite(scores)).sum())}


def _yaml_value(text: str):
    """`--reward-option w=2.5` -> 2.5 (YAML's scalars: numbers, booleans, strings)."""
    import yaml

    return yaml.safe_load(text)


def held_out_line(name: str, metrics: dict, prefix: str = "eval/") -> str:
    """`name held-out ShapesEval: 0.412 (95% CI 0.371-0.452, 480 images)` from eval/ metrics; with
    `prefix` `eval/cfg0/`, the same at that protocol (`name held-out ShapesEval at CFG 0: ...`)."""
    label = f"{name} held-out ShapesEval" + (f" at CFG {prefix[len('eval/cfg'):-1]}" if prefix != "eval/" else "")
    if f"{prefix}overall" not in metrics:
        return f"{label}: not evaluated"
    return (f"{label}: {metrics[f'{prefix}overall']:.3f} (95% CI {metrics[f'{prefix}overall_ci95_low']:.3f}-"
            f"{metrics[f'{prefix}overall_ci95_high']:.3f}, {metrics[f'{prefix}images']:.0f} images)")


def held_out_lines(base: dict, final: dict) -> list[str]:
    """Base and trained held-out lines at every protocol evaluated (`eval/`, then `eval/cfg{s}/`)."""
    prefixes = ["eval/", *sorted({k[: k.index("/", 5) + 1] for k in {**base, **final} if k.startswith("eval/cfg")})]
    return [held_out_line(name, metrics, prefix) for prefix in prefixes for name, metrics in (("base", base), ("trained", final))]


def _train_local(args) -> None:
    from maskrl.train_config import load_train_config
    from maskrl.train_local import train_local

    cfg = load_train_config(args.config, args.overrides)
    final = train_local(cfg)
    summary = json.loads((final.parents[1] / "summary.json").read_text())
    print("\n".join(held_out_lines(summary["base"], summary["final"])))
    print(f"checkpoint: {final}")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default="base",
                   help="checkpoint directory (a maskrl one, or a Show-o release reference), or 'base' (default)")
    p.add_argument("--prompts", required=True,
                   help="text file, one prompt a line (ShapesWorld's grammar for ShapesWorld policies, free text otherwise)")
    p.add_argument("--samples", type=int, default=1, help="images per prompt")
    protocol = evaluation_sampling()
    p.add_argument("--steps", type=int, default=protocol.steps, help="unmasking steps")
    p.add_argument("--cfg", type=float, default=protocol.cfg_scale,
                   help="classifier-free guidance scale (3: measured best for the shipped base, bench/study_sampling.py)")
    p.add_argument("--noise", type=float, default=protocol.noise_scale, help="initial Gumbel noise scale on confidences")
    p.add_argument("--noise-schedule", choices=NOISE_SCHEDULES, default=str(protocol.noise_schedule),
                   help="how the noise anneals to 0")
    p.add_argument("--temperature", type=float, default=protocol.temperature, help="softmax temperature of the token draws")
    p.add_argument("--seed", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maskrl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, help_ in (
        ("pretrain", _pretrain, "pre-train a base policy with the masked-token objective"),
        ("train-local", _train_local, "Mask-GRPO in one process (the reference trainer)"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("--config", help="YAML recipe")
        p.add_argument("overrides", nargs="*", help="key=value overrides")
        p.set_defaults(func=func)
    for command in entry_points(group=COMMANDS):  # `train` (on Ray) comes from the actors package
        command.load()(sub)
    p = sub.add_parser("generate", help="write {i:05d}_{k}.png for every prompt line i and sample k")
    _add_sampling_args(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--scale", type=int, default=8, help="pixels per cell in the PNGs")
    p.set_defaults(func=_generate)
    p = sub.add_parser("release-checkpoint", help="a checkpoint directory naming a real model's release "
                       "directories (nothing converted): use it as --checkpoint or `checkpoint:`")
    p.add_argument("out", help="the checkpoint directory to write (config.json only)")
    p.add_argument("--family", required=True, choices=("showo", "amused"))
    p.add_argument("--model-dir", required=True,
                   help="showlab/show-o or show-o-512x512 (config.json + safetensors); amused/amused-256 or -512 (pipeline layout)")
    p.add_argument("--vq-dir", help="Show-o: showlab/magvitv2, its weights as one .safetensors file")
    p.add_argument("--tokenizer-dir", help="Show-o: microsoft/phi-1_5, tokenizer.json and tokenizer_config.json")
    p.add_argument("--resolution", type=int, default=256, help="Show-o: 256 (show-o) or 512 (show-o-512x512)")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.set_defaults(func=_release_checkpoint)
    p = sub.add_parser("eval", help="print ShapesEval (overall and per category) as JSON, or with --reward the mean "
                       "reward of a real model's images")
    _add_sampling_args(p)
    p.add_argument("--reward", help="score the images with this reward (a registered name or module:Class) instead of ShapesEval")
    p.add_argument("--reward-option", action="append", default=[], metavar="KEY=VALUE", help="an option of the reward (repeatable)")
    p.set_defaults(func=_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"maskrl {args.command}: error: {err}", file=sys.stderr)
        return 2
    except CommandError as err:
        print(f"maskrl {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
