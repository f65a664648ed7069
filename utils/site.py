"""The course site: a static HTML book (Jupyter Book 1) of the chapters with every output shown.

    python -m utils.site build                    # profile quick: reference/quick-cpu/ outputs
    python -m utils.site build --profile smoke    # what CI builds (chapters executed, cached)
    python -m utils.site build --profile smoke --chapters 01 03   # only these chapters
    python -m utils.site check build/site/smoke/_build/html       # the offline check alone

A chapter's outputs come from its reference run (``reference/<profile>-<machine>/<chapter>/
notebook.ipynb``, written by ``python -m utils.reference``); a chapter without one is executed
under the profile by myst-nb with jupyter-cache (``build/.jupyter_cache/<profile>``), so an
unchanged notebook is not run again. Every page says which profile and machine produced its
outputs. The README is the landing page, REFERENCES.md a page of its own.

The generated source folder is ``build/site-src/<profile>/`` and the HTML lands in
``build/site/<profile>/_build/html/``. The site loads nothing from the network: MathJax 3 is
copied from ``node_modules/mathjax`` (``npm ci``) into ``_static/mathjax`` and Sphinx's
``mathjax_path`` points there, widget JavaScript is off, the Colab badge images become text links;
after the build every page is checked for scripts, styles and images with an http(s) address.

The build fails (exit status 1) on any Sphinx warning (a missing image, a broken cross-reference,
a notebook that failed to execute, ...), except the few harmless ones in ``HARMLESS_WARNINGS``.
"""
from __future__ import annotations

import argparse
import copy
import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .config import REPO_ROOT

BOOK = REPO_ROOT / "book"
BUILD = REPO_ROOT / "build"
CHAPTERS = REPO_ROOT / "chapters"
MATHJAX = REPO_ROOT / "node_modules" / "mathjax" / "es5"
MATHJAX_PATH = "mathjax/tex-chtml.js"      # relative to _static
DEFAULT_PROFILE = "quick"

# Warnings that do not mean a broken page. Everything else a build prints fails it.
HARMLESS_WARNINGS = (
    re.compile(r"Pygments lexer name '[^']*' is not known"),   # an output's unknown language
    re.compile(r"\[IPKernelApp\] WARNING \| Kernel is running over TCP without encryption"),  # the kernel's own notice
)
BADGE = re.compile(r"\[!\[Open In Colab\]\(https://colab\.research\.google\.com/assets/colab-badge\.svg\)\]"
                   r"\((https://colab\.research\.google\.com/[^)]+)\)")
LINK = re.compile(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)")


class SiteError(RuntimeError):
    """The site cannot be built as asked."""


@dataclass
class Page:
    chapter: str
    source: str      # "reference" or "executed"
    note: str


# ------------------------------------------------------------------ where outputs come from

def reference_folder(profile: str, root: Path | None = None) -> Path | None:
    """The reference folder of ``profile``: ``<profile>-cpu`` if there is one, else the first
    ``<profile>-<gpu>`` folder; None without any."""
    from . import reference

    root = reference.REFERENCE_ROOT if root is None else Path(root)
    found = [p for p in reference.folders(root) if reference.folder_profile(p) == profile]
    cpu = [p for p in found if p.name == f"{profile}-cpu"]
    return (cpu or found or [None])[0]


def run_note(profile: str, info: dict, how: str) -> str:
    from .reference import describe_machine

    return (f":::{{note}}\nThe outputs on this page come from {how} under the **{profile}** profile "
            f"on {describe_machine(info)}.\n:::")


def badge_to_link(text: str) -> str:
    """The Colab badge is an image on colab.research.google.com: a text link needs no network."""
    return BADGE.sub(r"[Open in Colab](\1)", text)


def _rewrite_links(text: str, here: Path, known: dict[str, str]) -> str:
    """Links to repository files: a chapter or REFERENCES.md becomes a link to its page, any
    other repository file (not part of the site) becomes its name in code."""
    def replace(match):
        label, target = match.group(1), match.group(2)
        if re.match(r"^[a-z]+:|^#", target):
            return match.group(0)
        path, _, anchor = target.partition("#")
        resolved = (here / path).resolve()
        try:
            key = resolved.relative_to(REPO_ROOT).as_posix()
        except ValueError:
            return label
        if key in known:
            return f"[{label}]({known[key]}{'#' + anchor if anchor else ''})"
        return label if label.startswith("`") else f"`{label}`" if label == path else label
    return LINK.sub(replace, text)


def _notebook_page(path, note: str, executed: bool, known: dict[str, str]):
    """``path``: a notebook file, or a notebook already read."""
    import nbformat

    notebook = nbformat.read(path, as_version=4) if isinstance(path, (str, Path)) else path
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            cell.source = _rewrite_links(badge_to_link(cell.source), CHAPTERS, known)
    cell = nbformat.v4.new_markdown_cell(note)
    cell.metadata["slideshow"] = {"slide_type": "skip"}
    cell.id = "course-run-note"
    notebook.cells.insert(1 if notebook.cells and notebook.cells[0].cell_type == "markdown" else 0, cell)
    if executed:   # a reference run: shown as it is, never executed again
        notebook.metadata["mystnb"] = {"execution_mode": "off"}
    nbformat.validator.normalize(notebook)
    return notebook


# ------------------------------------------------------------------ the source folder

def prepare(profile: str, src: Path, chapters=None, reference: Path | None = None,
            notebooks: list[Path] | None = None, cache: Path | None = None) -> list[Page]:
    """Write the Jupyter Book source of the site into ``src`` (emptied first)."""
    import nbformat
    import yaml

    from . import reference as ref

    if not MATHJAX.is_dir():
        raise SiteError(f"{MATHJAX} is missing: run `npm ci` at the repository root (package.json)")
    if notebooks is None:
        notebooks = [CHAPTERS / f"{name}.ipynb" for name in ref.resolve(chapters)]
    if reference is None:
        reference = reference_folder(profile)
    shutil.rmtree(src, ignore_errors=True)
    (src / "chapters").mkdir(parents=True)
    # The static files go to _assets, not _static: Jupyter Book would add every .js file
    # under a source folder's _static (MathJax's hundred) to every page.
    shutil.copytree(BOOK / "_static", src / "_assets")
    shutil.copytree(MATHJAX, src / "_assets" / "mathjax")

    known = {f"chapters/{p.name}": f"chapters/{p.stem}.ipynb" for p in notebooks}
    known["REFERENCES.md"] = "references.md"
    here = None
    pages = []
    for path in notebooks:
        executed = reference / path.stem / "notebook.ipynb" if reference is not None else None
        if executed is not None and executed.is_file():
            run = ref.load_runs(reference).get(path.stem, {})
            info = ref.run_machine(reference, run)
            how = f"the reference run of {run.get('finished', info['date'])[:10]}" if run else "a reference run"
            page = Page(path.stem, "reference", run_note(profile, info, how))
            # today's prose with the run's outputs; the run as it was if the code changed since
            merged = ref.with_reference_outputs(path, reference)
            notebook = _notebook_page(executed if merged is None else merged, page.note, True, known)
        else:
            here = here or ref.machine()
            page = Page(path.stem, "executed", run_note(profile, here, "executing the chapter while the site was built"))
            notebook = _notebook_page(path, page.note, False, known)
        nbformat.write(notebook, src / "chapters" / path.name)
        pages.append(page)

    readme = badge_to_link((REPO_ROOT / "README.md").read_text())
    readme = _rewrite_links(readme, REPO_ROOT, known)
    sources = sorted({p.source for p in pages})
    summary = ("reference runs" if sources == ["reference"] else
               "chapters executed while the site was built" if sources == ["executed"] else
               "reference runs where the profile has one, the other chapters executed while the site was built")
    title, _, rest = readme.partition("\n")
    landing = (f"{title}\n\n:::{{note}}\nThis site shows every chapter with its outputs, from {summary}, under "
               f"the **{profile}** profile; each chapter page names the machine.\n:::\n{rest}")
    (src / "intro.md").write_text(landing)
    if (REPO_ROOT / "REFERENCES.md").is_file():
        (src / "references.md").write_text(_rewrite_links((REPO_ROOT / "REFERENCES.md").read_text(), REPO_ROOT, known))

    config = yaml.safe_load((BOOK / "_config.yml").read_text())
    config["execute"]["cache"] = str(cache or BUILD / ".jupyter_cache" / profile)
    config["sphinx"]["config"]["mathjax_path"] = MATHJAX_PATH
    config["sphinx"]["config"]["html_static_path"] = ["_assets"]
    config["title"] = f"{config['title']} ({profile} profile)"
    (src / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    toc = {"format": "jb-book", "root": "intro",
           "parts": [{"caption": "Chapters", "chapters": [{"file": f"chapters/{p.stem}"} for p in notebooks]}]}
    if (src / "references.md").is_file():
        toc["parts"].append({"caption": "Reference numbers", "chapters": [{"file": "references"}]})
    (src / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))
    return pages


# ------------------------------------------------------------------ checks of a build

def broken_page_warnings(log: str) -> list[str]:
    """Every warning or error line of a build log that is not known to be harmless."""
    found = []
    for line in log.splitlines():
        if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", line) and not any(p.search(line) for p in HARMLESS_WARNINGS):
            found.append(line.strip())
    return found


class _Assets(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag in ("script", "img", "iframe", "source", "video", "audio"):
            url = attrs.get("src")
        elif tag == "link" and set((attrs.get("rel") or "").split()) & {"stylesheet", "preload", "icon", "modulepreload"}:
            url = attrs.get("href")
        else:
            url = None
        if url:
            self.urls.append((tag, url))


def external_assets(html_dir: Path) -> dict[str, list[str]]:
    """``{page: [url, ...]}``: scripts, styles, images and frames a page loads from the network
    (http, https or protocol-relative addresses), plus ``@import``/``url()`` in its CSS files."""
    html_dir = Path(html_dir)
    found = {}
    for page in sorted(html_dir.rglob("*.html")):
        parser = _Assets()
        parser.feed(page.read_text(errors="replace"))
        urls = [f"<{tag}> {url}" for tag, url in parser.urls if re.match(r"^(https?:)?//", url)]
        if urls:
            found[page.relative_to(html_dir).as_posix()] = urls
    for sheet in sorted(html_dir.rglob("*.css")):
        urls = re.findall(r"""(?:@import\s+|url\()\s*['"]?((?:https?:)?//[^'")\s]+)""", sheet.read_text(errors="replace"))
        if urls:
            found[sheet.relative_to(html_dir).as_posix()] = urls
    return found


# ------------------------------------------------------------------ the build

def html_dir(profile: str, out: Path | None = None) -> Path:
    return Path(out or BUILD / "site" / profile) / "_build" / "html"


def build(profile: str = DEFAULT_PROFILE, chapters=None, *, out: Path | None = None, src: Path | None = None,
          reference: Path | None = None, notebooks: list[Path] | None = None, cache: Path | None = None,
          log=print) -> tuple[Path, list[str]]:
    """Build the site; returns the HTML folder and the problems found (empty: a good build)."""
    from . import reference as ref

    if profile not in ref.PROFILES:
        raise SiteError(f"unknown profile {profile!r}: choose one of {', '.join(ref.PROFILES)}")
    src = Path(src or BUILD / "site-src" / profile)
    out = Path(out or BUILD / "site" / profile)
    pages = prepare(profile, src, chapters, reference, notebooks, cache)
    for page in pages:
        log(f"{page.chapter}: {'reference run' if page.source == 'reference' else 'executed under ' + profile + ' (cached)'}")
    shutil.rmtree(out / "_build" / "html", ignore_errors=True)
    results = Path(os.environ.get("CNN_SITE_RESULTS", BUILD / "site-results" / profile))
    environment = {**os.environ, "CNN_PROFILE": profile, "CNN_RESULTS_DIR": str(results),
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
                   "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
    # Jupyter Book writes the Sphinx configuration; the build itself is plain sphinx-build so the
    # configuration can drop sphinx-thebe (its inline script declares THEBE_JS_URL twice, an
    # error in the console, and points at unpkg.com).
    jb = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()"]
    proc = subprocess.run([*jb, "config", "sphinx", str(src)], env=environment, capture_output=True, text=True)
    text = proc.stdout + proc.stderr
    if proc.returncode == 0:
        conf = src / "conf.py"
        conf.write_text(re.sub(r"['\"]sphinx_thebe['\"],\s*", "", conf.read_text()))
        proc = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "--keep-going", "-d",
                               str(out / "_build" / ".doctrees"), str(src), str(out / "_build" / "html")],
                              env=environment, capture_output=True, text=True)
        text += proc.stdout + proc.stderr
    out.mkdir(parents=True, exist_ok=True)
    (out / "build.log").write_text(text)
    problems = broken_page_warnings(text)
    target = html_dir(profile, out)
    if proc.returncode != 0 and not problems:
        problems.append(f"jupyter-book exited with status {proc.returncode}; see {out / 'build.log'}")
    if target.is_dir():
        for page, urls in external_assets(target).items():
            problems.extend(f"{page} loads from the network: {url}" for url in urls)
    elif not problems:
        problems.append(f"no HTML in {target}")
    return target, problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("build", help="build the site")
    make.add_argument("--profile", default=DEFAULT_PROFILE, help=f"smoke, quick or full (default {DEFAULT_PROFILE})")
    make.add_argument("--chapters", nargs="*", help="chapter names or prefixes (default: all)")
    make.add_argument("--reference", type=Path, help="reference folder (default reference/<profile>-cpu)")
    make.add_argument("--out", type=Path, help="build folder (default build/site/<profile>)")
    check = commands.add_parser("check", help="list network assets of a built site")
    check.add_argument("html", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            found = external_assets(args.html)
            for page, urls in found.items():
                print(f"{page}: {', '.join(urls)}")
            return 1 if found else 0
        target, problems = build(args.profile, args.chapters, out=args.out, reference=args.reference)
    except SiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if problems:
        print(f"the site in {target} has {len(problems)} problem(s):", file=sys.stderr)
        for line in problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    print(f"site built: {target / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
