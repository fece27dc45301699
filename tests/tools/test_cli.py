"""The command line: generate's file contract, eval's JSON, and errors that name the culprit."""
import dataclasses
import enum
import json
import time
import typing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskrl.cli import main
from maskrl.config import ConfigError
from maskrl.evaluation import eval_protocols, held_out_prompts
from maskrl.train_config import TrainConfig, check_train_config, load_train_config
from maskrl.models import save_policy
from maskrl.models.showo_t2i import ShowoReleaseDirs, write_release_reference
from maskrl.world import read_png
from tests.fake_amused import fake_amused
from tests.fake_showo import TINY_VQ, fake_showo_release


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


ENUM_FIELDS = {  # every enum-typed key of a run's config, with one value its enum allows
    "sampling.variant": "candidate2", "sampling.noise_schedule": "linear", "eval.sampling.variant": "ar",
    "eval.sampling.noise_schedule": "compound", "sampling.precision": "bfloat16", "eval.sampling.precision": "float32",
    "model.family": "showo", "grpo.ratio": "token", "grpo.optimizer": "sgd", "cluster.mode": "async", "cluster.weight_transport": "collective",
    "cluster.learner.zero_stage": "3", "cluster.learner.backend": "gloo", "cluster.rollout.strategy": "SPREAD",
    "cluster.reward.strategy": "PACK", "cluster.learner.strategy": "STRICT_PACK",
}


@pytest.mark.parametrize("key", ENUM_FIELDS)
def test_train_refuses_a_bad_enum_value_at_load_naming_the_key_and_the_allowed_values(tmp_path, capsys, key):
    import ray

    start = time.perf_counter()
    code = main(["train", "--config", "configs/shapes_cpu.yaml", f"out={tmp_path / 'run'}", f"{key}=9bad"])
    err = capsys.readouterr().err
    assert code == 2 and key in err and "9bad" in err and ENUM_FIELDS[key] in err, err  # key, value, choices
    assert time.perf_counter() - start < 10 and not ray.is_initialized()  # refused up front: no Ray, no actor
    assert not (tmp_path / "run").exists()  # nothing written


def test_every_enum_field_of_the_run_config_is_covered():
    """A new enum-typed key must join ENUM_FIELDS (and so the test above)."""
    def enum_keys(schema, prefix=""):
        for f in dataclasses.fields(schema):
            kind = typing.get_type_hints(schema)[f.name]
            if isinstance(kind, type) and issubclass(kind, enum.Enum):
                yield prefix + f.name
            elif dataclasses.is_dataclass(kind):
                yield from enum_keys(kind, f"{prefix}{f.name}.")

    assert set(enum_keys(TrainConfig)) == set(ENUM_FIELDS)


@pytest.mark.parametrize("override,named", [("grpo.dual_clip=0.5", "grpo"), ("reward.name=shapes_rules", "shapes_rule"),
                                            ("iterations=0", "iterations")])
def test_train_refuses_bad_values_the_enums_cannot_express(tmp_path, capsys, override, named):
    code = main(["train", "--config", "configs/shapes_cpu.yaml", f"out={tmp_path / 'run'}", override])
    err = capsys.readouterr().err
    assert code == 2 and named in err, err
    assert not (tmp_path / "run").exists()


def test_a_config_built_in_python_is_checked_against_the_enums_too():
    cfg = TrainConfig()
    cfg.cluster.mode = "asyn"
    with pytest.raises(ConfigError, match=r"'cluster.mode': 'asyn' is not one of \['sync', 'async'\]"):
        check_train_config(cfg)


def test_a_recipe_names_its_base_and_states_only_what_differs(tmp_path):
    long = load_train_config("configs/shapes_long.yaml")
    cpu = load_train_config("configs/shapes_cpu.yaml")
    assert long.iterations == 90 and long.grpo.min_lr_ratio == 0.2 and long.eval.every == 10
    assert long.grpo.lr == cpu.grpo.lr and long.cluster == cpu.cluster and long.sampling == cpu.sampling
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loop"):
        load_train_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_train_config(tmp_path / "c.yaml")


def test_the_comparison_protocol_takes_the_first_prompts_of_the_same_held_out_sample():
    """make run's CFG 3 figure is measured on the first eval.extra_prompts of the sample its CFG 0
    figure uses; a smaller eval.prompts caps it; a negative count is refused, naming the key."""
    e = load_train_config("configs/shapes_cpu.yaml").eval
    protocols = eval_protocols(e)
    assert {k: (p.prompts, p.sampling.cfg_scale) for k, p in protocols.items()} == {"eval/": (240, 0.0), "eval/cfg3/": (120, 3.0)}
    assert [p.text for p in held_out_prompts(120, e.seed)] == [p.text for p in held_out_prompts(240, e.seed)[:120]]
    assert eval_protocols(dataclasses.replace(e, prompts=40))["eval/cfg3/"].prompts == 40
    assert eval_protocols(dataclasses.replace(e, extra_prompts=0))["eval/cfg3/"].prompts == 240
    with pytest.raises(ConfigError, match="'eval.extra_prompts': must be 0"):
        load_train_config("configs/shapes_cpu.yaml", ["eval.extra_prompts=-1"])


@pytest.mark.parametrize("recipe", sorted(p.name for p in Path("configs").glob("*.yaml") if not p.name.startswith("pretrain")))
def test_every_recipe_evaluates_with_the_sampling_its_rollouts_use(recipe):
    """The unmasking schedule is the decision process: one of a recipe's held-out protocols must
    sample as its rollouts do (the real-model recipes say so with `eval.sampling: ${sampling}`; the
    CFG-free ShapesWorld recipes evaluate at CFG 0, with `eval.cfg_scales: [3.0]` beside it)."""
    cfg = load_train_config(f"configs/{recipe}")
    protocols = [dataclasses.replace(e.sampling, variant=cfg.sampling.variant, micro_batch=cfg.sampling.micro_batch)
                 for e in eval_protocols(cfg.eval).values()]
    assert cfg.sampling in protocols


def test_generate_and_eval_a_show_o_release_on_free_text(tmp_path, capsys):
    release = fake_showo_release(tmp_path)
    # the command writes the release reference; the tiny fake's VQ is not the release architecture, so
    # the test writes its reference in Python too, naming that architecture
    assert main(["release-checkpoint", str(tmp_path / "cli_ref"), "--family", "showo", "--model-dir", str(release["model"]), "--vq-dir",
                 str(release["vq"]), "--tokenizer-dir", str(release["tokenizer"]), "--resolution", "64"]) == 0
    assert json.loads((tmp_path / "cli_ref" / "config.json").read_text())["format"] == "maskrl-showo-release/1"
    ref = write_release_reference(ShowoReleaseDirs(str(release["model"]), str(release["vq"]), str(release["tokenizer"]),
                                                   64, vq_config=dataclasses.asdict(TINY_VQ)), tmp_path / "ref")
    prompts = tmp_path / "free.txt"
    prompts.write_text("A corgi wearing sunglasses, studio light.\ntwo cats on a sofa\n")
    out = tmp_path / "images"
    assert main(["generate", "--checkpoint", str(ref), "--prompts", str(prompts), "--out", str(out), "--steps", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000_0.png", "00001_0.png"]
    assert np.asarray(Image.open(out / "00001_0.png")).shape == (64, 64, 3)

    prompts.write_text("a cat\n" + "word " * 200 + "\n")
    assert main(["generate", "--checkpoint", str(ref), "--prompts", str(prompts), "--out", str(out)]) == 2
    assert f"{prompts}:2: prompt 'word word" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(ref), "--prompts", str(prompts)]) == 2
    assert "not a ShapesWorld policy" in capsys.readouterr().err
    prompts.write_text("a corgi\ntwo cats\na red barn\n")
    assert main(["eval", "--checkpoint", str(ref), "--prompts", str(prompts), "--steps", "2", "--samples", "2",
                 "--reward", "tests.fake_showo:RedReward"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["images"] == 6 and report["ci95"][0] <= report["mean"] <= report["ci95"][1] and report["nonfinite"] == 0
    assert main(["release-checkpoint", str(tmp_path / "bad"), "--family", "showo", "--model-dir", str(tmp_path / "nowhere"), "--vq-dir",
                 str(release["vq"]), "--tokenizer-dir", str(release["tokenizer"])]) == 2
    assert "Show-o model (model.model_dir) directory" in capsys.readouterr().err


def test_generate_with_an_amused_release(tmp_path):
    release = fake_amused(tmp_path / "amused")
    assert main(["release-checkpoint", str(tmp_path / "ref"), "--family", "amused", "--model-dir", str(release)]) == 0
    prompts = tmp_path / "free.txt"
    prompts.write_text("a corgi in a field\n")
    out = tmp_path / "images"
    assert main(["generate", "--checkpoint", str(tmp_path / "ref"), "--prompts", str(prompts), "--out", str(out),
                 "--steps", "2", "--samples", "2"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000_0.png", "00000_1.png"]
    assert np.asarray(Image.open(out / "00000_1.png")).shape == (8, 8, 3)
