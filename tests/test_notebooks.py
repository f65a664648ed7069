"""Housekeeping of the chapter notebooks and the files that describe the environment."""
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from utils import nbtools
from utils.config import REPO_ROOT, REPO_URL

NOTEBOOKS = sorted((REPO_ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))


def test_there_are_chapters():
    assert NOTEBOOKS, "no chapter notebooks found"
    assert NOTEBOOKS[0].name == "01_alexnet.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_housekeeping(path):
    """Shared setup cell first, Colab badge pointing at REPO_URL, outputs only in checked cells."""
    assert nbtools.problems(path) == []


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_colab_link_uses_the_one_repository_url(path):
    text = path.read_text()
    for link in re.findall(r"colab\.research\.google\.com/github/([^)\s\"]+)", text):
        assert link.startswith(REPO_URL.removeprefix("https://github.com/") + "/blob/main/chapters/")
    assert f'REPO_URL = \\"{REPO_URL}\\"' in text


def test_setup_cell_embeds_the_repository_url():
    assert f'REPO_URL = "{REPO_URL}"' in nbtools.SETUP_CELL


def test_readme_badges_and_clone_url_match():
    readme = (REPO_ROOT / "README.md").read_text()
    assert f"git clone {REPO_URL}" in readme
    for path in NOTEBOOKS:
        assert nbtools.colab_url(path.name) in readme, f"README lacks the Colab link of {path.name}"


def test_clean_strips_unchecked_outputs_only():
    notebook = nbformat.v4.new_notebook()
    checked = nbformat.v4.new_code_cell("# NBVAL_CHECK_OUTPUT\nprint(1)", execution_count=3,
                                        outputs=[nbformat.v4.new_output("stream", text="1\n")])
    loose = nbformat.v4.new_code_cell("print(2)", execution_count=4,
                                      outputs=[nbformat.v4.new_output("stream", text="2\n")])
    notebook.cells = [checked, loose]
    assert nbtools.clean(notebook)
    assert checked.outputs and not loose.outputs
    # nbval needs a count on a cell with reference output; the position keeps it stable
    assert checked.execution_count == 1 and loose.execution_count is None
    assert not nbtools.clean(notebook)


def _requirement_names(lines):
    names = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.append(re.split(r"[<>=!~\[ ;]", line, maxsplit=1)[0].lower())
    return names


def test_environment_yml_matches_requirements():
    environment = yaml.safe_load((REPO_ROOT / "environment.yml").read_text())
    required = set(_requirement_names((REPO_ROOT / "requirements.txt").read_text().splitlines()))
    listed = set()
    for entry in environment["dependencies"]:
        if isinstance(entry, dict):
            for pip_line in entry["pip"]:
                if pip_line.strip() == "-r requirements.txt":
                    listed |= required
                else:
                    listed |= set(_requirement_names([pip_line]))
        else:
            listed |= set(_requirement_names([entry]))
    assert "python" in listed
    assert required <= listed, f"environment.yml lacks {sorted(required - listed)}"


def test_requirements_are_ranges_that_admit_this_machine():
    text = (REPO_ROOT / "requirements.txt").read_text()
    assert "==" not in text, "use ranges, not pins"
    assert "d2l" not in _requirement_names(text.splitlines()), "d2l stays optional"


# A lesson speaks about its subject only: not about the notes it was written from, the
# machine or date of a run, or what was tried while writing it.
WORKING_NOTES = re.compile(
    r"seed's|\bthe seeds\b|lecture(?!r)|transcript|source article|December 2026|EPYC|2-core"
    r"|this environment|no GPU was|we tried|our trials?\b|REFERENCE\.md", re.IGNORECASE)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_lessons_contain_no_working_notes(path):
    notebook = nbformat.read(path, as_version=4)
    found = [f"cell {index}: {match.group(0)!r}" for index, cell in enumerate(notebook.cells)
             for match in WORKING_NOTES.finditer(cell.source)]
    assert not found, f"{path.name} speaks about how it was made: {found}"


# Chapters whose model cells are still longer than 25 lines (being split into block, builder
# and factories). Strict: once a chapter complies, this test fails until it leaves the list.
LONG_CELLS_PENDING: set[str] = set()  # chapters whose cells are not split yet (strict xfail)


@pytest.mark.parametrize("path", [
    pytest.param(p, marks=pytest.mark.xfail(strict=True, reason="cells not split yet"))
    if p.name in LONG_CELLS_PENDING else p for p in NOTEBOOKS], ids=lambda p: p.name)
def test_code_cells_are_at_most_25_lines(path):
    notebook = nbformat.read(path, as_version=4)
    long = [index for index, cell in enumerate(notebook.cells)
            if cell.cell_type == "code" and len(cell.source.splitlines()) > 25]
    assert not long, f"{path.name}: code cells over 25 lines: {long}"
