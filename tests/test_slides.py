"""Slide metadata rules (utils.slides): every chapter follows them, the fixer is deterministic,
idempotent and leaves sources alone, and the checker catches each broken rule."""
from __future__ import annotations

import copy
import json

import pytest

from utils import slides
from utils.config import REPO_ROOT

CHAPTERS = sorted((REPO_ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))
def load(path):
    return json.loads(path.read_text())


def cell(kind, text, slide="-"):
    c = {"cell_type": kind, "metadata": {"slideshow": {"slide_type": slide}}, "source": text}
    if kind == "code":
        c.update(outputs=[], execution_count=None)
    return c


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_chapter_follows_the_slide_rules(path):
    assert slides.problems(load(path)) == [], f"run python -m utils.slides fix {path.relative_to(REPO_ROOT)}"


@pytest.mark.parametrize("path", CHAPTERS, ids=[p.stem for p in CHAPTERS])
def test_fix_is_idempotent_and_keeps_sources(path):
    notebook = load(path)
    once = slides.fix(copy.deepcopy(notebook))
    twice = slides.fix(copy.deepcopy(once))
    assert once == twice
    assert [c["source"] for c in once["cells"]] == [c["source"] for c in notebook["cells"]]
    assert slides.problems(once) == []


def test_a_hidden_training_cell_is_reported():
    nb = {"cells": [cell("markdown", "# Title", "slide"), cell("code", "history = train.fit(net, data)", "skip")]}
    assert any("trains" in p for p in slides.problems(nb))
    nb["cells"][1] = cell("code", "class Net(nn.Module):\n    pass", "notes")
    assert any("defines a model" in p for p in slides.problems(nb))
    assert slides.problems(slides.fix(nb)) == []


def test_an_overfull_slide_is_reported_and_fixed():
    code = "\n".join(f"x{i} = {i}" for i in range(15))
    nb = {"cells": [cell("markdown", "## Section", "slide"), cell("code", code), cell("markdown", "Next."), cell("code", code)]}
    assert any("more than a screen" in p for p in slides.problems(nb))
    fixed = slides.fix(copy.deepcopy(nb))
    assert slides.problems(fixed) == []
    assert [slides.slide_type(c) for c in fixed["cells"]] == ["slide", "-", "-", "subslide"]


def test_fix_rules():
    long_prose = "\n".join(["A sentence of prose that goes on for a while, as prose does on a page."] * 30)
    nb = {"cells": [cell("markdown", "# Chapter"), cell("code", slides.SETUP_MARKER + "\nimport os"),
                    cell("markdown", "## 1.1 Section"), cell("markdown", long_prose),
                    cell("markdown", "### A detail"), cell("code", "x = 1", "fragment"), cell("code", "y = 2")]}
    assert slides.decide(nb["cells"]) == ["slide", "skip", "slide", "notes", "subslide", "fragment", "-"]


def test_missing_metadata_is_reported():
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": "# Title"}]}
    assert slides.problems(nb) == ["cell 0: no slideshow metadata"]


def test_deck_from_a_reference_run_loads_nothing_from_the_network(tmp_path, monkeypatch):
    """The deck takes the reference run's outputs, the current slide metadata, and local assets."""
    import nbformat

    from utils import reference, site

    if not (slides.NODE / "reveal.js").is_dir():
        pytest.skip("node_modules is missing: npm ci")
    root = tmp_path / "reference"
    (root / "quick-cpu" / "03_nin").mkdir(parents=True)
    (root / "quick-cpu" / "machine.json").write_text("{}")
    ran = nbformat.read(REPO_ROOT / "chapters" / "03_nin.ipynb", as_version=4)
    first = next(c for c in ran.cells if c.cell_type == "code" and slides.slide_type(c) not in slides.HIDDEN)
    first.outputs = [nbformat.v4.new_output("stream", name="stdout", text="from the reference run\n")]
    for c in ran.cells:
        c.metadata["slideshow"] = {"slide_type": "skip"}   # stale metadata: not used
    nbformat.write(ran, root / "quick-cpu" / "03_nin" / "notebook.ipynb")
    monkeypatch.setattr(reference, "REFERENCE_ROOT", root)
    notebook = slides.executed_notebook("03_nin", "quick", log=lambda *a: None)
    shown = next(c for c in notebook.cells if c.cell_type == "code" and slides.slide_type(c) not in slides.HIDDEN)
    assert shown.outputs[0]["text"] == "from the reference run\n"
    assert slides.problems(notebook) == []
    path = slides.deck("03_nin", out=tmp_path / "slides", notebook=notebook, log=lambda *a: None)
    assert (tmp_path / "slides" / "reveal.js" / "dist" / "reveal.js").is_file()
    page = path.read_text()
    assert "from the reference run" in page and 'src="assets/require.js"' in page
    assert site.external_assets(path.parent) == {}
