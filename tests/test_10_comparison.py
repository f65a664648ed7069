"""Chapter 10: the comparison table covers every model factory, its counts match the reference
numbers, accuracies come only from saved runs, and the README table is generated."""
from __future__ import annotations

import json
import types

import pytest
import torch
from torch import nn

from utils import comparison, train

MODELS = comparison.models_module()
ENTRIES = {entry.label: entry for entry in comparison.ENTRIES}

# ImageNet configurations (3 channels, 1000 classes): (params, GMACs) from REFERENCES.md
# (torchvision's metadata, timm, or counted from the paper's tables, as noted there).
IMAGENET_REFERENCE = {
    "AlexNet (paper layout)": (62_378_344, None),   # paper layout, counted
    "VGG-11": (132_863_336, 7.609),                 # torchvision
    "VGG-16": (138_357_544, 15.470),                # torchvision
    "VGG-19": (143_667_240, 19.632),                # torchvision
    "GoogLeNet": (6_998_552, 1.583),                # counted from the paper's Table 1
    "ResNet-18": (11_689_512, 1.814),               # torchvision
    "ResNet-34": (21_797_672, 3.664),               # torchvision
    "ResNet-50": (25_557_032, 4.089),               # torchvision (v1.5)
    "ResNeXt-50 (32x4d)": (25_028_904, 4.23),       # torchvision (given to two decimals)
    "Inception-v3": (23_834_568, 5.713),            # torchvision/timm, no auxiliary head
    "Inception-v4": (42_679_816, 12.28),            # timm inception_v4
    "Inception-ResNet-v2": (55_843_464, 13.18),     # timm inception_resnet_v2
}
# timm's published GMACs come from another counter: FlopCounterMode on timm's own
# inception_v4 / inception_resnet_v2 gives 12.254 / 13.156, within 0.3% of them.
GMACS_TOLERANCE = {"Inception-v4": 0.003, "Inception-ResNet-v2": 0.003, "ResNeXt-50 (32x4d)": 0.002}
# Fashion-MNIST configurations of the book (REFERENCES.md: D2L)
FASHION_REFERENCE = {"AlexNet (D2L)": 46_764_746, "GoogLeNet": 5_977_530}


def need(entry: comparison.Entry):
    if not hasattr(MODELS, entry.factory):
        pytest.skip(f"chapter {entry.chapter} has not exported {entry.factory} yet")


def test_every_model_factory_is_in_the_table():
    uncovered = comparison.uncovered_factories(MODELS)
    assert not uncovered, (f"utils.models defines {uncovered} without an entry in "
                           "utils.comparison.ENTRIES: add one (or a reason in NOT_IN_TABLE)")


def test_table_is_well_formed():
    labels = [entry.label for entry in comparison.ENTRIES]
    assert len(labels) == len(set(labels)), "labels are the keys of every table and chart"
    for entry in comparison.ENTRIES:
        assert entry.chapter.isdigit() and len(entry.chapter) == 2
        assert entry.train_size >= 28
        if entry.top1 is not None or entry.top5 is not None:
            assert entry.source, f"{entry.label}: an error needs its source"
        if entry.top1 is not None and entry.top5 is not None:
            assert entry.top5 < entry.top1
    assert not set(comparison.NOT_IN_TABLE) & {entry.factory for entry in comparison.ENTRIES}


def test_paper_errors_are_the_reference_numbers():
    # utils.references: top-1 / top-5 error %, with the protocol each was measured under
    errors = {label: (ENTRIES[label].top1, ENTRIES[label].top5, ENTRIES[label].protocol)
              for label in ENTRIES if ENTRIES[label].source}
    assert errors == {
        "AlexNet (paper layout)": (40.7, 18.2, "10 crops"), "VGG-16": (25.6, 8.1, "dense evaluation at one test scale"),
        "GoogLeNet": (None, 10.07, "1 crop"), "ResNet-18": (27.88, None, "10 crops"),
        "ResNet-34": (24.52, 7.46, "10 crops"), "ResNet-50": (22.85, 6.71, "10 crops"),
        "ResNeXt-50 (32x4d)": (22.2, None, "one 224x224 crop"),
        "BN-Inception": (25.2, 7.82, "1 crop"), "Inception-v3": (21.2, 5.6, "1 crop, 299 px"),
        "Inception-v4": (20.0, 5.0, "1 crop"), "Inception-ResNet-v1": (21.3, 5.5, "1 crop"),
        "Inception-ResNet-v2": (19.9, 4.9, "1 crop")}
    assert "10 crops" in ENTRIES["ResNet-34"].source


@pytest.mark.parametrize("label", sorted(IMAGENET_REFERENCE))
def test_imagenet_counts_match_the_references(label):
    entry = ENTRIES[label]
    need(entry)
    params, gmacs = IMAGENET_REFERENCE[label]
    row = comparison.complexity(entry, MODELS)["imagenet"]
    assert row["params"] == params
    if gmacs is not None:
        tolerance = dict(rel=GMACS_TOLERANCE[label]) if label in GMACS_TOLERANCE else dict(abs=0.0006)
        assert row["flops"] / 2e9 == pytest.approx(gmacs, **tolerance)


@pytest.mark.parametrize("label", sorted(FASHION_REFERENCE))
def test_fashion_counts_match_the_book(label):
    need(ENTRIES[label])
    assert comparison.complexity(ENTRIES[label], MODELS)["fashion"]["params"] == FASHION_REFERENCE[label]


@pytest.mark.parametrize("label", sorted(ENTRIES))
def test_every_entry_builds_and_counts_on_meta(label):
    entry = ENTRIES[label]
    need(entry)
    row = comparison.complexity(entry, MODELS)
    assert row["fashion"]["params"] > 0 and row["fashion"]["flops"] > 0
    assert (row["imagenet"] is None) == (entry.imagenet_size is None)
    net = comparison.build(entry, "fashion", "meta", MODELS)
    output = net.eval()(torch.zeros(comparison.input_shape(entry, "fashion", batch=2), device="meta"))
    assert tuple(output.shape) == (2, 10)


# ----------------------------------------------------------------------------- the machinery, on a fake module

def _fake_models():
    module = types.ModuleType("fake_models")

    def tiny(num_classes=10, in_channels=1):
        return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, num_classes))

    def builder(stages, num_classes=10, in_channels=1):  # needs a configuration: not a factory
        return tiny(num_classes, in_channels)

    def block(in_channels, out_channels):  # a part, not a model
        return nn.Conv2d(in_channels, out_channels, 3)

    for function in (tiny, builder, block):
        function.__module__ = module.__name__
        setattr(module, function.__name__, function)
    module._private = tiny
    module.Tiny = nn.Sequential  # classes are not factories
    module.imported = torch.nn.functional.relu  # defined elsewhere
    return module


def test_model_factories_finds_only_whole_model_functions():
    fake = _fake_models()
    assert sorted(comparison.model_factories(fake)) == ["tiny"]
    assert comparison.uncovered_factories(fake) == ["tiny"]


def _history(acc, side=28, epochs=1, profile="quick"):
    history = train.History(meta={"image_shape": [1, side, side], "device": "cpu", "profile": profile})
    for _ in range(epochs):
        history.record(train_loss=0.5, train_acc=acc, test_acc=acc, seconds=1.0, examples_per_sec=100.0)
    return history


def _reference_folder(root, profile, chapter, stem, history, cpu="Test CPU"):
    folder = root / f"{profile}-cpu"
    history.save(folder / chapter / "histories" / f"{stem}.json")
    (folder / "machine.json").write_text(json.dumps(
        {"cpu": cpu, "cores": 2, "gpu": None, "torch": "2", "date": "2026-01-01"}))
    (folder / chapter / "run.json").write_text(json.dumps({"seconds": 60.0, "train_flops": 10**15}))
    return folder


def test_history_lookup_prefers_the_most_complete_profile(tmp_path, monkeypatch):
    monkeypatch.setenv("CNN_RESULTS_DIR", str(tmp_path / "results"))
    refs = tmp_path / "reference"
    entry = comparison.Entry("Tiny", "tiny", "01", 28, None, history="tiny_run")
    assert comparison.find_history(entry, reference_root=refs) is None
    assert comparison.accuracy_cell(entry, reference_root=refs) == "not run"
    folder = tmp_path / "results" / "histories"
    _history(0.1, profile="smoke").save(folder / "tiny_run-smoke.json")
    assert comparison.accuracy_cell(entry, reference_root=refs) == "0.100 (smoke, 1 ep, 28 px; your run (cpu))"
    assert comparison.accuracy_cell(entry, ("full", "quick"), reference_root=refs) == "not run"
    _history(0.875, side=64, epochs=3).save(folder / "tiny_run-quick.json")
    found = comparison.find_history(entry, reference_root=refs)
    assert found.profile == "quick" and found.history.epochs == 3 and not found.reference
    assert comparison.accuracy_cell(entry, reference_root=refs) == "0.875 (quick, 3 ep, 64 px; your run (cpu))"
    (folder / "tiny_run-full.json").write_text("not json")  # a broken file is passed over
    assert comparison.find_history(entry, reference_root=refs).profile == "quick"


def test_reference_runs_are_found_labelled_with_their_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("CNN_RESULTS_DIR", str(tmp_path / "results"))
    refs = tmp_path / "reference"
    entry = comparison.Entry("Tiny", "tiny", "01", 28, None, history="tiny_run")
    _reference_folder(refs, "quick", "01_tiny", "tiny_run-quick", _history(0.81, epochs=2))
    cell = comparison.accuracy_cell(entry, reference_root=refs)
    assert cell == "0.810 (quick, 2 ep, 28 px; reference: Test CPU (2 cores))"
    # a chapter re-run later on another machine names its own machine, not the folder's latest
    run_file = refs / "quick-cpu" / "01_tiny" / "run.json"
    run_file.write_text(json.dumps({**json.loads(run_file.read_text()),
                                    "machine": {"cpu": "Older CPU", "cores": 4, "gpu": None}}))
    assert comparison.accuracy_cell(entry, reference_root=refs).endswith("reference: Older CPU (4 cores))")
    # your own run of the same profile comes first, the reference stays in the list
    _history(0.5).save(tmp_path / "results" / "histories" / "tiny_run-quick.json")
    runs = comparison.find_runs(entry, reference_root=refs)
    assert [(r.reference, r.history.test_acc[-1]) for r in runs] == [(False, 0.5), (True, 0.81)]
    assert comparison.find_history(entry, local=False, reference_root=refs).reference
    # a reference run under full outranks a local quick run
    _reference_folder(refs, "full", "01_tiny", "tiny_run-full", _history(0.9, epochs=10))
    assert comparison.find_history(entry, reference_root=refs).profile == "full"
    untrained = comparison.Entry("Big", "big", "02", 224, 224, trained=False)
    assert comparison.accuracy_cell(untrained, reference_root=refs) == "not trained (architecture only)"


def test_markdown_table_and_command(tmp_path, monkeypatch):
    monkeypatch.setenv("CNN_RESULTS_DIR", str(tmp_path))
    fake = _fake_models()
    monkeypatch.setattr(comparison, "ENTRIES", (
        comparison.Entry("Tiny", "tiny", "01", 32, 64, errors=("resnet34.top1", "resnet34.top5")),
        comparison.Entry("Later", "later", "09", 96, None)))
    text = comparison.markdown_table(module=fake)
    assert text == comparison.markdown_table(module=fake), "deterministic"
    assert "| Tiny | 01 | 32 | 90 | 0.000 | 0.00 | 64 | 5,112 | 0.000 | 24.52 / 7.46 (He et al. 2016, ILSVRC-2012 validation set; 10 crops) | not run |" in text
    assert "| Later | 09 | 96 | not exported yet |" in text
    _history(0.5, profile="smoke").save(tmp_path / "histories" / "tiny-smoke.json")
    assert "not run" in comparison.markdown_table(module=fake).splitlines()[2]  # smoke excluded
    assert "0.500 (smoke" in comparison.markdown_table(include_smoke=True, module=fake)
    monkeypatch.setattr(comparison, "models_module", lambda: fake)
    monkeypatch.setattr(comparison.importlib, "import_module", lambda name: fake)
    output = tmp_path / "table.md"
    assert comparison.main(["--output", str(output)]) == 0
    assert output.read_text().startswith("| model | chapter |")


# ----------------------------------------------------------------------------- activation memory

def _conv_relu_linear(inplace=False):
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(inplace=inplace), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


@pytest.mark.parametrize("inplace", [False, True])
def test_activation_bytes_by_hand(inplace):
    # batch 2, 8x8: the convolution saves its input (2*1*8*8 floats), the ReLU its output
    # (2*4*6*6), the linear layer a view of that output (not counted again); weights excluded
    expected = (2 * 1 * 8 * 8 + 2 * 4 * 6 * 6) * 4
    assert comparison.activation_bytes(_conv_relu_linear(inplace), (2, 1, 8, 8)) == expected
    with torch.device("meta"):
        on_meta = _conv_relu_linear(inplace)
    assert comparison.activation_bytes(on_meta, (2, 1, 8, 8)) == expected
    # average pooling needs no values for its backward: the conv output is not kept
    pooled = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    assert comparison.activation_bytes(pooled, (1, 1, 32, 32)) == (32 * 32 + 4) * 4


def test_activation_bytes_meta_matches_cpu_and_scales_with_batch():
    net = MODELS.lenet()
    with torch.device("meta"):
        on_meta = MODELS.lenet()
    assert comparison.activation_bytes(net, (2, 1, 28, 28)) == comparison.activation_bytes(on_meta, (2, 1, 28, 28))
    assert comparison.activation_bytes(on_meta, (4, 1, 28, 28)) == 2 * comparison.activation_bytes(on_meta, (2, 1, 28, 28))
    assert net.training  # mode restored


def test_activation_column_in_the_rows():
    row = comparison.complexity(ENTRIES["LeNet"], MODELS)
    assert 0 < row["fashion"]["activations"] < 1e6
    vgg = comparison.complexity(ENTRIES["VGG-16"], MODELS)
    assert vgg["fashion"]["activations"] > 100 * row["fashion"]["activations"]
    assert "activations" not in vgg["imagenet"]  # counted at the chapter's input size only


# ----------------------------------------------------------------------------- equal budget and curves

@pytest.mark.parametrize("flops, budget, batch", [(1e6, 1e9, 64), (2.7e9, 3e11, 64), (2e6, 4e11, 64), (1e9, 1e8, 16)])
def test_budget_plan_spends_the_budget(flops, budget, batch):
    plan = comparison.budget_plan(int(flops), budget, batch)
    assert plan["subset"] % batch == 0 and plan["subset"] <= 60_000
    assert plan["images"] == plan["subset"] * plan["epochs"] and plan["flops"] == plan["images"] * int(flops)
    if flops * batch <= budget:  # at least one batch fits: never over, and less than one batch per epoch short
        assert plan["flops"] <= budget
        assert budget - plan["flops"] < (batch * plan["epochs"] + batch) * flops
    else:
        assert plan["images"] == batch and plan["epochs"] == 1


def test_budget_plan_spreads_large_budgets_over_epochs():
    plan = comparison.budget_plan(1_000_000, 2e11, 100)  # 200,000 images: 4 passes of 50,000
    assert (plan["epochs"], plan["subset"], plan["images"]) == (4, 50_000, 200_000)


def test_curve_series_leaves_out_runs_without_history():
    runs = {"A": comparison.Run("quick", _history(0.5, epochs=3), "your run (cpu)", False), "B": None}
    assert comparison.curve_series(runs) == {"A (quick, your run (cpu))": ([1, 2, 3], [0.5, 0.5, 0.5])}
    assert comparison.curve_series(runs, "train_loss")["A (quick, your run (cpu))"][1] == [0.5, 0.5, 0.5]


# ----------------------------------------------------------------------------- the README's generated tables

def test_readme_sections_are_replaced_between_their_markers():
    text = "intro\n" + "".join(f"{comparison._marker(n)}\nold\n{comparison._marker(n, end=True)}\n" for n in ("a", "b"))
    new = comparison.replace_sections(text, {"a": "A\n", "b": "B\n"})
    assert new.startswith("intro\n") and "old" not in new and "\nA\n" in new and "\nB\n" in new
    with pytest.raises(ValueError, match="markers"):
        comparison.replace_sections("no markers", {"a": "A\n"})


def test_readme_tables_are_generated_from_the_committed_reference(monkeypatch, tmp_path):
    monkeypatch.setenv("CNN_RESULTS_DIR", str(tmp_path))  # a local run must not matter
    text = comparison.README.read_text()
    assert comparison.replace_sections(text, comparison.readme_sections()) == text, \
        "the README's tables are stale: run python -m utils.comparison --readme"


def test_every_trained_model_has_a_committed_reference_run():
    missing = [e.label for e in comparison.ENTRIES
               if e.trained and comparison.find_history(e, local=False) is None]
    assert not missing, f"no reference run of {missing}: run python -m utils.reference quick"


def test_a_reference_run_labels_its_own_histories_with_its_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("CNN_RESULTS_DIR", str(tmp_path))
    entry = comparison.Entry("Tiny", "tiny", "01", 28, None, history="tiny_run")
    _history(0.8).save(tmp_path / "histories" / "tiny_run-quick.json")
    monkeypatch.setenv("CNN_REFERENCE_MACHINE", "Test CPU (2 cores)")
    found = comparison.find_history(entry, reference_root=tmp_path / "none")
    assert found.machine == "reference: Test CPU (2 cores)"
