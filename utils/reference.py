"""Reference runs: every chapter executed under one profile, its results kept in the repository.

    python -m utils.reference quick                 # every chapter -> reference/quick-cpu/
    python -m utils.reference full                  # on a CUDA machine -> reference/full-<gpu>/
    python -m utils.reference quick 03_nin 05_batch_norm   # only these chapters
    python -m utils.reference smoke --out /tmp/ref  # anywhere else (a dry run must say where)
    python -m utils.reference full --price          # training FLOPs of every chapter, by dry run

Each notebook is executed with nbclient, as JupyterLab runs it, in a fresh results folder (no
checkpoint of an earlier run is resumed, so the times are honest). For every chapter the run keeps

    <folder>/<chapter>/notebook.ipynb     the executed notebook, every output in it
    <folder>/<chapter>/histories/*.json   every ``fit`` history the chapter wrote
    <folder>/<chapter>/figures/*.png      every figure it saved
    <folder>/<chapter>/run.json           wall time, start and end, profile, environment, and
                                          the machine it ran on (CPU/GPU model, cores, memory,
                                          torch version, date)
    <folder>/machine.json                 the machine of the folder's latest run

Re-running some chapters on another machine of the same kind (another CPU) keeps the others'
runs, each labelled with the machine it ran on: a time is never credited to the wrong machine.

Chapters run in course order and share one results folder, so a chapter that reuses an earlier
chapter's checkpoint (chapter 08 loads chapter 06's ResNet) finds it when both are run. A chapter
that fails keeps its previous reference (nothing of the failed run replaces it) and the command
exits with status 1 after running the others.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .config import REPO_ROOT

REFERENCE_ROOT = REPO_ROOT / "reference"
CHAPTERS = REPO_ROOT / "chapters"
PROFILES = ("smoke", "quick", "full")
DRY_RUN_VARIABLES = ("CNN_MAX_STEPS", "CNN_MAX_BATCH")


class ReferenceError(RuntimeError):
    """A reference run that cannot start or whose results cannot be read."""


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """What a reference run ran on."""
    import torch

    info = {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")}
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * page_size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        info["memory_gib"] = None
    return info


def folder_name(profile: str, info: dict) -> str:
    """``quick-cpu`` on a CPU-only machine, ``full-nvidia-a100-sxm4-40gb`` on a GPU."""
    return f"{profile}-{slug(info['gpu']) if info.get('gpu') else 'cpu'}"


def chapter_names() -> list[str]:
    return [path.stem for path in sorted(CHAPTERS.glob("[0-9][0-9]_*.ipynb"))]


def resolve(names) -> list[str]:
    known = chapter_names()
    chosen = []
    for name in names or known:
        matches = [k for k in known if k == name or k.startswith(name)]
        if len(matches) != 1:
            raise ReferenceError(f"no single chapter matches {name!r}; the chapters are: "
                                 + ", ".join(known))
        chosen.append(matches[0])
    return chosen


def _snapshot(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} if folder.exists() else {}


def _written_since(folder: Path, before: dict[Path, int]) -> list[Path]:
    return sorted(p for p, stamp in _snapshot(folder).items() if before.get(p) != stamp)


@contextlib.contextmanager
def environment(**variables: str):
    """Set environment variables for the duration of a ``with`` block, then restore them."""
    saved = {key: os.environ.get(key) for key in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class ChapterRun:
    chapter: str
    ok: bool
    seconds: float
    error: str | None = None


def execute(chapter: str, profile: str, results: Path, staging: Path, timeout: int,
            info: dict | None = None) -> ChapterRun:
    """Run one chapter into ``staging/<chapter>``; the caller moves it into place if it succeeded.
    ``info``: the machine (default: this one, :func:`machine`)."""
    import nbformat
    from nbclient import NotebookClient

    path = CHAPTERS / f"{chapter}.ipynb"
    notebook = nbformat.read(path, as_version=4)
    before = {sub: _snapshot(results / sub) for sub in ("histories", "figures")}
    ledger = results / "costs.jsonl"
    ledger_start = ledger.stat().st_size if ledger.exists() else 0
    started = dt.datetime.now(dt.timezone.utc)
    info = machine() if info is None else info
    start = time.perf_counter()
    error = None
    try:
        # the kernel inherits them; CNN_REFERENCE_MACHINE labels the run's own histories (chapter 10)
        with environment(CNN_PROFILE=profile, CNN_RESULTS_DIR=str(results),
                         CNN_REFERENCE_MACHINE=short_machine(info)):
            NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                           resources={"metadata": {"path": str(CHAPTERS)}}).execute()
    except Exception as exc:  # a cell error, a timeout, a dead kernel: all end this chapter
        error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    seconds = time.perf_counter() - start
    if error is not None:
        return ChapterRun(chapter, False, seconds, error)
    out = staging / chapter
    for sub in ("histories", "figures"):
        for file in _written_since(results / sub, before[sub]):
            target = out / sub / file.relative_to(results / sub)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target)
    out.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, out / "notebook.ipynb")
    fits = ([json.loads(line) for line in ledger.read_bytes()[ledger_start:].decode().splitlines() if line]
            if ledger.exists() else [])
    run = {"chapter": chapter, "profile": profile, "seconds": round(seconds, 1),
           "train_flops": sum(fit["train_flops"] or 0 for fit in fits), "fits": fits,
           "started": started.isoformat(timespec="seconds"),
           "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
           "environment": {k: os.environ[k] for k in DRY_RUN_VARIABLES if k in os.environ},
           "machine": info}
    (out / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    return ChapterRun(chapter, True, seconds)


def run_all(profile: str, chapters=None, out: Path | None = None, timeout: int = 3600,
            log=print) -> tuple[Path, list[ChapterRun]]:
    """Execute ``chapters`` (default: all) under ``profile``; returns the folder and each chapter's run."""
    if profile not in PROFILES:
        raise ReferenceError(f"unknown profile {profile!r}: choose one of {', '.join(PROFILES)}")
    dry = [k for k in DRY_RUN_VARIABLES if os.environ.get(k)]
    if dry and out is None:
        raise ReferenceError(f"{' and '.join(dry)} set: a dry run is not a reference. Unset them, or "
                             "pass --out FOLDER to write the dry run somewhere outside reference/.")
    info = machine()
    folder = Path(out) if out is not None else REFERENCE_ROOT / folder_name(profile, info)
    chapters = resolve(chapters)
    folder.mkdir(parents=True, exist_ok=True)
    runs = []
    with tempfile.TemporaryDirectory(prefix="cnn-reference-") as scratch:
        results, staging = Path(scratch) / "results", Path(scratch) / "staging"
        for chapter in chapters:
            log(f"{chapter}: running under {profile} ...")
            run = execute(chapter, profile, results, staging, timeout, info)
            runs.append(run)
            if run.ok:
                target = folder / chapter
                old = folder / f".{chapter}.old"
                if target.exists():
                    target.rename(old)
                shutil.move(str(staging / chapter), str(target))
                shutil.rmtree(old, ignore_errors=True)
                log(f"{chapter}: {run.seconds:.0f} s, kept in {target}")
            else:
                log(f"{chapter}: FAILED after {run.seconds:.0f} s ({run.error}); "
                    f"the previous reference in {folder / chapter} is left as it was")
    if any(run.ok for run in runs):
        (folder / "machine.json").write_text(json.dumps(info, indent=1) + "\n")
        if out is None:
            refresh_chapter_times(REFERENCE_ROOT)
    return folder, runs


def _code_sources(notebook) -> list[str]:
    return [cell.source for cell in notebook.cells if cell.cell_type == "code"]


def with_reference_outputs(path: Path, folder: Path):
    """The chapter notebook at ``path`` as it is now, with the outputs of its reference run in
    ``folder``: the prose may have been edited since the run, the code may not (``None`` if it
    was, or if the chapter has no reference run there)."""
    import nbformat

    kept = Path(folder) / Path(path).stem / "notebook.ipynb"
    if not kept.is_file():
        return None
    current = nbformat.read(path, as_version=4)
    executed = nbformat.read(kept, as_version=4)
    if _code_sources(current) != _code_sources(executed):
        return None
    ran = iter(cell for cell in executed.cells if cell.cell_type == "code")
    for cell in current.cells:
        if cell.cell_type == "code":
            done = next(ran)
            cell.outputs, cell.execution_count = done.outputs, done.execution_count
    return current


def stale_chapters(folder: Path) -> list[str]:
    """Chapters kept in ``folder`` whose code has changed since their reference run."""
    return [chapter for chapter in load_runs(folder) if (CHAPTERS / f"{chapter}.ipynb").is_file()
            and with_reference_outputs(CHAPTERS / f"{chapter}.ipynb", folder) is None]


TIME_CALL = re.compile(r"reference\.chapter_time\((['\"])(?P<chapter>[^'\"]+)\1\)")


def refresh_chapter_times(root: Path = REFERENCE_ROOT) -> int:
    """Rewrite the output of each kept notebook's ``chapter_time`` cell from the reference as it
    now stands: a chapter executed before its own run was kept printed the old times. Returns the
    number of cells rewritten."""
    import nbformat

    changed = 0
    for folder in folders(root):
        for path in sorted(folder.glob("*/notebook.ipynb")):
            notebook = nbformat.read(path, as_version=4)
            for cell in notebook.cells:
                match = TIME_CALL.search(cell.source) if cell.cell_type == "code" else None
                if match:
                    text = chapter_time(match["chapter"], root) + "\n"
                    cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=text)]
                    changed += 1
            nbformat.write(notebook, path)
    return changed


def price(profile: str, chapters=None, out: Path | None = None, timeout: int = 3600,
          log=print) -> tuple[Path, list[ChapterRun]]:
    """What every chapter costs to train under ``profile``, without training it: each chapter is
    dry-run (one batch per epoch, batches of at most 16) and its ``fit`` calls' planned FLOPs
    are kept in ``reference/costs/<profile>.json`` (``{chapter: {"train_flops", "fits"}}``).
    A chapter that fails keeps its previous entry."""
    target = Path(out) if out is not None else REFERENCE_ROOT / "costs" / f"{profile}.json"
    with environment(CNN_MAX_STEPS="1", CNN_MAX_BATCH="16"), \
            tempfile.TemporaryDirectory(prefix="cnn-price-") as scratch:
        folder, runs = run_all(profile, chapters, Path(scratch), timeout, log)
        priced = load_runs(folder)
    table = json.loads(target.read_text()) if target.exists() else {}
    for run in runs:
        if run.ok:
            table[run.chapter] = {"train_flops": priced[run.chapter]["train_flops"],
                                  "fits": priced[run.chapter]["fits"]}
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(dict(sorted(table.items())), indent=1) + "\n")
    if out is None:
        refresh_chapter_times(REFERENCE_ROOT)  # the kept notebooks' time cells quote the prices
    return target, runs


def load_costs(profile: str, root: Path = REFERENCE_ROOT) -> dict[str, dict]:
    """``{chapter: {"train_flops", "fits"}}`` priced for ``profile`` (empty if never priced)."""
    path = root / "costs" / f"{profile}.json"
    return json.loads(path.read_text()) if path.exists() else {}


# ------------------------------------------------------------------ reading reference runs

def folders(root: Path = REFERENCE_ROOT) -> list[Path]:
    """Every reference folder (one per profile and machine), sorted by name."""
    return sorted(p for p in root.iterdir() if (p / "machine.json").is_file()) if root.is_dir() else []


def load_machine(folder: Path) -> dict:
    return json.loads((Path(folder) / "machine.json").read_text())


def run_machine(folder: Path, run: dict) -> dict:
    """The machine a run (its ``run.json``, kept in ``folder``) ran on: its own record, or, for a
    run kept before runs recorded it, the folder's."""
    return run.get("machine") or load_machine(folder)


def chapter_machine(folder: Path, chapter: str) -> dict:
    """The machine ``chapter``'s run in ``folder`` ran on (:func:`run_machine`)."""
    run_file = Path(folder) / chapter / "run.json"
    return run_machine(folder, json.loads(run_file.read_text()) if run_file.is_file() else {})


def load_runs(folder: Path) -> dict[str, dict]:
    """``{chapter: run.json}`` for every chapter kept in ``folder``."""
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(Path(folder).glob("*/run.json"))}


def history_files(folder: Path) -> dict[str, Path]:
    """``{history name: path}`` for every history kept in ``folder`` (names as ``fit`` wrote them)."""
    return {p.stem: p for p in sorted(Path(folder).glob("*/histories/*.json"))}


# Sustained training throughput assumed for the estimates (mixed precision, convolutional nets,
# well-fed input pipeline): about a quarter of each chip's dense fp16/bf16 tensor peak (T4 65,
# A100 312 TFLOP/s). Small models and small batches reach less; treat the result as a lower bound.
SUSTAINED_TFLOPS = {"T4": 16.0, "A100": 80.0}


def estimated_seconds(train_flops: float, gpu: str) -> float:
    """Seconds ``train_flops`` would take on ``gpu`` at ``SUSTAINED_TFLOPS`` (an estimate)."""
    return train_flops / (SUSTAINED_TFLOPS[gpu] * 1e12)


def describe_machine(info: dict) -> str:
    device = info["gpu"] or f"{info['cpu']}, {info['cores']} cores, CPU only"
    return f"{device}; torch {info['torch']}; {info['date']}"


def short_machine(info: dict) -> str:
    """The machine in a few words for a table cell: the GPU, or the CPU and its cores."""
    return info["gpu"] or f"{info['cpu']} ({info['cores']} cores)"


def folder_profile(folder: Path) -> str:
    """The profile a reference folder was run under (its name starts with it)."""
    return Path(folder).name.split("-", 1)[0]


def measured(chapter: str, profile: str, root: Path = REFERENCE_ROOT) -> list[tuple[dict, dict]]:
    """``[(machine, run.json)]`` of every reference run of ``chapter`` under ``profile``."""
    found = []
    for folder in folders(root):
        if folder_profile(folder) == profile:
            run = load_runs(folder).get(chapter)
            if run is not None:
                found.append((run_machine(folder, run), run))
    return found


def training_flops(chapter: str, profile: str, root: Path = REFERENCE_ROOT) -> float | None:
    """Training FLOPs of ``chapter`` under ``profile``: a reference run's own ledger when one
    exists, else the priced dry run (``reference/costs/<profile>.json``), else None."""
    for _, run in measured(chapter, profile, root):
        if run.get("train_flops"):
            return run["train_flops"]
    priced = load_costs(profile, root).get(chapter)
    return priced["train_flops"] if priced and priced.get("train_flops") else None


def minutes(seconds: float) -> str:
    """``<1 s``, ``45 s``, ``6.2 min``, ``3.1 h``."""
    if seconds < 0.5:
        return "<1 s"
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def estimates(train_flops: float) -> str:
    """``about 3.6 min on a T4, 43 s on an A100 (estimates at 16 and 80 TFLOP/s sustained)``."""
    gpus = list(SUSTAINED_TFLOPS)
    times = ", ".join(f"{minutes(estimated_seconds(train_flops, gpu))} on a{'n' if gpu[0] in 'AEIOU' else ''} {gpu}"
                      for gpu in gpus)
    rates = " and ".join(f"{SUSTAINED_TFLOPS[gpu]:g}" for gpu in gpus)
    return f"about {times} (estimates at {rates} TFLOP/s sustained)"


def chapter_time(chapter: str, root: Path = REFERENCE_ROOT) -> str:
    """How long ``chapter`` takes under ``quick`` and ``full``: each measured reference run with
    its machine, and the training FLOPs with GPU estimates (the cell at the top of every chapter)."""
    lines = []
    for profile in ("quick", "full"):
        runs = measured(chapter, profile, root)
        flops = training_flops(chapter, profile, root)
        parts = [f"{minutes(run['seconds'])} measured on {short_machine(info)}, {info['date']}"
                 for info, run in runs]
        if flops:
            parts.append(f"{flops / 1e15:.3g} PFLOP of training, {estimates(flops)}")
        lines.append(f"{profile:<6} " + ("; ".join(parts) if parts else
                                         "no reference run and no price yet (python -m utils.reference)"))
    return "\n".join(lines)


def cost_rows(root: Path = REFERENCE_ROOT) -> list[dict]:
    """One row per chapter: training FLOPs per profile, GPU estimates and measured times."""
    rows = []
    for chapter in chapter_names():
        row = {"chapter": chapter}
        for profile in ("quick", "full"):
            flops = training_flops(chapter, profile, root)
            row[profile] = {"flops": flops,
                            "estimates": {gpu: estimated_seconds(flops, gpu) for gpu in SUSTAINED_TFLOPS}
                            if flops else {},
                            "measured": [(short_machine(info), run["seconds"])
                                         for info, run in measured(chapter, profile, root)]}
        rows.append(row)
    return rows


def cost_markdown(root: Path = REFERENCE_ROOT) -> str:
    """The cost table of the README and chapter 10, as markdown."""
    gpus = list(SUSTAINED_TFLOPS)
    head = ["chapter"] + [f"{p} {what}" for p in ("quick", "full")
                          for what in ("PFLOP", *(f"{g} (est.)" for g in gpus), "measured")]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "--:|" * (len(head) - 1)]
    for row in cost_rows(root):
        cells = [row["chapter"]]
        for profile in ("quick", "full"):
            cost = row[profile]
            cells.append(f"{cost['flops'] / 1e15:.3g}" if cost["flops"] else "–")
            cells += [minutes(cost["estimates"][g]) if cost["estimates"] else "–" for g in gpus]
            cells.append("; ".join(f"{minutes(s)} ({m})" for m, s in cost["measured"]) or "–")
        lines.append("| " + " | ".join(cells) + " |")
    rates = ", ".join(f"{g} {SUSTAINED_TFLOPS[g]:g}" for g in gpus)
    lines += ["", "PFLOP: training FLOPs (forward and backward of every `fit` call: FLOPs per example "
              "x examples x epochs), from the reference run or, where none exists, from "
              "`python -m utils.reference PROFILE --price`. GPU columns are estimates at an assumed "
              f"sustained rate (TFLOP/s: {rates}; `utils.reference.SUSTAINED_TFLOPS`), not measurements; "
              "evaluation and data loading are not in them. \"measured\": the whole notebook's wall "
              "time in a reference run, with its machine."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", choices=PROFILES)
    parser.add_argument("chapters", nargs="*", help="chapter names or prefixes (default: all)")
    parser.add_argument("--out", type=Path, help="write here instead of reference/<profile>-<machine>/")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds one cell may run")
    parser.add_argument("--price", action="store_true",
                        help="only count each chapter's training FLOPs (a dry run) into reference/costs/")
    args = parser.parse_args(argv)
    try:
        if args.price:
            folder, runs = price(args.profile, args.chapters, args.out, args.timeout)
        else:
            folder, runs = run_all(args.profile, args.chapters, args.out, args.timeout)
    except ReferenceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = [run.chapter for run in runs if not run.ok]
    total = sum(run.seconds for run in runs)
    print(f"{len(runs) - len(failed)} of {len(runs)} chapters kept in {folder} ({total:.0f} s)"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
