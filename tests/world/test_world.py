"""ShapesWorld: grammar, detector and ShapesEval pass rules against SHAPES_WORLD.md."""


import numpy as np
import pytest

from maskrl.world import (
    BITMAPS, CATEGORIES, COLORS, PALETTE, SHAPES, VOCABULARY, Detection, ObjectSpec, Prompt,
    PromptError, PromptSampler, detect, enumerate_prompts, parse_prompt, passes, relation_holds, render_batch, shapes_eval,
)
from maskrl.world.detect import detect_with_junk, placement_ious

from tests.world.support import det, grid_with, rng


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
