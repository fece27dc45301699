"""The shipped base model loads by name and generates images ShapesEval can score."""
import json

from maskrl.cli import main
from maskrl.checkpoints import resolve_checkpoint
from maskrl.evaluation import load_checkpoint
from maskrl.world import parse_prompt, shapes_eval

import numpy as np


def test_base_checkpoint_is_shipped_as_safetensors():
    path = resolve_checkpoint("base")
    assert (path / "model.safetensors").stat().st_size < 20 * 2**20
    assert (path / "MODEL_CARD.md").is_file()
    assert load_checkpoint("base").num_parameters > 500_000


def test_base_model_eval_on_60_prompts_beats_a_blank_image(capsys):
    prompts_file = "configs/prompts/heldout_60.txt"
    assert main(["eval", "--checkpoint", "base", "--prompts", prompts_file, "--steps", "16", "--seed", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    prompts = [parse_prompt(line) for line in open(prompts_file).read().splitlines()]
    blank = shapes_eval(prompts, np.zeros((len(prompts), 16, 16), dtype=np.uint8))
    assert blank["overall"] == 0.0
    assert result["overall"] > blank["overall"]
    assert sum(result["counts"].values()) == 60


def test_the_rl_tuned_model_is_shipped_by_name_with_its_card():
    path = resolve_checkpoint("shapes_grpo")
    assert (path / "model.safetensors").stat().st_size < 20 * 2**20
    card = (path / "MODEL_CARD.md").read_text()
    assert "shapes_grpo, CFG 0" in card and "shapes_grpo, CFG 3" in card and "make run" in card
    tuned, base = load_checkpoint("shapes_grpo"), load_checkpoint("base")
    assert tuned.num_parameters == base.num_parameters
    assert any(not (a == b).all() for a, b in zip(tuned.state_dict().values(), base.state_dict().values()))
