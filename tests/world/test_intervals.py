"""ShapesEval's 95% intervals cover known rates at about their nominal level, in simulation."""
import numpy as np
import pytest

from maskrl.world import CATEGORIES, PromptSampler
from maskrl.world.intervals import shapes_eval_intervals, wilson

RATES = dict(zip(CATEGORIES, (0.5, 0.15, 0.1, 0.45, 0.05, 0.2)))


def held_out(prompts_per_category: int, rng):
    """A category-balanced sample of prompt entries (a text may be drawn twice)."""
    return [PromptSampler({c: 1.0}).sample(rng) for c in CATEGORIES for _ in range(prompts_per_category)]


def test_intervals_cover_known_rates_at_nominal_level(samples=2):
    rng = np.random.default_rng(0)
    prompts = held_out(20, rng)  # 20 prompts x 2 samples = 40 images a category, 240 in all
    entries = [i for i in range(len(prompts)) for _ in range(samples)]
    images = [prompts[i] for i in entries]
    truth = float(np.mean(list(RATES.values())))
    covered, covered_cat, widths, sims = 0, 0, [], 400
    for _ in range(sims):
        # entries differ in difficulty (a Beta around the category's rate): samples of one entry correlate
        difficulty = [rng.beta(RATES[p.category] * 4, (1 - RATES[p.category]) * 4) for p in prompts]
        passed = [rng.random() < difficulty[i] for i in entries]
        ci = shapes_eval_intervals(images, passed, entries)
        covered += ci["overall"][0] <= truth <= ci["overall"][1]
        covered_cat += ci["counting"][0] <= RATES["counting"] <= ci["counting"][1]
        widths.append(ci["overall"][1] - ci["overall"][0])
    assert 0.91 <= covered / sims <= 0.99, covered / sims
    assert 0.89 <= covered_cat / sims <= 0.995, covered_cat / sims
    assert 0.05 < np.mean(widths) < 0.15  # informative, not trivially wide


def test_wilson_is_sound_at_zero_and_matches_the_textbook_value():
    low, high = wilson(0.0, 40)
    assert low == 0.0 and 0.05 < high < 0.1
    low, high = wilson(0.15, 480)
    assert high - low == pytest.approx(0.064, abs=0.004)  # about +-0.03 at 0.15 on 480 images
