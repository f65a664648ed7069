"""The course site (utils.site): its source folder, the warning filter, the offline check, and a
real Jupyter Book build of a one-page book that fails on a missing image."""
from __future__ import annotations

import json
import os

import nbformat
import pytest

from utils import site
from utils.config import REPO_ROOT


def notebook(*cells):
    nb = nbformat.v4.new_notebook(cells=list(cells))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for cell in nb.cells:
        cell.metadata["slideshow"] = {"slide_type": "-"}
    return nb


def test_broken_page_warnings_keep_everything_but_the_harmless():
    log = "\n".join([
        "reading sources... [100%] chapters/01_alexnet",
        "/src/chapters/01.ipynb:5: WARNING: image file not readable: chapters/missing.png [image.not_readable]",
        "/src/intro.md:3: WARNING: undefined label: 'nowhere' [ref.ref]",
        "/src/chapters/02.ipynb: WARNING: Executing notebook failed: CellExecutionError [mystnb.exec]",
        "[IPKernelApp] WARNING | Kernel is running over TCP without encryption. All communication ...",
        "build succeeded."])
    found = site.broken_page_warnings(log)
    assert len(found) == 3
    assert "image file not readable" in found[0] and "undefined label" in found[1] and "Executing" in found[2]


def test_external_assets_are_found(tmp_path):
    (tmp_path / "page.html").write_text(
        '<script src="_static/local.js"></script><script src="https://cdn.example/x.js"></script>'
        '<link rel="stylesheet" href="//cdn.example/x.css"><a href="https://example.org">a link is fine</a>'
        '<img src="https://example.org/badge.svg">')
    (tmp_path / "style.css").write_text('@import url("https://fonts.example/f.css"); body {}')
    found = site.external_assets(tmp_path)
    assert found["page.html"] == ["<script> https://cdn.example/x.js", "<link> //cdn.example/x.css",
                                  "<img> https://example.org/badge.svg"]
    assert found["style.css"] == ["https://fonts.example/f.css"]


def test_badge_becomes_a_text_link():
    badge = ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
             "(https://colab.research.google.com/github/o/r/blob/main/chapters/01_alexnet.ipynb)")
    assert site.badge_to_link(badge) == \
        "[Open in Colab](https://colab.research.google.com/github/o/r/blob/main/chapters/01_alexnet.ipynb)"


def test_reference_outputs_are_used_and_named(tmp_path):
    """A chapter with a reference run is shown as run (never executed) and says where it ran."""
    if not site.MATHJAX.is_dir():
        pytest.skip("node_modules/mathjax is missing: run npm ci at the repository root")
    ref = tmp_path / "reference" / "quick-cpu"
    (ref / "01_alexnet").mkdir(parents=True)
    ran = notebook(nbformat.v4.new_markdown_cell("# 1. Title"), nbformat.v4.new_code_cell("print(1)"))
    ran.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    nbformat.write(ran, ref / "01_alexnet" / "notebook.ipynb")
    (ref / "machine.json").write_text(json.dumps({"cpu": "Test CPU", "cores": 2, "gpu": None, "torch": "2.5",
                                                   "date": "2026-12-01"}))
    (ref / "01_alexnet" / "run.json").write_text(json.dumps({"finished": "2026-12-01T10:00:00+00:00"}))
    assert site.reference_folder("quick", tmp_path / "reference") == ref
    assert site.reference_folder("full", tmp_path / "reference") is None
    src = tmp_path / "src"
    pages = site.prepare("quick", src, reference=ref, notebooks=[REPO_ROOT / "chapters" / "01_alexnet.ipynb"],
                         cache=tmp_path / "cache")
    assert [(p.chapter, p.source) for p in pages] == [("01_alexnet", "reference")]
    page = nbformat.read(src / "chapters" / "01_alexnet.ipynb", as_version=4)
    assert page.metadata["mystnb"] == {"execution_mode": "off"}
    assert page.cells[1].source.startswith(":::{note}") and "**quick**" in page.cells[1].source
    assert "Test CPU, 2 cores, CPU only" in page.cells[1].source
    assert page.cells[2].outputs[0]["text"] == "1\n"
    assert (src / "_assets" / "mathjax" / "tex-chtml.js").is_file()
    assert "colab-badge.svg" not in (src / "intro.md").read_text()
    toc = (src / "_toc.yml").read_text()
    assert "chapters/01_alexnet" in toc and "references" in toc


@pytest.fixture
def tiny_book(tmp_path, monkeypatch):
    """A one-chapter book whose notebook runs in a second (executed by myst-nb, cached)."""
    pytest.importorskip("jupyter_book", reason="jupyter-book is not installed (requirements.txt)")
    if not site.MATHJAX.is_dir():
        pytest.skip("node_modules/mathjax is missing: npm ci")
    monkeypatch.setenv("CNN_SITE_RESULTS", str(tmp_path / "results"))

    def build(*cells):
        path = tmp_path / "01_tiny.ipynb"
        nbformat.write(notebook(nbformat.v4.new_markdown_cell("# 1. Tiny\n\nThe math $a^2 + b^2$."), *cells), path)
        return site.build("smoke", out=tmp_path / "out", src=tmp_path / "src", notebooks=[path],
                          cache=tmp_path / "cache", log=lambda *a: None)
    return build


@pytest.mark.skipif(os.environ.get("CNN_SITE_TESTS") == "0", reason="CNN_SITE_TESTS=0")
def test_a_tiny_book_builds_and_a_missing_image_fails_it(tiny_book):
    html, problems = tiny_book(nbformat.v4.new_code_cell("print(6 * 7)"))
    assert problems == [], problems
    page = (html / "chapters" / "01_tiny.html").read_text()
    assert "42" in page and "_static/mathjax/tex-chtml.js" in page and "profile" in page
    assert site.external_assets(html) == {}

    html, problems = tiny_book(nbformat.v4.new_markdown_cell("![a figure](figures/missing.png)"),
                               nbformat.v4.new_code_cell("raise ValueError('broken cell')"))
    assert any("missing.png" in p for p in problems), problems
    assert any("Executing notebook failed" in p or "CellExecutionError" in p for p in problems), problems
