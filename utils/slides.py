"""Lecture slides: the rules every notebook's slide metadata follows, a fixer, and offline decks.

    python -m utils.slides check                        # every chapter; exit 1 on a broken rule
    python -m utils.slides fix chapters/01_alexnet.ipynb   # set the slide metadata by the rules
    python -m utils.slides deck --profile smoke         # build/slides/NN_name.slides.html
    python -m utils.slides deck --profile quick 01 03   # these chapters, from reference/quick-cpu/

The rules (``problems`` checks them, ``fix`` applies them):

* every code cell that trains (calls ``fit``, or runs a loop with ``backward()`` and ``step()``)
  or defines a model (``class ...(nn.Module)`` or a ``# @save`` cell) is on a slide: its
  ``slide_type`` is not ``skip`` or ``notes``;
* no slide holds more than a screenful, ``SCREEN_LINES`` rendered lines of a 1280x720 reveal.js
  slide (measured in Chromium, see ``SCREEN_LINES``): code lines count one each, prose lines by
  their wrapped length and font, a figure a code cell draws counts ``FIGURE_LINES``. A slide that
  holds a single cell is exempt (no metadata can split a cell); the deck scrolls it.

``fix`` decides from the cells' sources only, so it is deterministic and idempotent: a heading
``#``/``##`` starts a slide, ``###`` a subslide; the setup cell is skipped; prose that does not fit
a screen by itself becomes speaker notes; a cell that would overflow the current slide starts a
subslide; every other cell continues its slide (``-``), or stays a ``fragment`` where the author
made it one. Sources are never touched.

``deck`` exports a reveal.js deck with nbconvert's SlidesExporter through the template in
``book/reveal_offline`` from the executed notebook: the chapter's reference run (outputs merged into
the current notebook), else the site's jupyter-cache entry (``python -m utils.site build``), else
a fresh execution under the profile. reveal.js, require.js, jQuery and MathJax are copied from
``node_modules`` (``npm ci``) next to the decks, so a deck opens without a network.
"""
from __future__ import annotations

import argparse
import math
import re
import shutil
import sys
from pathlib import Path

from .config import REPO_ROOT

CHAPTERS = REPO_ROOT / "chapters"
BUILD = REPO_ROOT / "build"
NODE = REPO_ROOT / "node_modules"
TEMPLATE = REPO_ROOT / "book" / "reveal_offline"

# Measured in Chromium with a 1280x720 viewport on a deck exported by `deck` (reveal.js 5,
# nbconvert's 960x700 slide scaled by 0.79... to the window; code 19px on a 22.8px line,
# prose 20px on a 26px line, 629px wide): 30 code lines of a lone code cell are visible
# (tests/test_browser.py::test_slide_screenful_measure, screenshot build/screenshots/
# slides-measure.png); SCREEN_LINES keeps 3 of them for the cell's padding and the slide
# margin. A prose line is 26/22.8 = 1.1 code lines high and holds about 62 characters; code
# lines never wrap (the cell scrolls sideways); a training-curve figure (851x311 px) is 14
# code lines high, FIGURE_LINES rounds up.
SCREEN_LINES = 27
PROSE_CHARS = 62
PROSE_LINE = 1.1
FIGURE_LINES = 15
CELL_GAP = 0.5        # the padding between two cells, in code lines

ON_SLIDE = ("slide", "subslide", "fragment", "-")
HIDDEN = ("skip", "notes")
SETUP_MARKER = "# Setup (the same in every chapter)"

TRAINS = re.compile(r"(?<![\w.])(?:train\.)?fit\(|\.fit\(")
LOOP = re.compile(r"\.backward\(\)")
STEP = re.compile(r"\.step\(\)")
MODEL = re.compile(r"^\s*class\s+\w+\s*\([^)]*\bnn\.Module\b", re.M)
FIGURE = re.compile(r"(?<![\w.])(?:plot\.\w+|\w+\.plot|plt\.\w+|fit|train\.fit|show_images|imshow)\(")


def source(cell) -> str:
    text = cell.get("source", "")
    return "".join(text) if isinstance(text, list) else text


def slide_type(cell) -> str:
    return cell.get("metadata", {}).get("slideshow", {}).get("slide_type", "-") or "-"


def trains(cell) -> bool:
    text = source(cell)
    return bool(TRAINS.search(text) or (LOOP.search(text) and STEP.search(text) and re.search(r"\bfor\b", text)))


def defines_model(cell) -> bool:
    text = source(cell)
    return text.lstrip().startswith("# @save") or bool(MODEL.search(text))


def required(cell) -> bool:
    """Cells a lecture must show: training and model definitions."""
    return cell.get("cell_type") == "code" and (trains(cell) or defines_model(cell))


def heading_level(cell) -> int:
    """1 for ``# ...``, 2 for ``## ...`` on the first line of a markdown cell, 0 for none."""
    if cell.get("cell_type") != "markdown":
        return 0
    match = re.match(r"(#{1,6})\s", source(cell).lstrip())
    return len(match.group(1)) if match else 0


def lines(cell) -> float:
    """The cell's height on a slide, in code lines."""
    text = source(cell)
    if cell.get("cell_type") == "code":
        height = len(text.splitlines() or [""])
        return height + CELL_GAP + (FIGURE_LINES if FIGURE.search(text) else 0)
    height, fence = 0.0, False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = not fence
            height += 0.5
        elif fence:
            height += 1
        elif not stripped:
            height += 0.5 * PROSE_LINE
        elif re.match(r"#{1,6}\s", stripped):
            height += {1: 2.4, 2: 2.0}.get(len(stripped) - len(stripped.lstrip("#")), 1.6)
        elif stripped.startswith("!["):
            height += FIGURE_LINES
        elif stripped.startswith("|"):
            height += PROSE_LINE * (0 if set(stripped) <= set("|-: ") else 1)
        else:
            height += PROSE_LINE * max(1, math.ceil(len(stripped) / PROSE_CHARS))
    return height + CELL_GAP


def slides(cells) -> list[list[int]]:
    """The indices of the cells shown on each slide (slide and subslide both start one)."""
    groups = []
    for i, cell in enumerate(cells):
        kind = slide_type(cell)
        if kind in HIDDEN:
            continue
        if kind in ("slide", "subslide") or not groups:
            groups.append([])
        groups[-1].append(i)
    return groups


def problems(notebook) -> list[str]:
    """Every broken rule, as sentences (empty: the notebook follows them)."""
    cells = notebook["cells"]
    found = []
    for i, cell in enumerate(cells):
        kind = slide_type(cell)
        if "slideshow" not in cell.get("metadata", {}):
            found.append(f"cell {i}: no slideshow metadata")
        elif kind not in ON_SLIDE + HIDDEN:
            found.append(f"cell {i}: unknown slide_type {kind!r}")
        if required(cell) and kind in HIDDEN:
            what = "trains" if trains(cell) else "defines a model"
            found.append(f"cell {i} {what} but is {kind!r}: a lecture shows it")
    for group in slides(cells):
        height = sum(lines(cells[i]) for i in group)
        if height > SCREEN_LINES and len(group) > 1:
            found.append(f"slide at cell {group[0]} (cells {group[0]}-{group[-1]}) holds {height:.0f} lines, "
                         f"more than a screen ({SCREEN_LINES})")
    return found


def decide(cells) -> list[str]:
    """The slide_type of every cell by the rules, from the sources (and fragments) alone."""
    kinds, used = [], 0.0
    for i, cell in enumerate(cells):
        height = lines(cell)
        level = heading_level(cell)
        if cell.get("cell_type") == "code" and source(cell).startswith(SETUP_MARKER):
            kinds.append("skip")
            continue
        if not source(cell).strip() and cell.get("cell_type") == "markdown":
            kinds.append("skip")
            continue
        if level in (1, 2) or not kinds or all(k in HIDDEN for k in kinds):
            kind = "slide"
        elif level >= 3:
            kind = "subslide"
        elif cell.get("cell_type") == "markdown" and height > SCREEN_LINES:
            kinds.append("notes")   # a page of prose: the lecturer's notes, not a slide
            continue
        elif used + height > SCREEN_LINES:
            kind = "subslide"
        else:
            kind = "fragment" if slide_type(cell) == "fragment" else "-"
        used = height if kind in ("slide", "subslide") else used + height
        kinds.append(kind)
    return kinds


def fix(notebook):
    """Set every cell's slide_type by the rules (in place; returns the notebook)."""
    for cell, kind in zip(notebook["cells"], decide(notebook["cells"])):
        cell.setdefault("metadata", {}).setdefault("slideshow", {})["slide_type"] = kind
    return notebook


def fix_file(path: Path) -> bool:
    """Fix one notebook file; True if it changed. Writes the repository's JSON format."""
    import json

    path = Path(path)
    text = path.read_text()
    notebook = json.loads(text)
    new = json.dumps(fix(notebook), indent=1, ensure_ascii=False) + "\n"
    if new != text:
        path.write_text(new)
    return new != text


# ------------------------------------------------------------------ decks

def executed_notebook(chapter: str, profile: str, log=print):
    """The chapter with outputs: reference run, site cache, or a fresh execution."""
    import nbformat

    from . import reference, site

    current = nbformat.read(CHAPTERS / f"{chapter}.ipynb", as_version=4)
    folder = site.reference_folder(profile)
    if folder is not None and (folder / chapter / "notebook.ipynb").is_file():
        executed = nbformat.read(folder / chapter / "notebook.ipynb", as_version=4)
        codes = [c for c in current.cells if c.cell_type == "code"]
        done = [c for c in executed.cells if c.cell_type == "code"]
        if [c.source for c in codes] == [c.source for c in done]:
            for cell, ran in zip(codes, done):
                cell.outputs, cell.execution_count = ran.outputs, ran.execution_count
            log(f"{chapter}: outputs of {folder / chapter / 'notebook.ipynb'}")
            return current
        log(f"{chapter}: the reference run's code differs from the chapter's; the deck shows the reference as run")
        return executed
    cache_dir = BUILD / ".jupyter_cache" / profile
    if cache_dir.is_dir():
        from jupyter_cache import get_cache

        try:
            _, merged = get_cache(cache_dir).merge_match_into_notebook(current)
            log(f"{chapter}: outputs from the site's execution cache {cache_dir}")
            return merged
        except KeyError:
            pass
    out = BUILD / "slides-runs" / profile
    log(f"{chapter}: executing under {profile} into {out}")
    _, runs = reference.run_all(profile, [chapter], out=out, log=log)
    if not runs[0].ok:
        raise RuntimeError(f"{chapter} failed under {profile}: {runs[0].error}")
    executed = nbformat.read(out / chapter / "notebook.ipynb", as_version=4)
    for cell, ran in zip(current.cells, executed.cells):
        if cell.cell_type == "code":
            cell.outputs = ran.outputs
    return current


def copy_assets(out: Path) -> None:
    """reveal.js, require.js, jQuery and MathJax next to the decks."""
    missing = [p for p in ("reveal.js", "requirejs", "jquery", "mathjax") if not (NODE / p).is_dir()]
    if missing:
        raise RuntimeError(f"node_modules lacks {', '.join(missing)}: run `npm ci` at the repository root")
    for name, source_dir in (("reveal.js/dist", NODE / "reveal.js" / "dist"),
                             ("reveal.js/plugin", NODE / "reveal.js" / "plugin"),
                             ("assets/mathjax", NODE / "mathjax" / "es5")):
        target = out / name
        if not target.is_dir():   # only the white theme: the others @import fonts from Google
            shutil.copytree(source_dir, target, ignore=lambda folder, names: [
                n for n in names if folder.endswith("theme") and n.endswith(".css") and n != "white.css"])
    (out / "assets").mkdir(parents=True, exist_ok=True)
    shutil.copy2(NODE / "requirejs" / "require.js", out / "assets" / "require.js")
    shutil.copy2(NODE / "jquery" / "dist" / "jquery.min.js", out / "assets" / "jquery.min.js")


def exporter():
    from nbconvert import SlidesExporter

    return SlidesExporter(template_file="index.html.j2", extra_template_basedirs=[str(TEMPLATE.parent)],
                          template_name=TEMPLATE.name,
                          reveal_url_prefix="reveal.js", reveal_scroll=True, reveal_theme="white",
                          require_js_url="assets/require.js", jquery_url="assets/jquery.min.js",
                          mathjax_url="assets/mathjax/tex-chtml.js")


def deck(chapter: str, profile: str = "quick", out: Path | None = None, notebook=None, log=print) -> Path:
    """Export ``chapter`` as ``<out>/<chapter>.slides.html``; returns its path."""
    out = Path(out or BUILD / "slides")
    out.mkdir(parents=True, exist_ok=True)
    copy_assets(out)
    from .site import badge_to_link

    notebook = notebook if notebook is not None else executed_notebook(chapter, profile, log)
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            cell.source = badge_to_link(cell.source)   # the badge image is on the network
    body, _ = exporter().from_notebook_node(notebook, resources={"metadata": {"name": chapter}})
    path = out / f"{chapter}.slides.html"
    path.write_text(body)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="report broken slide rules")
    check.add_argument("notebooks", nargs="*", type=Path)
    fixing = commands.add_parser("fix", help="set slide metadata by the rules")
    fixing.add_argument("notebooks", nargs="+", type=Path)
    make = commands.add_parser("deck", help="export reveal.js decks")
    make.add_argument("chapters", nargs="*", help="chapter names or prefixes (default: all)")
    make.add_argument("--profile", default="quick")
    make.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "check":
        import json

        bad = 0
        for path in args.notebooks or sorted(CHAPTERS.glob("[0-9][0-9]_*.ipynb")):
            found = problems(json.loads(Path(path).read_text()))
            bad += bool(found)
            for line in found:
                print(f"{path}: {line}")
        return 1 if bad else 0
    if args.command == "fix":
        for path in args.notebooks:
            print(f"{path}: {'fixed' if fix_file(path) else 'already follows the rules'}")
        return 0
    from . import reference

    for chapter in reference.resolve(args.chapters):
        print(f"deck: {deck(chapter, args.profile, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
