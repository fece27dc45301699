"""Rewards: each one's offline load-and-score path with a tiny random model of its family, saved to
a temp dir and loaded back through the real loader; configs; composite weights; non-finite rewards
dropped and counted by the trainer; clear errors for missing weights; ShapesCLIP training."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

from maskrl.config import ConfigError
from maskrl.grpo import GRPOConfig
from maskrl.iteration import prepare, score
from maskrl.models import PaletteTokenizer
from maskrl.rewards import (
    MissingCheckpointError, RewardConfig, RewardOutput, build_reward, load_reward_config, register_reward,
)
from maskrl.rewards.pixels import preprocess
from maskrl.trajectory import TrajectoryBatch
from maskrl.world import BITMAPS, CATEGORIES, PromptSampler, parse_prompt, render_batch
from tests.helpers import REPO

CONFIGS = REPO / "configs" / "rewards"


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    prompts = PromptSampler().sample_many(6, rng)
    return render_batch(prompts, rng), [p.text for p in prompts]


# -- tiny open_clip models of the real families ---------------------------------------------------------

# ViT image tower + CLIP text tower with open_clip's BPE tokenizer: the ViT-H-14 family, scaled down.
TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "head_width": 16, "layers": 1},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory):
    """A random open_clip model: its config JSON, its safetensors weights, and the model itself."""
    import open_clip
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("open_clip")
    arch = d / "tiny-vit-h-family.json"
    arch.write_text(json.dumps(TINY_OPEN_CLIP))
    torch.manual_seed(0)
    open_clip.add_model_config(arch)
    model, _, transform = open_clip.create_model_and_transforms(arch.stem)
    model.eval()
    weights = d / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return arch, weights, model, transform, open_clip.get_tokenizer(arch.stem)


def expected_cos(tiny, images, prompts):
    _, _, model, transform, tokenizer = tiny
    with torch.no_grad():
        img = model.encode_image(preprocess(images, transform, 32), normalize=True)
        txt = model.encode_text(tokenizer(prompts), normalize=True)
    return (img * txt).sum(-1).numpy()


def test_clip_score_loads_a_local_checkpoint_and_scales_as_clipscore(tiny_open_clip, batch):
    arch, weights, *_ = tiny_open_clip
    images, prompts = batch
    reward = build_reward("clip_score", arch=str(arch), checkpoint=str(weights), batch_size=4)
    out = reward(images, prompts)
    cos = expected_cos(tiny_open_clip, images, prompts)
    np.testing.assert_allclose(out.components["cos"], cos, atol=1e-5)
    np.testing.assert_allclose(out.scores, 2.5 * np.maximum(cos, 0), atol=1e-5)
    assert out.scores.dtype == np.float32 and out.scores.shape == (6,)


def test_clip_score_from_an_open_clip_local_dir(tiny_open_clip, batch, tmp_path):
    arch, weights, *_ = tiny_open_clip
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_OPEN_CLIP}))
    (tmp_path / "open_clip_model.safetensors").write_bytes(weights.read_bytes())
    images, prompts = batch
    out = build_reward("clip_score", checkpoint=str(tmp_path), w=100.0)(images, prompts)
    np.testing.assert_allclose(out.scores, 100 * np.maximum(expected_cos(tiny_open_clip, images, prompts), 0), atol=1e-4)


def test_hpsv2_loads_through_the_open_clip_path(tiny_open_clip, batch):
    arch, weights, *_ = tiny_open_clip
    images, prompts = batch
    out = build_reward(RewardConfig("hpsv2", {"arch": str(arch), "checkpoint": str(weights)}))(images, prompts)
    np.testing.assert_allclose(out.scores, expected_cos(tiny_open_clip, images, prompts), atol=1e-5)


def test_aesthetic_head_on_the_image_embedding(tiny_open_clip, batch, tmp_path):
    from safetensors.torch import save_file

    arch, weights, model, transform, _ = tiny_open_clip
    torch.manual_seed(1)
    mlp = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 1))
    save_file({f"layers.{k}": v for k, v in mlp.state_dict().items()}, str(tmp_path / "head.safetensors"))
    images, prompts = batch
    out = build_reward("aesthetic", arch=str(arch), checkpoint=str(weights), head=str(tmp_path / "head.safetensors"))(
        images, prompts)
    with torch.no_grad():
        emb = model.encode_image(preprocess(images, transform, 32), normalize=True)
        want = mlp.eval()(emb).squeeze(-1).numpy()
    np.testing.assert_allclose(out.scores, want, atol=1e-5)


def test_pickscore_from_a_tiny_transformers_clip(tmp_path, batch):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, **{c: 2 + i for i, c in enumerate(letters)},
             **{c + "</w>": 28 + i for i, c in enumerate(letters)}}
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}),
                              tokenizer=CLIPTokenizer(vocab=vocab, merges=[]))
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=64, bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8)
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    images, prompts = batch
    out = build_reward("pickscore", model_dir=str(tmp_path), batch_size=4)(images, prompts)
    with torch.no_grad():
        from maskrl.rewards.pixels import to_pil

        img = model.get_image_features(**processor(images=to_pil(images, 32), return_tensors="pt"))
        txt = model.get_text_features(**processor(text=prompts, padding=True, return_tensors="pt"))
        img, txt = (getattr(t, "pooler_output", t) for t in (img, txt))
        want = model.logit_scale.exp() * torch.nn.functional.cosine_similarity(img, txt)
    np.testing.assert_allclose(out.scores, want.numpy(), rtol=1e-4)


# -- ShapesCLIP ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes_clip_dir(tmp_path_factory):
    from maskrl.rewards.train_shapes_clip import main

    out = tmp_path_factory.mktemp("shapes_clip")
    info = main(["--out", str(out), "--steps", "3", "--batch", "48", "--threads", "1", "--warmup", "1",
                 "--log_every", "1", "--eval_every", "0", "--eval_images", "2"])
    return out, info


def test_shapes_clip_training_smoke(shapes_clip_dir, batch):
    out, info = shapes_clip_dir
    for name in ("open_clip_config.json", "open_clip_model.safetensors", "tokenizer.json", "README.md", "card.json"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pt"))
    card = json.loads((out / "card.json").read_text())
    assert card["command"].startswith("python -m maskrl.rewards.train_shapes_clip --out")
    assert card["train_seconds"] > 0 and np.isfinite(card["final_loss"])
    assert set(card["retrieval"]) == {*CATEGORIES, "mean"}
    assert "top1" in (out / "README.md").read_text()
    images, prompts = batch
    out_scores = build_reward("shapes_clip", path=str(out))(images, prompts).scores
    assert out_scores.shape == (6,) and np.all(np.abs(out_scores) <= 1 + 1e-5)


def test_shapes_clip_training_pixels_equal_the_served_preprocessing(shapes_clip_dir, batch):
    from maskrl.rewards.clip import ShapesClipReward
    from maskrl.rewards.train_shapes_clip import grids_to_pixels

    reward = ShapesClipReward(path=str(shapes_clip_dir[0]))
    images, _ = batch
    served = preprocess(images, reward.clip.preprocess, reward.clip.side)
    torch.testing.assert_close(grids_to_pixels(images), served)


def test_shapes_clip_batches_have_distinct_meanings_per_category():
    from maskrl.rewards.shapes_clip import meaning
    from maskrl.rewards.train_shapes_clip import draw, quotas

    q = quotas(192)
    assert sum(q.values()) == 192 and q["single_object"] == 4 and q["two_object"] == 6
    for prompts in draw(np.random.default_rng(0), q).values():
        assert len({meaning(p) for p in prompts}) == len(prompts)
    # rewordings share a meaning, so they never meet as each other's negatives
    assert meaning(parse_prompt("a circle to the left of a square")) == meaning(parse_prompt("a square to the right of a circle"))
    assert meaning(parse_prompt("a red circle and a blue square")) == meaning(parse_prompt("a blue square and a red circle"))
    assert meaning(parse_prompt("a circle above a square")) != meaning(parse_prompt("a circle below a square"))


def test_shipped_shapes_clip_ranks_the_matching_caption_above_mismatched_ones():
    from maskrl.rewards.clip import SHAPES_CLIP_DEFAULT, ShapesClipReward
    from maskrl.rewards.shapes_clip import clip_score_fn, retrieval_accuracy

    if not (SHAPES_CLIP_DEFAULT / "open_clip_model.safetensors").is_file():
        pytest.skip(f"ShapesCLIP is not trained yet ({SHAPES_CLIP_DEFAULT} is absent); train it with "
                    "`python -m maskrl.rewards.train_shapes_clip --out maskrl/assets/shapes_clip --steps 800 --threads 1`")
    acc = retrieval_accuracy(clip_score_fn(ShapesClipReward()), images_per_category=16, seed=7)
    assert acc["mean"]["matched_above_mismatched"] > 0.5, acc
    assert sum(acc[c]["matched_above_mismatched"] > 0.5 for c in CATEGORIES) >= 4, acc


# -- missing weights: clear errors ------------------------------------------------------------------------


@pytest.mark.parametrize("name, options, option", [
    ("clip_score", {"checkpoint": "/nonexistent/clip/vit-b-32.safetensors"}, "checkpoint"),
    ("hpsv2", {"checkpoint": "/nonexistent/hpsv2/hps_v2.1.safetensors"}, "checkpoint"),
    ("pickscore", {"model_dir": "/nonexistent/pickscore"}, "model_dir"),
    ("shapes_clip", {"path": "/nonexistent/shapes_clip"}, "ShapesCLIP folder"),
])
def test_missing_checkpoint_names_the_path_and_how_to_provide_it(name, options, option):
    with pytest.raises(MissingCheckpointError) as err:
        build_reward(name, **options)
    msg = str(err.value)
    assert next(iter(options.values())) in msg and option in msg and name in msg
    assert "train_shapes_clip" in msg if name == "shapes_clip" else "options." in msg


def test_missing_aesthetic_head_and_pickled_checkpoints_are_clear_errors(tiny_open_clip, tmp_path):
    arch, weights, *_ = tiny_open_clip
    with pytest.raises(MissingCheckpointError, match="/nonexistent/head.safetensors"):
        build_reward("aesthetic", arch=str(arch), checkpoint=str(weights), head="/nonexistent/head.safetensors")
    pickled = tmp_path / "HPS_v2.pt"
    pickled.write_bytes(b"not read")
    with pytest.raises(ValueError, match=r"python -m maskrl.rewards.convert .*HPS_v2.pt"):
        build_reward("hpsv2", checkpoint=str(pickled))


def test_convert_writes_safetensors_from_a_state_dict_checkpoint(tmp_path):
    from safetensors.torch import load_file

    from maskrl.rewards.convert import convert

    torch.save({"state_dict": {"module.w": torch.ones(2, 3)}}, tmp_path / "x.pt")
    assert convert(tmp_path / "x.pt", tmp_path / "x.safetensors") == 1
    assert torch.equal(load_file(str(tmp_path / "x.safetensors"))["w"], torch.ones(2, 3))


# -- configs ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_example_configs_load_and_validate(path):
    cfg = load_reward_config(path)
    assert cfg.name == path.stem


def test_config_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: clip_score\noptions: {checkpoint: /x.safetensors, chekpoint: 1}\n")
    with pytest.raises(ConfigError, match=r"options\.chekpoint"):
        load_reward_config(bad)
    bad.write_text("name: clip_score\noptions: {checkpoint: /x.safetensors, w: lots}\n")
    with pytest.raises(ConfigError, match=r"options\.w"):
        load_reward_config(bad)
    bad.write_text("name: hpsv2\n")
    with pytest.raises(ConfigError, match=r"options\.checkpoint"):
        load_reward_config(bad)
    bad.write_text("name: composite\noptions: {components: [{name: shapes_rule, wieght: 2}]}\n")
    with pytest.raises(ConfigError, match="wieght"):
        load_reward_config(bad)
    bad.write_text("name: clip_scor\n")
    with pytest.raises(ConfigError, match="clip_scor"):
        load_reward_config(bad)
    with pytest.raises(ConfigError, match="chekpoint"):
        load_reward_config(CONFIGS / "clip_score.yaml", ["options.chekpoint=/y"])


def test_runtime_env_is_carried_and_merged_over_components():
    cfg = RewardConfig("composite", {"components": [
        {"name": "shapes_rule", "runtime_env": {"pip": ["a==1"], "env_vars": {"X": "1"}}},
        {"name": "shapes_rule", "key": "rule2", "runtime_env": {"pip": ["b", "a==1"], "env_vars": {"Y": "2"}}},
    ]}, runtime_env={"pip": ["c"]})
    assert cfg.ray_runtime_env() == {"pip": ["c", "a==1", "b"], "env_vars": {"X": "1", "Y": "2"}}
    assert RewardConfig("shapes_rule").ray_runtime_env() is None
    assert load_reward_config(CONFIGS / "hpsv2.yaml").ray_runtime_env()["env_vars"] == {"HF_HUB_OFFLINE": "1"}
    clash = RewardConfig("composite", {"components": [
        {"name": "shapes_rule", "runtime_env": {"env_vars": {"X": "1"}}},
        {"name": "shapes_rule", "key": "b", "runtime_env": {"env_vars": {"X": "2"}}}]})
    with pytest.raises(ConfigError, match="env_vars.X"):
        clash.ray_runtime_env()


# -- composite and non-finite rewards --------------------------------------------------------------------


@dataclass
class FixedOptions:
    values: list[float] = field(default_factory=list)


class FixedReward:
    """Returns the configured values (cycled), with a component for logging."""

    name = "fixed"
    Options = FixedOptions

    def __init__(self, values):
        self.values = np.asarray(values, np.float32)

    def __call__(self, images, prompts):
        v = np.resize(self.values, len(images))
        return RewardOutput(scores=v, components={"double": 2 * v})


register_reward("test_fixed", FixedReward)


def test_composite_applies_weights_exactly_and_logs_components(batch):
    images, prompts = batch
    reward = build_reward("composite", components=[
        {"name": "test_fixed", "key": "a", "weight": 0.5, "options": {"values": [1, 2, 3, 4, 5, 6]}},
        {"name": "test_fixed", "key": "b", "weight": -2.0, "options": {"values": [0.25, 0, 1, 0, 0, 10]}},
        {"name": "test_fixed", "key": "log_only", "weight": 0.0, "options": {"values": [float("nan")]}},
        {"name": "shapes_rule", "weight": 1.0},
    ])
    out = reward(images, prompts)
    rule = build_reward("shapes_rule")(images, prompts)
    a, b = np.arange(1, 7, dtype=np.float64), np.array([0.25, 0, 1, 0, 0, 10])
    np.testing.assert_array_equal(out.scores, (0.5 * a - 2.0 * b + rule.scores.astype(np.float64)).astype(np.float32))
    assert set(out.components) == {"a", "a/double", "b", "b/double", "log_only", "log_only/double",
                                   "shapes_rule", "shapes_rule/pass"}
    np.testing.assert_array_equal(out.components["b"], b.astype(np.float32))
    with pytest.raises(ConfigError, match="used twice"):
        build_reward("composite", components=[{"name": "shapes_rule"}, {"name": "shapes_rule"}])
    # the driver's pre-flight check (no model built) catches them too
    for components, error in (([], "components is empty"), ([{"name": "shapes_rule"}] * 2, "used twice"),
                              ([{"name": "shapes_rule", "weight": float("nan")}], "must be finite")):
        with pytest.raises(ConfigError, match=error):
            RewardConfig("composite", {"components": components}).validate()


def test_non_finite_scores_pass_through_as_nan():
    out = RewardOutput(scores=np.array([1.0, np.inf, -np.inf, np.nan, 0.5]))
    assert np.isnan(out.scores[1:4]).all() and out.scores[0] == 1.0 and out.scores[4] == 0.5
    comp = build_reward("composite", components=[
        {"name": "test_fixed", "key": "x", "options": {"values": [1, float("inf"), 3, 4]}},
        {"name": "test_fixed", "key": "y", "options": {"values": [1, 2, float("nan"), 4]}}])
    s = comp(np.zeros((4, 16, 16), np.uint8), ["a circle"] * 4).scores
    assert np.isnan(s[1]) and np.isnan(s[2]) and s[0] == 2 and s[3] == 8


def _batch_of_groups(n_groups: int, group_size: int) -> TrajectoryBatch:
    rng = np.random.default_rng(1)
    prompts = [p.text for p in PromptSampler().sample_many(n_groups, rng) for _ in range(group_size)]
    images = render_batch([parse_prompt(p) for p in prompts], rng)
    b, steps = len(prompts), 2
    return TrajectoryBatch(
        prompts=prompts, prompt_ids=torch.zeros(b, 4), prompt_index=torch.arange(b) // group_size,
        group_id=torch.arange(b) // group_size, tokens=PaletteTokenizer().encode(images),
        reveal_step=torch.zeros(b, 256), cutoff=torch.zeros(b, steps), behaviour_terms=torch.zeros(b, steps * 257),
        step_tokens=torch.zeros(b, 0),
        reward=torch.full((b,), float("nan")), advantage=torch.zeros(b), policy_version=torch.zeros(b), variant="candidate1")


def test_non_finite_rewards_are_dropped_and_counted_by_prepare():
    batch = _batch_of_groups(3, 4)
    values = [1, 2, float("nan"), 4, 5, float("inf"), 7, 8, -float("inf"), 10, 11, 12]
    reward = build_reward("test_fixed", values=values)
    scored, parts = score(batch, reward, PaletteTokenizer().decode)
    assert torch.isnan(scored.reward[[2, 5, 8]]).all()
    assert parts["reward/double"] == pytest.approx(2 * np.mean([v for v in values if np.isfinite(v)]))
    prepared = prepare(scored, GRPOConfig())
    assert prepared.metrics["reward/nonfinite"] == 3.0
    assert len(prepared.batch) == 9 and torch.isfinite(prepared.batch.reward).all()
    assert prepared.metrics["reward/mean"] == pytest.approx(np.mean([v for v in values if np.isfinite(v)]))
    assert torch.isfinite(prepared.batch.advantage).all()


def test_shapes_foreground_is_the_share_of_object_cells(batch):
    """A clean render's foreground is the area of its objects' bitmaps; RGB images are refused."""
    images, prompts = batch
    scores = build_reward("shapes_foreground")(images, prompts).scores
    areas = [sum(int(BITMAPS[o.shape].sum()) for o in parse_prompt(p).objects) for p in prompts]
    np.testing.assert_allclose(scores, np.array(areas) / 256, rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="palette grids"):
        build_reward("shapes_foreground")(np.zeros((1, 32, 32, 3), np.uint8), ["a circle"])
