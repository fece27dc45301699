"""ShapesWorld prompts: the six GenEval-style templates, a strict parser and a sampler.

The grammar is tiny and closed (SHAPES_WORLD.md section 3), so the parser rejects
anything off-template with a message that names the offending word: a typo in a
prompt file should fail loudly, not silently become a different prompt.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping

import numpy as np

COLORS = ("red", "green", "blue", "yellow", "purple", "cyan")
SHAPES = ("square", "circle", "triangle", "cross")
PLURALS = {"square": "squares", "circle": "circles", "triangle": "triangles", "cross": "crosses"}
NUMBERS = {"two": 2, "three": 3, "four": 4}
RELATIONS = ("to the left of", "to the right of", "above", "below")
CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")

# Unit vector (x right, y down) each relation points along: B sits that way from A.
RELATION_AXES = {"to the left of": (1, 0), "to the right of": (-1, 0), "above": (0, 1), "below": (0, -1)}
MIN_RELATION_OFFSET = 3

_NUMBER_WORDS = {n: w for w, n in NUMBERS.items()}
_SINGULAR = {p: s for s, p in PLURALS.items()}

VOCABULARY = tuple(sorted({
    "a", "and", *COLORS, *SHAPES, *PLURALS.values(), *NUMBERS,
    *(w for r in RELATIONS for w in r.split()),
}))


def relation_offsets(relation: str, dx, dy):
    """(along, across) of offset (dx, dy) = B - A for `relation`; works on arrays too."""
    ux, uy = RELATION_AXES[relation]
    return ux * dx + uy * dy, abs(uy * dx + ux * dy)


def relation_holds_at(relation: str, dx, dy):
    """Spec section 4 relation table: B is at least 3 cells that way, and mostly that way."""
    along, across = relation_offsets(relation, dx, dy)
    return (along >= MIN_RELATION_OFFSET) & (along >= across)


class PromptError(ValueError):
    """A prompt that is not a sentence of the ShapesWorld grammar."""


@dataclass(frozen=True)
class ObjectSpec:
    shape: str
    color: str | None = None

    @property
    def phrase(self) -> str:
        return " ".join(["a", *([self.color] if self.color else []), self.shape])


@dataclass(frozen=True)
class Prompt:
    """A parsed prompt; counting prompts hold `number` copies of a colourless ObjectSpec."""

    category: str
    objects: tuple[ObjectSpec, ...]
    relation: str | None = None
    number: int | None = None

    @property
    def text(self) -> str:
        if self.category == "counting":
            return f"{_NUMBER_WORDS[self.number]} {PLURALS[self.objects[0].shape]}"
        joiner = f" {self.relation} " if self.relation else " and "
        return joiner.join(spec.phrase for spec in self.objects)


def _check_format(text: str) -> None:
    if not isinstance(text, str):
        raise PromptError(f"prompt must be a str, got {type(text).__name__}")
    if not text:
        raise PromptError("empty prompt")
    if text != text.strip():
        raise PromptError(f"leading or trailing whitespace in {text!r}")
    for ch in text:
        if ch.isupper():
            raise PromptError(f"upper case letter {ch!r} in {text!r}: prompts are lower case")
        if not ("a" <= ch <= "z" or ch == " "):
            raise PromptError(f"character {ch!r} not allowed in {text!r}: no punctuation, words a-z only")
    if "  " in text:
        raise PromptError(f"double space in {text!r}: words are separated by single spaces")


class _Reader:
    """Cursor over a prompt's words that raises template errors naming where it failed."""

    def __init__(self, text: str):
        self.text, self.words, self.pos = text, text.split(" "), 0
        for i, word in enumerate(self.words):
            if word not in VOCABULARY:
                raise PromptError(f"unknown word {word!r} at position {i + 1} in {text!r}")

    def fail(self, expected: str) -> PromptError:
        got = repr(self.words[self.pos]) if self.pos < len(self.words) else "end of prompt"
        return PromptError(f"{self.text!r} does not match any ShapesWorld template: "
                           f"expected {expected} at position {self.pos + 1}, got {got}")

    def take(self, allowed, expected: str) -> str:
        if self.pos >= len(self.words) or self.words[self.pos] not in allowed:
            raise self.fail(expected)
        self.pos += 1
        return self.words[self.pos - 1]

    def take_phrase(self, phrase: str) -> bool:
        n = len(phrase.split())
        if self.words[self.pos:self.pos + n] == phrase.split():
            self.pos += n
            return True
        return False

    def noun_phrase(self) -> ObjectSpec:
        self.take(("a",), "'a'")
        color = self.words[self.pos] if self.pos < len(self.words) and self.words[self.pos] in COLORS else None
        self.pos += color is not None
        return ObjectSpec(self.take(SHAPES, "a singular shape"), color)

    def end(self) -> None:
        if self.pos != len(self.words):
            raise self.fail("end of prompt")


def parse_prompt(text: str) -> Prompt:
    """Parse one template sentence; raises PromptError naming what is wrong."""
    _check_format(text)
    r = _Reader(text)
    if r.words[0] in NUMBERS:
        number = NUMBERS[r.take(NUMBERS, "a number")]
        shape = _SINGULAR[r.take(_SINGULAR, "a plural shape")]
        r.end()
        return Prompt("counting", (ObjectSpec(shape),) * number, number=number)
    first = r.noun_phrase()
    if r.pos == len(r.words):
        return Prompt("colors" if first.color else "single_object", (first,))
    relation = next((rel for rel in RELATIONS if r.take_phrase(rel)), None)
    if relation is None:
        r.take(("and",), "'and' or a relation")
    second = r.noun_phrase()
    r.end()
    if relation is not None:
        category = "position"
        if first.color or second.color:
            raise PromptError(f"{text!r} does not match any ShapesWorld template: position prompts name no colours")
    elif (first.color is None) != (second.color is None):
        raise PromptError(f"{text!r} does not match any ShapesWorld template: colour named for one object only")
    else:
        category = "color_attr" if first.color else "two_object"
    if first.shape == second.shape:
        raise PromptError(f"{category} prompt names the same shape twice ({first.shape!r}): {text!r}")
    if first.color is not None and first.color == second.color:
        raise PromptError(f"{category} prompt names the same colour twice ({first.color!r}): {text!r}")
    return Prompt(category, (first, second), relation=relation)


@lru_cache(maxsize=None)
def _prompts_of(category: str) -> tuple[Prompt, ...]:
    shape_pairs = list(itertools.permutations(SHAPES, 2))
    if category == "single_object":
        return tuple(Prompt(category, (ObjectSpec(s),)) for s in SHAPES)
    if category == "two_object":
        return tuple(Prompt(category, (ObjectSpec(a), ObjectSpec(b))) for a, b in shape_pairs)
    if category == "counting":
        return tuple(Prompt(category, (ObjectSpec(s),) * n, number=n) for n in NUMBERS.values() for s in SHAPES)
    if category == "colors":
        return tuple(Prompt(category, (ObjectSpec(s, c),)) for c in COLORS for s in SHAPES)
    if category == "position":
        return tuple(Prompt(category, (ObjectSpec(a), ObjectSpec(b)), relation=rel)
                     for rel in RELATIONS for a, b in shape_pairs)
    if category == "color_attr":
        return tuple(Prompt(category, (ObjectSpec(a, ca), ObjectSpec(b, cb)))
                     for a, b in shape_pairs for ca, cb in itertools.permutations(COLORS, 2))
    raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")


def enumerate_prompts(category: str) -> list[Prompt]:
    """Every distinct prompt of `category`, in a fixed order."""
    return list(_prompts_of(category))


class PromptSampler:
    """Draws a category by weight, then its template slots uniformly under the constraints.

    Uniform slots under the constraints is the same as uniform over the category's
    distinct prompts, which is how it is drawn.
    """

    def __init__(self, weights: Mapping[str, float] | None = None):
        weights = dict.fromkeys(CATEGORIES, 1.0) if weights is None else dict(weights)
        for name, w in weights.items():
            if name not in CATEGORIES:
                raise ValueError(f"unknown category {name!r} in sampler weights; expected one of {CATEGORIES}")
            if not w >= 0:
                raise ValueError(f"weight of category {name!r} must be >= 0, got {w}")
        total = sum(weights.values())
        if total <= 0:
            raise ValueError(f"sampler weights must not all be zero: {weights}")
        self.categories = tuple(c for c in CATEGORIES if weights.get(c, 0) > 0)
        self.probs = np.array([weights[c] / total for c in self.categories])

    def sample(self, rng: np.random.Generator) -> Prompt:
        prompts = _prompts_of(self.categories[rng.choice(len(self.categories), p=self.probs)])
        return prompts[rng.integers(len(prompts))]

    def sample_many(self, n: int, rng: np.random.Generator) -> list[Prompt]:
        return [self.sample(rng) for _ in range(n)]
