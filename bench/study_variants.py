"""Transition variant x ratio aggregation at equal budget: held-out ShapesEval of `maskrl train-local`
runs from the same recipe, several seeds each, as mean +- std (and the base it started from).

    python bench/study_variants.py --recipe configs/shapes_local.yaml --seeds 0 1 2 \\
        --variants candidate1 candidate2 ar --ratios sequence token --jobs 2 --out runs/study_variants

Every run is `maskrl train-local --config RECIPE seed=S sampling.variant=V grpo.ratio=R out=...`
(one thread each; `--jobs` runs that many at once). A run whose summary.json exists is not redone,
so the study resumes where it stopped.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from itertools import product
from pathlib import Path


def run_one(recipe: str, out: Path, seed: int, variant: str, ratio: str, extra: list[str]) -> dict:
    run = out / f"{variant}-{ratio}-s{seed}"
    summary = run / "summary.json"
    if not summary.is_file():
        cmd = [sys.executable, "-m", "maskrl.cli", "train-local", "--config", recipe, f"seed={seed}",
               f"sampling.variant={variant}", f"grpo.ratio={ratio}", f"out={run}", "threads=1", *extra]
        run.parent.mkdir(parents=True, exist_ok=True)
        with open(run.with_suffix(".log"), "w") as log:
            subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=True)
    return json.loads(summary.read_text())


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="configs/shapes_local.yaml")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=["candidate1", "candidate2", "ar"])
    p.add_argument("--ratios", nargs="+", default=["sequence"])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--out", default="runs/study_variants")
    p.add_argument("overrides", nargs="*", help="key=value overrides for every run")
    args = p.parse_args(argv)
    combos = list(product(args.variants, args.ratios, args.seeds))
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda c: run_one(args.recipe, Path(args.out), c[2], c[0], c[1], args.overrides), combos))
    table: dict[tuple[str, str], list[dict]] = {}
    for (variant, ratio, _), summary in zip(combos, results):
        table.setdefault((variant, ratio), []).append(summary)
    first = results[0]
    images = int(first["final"]["eval/images"])
    print(f"recipe {args.recipe}; seeds {args.seeds}; held-out {images} images a run")
    if first["base"]:
        print(f"{'base':<32} {first['base']['eval/overall']:.3f}")
    for (variant, ratio), runs in table.items():
        finals = [r["final"]["eval/overall"] for r in runs]
        print(f"{variant + ' / ' + ratio:<32} {mean_std(finals)}   ({', '.join(f'{v:.3f}' for v in finals)})")


if __name__ == "__main__":
    main()
