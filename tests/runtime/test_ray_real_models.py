"""`maskrl train` on a real model's release: Show-o's or aMUSEd's release directories as config keys
(tiny releases in the official layouts), free-text prompts from a file, a plug-in reward on the
decoded RGB images, LoRA adapters; on Ray with the default pool shape."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from actors.driver import train
from maskrl.config import ConfigError
from maskrl.metrics import read_metrics
from maskrl.models.lora import ADAPTER_FILE, LoraConfig
from maskrl.rewards.base import RewardConfig
from maskrl.run_model import Family, ModelConfig
from maskrl.sampling import SamplingConfig
from maskrl.train_config import check_train_config
from tests.fake_amused import fake_amused
from tests.fake_showo import TINY_VQ, fake_showo_release
from tests.helpers import tiny_config

PROMPTS = ["A corgi wearing sunglasses.", "two cats on a red sofa", "a lighthouse at dusk, oil painting"]


def showo_model(tmp_path) -> ModelConfig:
    release = fake_showo_release(tmp_path)
    return ModelConfig(Family.showo, str(release["model"]), str(release["vq"]), str(release["tokenizer"]), resolution=64,
                       vq_config=dataclasses.asdict(TINY_VQ))


def amused_model(tmp_path) -> ModelConfig:
    return ModelConfig(Family.amused, str(fake_amused(tmp_path / "amused")))


def run_config(tmp_path, model: ModelConfig):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    cfg = tiny_config("base", tmp_path / "run", weight_transport="collective")
    return dataclasses.replace(
        cfg, model=model, prompts_file=str(prompts), iterations=2, grid_every=1, lora=LoraConfig(rank=2),
        reward=RewardConfig(name="tests.fake_showo:RedReward"), eval=dataclasses.replace(cfg.eval, prompts=0),
        sampling=SamplingConfig(steps=3, cfg_scale=1.75, noise_schedule="compound"),
    )


@pytest.mark.parametrize("make_model", [showo_model, amused_model], ids=["show-o", "amused"])
def test_train_a_release_with_lora_on_a_prompt_file(ray_instance, tmp_path, make_model):
    result = train(run_config(tmp_path, make_model(tmp_path)))
    rows = [m for m in read_metrics(result.run) if m["iteration"] > 0]
    assert [m["iteration"] for m in rows] == [1, 2] and all(np.isfinite(m["reward/mean"]) for m in rows)
    assert not any("eval/overall" in m for m in rows)  # ShapesEval is for ShapesWorld policies
    final = result.checkpoint
    assert ADAPTER_FILE in {p.name for p in final.iterdir()} and not (final / "model").exists()  # adapters only
    base = json.loads((final / "config.json").read_text())["lora"]["base"]["checkpoint"]
    assert base == str((tmp_path / "run" / "model").resolve())  # the release reference the run wrote
    grid = np.asarray(Image.open(result.grids / "iter_00002.png"))
    assert grid.ndim == 3 and grid.shape[2] == 3 and grid.shape[0] > 3 * 8  # three prompts' rows of RGB images
    assert (result.grids / "prompts.txt").read_text().splitlines() == PROMPTS


def test_a_release_run_names_what_it_lacks(tmp_path):
    cfg = run_config(tmp_path, showo_model(tmp_path))
    for change, key in ((dict(prompts_file=""), "prompts_file"), (dict(checkpoint="/models/x"), "checkpoint"),
                        (dict(eval=dataclasses.replace(cfg.eval, prompts=60)), "eval.prompts")):
        with pytest.raises(ConfigError, match=key):
            check_train_config(dataclasses.replace(cfg, **change))
    with pytest.raises(FileNotFoundError, match=r"model.vq_dir"):
        train(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, vq_dir=str(tmp_path / "nowhere"))))
