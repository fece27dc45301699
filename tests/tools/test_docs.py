"""The README and docs/ point at things that exist: every relative markdown link resolves (to a file,
or a directory, of this repository), every `configs/*.yaml` they name is a recipe here, and the
README stays a front page (at most 15 KB) that states the test command CI runs (`make test`)."""
from __future__ import annotations

import re

import pytest

from tests.helpers import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")  # [text](target "title"), images too
CONFIG = re.compile(r"configs/[\w./-]*?\.yaml")


def _prose(text: str) -> str:
    """The text outside fenced code blocks (a link inside one is code, not a link)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def _relative_links(text: str) -> list[str]:
    return [t for t in LINK.findall(_prose(text)) if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(doc):
    missing = []
    for target in _relative_links(doc.read_text()):
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        if not path.exists() or not path.is_relative_to(REPO):
            missing.append(target)
    assert not missing, f"{doc.relative_to(REPO)} links to what does not exist here: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_named_recipe_exists(doc):
    missing = sorted({c for c in CONFIG.findall(doc.read_text()) if not (REPO / c).is_file()})
    assert not missing, f"{doc.relative_to(REPO)} names recipes that do not exist: {missing}"


def test_the_readme_is_a_front_page_that_links_every_doc():
    readme = (REPO / "README.md").read_text()
    assert len(readme.encode()) <= 15 * 1024
    assert "make test" in readme and "make run" in readme  # .ci/run runs the README's test command
    linked = {(REPO / t.split("#", 1)[0]).resolve() for t in _relative_links(readme)}
    orphans = [str(d.relative_to(REPO)) for d in DOCS[1:] if d.resolve() not in linked]
    assert not orphans, f"docs the README does not link: {orphans}"


def test_the_checks_find_what_they_look_for(tmp_path):
    text = "[a](docs/x.md#y) [b](https://example.com) ![img](p.png) [c](#anchor)\n```\n[d](code.md)\n```\n`configs/shapes_cpu.yaml`"
    assert _relative_links(text) == ["docs/x.md#y", "p.png"]
    assert CONFIG.findall(text) == ["configs/shapes_cpu.yaml"]
    assert len(DOCS) > 5
