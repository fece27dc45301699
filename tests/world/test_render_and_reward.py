"""ShapesWorld: renderer, PNG files, dense reward and detector speed against SHAPES_WORLD.md."""

import time

import numpy as np
import pytest

from maskrl.world import (
    CATEGORIES, COLORS, PALETTE, PromptSampler, clause_credits, dense_reward, dense_reward_batch, detect, detect_batch,
    enumerate_prompts, parse_prompt, passes, read_png, relation_holds, render, render_batch, shapes_eval,
    to_rgb, write_png,
)
from maskrl.world.detect import detect_with_junk

from tests.world.support import det, grid_with, rng


# ---------------------------------------------------------------- renderer


def boxes_separated(a, b):
    return abs(a.row - b.row) >= 6 or abs(a.col - b.col) >= 6


def test_renders_satisfy_prompt_and_never_touch():
    r = rng(4)
    for category in CATEGORIES:
        for prompt in enumerate_prompts(category)[:48]:
            objs, junk = detect_with_junk(render(prompt, r))
            assert junk == 0 and len(objs) == len(prompt.objects) and passes(prompt, objs)
            assert sorted(o.shape for o in objs) == sorted(s.shape for s in prompt.objects)
            for spec in prompt.objects:
                assert spec.color is None or any(o.color == spec.color for o in objs)
            assert all(boxes_separated(a, b) for i, a in enumerate(objs) for b in objs[i + 1:])


def test_counting_four_renders_fast():
    p, r = parse_prompt("four crosses"), rng(5)
    render(p, r)  # builds the layout table once
    start = time.perf_counter()
    grids = render_batch([p] * 300, r)
    assert (time.perf_counter() - start) / 300 < 0.005
    assert all(len(detect(g)) == 4 for g in grids)
    assert shapes_eval([p] * 300, grids)["overall"] == 1.0


def chi2(observed, expected):
    return float(((observed - expected) ** 2 / expected).sum())


def test_single_object_position_uniform():
    grids = render_batch([parse_prompt("a square")] * 3000, rng(6))
    dets = [detect(g)[0] for g in grids]
    rows = np.bincount([d.row for d in dets], minlength=12)
    cols = np.bincount([d.col for d in dets], minlength=12)
    assert chi2(rows, 250.0) < 40 and chi2(cols, 250.0) < 40  # 11 dof: p ~ 1e-5
    colors = np.bincount([COLORS.index(d.color) for d in dets], minlength=6)
    assert chi2(colors, 500.0) < 30


def test_two_object_layout_uniform_over_joint_placements():
    """Exact joint uniformity favours edge rows (more room for the other box); sequential placement would not."""
    pos = np.array([(r, c) for r in range(12) for c in range(12)])
    gap = np.abs(pos[:, None] - pos[None])
    valid = (gap >= 6).any(-1)
    expected_rows = np.array([valid[pos[:, 0] == r].sum() for r in range(12)], float)
    n = 4000
    grids = render_batch([parse_prompt("a circle and a square")] * n, rng(7))
    rows = np.bincount([next(d.row for d in detect(g) if d.shape == "circle") for g in grids], minlength=12)
    assert chi2(rows, expected_rows / expected_rows.sum() * n) < 40
    assert chi2(rows, np.full(12, n / 12)) > 100


def test_position_renders_hold_relation():
    r = rng(8)
    for prompt in enumerate_prompts("position"):
        for _ in range(5):
            a, b = sorted(detect(render(prompt, r)), key=lambda d: d.shape != prompt.objects[0].shape)
            assert relation_holds(prompt.relation, a, b) and boxes_separated(a, b)


# ---------------------------------------------------------------- PNG


@pytest.mark.parametrize("scale", [1, 3, 8])
def test_png_round_trip(tmp_path, scale):
    grids = render_batch(PromptSampler().sample_many(5, rng(scale)), rng(9))
    grids[0] = np.arange(256).reshape(16, 16) % 7
    for k, g in enumerate(grids):
        path = tmp_path / f"{k:05d}_0.png"
        write_png(g, path, scale=scale)
        assert read_png(path).tolist() == g.tolist()
    rgb = to_rgb(grids[0], scale)
    assert rgb.shape == (16 * scale, 16 * scale, 3) and rgb.dtype == np.uint8
    assert rgb[scale, scale * 2].tolist() == PALETTE[grids[0][1, 2]].tolist()


def test_png_noisy_reads_back(tmp_path):
    from PIL import Image

    g = np.arange(256).reshape(16, 16) % 7
    noisy = to_rgb(g, 4).astype(int) + rng(10).integers(-10, 11, (64, 64, 3))
    path = tmp_path / "noisy.png"
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path)
    assert read_png(path).tolist() == g.tolist()


@pytest.mark.parametrize("size", [(32, 48), (20, 20)])
def test_png_bad_size_names_file(tmp_path, size):
    from PIL import Image

    path = tmp_path / "odd.png"
    Image.fromarray(np.zeros((*size, 3), np.uint8)).save(path)
    with pytest.raises(ValueError, match="odd.png"):
        read_png(path)


# ---------------------------------------------------------------- dense reward


def test_dense_reward_ground_truth_and_blank():
    prompts = PromptSampler().sample_many(200, rng(11))
    grids = render_batch(prompts, rng(12))
    rewards = dense_reward_batch(prompts, grids)
    assert rewards.dtype == np.float32 and np.all(rewards == 1.0)
    assert np.all(dense_reward_batch(prompts, np.zeros_like(grids)) == 0.0)


def test_dense_reward_partial_credit_is_monotone():
    p = parse_prompt("a red circle and a blue square")
    both = dense_reward(p, grid_with(("circle", "red", 0, 0), ("square", "blue", 9, 9)))
    wrong_colour = dense_reward(p, grid_with(("circle", "red", 0, 0), ("square", "green", 9, 9)))
    missing = dense_reward(p, grid_with(("circle", "red", 0, 0)))
    assert both == 1.0 > wrong_colour == 0.75 > missing == 0.5 > dense_reward(p, np.zeros((16, 16), np.uint8))

    count = parse_prompt("three squares")
    rewards = [dense_reward(count, [det("square", 2, 2 + 6 * i) for i in range(n)]) for n in range(6)]
    assert rewards[3] == 1.0 and rewards[2] > rewards[1] > rewards[0] == 0.0 and rewards[3] > rewards[4] > rewards[5]

    pos = parse_prompt("a circle above a square")
    circle = det("circle", 2, 8)
    holds, short = det("square", 8, 8), det("square", 4, 8)
    sideways, wrong_way, absent = det("square", 5, 13), det("square", 0, 8), []
    scores = [dense_reward(pos, [circle, b] if b else [circle]) for b in (holds, short, sideways, wrong_way, absent)]
    assert scores[0] == 1.0 > scores[1] > scores[3] and scores[2] > scores[3] > scores[4]


def test_dense_reward_clutter_penalty():
    p = parse_prompt("a cross")
    clean = grid_with(("cross", "red", 0, 0))
    junky = clean.copy()
    junky[15, 15] = 2
    extra = grid_with(("cross", "red", 0, 0), ("cross", "blue", 9, 9))
    assert dense_reward(p, clean) == 1.0
    assert dense_reward(p, junky) == pytest.approx(0.95) and dense_reward(p, extra) == pytest.approx(0.95)
    messy = junky.copy()
    messy[13, 0] = messy[13, 3] = messy[13, 6] = messy[13, 9] = 3
    assert dense_reward(p, messy) == pytest.approx(0.85)


def corrupt(grid, r):
    """Ground truth with some of: a recoloured palette index, an erased 5x5 block, random cells."""
    g = grid.copy()
    if r.random() < 0.3:
        g[g == r.integers(1, 7)] = r.integers(1, 7)
    if r.random() < 0.3:
        y, x = r.integers(0, 12, 2)
        g[y:y + 5, x:x + 5] = 0
    flips = r.random(g.shape) < r.uniform(0, 0.06)
    return np.where(flips, r.integers(0, 7, g.shape), g).astype(np.uint8)


def test_dense_reward_ranks_every_pass_above_every_failure():
    r = rng(13)
    prompts = PromptSampler().sample_many(600, r)
    rewards, passed = [], []
    for prompt, grid in zip(prompts, render_batch(prompts, r)):
        grid = corrupt(grid, r)
        objs, _ = detect_with_junk(grid)
        rewards.append(dense_reward(prompt, grid))
        passed.append(passes(prompt, objs))
        assert (min(clause_credits(prompt, objs)) == 1.0) == passed[-1]
    rewards, passed = np.array(rewards), np.array(passed)
    assert 0.2 < passed.mean() < 0.9 and np.any(rewards == 1.0) and np.any((rewards > 0.6) & ~passed)
    assert np.all((rewards >= 0.85) == passed) and np.all((rewards >= 0) & (rewards <= 1))


# ---------------------------------------------------------------- speed


def test_detect_is_fast():
    grids = render_batch(PromptSampler().sample_many(500, rng(14)), rng(15))
    detect_batch(grids[:10])
    start = time.perf_counter()
    detect_batch(grids)
    assert (time.perf_counter() - start) / len(grids) < 1e-3
