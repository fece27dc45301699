"""The Ray driver of Mask-GRPO: setup -> loop -> cleanup, like `maskrl.train_local`, with each
piece in an actor pool. Only object refs pass through the driver, never trajectory data:

    prompts --generate--> record batch ref --score--> scored ref --update--> learner (v -> v+1)
                                                         weights v+1 --publish--> rollout workers

Modes: `sync` (on-policy; the rollouts of iteration k use weights k-1, as the learner has them)
and `async` (the rollouts of k+1 are dispatched before the learner updates on k, so they use
weights one version old: the lag is at most 1, and the recorded behaviour log-probs give the
importance ratios; `--resume` of an async run regenerates the one in-flight batch with the
checkpoint's weights, so only its prompt stream and iteration count match an uninterrupted
run, while a sync resume is exact). A rollout or reward worker that dies is replaced in its bundle and its
tasks are resubmitted with the same seeds; the learner checks that the batch holds exactly
the planned groups. A lost learner rank (or a lost node) stops the group: every pool is torn
down and rebuilt on the nodes that remain, and the run continues from its newest checkpoint
that verifies (`cluster.max_recoveries` times at most). Checkpoints are written atomically
(`maskrl.checkpoints`) and every fault is logged to `events.jsonl`.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import ray
from tqdm import tqdm

from actors.learner_group import LearnerLost
from actors.metrics import RayMetricsSink
from actors.pools import PoolError, pool_layout
from actors.runstate import EVENTS_FILE, DriverState, EventLog
from actors.runtime import Runtime, connect
from maskrl.checkpoints import resolve_checkpoint
from maskrl.config import ConfigError, to_yaml
from maskrl.grids import write_grid
from maskrl.iteration import PromptStream
from maskrl.metrics import MetricsLogger, read_metrics, summary_line
from maskrl.run_model import Family, as_started, check_run_files, prompt_stream
from maskrl.run_model import grid_prompts as run_grid_prompts
from maskrl.train_config import TrainConfig, check_train_config

# -- input checks: everything here runs before Ray is joined or any actor is created -------------
def validate(cfg: TrainConfig, resume: bool = False) -> None:
    """The whole config, the starting checkpoint, the run directory and the pools' shapes."""
    check_train_config(cfg)
    check_run_files(cfg)  # FileNotFoundError naming the checkpoint, a release directory or the prompt file
    start = resolve_checkpoint(cfg.checkpoint).resolve() if cfg.model.family == Family.maskrl else None
    validate_out(Path(cfg.out), start, resume)
    pool_layout(cfg.cluster)  # PoolError naming the pool


def validate_out(out: Path, start: Path | None, resume: bool) -> None:
    """The run directory: a directory we may write, and never one whose clearing (a fresh run
    replaces an older run's outputs there) would delete the checkpoint the run starts from."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"config key 'out': {str(out)!r} is a file, not a run directory")
    parent = next(p for p in (out, *out.parents) if p.exists())
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"config key 'out': cannot write under {str(parent)!r}")
    if not resume and start is not None and start.is_relative_to((out / "checkpoints").resolve()):
        raise ConfigError(
            f"config key 'checkpoint': {str(start)!r} lies inside the run directory 'out' ({str(out)!r}), whose "
            "checkpoints a fresh run clears; pass --resume to continue that run, or choose another out"
        )


# -- artefacts ---------------------------------------------------------------------------------------
def _clear_run(run: Path) -> None:
    """A fresh run in a directory that holds an older one replaces that run's outputs (only those)."""
    for name in (EVENTS_FILE, "metrics.jsonl", "summary.json"):
        (run / name).unlink(missing_ok=True)
    for name in ("tensorboard", "grids", "checkpoints"):
        shutil.rmtree(run / name, ignore_errors=True)


@dataclass
class TrainResult:
    run: Path
    checkpoint: Path
    base: dict[str, float]
    final: dict[str, float]
    grids: Path
    dashboard: str | None


Hook = Callable[[int, "Runtime"], None]


# -- the loop ----------------------------------------------------------------------------------------
def train(cfg: TrainConfig, resume: bool = False, stop_after: int | None = None, after_dispatch: Hook | None = None) -> TrainResult:
    """Run (or, with `resume`, continue in `cfg.out`) a Mask-GRPO training on Ray.

    A lost learner rank or node rebuilds every pool and continues from the newest checkpoint
    that verifies, at most `cluster.max_recoveries` times. `stop_after=k` stops after iteration
    k's checkpoint as an interruption would (for tests and preemptible jobs); `after_dispatch(
    iteration, runtime)` is called once an iteration's rollouts are in flight (tests use it to
    inject faults mid-iteration)."""
    validate(cfg, resume)
    run = Path(cfg.out)
    if not resume:
        _clear_run(run)
    run.mkdir(parents=True, exist_ok=True)
    events = EventLog(run)
    state = DriverState.read(run, events) if resume else None
    if state is not None and state.iteration >= cfg.iterations:
        return _finished(run, state)  # e.g. the same command run again after the run ended: no Ray, no pools
    (run / "config.yaml").write_text(to_yaml(cfg))
    cfg = as_started(cfg)
    started_ray, dashboard = connect(cfg.cluster)
    try:
        for recoveries in range(cfg.cluster.max_recoveries + 1):
            nodes = _alive_nodes()
            try:
                return _train_from(cfg, run, state, events, dashboard, stop_after, after_dispatch, fail_fast=not recoveries)
            except PoolError as err:
                if not recoveries:
                    raise
                raise PoolError(f"{err}; the run lost a node and the pools no longer fit: `maskrl train --resume` "
                                f"continues from iteration {state.iteration if state else 0} once the cluster has room") from err
            except LearnerLost as err:
                state = DriverState.latest(run, events)  # None: start over from the run's first weights
                resumed = state.iteration if state else 0
                if recoveries == cfg.cluster.max_recoveries:
                    events.log("gave_up", resumed, error=str(err), max_recoveries=cfg.cluster.max_recoveries)
                    then = f"`maskrl train --resume` continues from iteration {resumed}" if state else \
                        "no checkpoint was written yet: start the run again"
                    raise RuntimeError(
                        f"the learner was lost {recoveries + 1} times (cluster.max_recoveries={cfg.cluster.max_recoveries}); "
                        f"last: {err}. {then}"
                    ) from err
                events.log("learner_lost", err.iteration, error=str(err), resume_from=resumed,
                           checkpoint=state.checkpoint if state else cfg.checkpoint,
                           nodes_lost=sorted(nodes - _alive_nodes()))  # those the cluster has noticed by now
    finally:
        if started_ray:
            ray.shutdown()
    raise AssertionError("unreachable")


def _finished(run: Path, state: DriverState) -> TrainResult:
    """A run resumed at or past its last iteration: its results as the metrics recorded them."""
    rows = read_metrics(run)
    base, final = ({k: v for m in rows if m["iteration"] == it for k, v in m.items() if k.startswith("eval/")}
                   for it in (0, state.iteration))
    (run / "summary.json").write_text(json.dumps({"base": base, "final": final}, indent=2))
    return TrainResult(run, Path(state.checkpoint), base, final, run / "grids", None)


def _alive_nodes() -> set[str]:
    return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}


def _train_from(
    cfg: TrainConfig, run: Path, state: DriverState | None, events: EventLog, dashboard: str | None,
    stop_after: int | None, after_dispatch: Hook | None, fail_fast: bool,
) -> TrainResult:
    """One attempt: build the pools from `state` (None: the run's first weights) and train to the end."""
    start = state.iteration if state else 0
    policy_dir = state.checkpoint if state else str(resolve_checkpoint(cfg.checkpoint))
    optimizer_dir = str(Path(state.checkpoint) / "optimizer") if state else None
    stream = prompt_stream(cfg, position=state.stream_position if state else 0)
    # rows logged after the point we continue from belong to iterations that are about to be redone
    kept = [m for m in read_metrics(run) if m["iteration"] <= start]
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in kept))
    rt = Runtime(cfg, policy_dir, start, optimizer_dir, events, fail_fast)
    log = MetricsLogger(run, sinks=(RayMetricsSink(run.name),))
    try:
        grid_prompts = run_grid_prompts(cfg)
        (run / "grids").mkdir(exist_ok=True)
        (run / "grids" / "prompts.txt").write_text("\n".join(grid_prompts) + "\n")
        base = {k: v for m in kept if m["iteration"] == 0 for k, v in m.items() if k.startswith("eval/")}
        if not any(m["iteration"] == 0 for m in kept):
            base = rt.evaluate() if cfg.eval.before and cfg.eval.prompts else {}
            log.log(0, base)
        if not (run / "grids" / "iter_00000.png").exists():
            log.image(0, "samples", write_grid(grid_prompts, rt.sample_grid(grid_prompts, 4), run / "grids" / "iter_00000.png"))
        if dashboard:
            tqdm.write(f"ray dashboard: http://{dashboard}")
        if cfg.eval.prompts:
            tqdm.write(f"base held-out ShapesEval: {base.get('eval/overall', float('nan')):.3f}")
        metrics, last = _loop(cfg, run, rt, stream, start, log, grid_prompts, stop_after, after_dispatch)
    except LearnerLost as err:
        err.iteration = rt.iteration
        raise
    finally:
        log.close()
        rt.shutdown()
    final = {k: v for k, v in metrics.items() if k.startswith("eval/")}
    (run / "summary.json").write_text(json.dumps({"base": base, "final": final}, indent=2))
    return TrainResult(run, run / "checkpoints" / f"iter_{last:05d}", base, final, run / "grids", dashboard)


def _loop(
    cfg: TrainConfig, run: Path, rt: Runtime, stream: PromptStream, start: int, log: MetricsLogger,
    grid_prompts: list[str], stop_after: int | None, after_dispatch: Hook | None,
) -> tuple[dict[str, float], int]:
    """Iterations start+1 .. cfg.iterations; returns the last iteration's metrics and number."""
    P, asynchronous = cfg.grpo.prompts_per_iter, cfg.cluster.mode == "async"

    def dispatch(iteration: int):
        d = rt.tasks.dispatch(iteration, stream.take(P), stream.position)
        if after_dispatch:
            after_dispatch(iteration, rt)
        return d

    ahead = dispatch(start + 1) if start < cfg.iterations else None
    metrics: dict[str, float] = {}
    last = start
    for it in tqdm(range(start + 1, cfg.iterations + 1), desc="mask-grpo", initial=start, total=cfg.iterations, dynamic_ncols=True):
        rt.iteration = it  # where a fault is reported to have happened
        t0 = time.perf_counter()
        current, ahead = ahead, None
        scored, metrics = rt.tasks.collect(current)
        metrics["time/rollout_wait"] = time.perf_counter() - t0
        if asynchronous and it < cfg.iterations:
            ahead = dispatch(it + 1)  # overlaps the update below, with weights it - 1
        t1 = time.perf_counter()
        metrics.update(rt.update(it, scored, current.groups))
        metrics["time/learner"] = time.perf_counter() - t1
        metrics["time/weight_sync"] = rt.weights.publish(it, wait=not asynchronous)
        metrics["time/weight_load"] = rt.weights.last_load_seconds  # async: the load of the previous version
        if not asynchronous and it < cfg.iterations:
            ahead = dispatch(it + 1)
        metrics["time/iteration"] = time.perf_counter() - t0
        if cfg.eval.prompts and ((cfg.eval.every and it % cfg.eval.every == 0) or it == cfg.iterations):
            metrics.update(rt.evaluate())
        if (cfg.grid_every and it % cfg.grid_every == 0) or it == cfg.iterations:
            log.image(it, "samples", write_grid(grid_prompts, rt.sample_grid(grid_prompts, 4), run / "grids" / f"iter_{it:05d}.png"))
        metrics["stream/position"] = float(current.end_position)
        # the row before the checkpoint: a crash between the two leaves a row past the checkpoint,
        # which the resumed run drops and writes again (the other order could lose the row)
        log.log(it, metrics)
        if it % cfg.checkpoint_every == 0 or it == cfg.iterations:
            state = DriverState(
                iteration=it, stream_position=current.end_position, seed=cfg.seed,
                checkpoint=str(run / "checkpoints" / f"iter_{it:05d}"),
                extra={"mode": cfg.cluster.mode, "learner_ranks": cfg.cluster.learner.workers,
                       "zero_stage": cfg.cluster.learner.zero_stage},
            )
            rt.save(state)
        tqdm.write(summary_line(it, metrics) + f" lag={metrics['version/lag_max']:.0f} img/s={metrics['rollout/images_per_s']:.1f}")
        last = it
        if stop_after is not None and it >= stop_after and it % cfg.checkpoint_every == 0:
            break
    return metrics, last
