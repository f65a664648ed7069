"""Chapter 10's table of every model of the course, and the README table made from it.

    python -m utils.comparison                 # writes results/comparison.md
    python -m utils.comparison --print         # ... and prints it
    python -m utils.comparison --include-smoke # also show accuracies of smoke runs

One list, :data:`ENTRIES`, drives both the notebook ``chapters/10_comparison.ipynb`` and
the markdown table. Each entry names a factory of :mod:`utils.models`, the chapter that
defines it, the resolution it is trained at on Fashion-MNIST (the chapter's ``full``
profile, the book's setting), the paper's ImageNet resolution and the paper's ImageNet
error (from ``REFERENCES.md``, with its source). ``tests/test_10_comparison.py`` fails
when a model factory exists in :mod:`utils.models` without an entry here, so a model
added later cannot be left out of the comparison.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import config, profile, reference, references, train
from .runtime import eval_mode

#: Profiles whose saved histories are looked for, the most trustworthy first.
PROFILE_ORDER = ("full", "quick", "smoke")


@dataclass(frozen=True)
class Entry:
    """One model of the comparison."""

    label: str                 # how the model is named in tables and charts
    factory: str               # the function's name in utils.models
    chapter: str               # "01" ... the chapter that defines it
    train_size: int            # Fashion-MNIST side in pixels (the chapter's full profile)
    imagenet_size: int | None  # the paper's ImageNet side; None: no ImageNet version
    errors: tuple = (None, None)  # utils.references keys of the paper's top-1 / top-5 error
    history: str | None = None  # name the chapter saves its History under (default: factory)
    trained: bool = True       # False: no chapter trains it (an architecture shown for comparison)
    fashion_kwargs: dict = field(default_factory=dict)   # extra factory arguments, Fashion-MNIST
    imagenet_kwargs: dict = field(default_factory=dict)  # extra factory arguments, ImageNet

    @property
    def history_name(self) -> str:
        return self.history or self.factory

    def _error(self, index):
        key = self.errors[index]
        return references.get(key) if key else None

    @property
    def top1(self) -> float | None:
        """ImageNet top-1 error, % (the paper's), or None."""
        ref = self._error(0)
        return ref.value if ref else None

    @property
    def top5(self) -> float | None:
        ref = self._error(1)
        return ref.value if ref else None

    @property
    def source(self) -> str:
        """Where the errors come from, with their evaluation protocol."""
        refs = [r for r in (self._error(0), self._error(1)) if r]
        if not refs:
            return ""
        return f"{refs[0].source.split(',')[0]}, {refs[0].protocol}"

    @property
    def protocol(self) -> str:
        """The test-time protocol in a few words: '1 crop', '10 crops', 'dense', ..."""
        refs = [r for r in (self._error(0), self._error(1)) if r]
        return refs[0].protocol.split("; ")[-1].split(" (")[0] if refs else ""


# Errors: the papers' ImageNet errors, read from utils.references (each with its source and
# evaluation protocol: 1 crop, 10 crops, dense evaluation; these are not comparable with each
# other exactly). A blank means the course quotes no error for that model.
ENTRIES: tuple[Entry, ...] = (
    Entry("LeNet", "lenet", "01", 28, None),
    Entry("AlexNet (D2L)", "alexnet", "01", 224, 224),
    Entry("AlexNet (paper layout)", "alexnet_paper", "01", 227, 227,
          errors=("alexnet.top1", "alexnet.top5"), trained=False),
    Entry("VGG-11", "vgg11", "02", 224, 224, trained=False),
    Entry("VGG-11 (1/4 width, D2L)", "vgg11", "02", 224, None, history="vgg11_w4",
          fashion_kwargs={"width_divisor": 4}),
    Entry("VGG-13", "vgg13", "02", 224, 224, trained=False),
    Entry("VGG-16", "vgg16", "02", 224, 224, errors=("vgg16.top1", "vgg16.top5"), trained=False),
    Entry("VGG-19", "vgg19", "02", 224, 224, trained=False),
    Entry("NiN", "nin", "03", 224, 224),
    Entry("GoogLeNet", "googlenet", "04", 96, 224, errors=(None, "googlenet.top5.1crop")),
    Entry("BN-LeNet", "bn_lenet", "05", 28, None),
    Entry("NiN (batch norm)", "nin_bn", "05", 224, 224),
    Entry("BN-LeNet (nn.BatchNorm)", "bn_lenet_concise", "05", 28, None),
    Entry("ResNet-18", "resnet18", "06", 96, 224, errors=("resnet18.top1", None)),
    Entry("ResNet-18 (pre-activation)", "preact_resnet18", "06", 96, 224, trained=False),
    Entry("ResNet-34", "resnet34", "06", 96, 224, errors=("resnet34.top1", "resnet34.top5"), trained=False),
    Entry("ResNet-50", "resnet50", "06", 96, 224, errors=("resnet50.top1", "resnet50.top5"), trained=False),
    Entry("ResNeXt-50 (32x4d)", "resnext50_32x4d", "06", 96, 224, errors=("resnext50.top1", None), trained=False),
    Entry("BN-Inception", "inception_bn", "07", 96, 224,
          errors=("bn_inception.top1", "bn_inception.top5")),
    # chapter 07 trains Inception-v3 at 79 px with a stride-1 stem and its auxiliary head;
    # the ImageNet count leaves the auxiliary head out, like the reference numbers
    Entry("Inception-v3", "inception_v3", "07", 79, 299,
          errors=("inception_v3.top1", "inception_v3.top5"),
          fashion_kwargs={"stem_stride": 1, "stem_pool": False},
          imagenet_kwargs={"aux_logits": False}),
    Entry("Inception-v4", "inception_v4", "07", 139, 299,
          errors=("inception_v4.top1", "inception_v4.top5")),
    Entry("Inception-ResNet-v1", "inception_resnet_v1", "07", 139, 299,
          errors=("inception_resnet_v1.top1", "inception_resnet_v1.top5")),
    Entry("Inception-ResNet-v2", "inception_resnet_v2", "07", 139, 299,
          errors=("inception_resnet_v2.top1", "inception_resnet_v2.top5")),
)

#: Functions of utils.models that look like factories but are not models of their own,
#: with the reason (for example a builder that every VGG factory calls).
NOT_IN_TABLE: dict[str, str] = {}


# ----------------------------------------------------------------------------- the table vs utils.models

def models_module():
    """``utils.models`` (not reloaded: a reload replaces its classes in place, and objects
    made before it stop being instances of them; restart the kernel after an export)."""
    return importlib.import_module("utils.models")


def model_factories(module=None) -> dict:
    """Public functions of ``utils.models`` that build a whole model: they take
    ``num_classes`` and ``in_channels`` and need no other argument."""
    module = module or importlib.import_module("utils.models")
    found = {}
    for name, obj in vars(module).items():
        if name.startswith("_") or not inspect.isfunction(obj):
            continue
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        params = inspect.signature(obj).parameters
        required = [p for p in params.values() if p.default is inspect.Parameter.empty
                    and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if {"num_classes", "in_channels"} <= set(params) and not required:
            found[name] = obj
    return found


def uncovered_factories(module=None) -> list[str]:
    """Factories of ``utils.models`` that have no entry in :data:`ENTRIES` (should be empty)."""
    listed = {entry.factory for entry in ENTRIES} | set(NOT_IN_TABLE)
    return sorted(set(model_factories(module)) - listed)


def available(module=None) -> list[Entry]:
    """The entries whose factory exists in ``utils.models`` now."""
    module = module or importlib.import_module("utils.models")
    return [entry for entry in ENTRIES if hasattr(module, entry.factory)]


def missing(module=None) -> list[Entry]:
    """The entries whose chapter has not exported its factory yet."""
    module = module or importlib.import_module("utils.models")
    return [entry for entry in ENTRIES if not hasattr(module, entry.factory)]


# ----------------------------------------------------------------------------- measurements

def build(entry: Entry, setting: str = "fashion", device="meta", module=None):
    """The model of ``entry`` for ``'fashion'`` (1 channel, 10 classes, the chapter's
    arguments) or ``'imagenet'`` (3 channels, 1000 classes), built on ``device``."""
    module = module or importlib.import_module("utils.models")
    factory = getattr(module, entry.factory)
    with torch.device(device):
        if setting == "fashion":
            return factory(num_classes=10, in_channels=1, **entry.fashion_kwargs)
        if setting == "imagenet":
            return factory(num_classes=1000, in_channels=3, **entry.imagenet_kwargs)
    raise ValueError(f"setting must be 'fashion' or 'imagenet', got {setting!r}")


def input_shape(entry: Entry, setting: str, batch: int = 1) -> tuple[int, int, int, int] | None:
    if setting == "fashion":
        return (batch, 1, entry.train_size, entry.train_size)
    if entry.imagenet_size is None:
        return None
    return (batch, 3, entry.imagenet_size, entry.imagenet_size)


def activation_bytes(net: torch.nn.Module, input_shape) -> int:
    """Bytes that autograd keeps for the backward pass of one training-mode forward pass.

    Counted with ``torch.autograd.graph.saved_tensors_hooks``: every tensor an operation
    saves for its backward (the inputs of convolutions and linear layers, the outputs of
    ReLUs, batch-norm statistics, pooling indices, dropout masks, the input image itself),
    each storage once at its full size, parameters excluded. Gradients, optimizer state and
    the workspace of the kernels are not counted. Works on the ``meta`` device (shapes only).
    Run it with a batch of at least 2 (batch norm refuses a single value per channel) and
    divide by the batch for a per-image figure.
    """
    parameters = {id(p) for p in net.parameters()}
    device = next(iter(net.parameters())).device
    sizes = {}

    def pack(tensor):
        base = tensor._base if tensor._base is not None else tensor
        if id(tensor) not in parameters and id(base) not in parameters:
            key = id(base) if device.type == "meta" else base.untyped_storage().data_ptr()
            sizes[key] = max(sizes.get(key, 0), base.numel() * base.element_size())
        return tensor

    x = torch.zeros(tuple(input_shape), device=device)
    with eval_mode(net, training=True), torch.enable_grad():
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            net(x)
    return sum(sizes.values())


#: Batch used to count activation memory (batch norm needs more than one value per channel).
ACTIVATION_BATCH = 2


def complexity(entry: Entry, module=None) -> dict:
    """Parameters and forward FLOPs (batch 1) for Fashion-MNIST and ImageNet, and activation
    bytes per training image at the chapter's Fashion-MNIST input (:func:`activation_bytes`
    at batch 2, halved), all counted on meta."""
    row = {}
    for setting in ("fashion", "imagenet"):
        shape = input_shape(entry, setting)
        if shape is None:
            row[setting] = None
            continue
        net = build(entry, setting, "meta", module)
        row[setting] = {"params": profile.count_params(net), "flops": profile.count_flops(net, shape)}
        if setting == "fashion":  # the chapter's training input
            batch_shape = input_shape(entry, setting, batch=ACTIVATION_BATCH)
            row[setting]["activations"] = activation_bytes(net, batch_shape) // ACTIVATION_BATCH
    return row


def complexity_rows(entries=None, module=None) -> dict:
    """``{label: complexity(entry)}`` for the entries given (default: the available ones)."""
    entries = available(module) if entries is None else entries
    return {entry.label: complexity(entry, module) for entry in entries}


@dataclass(frozen=True)
class Run:
    """A saved training run of one model: its profile, history and where it came from."""

    profile: str
    history: "train.History"
    machine: str   # "reference: <machine>" for a committed reference run, "your run (<device>)" else
    reference: bool

    @property
    def label(self) -> str:
        return f"{self.profile}, {self.machine}"


def _load(path: Path):
    try:
        history = train.History.load(path)
    except (ValueError, OSError):
        return None
    return history if history.epochs else None


def _local_label(history) -> str:
    """A run in ``results/``: yours, or (inside ``python -m utils.reference``) the reference run's."""
    machine = os.environ.get("CNN_REFERENCE_MACHINE", "").strip()
    return f"reference: {machine}" if machine else f"your run ({history.meta.get('device', '?')})"


def find_runs(entry: Entry, profiles=PROFILE_ORDER, *, local: bool = True,
              reference_root: Path | None = None) -> list[Run]:
    """Every saved run of ``entry``, the most trustworthy first: by profile (``PROFILE_ORDER``),
    and within a profile your own run (``results/histories/<name>-<profile>.json``) before the
    committed reference runs (``reference/<profile>-<machine>/<chapter>/histories/``)."""
    root = reference.REFERENCE_ROOT if reference_root is None else Path(reference_root)
    folder = train.history_path(entry.history_name).parent
    found = []
    for name in profiles:
        stem = f"{entry.history_name}-{name}"
        if local:
            history = _load(folder / f"{stem}.json")
            if history is not None:
                found.append(Run(name, history, _local_label(history), False))
        for ref in reference.folders(root):
            if reference.folder_profile(ref) != name:
                continue
            path = reference.history_files(ref).get(stem)
            history = _load(path) if path else None
            if history is not None:
                machine = reference.short_machine(reference.chapter_machine(ref, path.parent.parent.name))
                found.append(Run(name, history, f"reference: {machine}", True))
    return found


def find_history(entry: Entry, profiles=PROFILE_ORDER, *, local: bool = True,
                 reference_root: Path | None = None) -> Run | None:
    """The most trustworthy saved run of ``entry`` (see :func:`find_runs`), else ``None``."""
    runs = find_runs(entry, profiles, local=local, reference_root=reference_root)
    return runs[0] if runs else None


def accuracy_cell(entry: Entry, profiles=PROFILE_ORDER, *, local: bool = True,
                  reference_root: Path | None = None) -> str:
    """``0.912 (full, 10 ep, 224 px, 60,000 images; reference: NVIDIA A100)``: the test accuracy
    of the most trustworthy run with what produced it, never a number that was not measured.
    An entry no chapter trains says so; one whose chapter has not been run says ``not run``."""
    if not entry.trained:
        return "not trained (architecture only)"
    found = find_history(entry, profiles, local=local, reference_root=reference_root)
    if found is None:
        return "not run"
    history = found.history
    shape = history.meta.get("image_shape") or []
    size = f", {shape[-1]} px" if shape else ""
    examples = history.meta.get("train_examples")
    count = f", {examples:,} images" if examples else ""
    return f"{history.test_acc[-1]:.3f} ({found.profile}, {history.epochs} ep{size}{count}; {found.machine})"


def error_cell(value) -> str:
    return "–" if value is None else f"{value:g}"


def budget_plan(train_flops_per_image: int, budget: float, batch_size: int,
                train_examples: int = 60_000) -> dict:
    """How many training images a model of ``train_flops_per_image`` (forward + backward)
    may process within ``budget`` FLOPs: whole batches, at least one. When that is more than
    ``train_examples``, the images are spread over ``epochs`` passes of an equal ``subset``.

    Returns ``images`` (processed in all), ``epochs``, ``subset`` (distinct images, a multiple
    of the batch) and ``flops`` (spent: images x per-image FLOPs; above the budget only when
    a single batch already is).
    """
    if train_flops_per_image <= 0 or budget <= 0:
        raise ValueError("FLOPs per image and the budget must be positive")
    batches = max(1, int(budget // (train_flops_per_image * batch_size)))
    per_epoch = max(1, train_examples // batch_size)
    epochs = -(-batches // per_epoch)
    subset = (batches // epochs) * batch_size
    images = subset * epochs
    return {"images": images, "epochs": epochs, "subset": subset,
            "flops": images * train_flops_per_image}


def curve_series(runs: dict, key: str = "test_acc") -> dict:
    """``{label (profile, machine): (epochs, values)}`` for every run found; ``runs`` maps a
    label to a :class:`Run` (None: no saved history, left out)."""
    series = {}
    for label, found in runs.items():
        if found is None:
            continue
        history = found.history
        series[f"{label} ({found.label})"] = (list(range(1, history.epochs + 1)), list(getattr(history, key)))
    return series


# ----------------------------------------------------------------------------- tables

def text_table(rows: dict, entries=None) -> str:
    """The deterministic complexity table as text (parameters, GFLOPs, GMACs)."""
    entries = {e.label: e for e in (entries or ENTRIES)}
    header = (f"{'model':<27}{'ch':<4}{'FM px':>6}{'FM params':>13}{'FM GFLOPs':>11}{'FM act. MB':>11}"
              f"{'IN px':>7}{'IN params':>13}{'IN GMACs':>10}")
    lines = [header, "-" * len(header)]
    for label, row in rows.items():
        entry = entries[label]
        fm = row["fashion"]
        line = (f"{label:<27}{entry.chapter:<4}{entry.train_size:>6}{fm['params']:>13,}"
                f"{fm['flops'] / 1e9:>11.3f}{fm['activations'] / 2**20:>11.2f}")
        if row["imagenet"] is None:
            line += f"{'–':>7}{'–':>13}{'–':>10}"
        else:
            im = row["imagenet"]
            line += f"{entry.imagenet_size:>7}{im['params']:>13,}{im['flops'] / 2e9:>10.3f}"
        lines.append(line)
    return "\n".join(lines)


def markdown_table(include_smoke: bool = False, module=None, rows: dict | None = None, *,
                   local: bool = True, reference_root: Path | None = None) -> str:
    """The README's comparison table: deterministic columns, accuracies where a run exists.

    ``rows``: complexities already computed by :func:`complexity_rows` (else counted here);
    ``local=False`` reads only the committed reference runs (the README's table does).
    """
    module = module or importlib.import_module("utils.models")
    rows = rows or {}
    profiles = PROFILE_ORDER if include_smoke else tuple(p for p in PROFILE_ORDER if p != "smoke")
    lines = [
        "| model | chapter | Fashion-MNIST px | params (FM) | GFLOPs (FM) "
        "| activations MiB per training image (FM) | ImageNet px "
        "| params (ImageNet) | GMACs (ImageNet) | ImageNet top-1 / top-5 error % (paper) "
        "| Fashion-MNIST test acc (profile, epochs, px, images; machine) |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|---|",
    ]
    for entry in ENTRIES:
        if not hasattr(module, entry.factory):
            lines.append(f"| {entry.label} | {entry.chapter} | {entry.train_size} | "
                         f"not exported yet | | | | | | | |")
            continue
        row = rows.get(entry.label) or complexity(entry, module)
        fm, im = row["fashion"], row["imagenet"]
        imagenet = ("– | – | –" if im is None else
                    f"{entry.imagenet_size} | {im['params']:,} | {im['flops'] / 2e9:.3f}")
        errors = (f"{error_cell(entry.top1)} / {error_cell(entry.top5)} ({entry.source})"
                  if entry.source else "–")
        lines.append(f"| {entry.label} | {entry.chapter} | {entry.train_size} | {fm['params']:,} | "
                     f"{fm['flops'] / 1e9:.3f} | {fm['activations'] / 2**20:.2f} | {imagenet} | {errors} | "
                     f"{accuracy_cell(entry, profiles, local=local, reference_root=reference_root)} |")
    notes = [
        "",
        "FM: Fashion-MNIST configuration (1 channel, 10 classes) at the chapter's training "
        "resolution; ImageNet: 3 channels, 1000 classes. FLOPs = 2 x multiply-adds, forward "
        "pass, batch 1, counted with `utils.profile.count_flops` (convolutions and linear "
        "layers). Activations: bytes of the float32 tensors autograd saves for the backward pass "
        "of one training image (`utils.comparison.activation_bytes`: each saved storage once, "
        "parameters, gradients and optimizer state excluded). Errors are the papers' (see `REFERENCES.md`); a blank means none is recorded "
        "there. Accuracies are the last epoch's test accuracy on all 10,000 test images unless the "
        "run says otherwise, read from the committed reference runs (`reference/<profile>-<machine>/`)"
        + (" and your own runs (`results/histories/`)" if local else "")
        + ", each with its profile, epochs, resolution, number of training images and machine; "
        "`quick` runs are reduced (subsets, sometimes a lower resolution; Inception-v4 and "
        "Inception-ResNet keep one block of each kind: see each chapter's settings) and only `full` runs use the book's settings. \"not trained\": no chapter "
        "trains that model (it is built, counted and checked, not trained); \"not run\": its "
        "chapter has no saved run with a profile shown here"
        + (" (smoke runs are excluded: their numbers mean nothing)." if not include_smoke else "."),
        "",
        "Regenerate with `python -m utils.comparison --readme` (rewrites this table and the cost "
        "table in `README.md` from the committed reference runs).",
    ]
    return "\n".join(lines + notes) + "\n"


README = config.REPO_ROOT / "README.md"
README_SECTIONS = ("comparison", "costs")


def readme_sections(module=None) -> dict[str, str]:
    """The README's generated sections: the comparison table and the cost table, from the
    committed reference runs only (a local run never changes the README)."""
    return {"comparison": markdown_table(module=module, local=False),
            "costs": reference.cost_markdown()}


def _marker(name: str, end: bool = False) -> str:
    return f"<!-- generated by python -m utils.comparison --readme: {name} {'end' if end else 'start'} -->"


def replace_sections(text: str, sections: dict[str, str]) -> str:
    """``text`` with the part between each section's start and end markers replaced."""
    for name, body in sections.items():
        start, end = _marker(name), _marker(name, end=True)
        if start not in text or end not in text:
            raise ValueError(f"README.md lacks the markers of the {name!r} section:\n{start}\n{end}")
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{body}{end}{tail}"
    return text


def update_readme(path: Path = README) -> Path:
    path.write_text(replace_sections(path.read_text(), readme_sections()))
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="write the model comparison table as markdown")
    parser.add_argument("--output", type=Path, default=None,
                        help="where to write (default results/comparison.md)")
    parser.add_argument("--include-smoke", action="store_true",
                        help="also show accuracies of smoke-profile runs")
    parser.add_argument("--print", action="store_true", help="print the table too")
    parser.add_argument("--readme", action="store_true",
                        help="rewrite the README's results and cost tables from the committed reference runs")
    args = parser.parse_args(argv)
    if args.readme:
        path = update_readme()
        print(f"updated {path}")
        return 0
    output = args.output or config.results_dir() / "comparison.md"
    text = markdown_table(include_smoke=args.include_smoke)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)
    if args.print:
        print(text)
    print(f"wrote {output}")
    uncovered = uncovered_factories()
    if uncovered:
        print(f"warning: utils.models has factories without an entry in utils.comparison.ENTRIES: "
              f"{', '.join(uncovered)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
