"""The command line: generate's file contract, eval's JSON, and errors that name the culprit."""
import json

import numpy as np
import pytest

from maskrl.cli import main
from maskrl.models import save_policy
from maskrl.world import read_png


@pytest.fixture
def ckpt(tiny_policy, tmp_path):
    return str(save_policy(tiny_policy, tmp_path / "tiny"))


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red circle\nthree squares\na cross above a triangle\n")
    return str(path)


def test_generate_writes_the_contracted_file_names(ckpt, prompts, tmp_path):
    out = tmp_path / "images"
    assert main(["generate", "--checkpoint", ckpt, "--prompts", prompts, "--out", str(out), "--samples", "2",
                 "--steps", "3", "--scale", "3", "--seed", "7"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"{i:05d}_{k}.png" for i in range(3) for k in range(2)]
    grid = read_png(out / "00002_1.png")
    assert grid.shape == (16, 16) and grid.max() <= 6
    again = tmp_path / "again"
    main(["generate", "--checkpoint", ckpt, "--prompts", prompts, "--out", str(again), "--samples", "2",
          "--steps", "3", "--scale", "3", "--seed", "7"])
    assert np.array_equal(read_png(again / "00002_1.png"), grid)  # seeded


def test_eval_prints_shapes_eval_json(ckpt, prompts, capsys):
    assert main(["eval", "--checkpoint", ckpt, "--prompts", prompts, "--steps", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"overall", "colors", "counting", "position", "counts"}
    assert 0.0 <= result["overall"] <= 1.0


def test_bad_prompt_line_names_file_line_and_word(ckpt, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("a red circle\na pink circle\n")
    assert main(["eval", "--checkpoint", ckpt, "--prompts", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.txt:2" in err and "'pink'" in err


def test_missing_checkpoint_names_the_path(prompts, tmp_path, capsys):
    assert main(["eval", "--checkpoint", str(tmp_path / "nope"), "--prompts", prompts]) == 2
    assert "nope" in capsys.readouterr().err


def test_unknown_config_key_names_it(capsys):
    assert main(["train-local", "grpo.learning_rate=1"]) == 2
    assert "grpo.learning_rate" in capsys.readouterr().err


def test_generation_is_chunk_seeded_so_any_split_draws_the_same_images(tiny_policy):
    from maskrl.evaluation import CHUNK, generate
    from maskrl.sampling import SamplingConfig

    texts = ["a red circle", "two squares"] * CHUNK  # two chunks
    sampling = SamplingConfig(steps=3)
    whole = generate(tiny_policy, texts, 1, sampling, seed=5)
    second = generate(tiny_policy, texts[CHUNK:], 1, sampling, seed=5, first_chunk=1)
    assert np.array_equal(whole[CHUNK:], second)
    assert not np.array_equal(whole[:CHUNK], second)  # chunks draw differently


@pytest.mark.parametrize("override,named", [
    ("rollout.variant=candidat1", "candidat1"), ("eval.sampling.noise_schedule=cosine", "cosine"),
    ("grpo.ratio=tokens", "tokens"), ("grpo.dual_clip=0.5", "dual_clip"),
])
def test_train_refuses_bad_choices_before_ray_starts(tmp_path, capsys, override, named):
    import time

    start = time.perf_counter()
    code = main(["train", "--config", "configs/shapes_cpu.yaml", f"out={tmp_path / 'run'}", override])
    err = capsys.readouterr().err
    assert code == 2 and named in err and override.split("=")[0].split(".")[0] in err, err
    assert time.perf_counter() - start < 10  # refused up front: no Ray instance, no actor
    assert not (tmp_path / "run").exists()  # nothing written
