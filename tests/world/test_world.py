"""ShapesWorld: grammar, renderer, PNG, detector, ShapesEval and dense reward against SHAPES_WORLD.md."""

import time

import numpy as np
import pytest

from maskrl.world import (
    BITMAPS, CATEGORIES, COLORS, PALETTE, SHAPES, VOCABULARY, Detection, ObjectSpec, Prompt,
    PromptError, PromptSampler, clause_credits, dense_reward, dense_reward_batch, detect, detect_batch,
    enumerate_prompts, parse_prompt, passes, read_png, relation_holds, render, render_batch, shapes_eval,
    to_rgb, write_png,
)
from maskrl.world.detect import detect_with_junk, placement_ious


def rng(seed=0):
    return np.random.default_rng(seed)


def grid_with(*objects):
    """Grid with (shape, colour, row, col) objects painted in order."""
    g = np.zeros((16, 16), np.uint8)
    for shape, color, r, c in objects:
        g[r:r + 5, c:c + 5][BITMAPS[shape]] = COLORS.index(color) + 1
    return g


def det(shape, cy, cx, color="red"):
    return Detection(shape, color, cy - 2, cx - 2)


# ---------------------------------------------------------------- grammar


def test_constants_follow_spec():
    assert PALETTE.tolist() == [[0, 0, 0], [230, 25, 75], [60, 180, 75], [0, 130, 200],
                                [255, 225, 25], [145, 30, 180], [70, 240, 240]]
    assert {s: int(b.sum()) for s, b in BITMAPS.items()} == {"square": 25, "circle": 21, "triangle": 17, "cross": 9}
    assert BITMAPS["triangle"][0].tolist() == [False, False, True, False, False]
    assert BITMAPS["cross"][:, 2].all() and BITMAPS["cross"][2].all()
    assert len(VOCABULARY) == len(set(VOCABULARY)) == 26 and list(VOCABULARY) == sorted(VOCABULARY)


@pytest.mark.parametrize("category,n", [("single_object", 4), ("two_object", 12), ("counting", 12),
                                        ("colors", 24), ("position", 48), ("color_attr", 360)])
def test_enumerate_and_round_trip(category, n):
    prompts = enumerate_prompts(category)
    assert len(prompts) == len(set(prompts)) == n
    for p in prompts:
        assert p.category == category
        assert parse_prompt(p.text) == p
        assert set(p.text.split()) <= set(VOCABULARY)


def test_prompt_text_templates():
    assert parse_prompt("three crosses") == Prompt("counting", (ObjectSpec("cross", None),) * 3, number=3)
    p = parse_prompt("a red circle and a blue square")
    assert p.objects == (ObjectSpec("circle", "red"), ObjectSpec("square", "blue")) and p.category == "color_attr"
    p = parse_prompt("a triangle to the right of a cross")
    assert (p.category, p.relation, p.objects[1].shape) == ("position", "to the right of", "cross")
    assert Prompt("colors", (ObjectSpec("cross", "cyan"),)).text == "a cyan cross"


@pytest.mark.parametrize("text,needle", [
    ("a pink circle", "'pink' at position 2"),
    ("a circle and a circle", "same shape twice ('circle')"),
    ("a square above a square", "same shape twice ('square')"),
    ("five circles", "'five' at position 1"),
    ("a red circle and a red square", "same colour twice ('red')"),
    ("A circle", "upper case"),
    ("a  circle", "double space"),
    ("a circle.", "'.'"),
    (" a circle", "leading or trailing"),
    ("a circle ", "leading or trailing"),
    ("", "empty"),
    ("two circle", "plural shape"),
    ("a circles", "singular shape"),
    ("a red", "end of prompt"),
    ("circle", "does not match any ShapesWorld template"),
    ("a circle and", "does not match any ShapesWorld template"),
    ("a red circle and a square", "colour named for one object only"),
    ("a red circle above a square", "position prompts name no colours"),
    ("a circle to the left a square", "expected 'and' or a relation"),
    ("two circles and a square", "expected end of prompt"),
])
def test_parser_rejects(text, needle):
    with pytest.raises(PromptError) as err:
        parse_prompt(text)
    assert needle in str(err.value)
    assert isinstance(err.value, ValueError)


def test_sampler_weights():
    only = PromptSampler({"counting": 1}).sample_many(200, rng())
    assert {p.category for p in only} == {"counting"}
    assert {p.number for p in only} == {2, 3, 4}
    for bad, needle in [({"counting": 1, "colours": 1}, "'colours'"), ({"counting": -1}, "'counting'"),
                        ({"counting": 0}, "zero")]:
        with pytest.raises(ValueError, match=needle):
            PromptSampler(bad)


def test_sampler_default_is_uniform_over_categories_and_slots():
    prompts = PromptSampler().sample_many(6000, rng(1))
    counts = np.array([sum(p.category == c for p in prompts) for c in CATEGORIES])
    assert np.all(np.abs(counts - 1000) < 150)
    pairs = [p.objects for p in prompts if p.category == "color_attr"]
    assert all(a.shape != b.shape and a.color != b.color for a, b in pairs)
    first_colors = np.array([sum(a.color == c for a, _ in pairs) for c in COLORS])
    assert np.all(np.abs(first_colors - len(pairs) / 6) < 0.35 * len(pairs) / 6)


# ---------------------------------------------------------------- detector


@pytest.mark.parametrize("shape", SHAPES)
def test_clean_shape_detected_with_centre(shape):
    g = grid_with((shape, "purple", 3, 7))
    assert detect(g) == [Detection(shape, "purple", 3, 7)]
    assert (detect(g)[0].cy, detect(g)[0].cx) == (5, 9)


def test_stated_scores():
    circle = placement_ious(grid_with(("circle", "red", 2, 2)) != 0).max(-1)
    square = placement_ious(grid_with(("square", "red", 2, 2)) != 0).max(-1)
    assert circle[SHAPES.index("circle")] == 1.0 and circle[SHAPES.index("square")] == pytest.approx(0.84)
    assert square[SHAPES.index("square")] == 1.0 and square[SHAPES.index("circle")] == pytest.approx(0.84)


def test_colour_share_threshold():
    g = grid_with(("square", "red", 0, 0))
    g[0, :5] = COLORS.index("blue") + 1  # 20 / 25 red = 80%: still an object
    assert detect(g) == [Detection("square", "red", 0, 0)]
    g[1, 0] = COLORS.index("green") + 1  # 19 / 25 red < 80%: junk
    assert detect_with_junk(g) == ([], 1)


def test_blob_and_small_bits_are_junk():
    g = np.zeros((16, 16), np.uint8)
    g[2:5, 2:5] = 1                 # 3x3 block: best IoU 9/21
    g[10, 10] = 2                   # single cell
    g[8:10, 1:9] = 3                # 2x8 bar
    g[12, 12:15] = 4
    g[13:15, 14] = 4                # L-shape
    assert detect_with_junk(g) == ([], 4)


def test_touching_objects_merge_per_rules():
    # Two squares sharing an edge: one 5x10 component, square IoU 25/50 -> junk.
    assert detect_with_junk(grid_with(("square", "red", 0, 0), ("square", "red", 0, 5))) == ([], 1)
    # A cross touching a square's side: square IoU 25/34 >= 0.7 and best; centre from the square.
    merged = grid_with(("square", "red", 0, 0), ("cross", "red", 0, 5))
    assert detect_with_junk(merged) == ([Detection("square", "red", 0, 0)], 0)
    # Same layout with a blue cross: red covers 25/34 < 80% -> junk.
    assert detect_with_junk(grid_with(("square", "red", 0, 0), ("cross", "blue", 0, 5))) == ([], 1)


@pytest.mark.parametrize("shape", SHAPES)
def test_one_cell_missing_still_detected(shape):
    cells = list(zip(*np.nonzero(BITMAPS[shape])))
    for i, j in cells:
        if shape == "cross" and (i, j) == (2, 2):
            continue  # removing the cross's centre splits it into four arms
        g = grid_with((shape, "green", 4, 6))
        g[4 + i, 6 + j] = 0
        assert detect(g) == [Detection(shape, "green", 4, 6)], (shape, i, j)


def test_iou_threshold_is_inclusive():
    g = grid_with(("cross", "red", 5, 5))
    g[7, 5] = g[9, 7] = 0
    g[5, 6] = 1  # 7 shared cells, union 10: IoU exactly 0.7
    assert placement_ious(g != 0).max() == 0.7
    assert detect(g) == [Detection("cross", "red", 5, 5)]
    g[8, 7] = 0  # 6/10 once the lower arm is cut off entirely
    assert detect(g) == []


def test_placement_tie_breaking():
    g = np.zeros((16, 16), np.uint8)
    g[3:8, 4:10] = 1  # 5x6: square fits at col 4 or 5 (25/30), circle only 21/30
    assert detect(g) == [Detection("square", "red", 3, 4)]
    g = np.zeros((16, 16), np.uint8)
    g[3:9, 4:9] = 1  # 6x5: rows 3 or 4
    assert detect(g) == [Detection("square", "red", 3, 4)]


def test_detect_rejects_bad_grids():
    with pytest.raises(ValueError):
        detect(np.zeros((16, 15), np.uint8))
    with pytest.raises(ValueError):
        detect(np.full((16, 16), 7, np.uint8))


@pytest.mark.parametrize("relation,unit", [("to the left of", (1, 0)), ("to the right of", (-1, 0)),
                                           ("above", (0, 1)), ("below", (0, -1))])
def test_relation_boundaries(relation, unit):
    ux, uy = unit
    a = det("circle", 8, 8)

    def at(along, across):  # B offset `along` the relation's direction and `across` it
        return det("square", 8 + uy * along + ux * across, 8 + ux * along + uy * across)

    assert relation_holds(relation, a, at(3, 3)) and relation_holds(relation, a, at(3, -3))
    assert relation_holds(relation, a, at(6, 0))
    assert not relation_holds(relation, a, at(2, 0))
    assert not relation_holds(relation, a, at(3, 4)) and not relation_holds(relation, a, at(3, -4))
    assert not relation_holds(relation, a, at(-3, 0))
    assert relation_holds(relation, at(-3, 0), a)


# ---------------------------------------------------------------- pass rules


def test_counting_is_exact_and_ignores_other_shapes():
    two = parse_prompt("two circles")
    circles = [det("circle", 2, 2), det("circle", 10, 10, "blue")]
    assert passes(two, circles)
    assert passes(two, circles + [det("square", 2, 10), det("cross", 10, 2)])
    assert not passes(two, circles[:1])
    assert not passes(two, circles + [det("circle", 2, 10)])


def test_position_some_pair():
    p = parse_prompt("a circle to the left of a square")
    square = det("square", 8, 8)
    right_circle, left_circle = det("circle", 8, 13), det("circle", 8, 2)
    assert not passes(p, [right_circle, square])
    assert passes(p, [right_circle, square, left_circle])
    assert not passes(p, [left_circle])
    assert not passes(parse_prompt("a square to the left of a circle"), [left_circle, square])


def test_color_attr_and_colors():
    p = parse_prompt("a red circle and a blue square")
    assert passes(p, [det("circle", 2, 2, "red"), det("square", 10, 10, "blue")])
    assert not passes(p, [det("circle", 2, 2, "blue"), det("square", 10, 10, "red")])
    assert passes(p, [det("circle", 2, 2, "blue"), det("square", 10, 10, "red"),
                      det("circle", 10, 2, "red"), det("square", 2, 10, "blue")])
    assert passes(parse_prompt("a blue cross"), [det("cross", 2, 2, "red"), det("cross", 9, 9, "blue")])
    assert not passes(parse_prompt("a blue cross"), [det("cross", 2, 2, "red")])
    assert passes(parse_prompt("a circle and a cross"), [det("cross", 2, 2), det("circle", 9, 9)])


def test_shapes_eval_ground_truth_and_blank():
    prompts = PromptSampler().sample_many(300, rng(2))
    grids = render_batch(prompts, rng(3))
    score = shapes_eval(prompts, grids)
    assert score["overall"] == 1.0 and all(score[c] == 1.0 for c in CATEGORIES)
    assert sum(score["counts"].values()) == 300 and isinstance(score["overall"], float)
    blank = shapes_eval(prompts, np.zeros_like(grids))
    assert blank["overall"] == 0.0 and all(blank[c] == 0.0 for c in CATEGORIES)


def test_shapes_eval_mean_over_present_categories():
    prompts = [parse_prompt("a circle"), parse_prompt("a circle"), parse_prompt("two squares")]
    grids = [grid_with(("circle", "red", 0, 0)), np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8)]
    score = shapes_eval(prompts, grids)
    assert score == {"overall": 0.25, "single_object": 0.5, "counting": 0.0,
                     "counts": {"single_object": 2, "counting": 1}}


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
