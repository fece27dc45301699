"""Smoke test of the core benchmarks: each runs on a tiny model, exits 0 and prints its ratio line.

All six run in one subprocess, one after the other, through their `main(argv)`: the cost
of a tiny bench is dominated by importing torch/transformers, so that is paid once. A
failing bench is reported by name with the output so far. The weight-sync bench runs on its
own with --quick (it starts a Ray instance), and the GPU check with --tiny.
"""
import importlib
import os
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO

BENCH = REPO / "bench"
TINY = ["--tiny", "--batch", "2", "--steps", "2", "--repeats", "1", "--threads", "1"]
CASES = {
    "bench_core_rollout.py": (["--ref-images", "2"], r"speedup \(sampler@2 / reference@1\): [\d.]+x"),
    "bench_core_learner.py": ([], r"speedup \(batched@\d+ / reference@1\): [\d.]+x"),
    "bench_core_bytes.py": ([], r"compaction \(reference pickled torch / arrow IPC, full record\): [\d.]+x"),
    "bench_core_mfu.py": (["--matmul-size", "128", "--peak-repeats", "1"], r"MFU \(sampler, median of rounds\): [\d.]+%"),
    "bench_core_precision.py": (["--pairs", "4"], r"bf16 / fp32: rollouts/s [\d.]+x, learner pairs/s [\d.]+x"),
    "bench_core_branching.py": (["--groups", "2", "--branch-steps", "0", "1"],
                                r"shared / every row: rollouts/s [\d.]+x, learner pairs/s [\d.]+x"),
}


DRIVER = """
import importlib, sys
sys.path.insert(0, {bench!r})
for name, argv in {cases!r}:
    print(f"=== {{name}}", flush=True)
    importlib.import_module(name[:-3]).main(argv)
"""


def test_core_benches_run_and_print_their_ratio():
    cases = [(name, TINY + extra) for name, (extra, _) in CASES.items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", DRIVER.format(bench=str(BENCH), cases=cases)], cwd=BENCH.parent,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=180)
    assert proc.returncode == 0, f"a core bench failed (exit {proc.returncode}):\n{proc.stdout}"
    sections = dict(part.split("\n", 1) for part in proc.stdout.split("=== ")[1:])
    for name, (_, pattern) in CASES.items():
        assert re.search(pattern, sections.get(name, "")), f"{name} printed no ratio line:\n{proc.stdout}"


@pytest.mark.slow  # a bench script end to end: a minute
def test_weights_bench_runs_quick():
    """bench_ray_weights.py --quick: its own Ray instance, a 1 MiB payload, one publish per transport."""
    proc = subprocess.run([sys.executable, str(BENCH / "bench_ray_weights.py"), "--quick"], cwd=BENCH.parent,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=180)
    assert proc.returncode == 0, f"bench_ray_weights.py --quick failed (exit {proc.returncode}):\n{proc.stdout}"
    for transport in ("object store", "collective", "local memcpy"):
        assert re.search(rf"1\.0 MiB +{transport}.* [\d,.]+ +[\d,]+ +\d+%", proc.stdout), f"no {transport} row:\n{proc.stdout}"


def _bench_module(name: str):
    """A bench script imported as a module (bench/ is not a package)."""
    sys.path.insert(0, str(BENCH))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCH))


def test_run_all_finds_every_bench_but_not_helpers():
    run_all = _bench_module("run_all")
    names = [p.name for p in run_all.benches()]
    assert set(CASES) <= set(names)
    assert not {"common.py", "reference.py"} & set(names)


def test_adam_step_moves_agreed_coordinates_the_full_rate_and_noisy_ones_less():
    """study_ascent's --metric adam direction: sign(g) for one estimate; over several, mean/rms, so a
    coordinate whose estimates agree moves the whole rate, one whose estimates cancel does not move."""
    import torch

    adam_direction = _bench_module("study_ascent").adam_direction
    g = torch.tensor([3e-6, -2.0, 0.0, 0.5])
    assert torch.allclose(adam_direction([g]), torch.tensor([1.0, -1.0, 0.0, 1.0]))
    d = adam_direction([torch.tensor([1.0, 1.0, 2.0]), torch.tensor([1.0, -1.0, 0.0])])
    assert torch.allclose(d, torch.tensor([1.0, 0.0, 1.0 / 2**0.5]))


def test_sampling_study_reads_every_protocol_field_and_names_a_bad_one():
    """The model cards' reproduce lines give precision=bfloat16; a typo is refused by field name."""
    study = _bench_module("study_sampling")
    cfg = study.parse_protocol("steps=8,cfg_scale=0,precision=bfloat16")
    assert (cfg.steps, cfg.cfg_scale, cfg.precision) == (8, 0.0, "bfloat16")
    with pytest.raises(SystemExit, match="precision='bf' is not a Precision"):
        study.parse_protocol("precision=bf")
    with pytest.raises(SystemExit, match="noise_schedule='cosine' is not a NoiseSchedule"):
        study.parse_protocol("noise_schedule=cosine")
    with pytest.raises(SystemExit, match="unknown field 'cfg'"):
        study.parse_protocol("cfg=3")


GPU_CHECK_ROWS = ("sampler, batched", "sampler, batch-1 loop", "learner, batched pairs", "learner, one pair at a time",
                  "forward MFU", "VQ decode")  # and peak memory, measured on a GPU only


def _gpu_check(*extra: str) -> str:
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--tiny", "--batch", "2", "--steps", "2",
                           "--pairs", "2", *extra], cwd=BENCH.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"gpu_check.py --tiny failed (exit {proc.returncode}):\n{proc.stdout}"
    table = proc.stdout[proc.stdout.index("maskrl GPU check"):]
    for row in GPU_CHECK_ROWS:
        assert re.search(rf"\n +{re.escape(row)} .*\d", table), f"no {row!r} row:\n{table}"
    assert re.search(r"\n +peak memory \(GiB\) +sampler nan, learner nan, decode nan", table), table
    return table


def test_gpu_check_measures_a_tiny_show_o_on_cpu():
    """`make gpu-check`'s script with --tiny: the same measurements of a tiny random Show-o, on CPU."""
    _gpu_check("--no-train", "--no-amused")


@pytest.mark.slow
def test_gpu_check_with_its_ray_training_run():
    table = _gpu_check()
    assert re.search(r"maskrl train, 2 iterations on Ray +\d+ s", table), table
    assert re.search(r"\n +aMUSEd 256 sampler, batched +[\d.]+ images/s", table), table


@pytest.mark.slow  # a bench script end to end: a minute
def test_ascent_study_prints_the_cosine_and_the_steps():
    """bench/study_ascent.py on the shipped base at the smallest sizes: both estimates, each tensor's
    cosine, the bias subspace, positive advantages only, another reward and reveal-order noise, steps sized in
    KL along the gradient, the natural gradient and at random."""
    proc = subprocess.run([sys.executable, str(BENCH / "study_ascent.py"), "--prompts", "2", "--group", "2",
                           "--eval-samples", "1", "--distances", "0.1", "--steps-per-traj", "1", "--threads", "1",
                           "--by-tensor", "--only", "bias$", "--metric", "fisher", "--fisher-pairs", "4", "--positive-only",
                           "--reward", "shapes_foreground", "--noise-scale", "10"],
                          cwd=BENCH.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, f"study_ascent.py failed (exit {proc.returncode}):\n{proc.stdout}"
    assert re.search(r"noise 10\.0, float32, 1 random steps: .*cosine\(g1, g2\) [+-]\d\.\d{3}", proc.stdout), proc.stdout
    assert re.search(r"^ +[+-]\d\.\d{3}  lm\.lm_head\.weight \(5248 values", proc.stdout, re.M), proc.stdout
    biases = re.search(r"subspace 'bias\$': (\d+) of (\d+) parameters", proc.stdout)
    assert biases and 0 < int(biases[1]) < int(biases[2]), proc.stdout
    assert re.search(r"cosine_F\(F\^-1 g1, F\^-1 g2\) [+-]\d\.\d{3}", proc.stdout), proc.stdout
    for direction in ("gradient", "random", "natural"):
        assert re.search(rf"step 0\.1 +along {direction} *: reward \d\.\d{{3}} \([+-]\d\.\d{{3}}", proc.stdout), proc.stdout


@pytest.mark.slow  # a bench script end to end: half a minute
def test_study_ascent_measures_the_branched_cfg_free_bf16_estimator():
    """The estimator make run trains with: E pairwise cosines and the rollouts for SNR 1 from them,
    and Adam's first step from the estimates' moments (its length: the rate on each moved parameter)."""
    proc = subprocess.run([sys.executable, str(BENCH / "study_ascent.py"), "--prompts", "3", "--group", "4",
                           "--eval-samples", "1", "--distances", "0.001", "--threads", "1", "--estimates", "3",
                           "--branch-steps", "0", "1", "--precision", "bfloat16", "--cfg-scale", "0", "--metric", "adam"],
                          cwd=BENCH.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, f"study_ascent.py failed (exit {proc.returncode}):\n{proc.stdout}"
    assert re.search(r"CFG 0\.0, noise 3\.0, bfloat16, branched at \[0, 1\] \(window 1\): .*cosine\(g1, g2\)", proc.stdout), proc.stdout
    assert re.search(r"3 estimates: mean pairwise cosine [+-]\d\.\d{3} \(sd \d\.\d{3} over 3 pairs\)", proc.stdout), proc.stdout
    steps = dict(re.findall(r"step 0\.001 +along (gradient|random) *: reward \d\.\d{3} .* L2 (\d+\.\d{3})", proc.stdout))
    assert set(steps) == {"gradient", "random"} and steps["gradient"] == steps["random"], proc.stdout


def _study(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=BENCH.parent,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert proc.returncode == 0, f"{script} failed (exit {proc.returncode}):\n{proc.stdout}"
    return proc.stdout


def test_cfg_drift_of_a_checkpoint_against_itself_is_zero():
    """bench/study_cfg_drift.py: the base against itself has moved nowhere, at every guidance scale."""
    out = _study("study_cfg_drift.py", "--checkpoint", "base", "--prompts", "2", "--scales", "0", "3")
    rows = re.findall(r"^  (unconditional network|sampled, s = \d) +(\d\.\d{4})", out, re.M)
    assert [name for name, _ in rows] == ["unconditional network", "sampled, s = 0", "sampled, s = 3"], out
    assert all(float(kl) == 0.0 for _, kl in rows), out


@pytest.mark.slow  # a bench script end to end: a minute
def test_reward_hacking_of_a_checkpoint_against_itself_flags_nothing():
    """bench/reward_hacking.py: the base against itself scores the same images, so every gain is 0."""
    out = _study("reward_hacking.py", "--trained", "base", "--prompts", "6", "--samples", "1", "--threads", "1")
    rows = re.findall(r"^(\w+) +\d\.\d{3} +\d\.\d{3} +([+-]\d+)% +\d\.\d{3} +\d\.\d{3} +([+-]\d+)% *(\S*)$", out, re.M)
    assert len(rows) == 6, out
    assert all(int(gr) == 0 and int(gp) == 0 and flag == "" for _, gr, gp, flag in rows), out
