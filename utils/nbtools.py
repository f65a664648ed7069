"""Notebook housekeeping: the shared setup cell, the Colab badge, output stripping.

    python -m utils.nbtools clean chapters/*.ipynb     # strip outputs (keeps NBVAL_CHECK_OUTPUT cells')
    python -m utils.nbtools run chapters/01_alexnet.ipynb  # execute under CNN_PROFILE=smoke, then clean
    python -m utils.nbtools check                      # what tests/test_notebooks.py checks
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat

from .config import REPO_ROOT, REPO_URL

CHECK_OUTPUT = "# NBVAL_CHECK_OUTPUT"
REPO_PATH = REPO_URL.removeprefix("https://github.com/")

SETUP_CELL = f'''\
# Setup (the same in every chapter): make the repository's `utils` importable.
# On Colab it fetches the repository and installs only what Colab lacks.
import importlib.util, os, pathlib, subprocess, sys

REPO_URL = "{REPO_URL}"
ROOT = next((folder for folder in [pathlib.Path.cwd(), *pathlib.Path.cwd().parents]
             if (folder / "utils" / "config.py").is_file()), None)
if ROOT is None and "google.colab" in sys.modules:
    ROOT = pathlib.Path("/content") / REPO_URL.rsplit("/", 1)[-1]
    if not ROOT.exists():
        subprocess.run(["git", "clone", "--depth=1", REPO_URL, str(ROOT)], check=True)
    missing = [name for name in ("torch", "torchvision", "matplotlib", "tqdm", "timm")
               if importlib.util.find_spec(name) is None]
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)
    os.chdir(ROOT / "chapters")
if ROOT is None:
    raise RuntimeError("Cannot find the repository's utils/ folder. Start Jupyter inside a clone "
                       f"of {{REPO_URL}} (see its README), or open this notebook on Colab.")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# Colab wipes /content when it recycles a runtime; to keep checkpoints and results on Drive, uncomment:
# from google.colab import drive; drive.mount("/content/drive"); os.environ["CNN_RESULTS_DIR"] = "/content/drive/MyDrive/modern-cnns-results"
from utils import config
config.describe()'''


def colab_url(notebook_name: str) -> str:
    return f"https://colab.research.google.com/github/{REPO_PATH}/blob/main/chapters/{notebook_name}"


def colab_badge(notebook_name: str) -> str:
    return (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"({colab_url(notebook_name)})")


def is_checked(cell) -> bool:
    return cell.cell_type == "code" and cell.source.lstrip().startswith(CHECK_OUTPUT)


def clean(notebook: nbformat.NotebookNode) -> bool:
    """Strip outputs and execution counts except from ``# NBVAL_CHECK_OUTPUT`` cells.

    Checked cells keep their outputs and get a count equal to their position among the
    code cells: nbval refuses a cell with outputs but no count ("unrun reference cell"),
    and a count that depends only on the position keeps the diffs of a rerun empty.
    """
    changed = False
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    for number, cell in enumerate(code_cells, start=1):
        if not is_checked(cell):
            if cell.outputs or cell.execution_count is not None:
                changed = True
            cell.outputs, cell.execution_count = [], None
        else:
            for output in cell.outputs:
                if "execution_count" in output and output["execution_count"] != number:
                    output["execution_count"] = number
                    changed = True
            if cell.execution_count != number:
                cell.execution_count = number
                changed = True
        for key in ("execution", "collapsed", "scrolled"):
            if key in cell.metadata:
                del cell.metadata[key]
                changed = True
    return changed


def problems(path: Path) -> list[str]:
    """What is wrong with one chapter notebook's housekeeping (empty when all is well)."""
    notebook = nbformat.read(path, as_version=4)
    found = []
    code = [c for c in notebook.cells if c.cell_type == "code"]
    if not code or code[0].source != SETUP_CELL:
        found.append("its first code cell is not the shared setup cell (utils.nbtools.SETUP_CELL)")
    if not notebook.cells or colab_badge(path.name) not in notebook.cells[0].source:
        found.append(f"its first cell lacks the Colab badge {colab_badge(path.name)}")
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code" and not is_checked(cell) and (cell.outputs or cell.execution_count):
            found.append(f"cell {index} has output but no {CHECK_OUTPUT} (run python -m utils.nbtools clean)")
        if is_checked(cell) and not cell.outputs:
            found.append(f"cell {index} is {CHECK_OUTPUT} but has no committed output")
        if is_checked(cell) and cell.execution_count is None:
            found.append(f"cell {index} is {CHECK_OUTPUT} but has no execution count, which nbval "
                         "rejects (run python -m utils.nbtools clean)")
    return found


def run(path: Path, timeout: int = 600) -> float:
    """Execute a notebook in place under ``CNN_PROFILE=smoke`` (unless set), then clean it."""
    from nbclient import NotebookClient

    os.environ.setdefault("CNN_PROFILE", "smoke")
    notebook = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    seconds = time.perf_counter() - start
    clean(notebook)
    nbformat.write(notebook, path)
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="notebook housekeeping")
    parser.add_argument("command", choices=["clean", "run", "check"])
    parser.add_argument("notebooks", nargs="*", type=Path)
    args = parser.parse_args(argv)
    paths = args.notebooks or sorted((REPO_ROOT / "chapters").glob("[0-9][0-9]_*.ipynb"))
    status = 0
    for path in paths:
        if args.command == "clean":
            notebook = nbformat.read(path, as_version=4)
            if clean(notebook):
                nbformat.write(notebook, path)
                print(f"cleaned {path}")
        elif args.command == "run":
            print(f"{path}: ran in {run(path):.1f} s (CNN_PROFILE={os.environ['CNN_PROFILE']})")
        else:
            for problem in problems(path):
                print(f"{path}: {problem}")
                status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
