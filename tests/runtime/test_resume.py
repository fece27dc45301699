"""A run that survives losing its driver: `maskrl train --config C` whose `out` holds a run of the
same recipe continues it from its newest complete checkpoint (and says so in its first line), a
different recipe there is refused naming the keys that differ, `--fresh` starts over.

The fast tests build run directories by hand (a config.yaml, checkpoints written as the driver
writes them) and stop before Ray starts. The slow one SIGKILLs a real driver process after its
second checkpoint, runs the same command again, and compares with an undisturbed run: the same
per-iteration rewards and final weights, no iteration repeated or skipped (sync mode)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from actors.runstate import DriverState, plan_start, recipe_differences, recipe_of
from maskrl.checkpoints import newest_first, verify, write_atomically
from maskrl.cli import main
from maskrl.config import ConfigError, to_yaml
from maskrl.metrics import read_metrics
from tests.helpers import REPO, assert_nothing_lost, tiny_config


def _fake_run(cfg, iterations_done: list[int], evaluated: bool = True) -> Path:
    """A run directory as the driver leaves it after `iterations_done`' checkpoints: config.yaml,
    metrics rows (iteration 0 with the base's held-out score) and atomic checkpoints holding a
    driver state (no weights: nothing here loads them)."""
    run = Path(cfg.out)
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(to_yaml(cfg))
    rows = [{"iteration": 0, **({"eval/overall": 0.25, "eval/overall_ci95_low": 0.2, "eval/overall_ci95_high": 0.3,
                                  "eval/images": 40.0} if evaluated else {})}]
    for it in iterations_done:
        rows.append({"iteration": it, "reward/mean": 0.5, **({"eval/overall": 0.3, "eval/overall_ci95_low": 0.25,
                                                                "eval/overall_ci95_high": 0.35, "eval/images": 40.0}
                                                               if it == cfg.iterations else {})})
        state = DriverState(iteration=it, stream_position=4 * it, seed=cfg.seed, checkpoint=str(run / "checkpoints" / f"iter_{it:05d}"))
        write_atomically(state.checkpoint, state.write)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run


def _plan(cfg, fresh: bool = False, saved_cfg=None):
    saved = Path(cfg.out) / "config.yaml"
    from maskrl.train_config import load_train_config

    recipe = recipe_of(saved_cfg) if saved_cfg is not None else (recipe_of(load_train_config(saved)) if saved.is_file() else None)
    return plan_start(cfg.out, recipe_of(cfg), cfg.iterations, fresh, None if fresh else recipe)


def test_an_empty_out_is_a_new_run(ckpt, tmp_path):
    plan = _plan(tiny_config(ckpt, tmp_path / "run"))
    assert not plan.resume and plan.line == f"maskrl train: a new run in {tmp_path / 'run'} (3 iterations)"


def test_the_same_recipe_continues_from_the_newest_complete_checkpoint(ckpt, tmp_path):
    cfg = tiny_config(ckpt, tmp_path / "run")
    run = _fake_run(cfg, [1, 2])
    plan = _plan(cfg)
    assert plan.resume and plan.start == 2
    assert plan.line == f"maskrl train: continuing the run in {run} from its checkpoint at iteration 2 of 3 (same recipe; --fresh starts over)"
    (run / "checkpoints" / "iter_00002" / "driver_state.json").write_text("{}")  # no longer matches its manifest
    assert _plan(cfg).start == 1  # falls back, as the driver will


def test_a_run_stopped_before_its_first_checkpoint_starts_over(ckpt, tmp_path):
    cfg = tiny_config(ckpt, tmp_path / "run")
    _fake_run(cfg, [])
    plan = _plan(cfg)
    assert not plan.resume and "starting the run in" in plan.line and "before its first checkpoint" in plan.line


def test_a_different_recipe_is_refused_naming_the_keys(ckpt, tmp_path):
    cfg = tiny_config(ckpt, tmp_path / "run")
    _fake_run(cfg, [1])
    changed = tiny_config(ckpt, tmp_path / "run")
    changed.grpo.lr, changed.iterations = 0.5, 6
    with pytest.raises(ConfigError, match=r"2 key\(s\) differ: grpo.lr \(0.001 there, 0.5 here\), iterations \(3 there, 6 here\)"):
        _plan(changed)
    assert recipe_differences(recipe_of(cfg), recipe_of(tiny_config(ckpt, tmp_path / "elsewhere"))) == []  # `out` is no recipe key
    with pytest.raises(ConfigError, match="cluster.mode"):
        _plan(tiny_config(ckpt, tmp_path / "run", mode="async"))
    assert not _plan(changed, fresh=True).resume  # --fresh: any recipe


def test_fresh_starts_over_and_says_what_it_replaces(ckpt, tmp_path):
    cfg = tiny_config(ckpt, tmp_path / "run")
    _fake_run(cfg, [1, 2])
    plan = _plan(cfg, fresh=True)
    assert not plan.resume and plan.line.endswith("(--fresh: the run there, which had reached iteration 2, is replaced)")


def test_what_cannot_be_continued_is_refused_without_fresh(ckpt, tmp_path):
    cfg = tiny_config(ckpt, tmp_path / "run")
    run = _fake_run(cfg, [1])
    (run / "checkpoints" / "iter_00001" / "driver_state.json").write_text("{}")
    with pytest.raises(ConfigError, match="none of which verifies.*--fresh"):
        _plan(cfg)
    (run / "config.yaml").unlink()
    with pytest.raises(ConfigError, match="holds checkpoints but no config.yaml.*--fresh"):
        _plan(cfg)


def _write_recipe(cfg, path: Path) -> Path:
    path.write_text(to_yaml(cfg))
    return path


def test_cli_refuses_a_changed_recipe_before_ray_starts_and_keeps_the_run(ckpt, tmp_path, capsys):
    cfg = tiny_config(ckpt, tmp_path / "run")
    run = _fake_run(cfg, [1])
    recipe = _write_recipe(cfg, tmp_path / "recipe.yaml")
    assert main(["train", "--config", str(recipe), "grpo.lr=0.5"]) == 2
    err = capsys.readouterr().err
    assert "grpo.lr (0.001 there, 0.5 here)" in err and "--fresh" in err and f"--resume {run}" in err
    verify(next(newest_first(run / "checkpoints")))  # untouched
    assert main(["train", "--config", str(recipe), "--resume", str(run)]) == 2


def test_cli_on_a_finished_run_reports_it_without_starting_ray(ckpt, tmp_path, capsys):
    cfg = tiny_config(ckpt, tmp_path / "run")
    run = _fake_run(cfg, [1, 2, 3])
    assert main(["train", "--config", str(_write_recipe(cfg, tmp_path / "recipe.yaml"))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"maskrl train: the run in {run} is finished (iteration 3 of 3, same recipe): nothing to train, its results below; --fresh starts over"
    assert lines[1:] == [
        "---- maskrl train: summary ----",
        "base held-out ShapesEval: 0.250 (95% CI 0.200-0.300, 40 images)",
        "trained held-out ShapesEval: 0.300 (95% CI 0.250-0.350, 40 images)",
        lines[4],
        f"grids: {run / 'grids'} (iter_*.png; every image captioned with its rule reward and PASS/FAIL)",
        f"tensorboard: tensorboard --logdir {run / 'tensorboard'}",
        f"next: maskrl generate --checkpoint {run / 'checkpoints' / 'iter_00003'} --prompts configs/prompts/heldout_60.txt --out {run / 'images'}",
        f"checkpoint: {run / 'checkpoints' / 'iter_00003'}",
    ]
    assert lines[4].startswith("wall-clock: ") and lines[4].endswith(" s (nothing left to train)")
    assert main(["train", "--resume", str(run)]) == 0  # the explicit form says so too
    assert capsys.readouterr().out.splitlines()[0] == f"maskrl train: continuing the run in {run} from its checkpoint at iteration 3 of 3 (--resume)"
    import ray

    assert not ray.is_initialized()


# -- the driver killed after its second checkpoint, then the same command again ----------------------
def _cmd(recipe: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "maskrl.cli", "train", "--config", str(recipe), *extra]


def _env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # each driver starts its own local Ray


def _run(cmd: list[str]) -> list[str]:
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout.splitlines()


def _kill_after_checkpoint(cmd: list[str], run: Path, number: int, timeout_s: float = 600) -> dict:
    """Start `cmd`, SIGKILL it (the driver process alone) once checkpoint `number` is complete;
    then end whatever it had started that outlived it (the local Ray instance), by pid."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    driver = psutil.Process(proc.pid)
    final = run / "checkpoints" / f"iter_{number:05d}"
    deadline = time.time() + timeout_s
    try:
        while not (final / "manifest.json").is_file():  # the checkpoint is renamed into place with its manifest
            assert proc.poll() is None, f"the run ended before checkpoint {number}: {proc.stdout.read()[-3000:]}"
            assert time.time() < deadline, f"no checkpoint {number} within {timeout_s:g} s"
            time.sleep(0.05)
        started = driver.children(recursive=True)
        names = {p.pid: p.name() for p in started}
        os.kill(proc.pid, signal.SIGKILL)
        killed_at = time.time()
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Ray's own processes die with the driver that started them: give them a moment, then end any that did not
    alive = psutil.wait_procs(started, timeout=20)[1]
    for p in alive:
        p.kill()
    psutil.wait_procs(alive, timeout=10)
    newest = max(int(p.name.removeprefix("iter_")) for p in (run / "checkpoints").glob("iter_*"))
    return {"killed_after_checkpoint": newest, "ray_processes": len(started), "outlived_the_driver": sorted(names[p.pid] for p in alive),
            "killed_at": killed_at, "output": proc.stdout.read()}


@pytest.mark.slow
def test_a_killed_driver_restarted_with_the_same_command_ends_as_an_undisturbed_run(ckpt, tmp_path):
    cfg = tiny_config(ckpt, tmp_path / "undisturbed")  # sync mode, 3 iterations, a checkpoint after each
    cfg.reward.name = "shapes_foreground"  # the tiny random policy scores 0 on the rule reward: compare rewards that vary
    t0 = time.time()
    whole = _run(_cmd(_write_recipe(cfg, tmp_path / "undisturbed.yaml")))
    times = {"undisturbed_s": time.time() - t0}
    assert whole[0] == f"maskrl train: a new run in {cfg.out} (3 iterations)"

    cfg.out = str(tmp_path / "killed")
    recipe, run = _write_recipe(cfg, tmp_path / "killed.yaml"), tmp_path / "killed"
    t0 = time.time()
    killed = _kill_after_checkpoint(_cmd(recipe), run, number=2)
    times["until_killed_s"] = killed["killed_at"] - t0
    assert killed["killed_after_checkpoint"] == 2, killed["output"][-2000:]  # killed during iteration 3
    assert "iter    3" not in killed["output"]
    t0 = time.time()
    again = _run(_cmd(recipe))  # the same command
    times["restart_s"] = time.time() - t0
    assert again[0] == f"maskrl train: continuing the run in {run} from its checkpoint at iteration 2 of 3 (same recipe; --fresh starts over)"
    assert [line.split()[1] for line in again if line.startswith("iter ")] == ["3"]  # only what was left
    assert again[-1] == f"checkpoint: {run / 'checkpoints' / 'iter_00003'}"

    result = SimpleNamespace(run=run, checkpoint=run / "checkpoints" / "iter_00003")
    undisturbed = SimpleNamespace(run=Path(tmp_path / "undisturbed"), checkpoint=Path(tmp_path / "undisturbed") / "checkpoints" / "iter_00003")
    rows = assert_nothing_lost(result, undisturbed)  # iterations 1, 2, 3 once each; rewards, data and final weights equal
    assert len({r["reward/mean"] for r in rows}) == 3 and all(r["reward/mean"] > 0 for r in rows)
    print(json.dumps({**times, "reward/mean": [r["reward/mean"] for r in rows],
                      "ray_processes": killed["ray_processes"], "outlived_the_driver": killed["outlived_the_driver"]}))

    # a changed recipe in the same out is refused, naming the key; the run is kept
    proc = subprocess.run(_cmd(recipe, "grpo.lr=0.5"), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "grpo.lr (0.001 there, 0.5 here)" in proc.stderr, proc.stderr[-2000:]
    verify(result.checkpoint)

    # --fresh starts over (here with a shorter recipe, which --fresh allows)
    fresh = _run(_cmd(recipe, "--fresh", "iterations=1", "eval.prompts=0"))
    assert fresh[0] == f"maskrl train: starting over in {run} (--fresh: the run there, which had reached iteration 3, is replaced)"
    assert [m["iteration"] for m in read_metrics(run)] == [0, 1]
    assert [p.name for p in newest_first(run / "checkpoints")] == ["iter_00001"]
