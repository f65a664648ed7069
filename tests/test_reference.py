"""utils.reference: chapters executed with nbclient, results kept per chapter, failures keep the old."""
import json

import nbformat
import pytest

from utils import reference

WRITES = '''import json, os, pathlib
root = pathlib.Path(os.environ["CNN_RESULTS_DIR"])
(root / "histories").mkdir(parents=True, exist_ok=True)
(root / "figures").mkdir(parents=True, exist_ok=True)
(root / "histories" / "{name}-{{0}}.json".format(os.environ["CNN_PROFILE"])).write_text(json.dumps({{"value": {value}}}))
(root / "figures" / "{name}.png").write_bytes(b"png")
print("done {name}")'''


def notebook(path, *sources):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def chapters(tmp_path, monkeypatch):
    folder = tmp_path / "chapters"
    folder.mkdir()
    notebook(folder / "01_first.ipynb", WRITES.format(name="first", value=1))
    notebook(folder / "02_second.ipynb", WRITES.format(name="second", value=2))
    monkeypatch.setattr(reference, "CHAPTERS", folder)
    for variable in reference.DRY_RUN_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    return folder


def test_each_chapter_keeps_its_notebook_histories_figures_and_time(chapters, tmp_path):
    out = tmp_path / "ref"
    folder, runs = reference.run_all("smoke", out=out, log=lambda *_: None)
    assert folder == out and [r.ok for r in runs] == [True, True]
    assert json.loads((out / "01_first" / "histories" / "first-smoke.json").read_text()) == {"value": 1}
    assert (out / "02_second" / "figures" / "second.png").read_bytes() == b"png"
    assert not (out / "02_second" / "histories" / "first-smoke.json").exists()  # only what it wrote
    executed = nbformat.read(out / "01_first" / "notebook.ipynb", as_version=4)
    assert executed.cells[0].outputs[0]["text"] == "done first\n"
    run = reference.load_runs(out)["02_second"]
    assert run["profile"] == "smoke" and run["seconds"] > 0
    assert reference.load_machine(out)["cores"] >= 1
    assert set(reference.history_files(out)) == {"first-smoke", "second-smoke"}


def test_each_chapter_keeps_the_machine_it_ran_on(chapters, tmp_path, monkeypatch):
    out = tmp_path / "ref"
    base = reference.machine()
    for chapter, cpu in (("01_first", "First CPU"), ("02_second", "Second CPU")):
        monkeypatch.setattr(reference, "machine", lambda cpu=cpu: {**base, "cpu": cpu, "gpu": None})
        reference.run_all("quick", [chapter], out=out, log=lambda *_: None)
    assert reference.load_machine(out)["cpu"] == "Second CPU"  # the folder's latest run
    assert reference.chapter_machine(out, "01_first")["cpu"] == "First CPU"
    assert reference.chapter_machine(out, "02_second")["cpu"] == "Second CPU"
    monkeypatch.setattr(reference, "REFERENCE_ROOT", tmp_path)
    out.rename(tmp_path / "quick-cpu")
    [(first, _)] = reference.measured("01_first", "quick", tmp_path)
    assert first["cpu"] == "First CPU"
    assert "First CPU (" in reference.cost_markdown(tmp_path).split("01_first")[1].splitlines()[0]


def test_a_chapter_run_sums_the_cost_of_its_fit_calls(chapters, tmp_path):
    fits = [{"name": "a", "epochs": 1, "train_flops": 100}, {"name": "b", "epochs": 2, "train_flops": 50}]
    lines = "".join(json.dumps(fit) + "\n" for fit in fits)
    notebook(chapters / "02_second.ipynb", "import os, pathlib\n"
             "pathlib.Path(os.environ['CNN_RESULTS_DIR']).mkdir(parents=True, exist_ok=True)\n"
             f"(pathlib.Path(os.environ['CNN_RESULTS_DIR']) / 'costs.jsonl').open('a').write({lines!r})")
    out = tmp_path / "ref"
    reference.run_all("smoke", out=out, log=lambda *_: None)
    runs = reference.load_runs(out)
    assert runs["01_first"]["train_flops"] == 0 and runs["01_first"]["fits"] == []
    assert runs["02_second"]["train_flops"] == 150 and runs["02_second"]["fits"] == fits


def test_gpu_estimates_use_the_stated_rates():
    assert reference.estimated_seconds(16e12 * 60, "T4") == 60
    assert reference.estimated_seconds(80e12, "A100") == 1


def test_a_failed_chapter_keeps_its_previous_reference(chapters, tmp_path):
    out = tmp_path / "ref"
    reference.run_all("smoke", out=out, log=lambda *_: None)
    notebook(chapters / "02_second.ipynb", WRITES.format(name="second", value=3), "raise ValueError('broken')")
    notebook(chapters / "01_first.ipynb", WRITES.format(name="first", value=4))
    _, runs = reference.run_all("smoke", out=out, log=lambda *_: None)
    assert [r.ok for r in runs] == [True, False] and "broken" in runs[1].error
    assert json.loads((out / "01_first" / "histories" / "first-smoke.json").read_text()) == {"value": 4}
    assert json.loads((out / "02_second" / "histories" / "second-smoke.json").read_text()) == {"value": 2}
    assert reference.main(["smoke", "--out", str(out)]) == 1


def test_a_dry_run_is_refused_as_a_reference(chapters, monkeypatch):
    monkeypatch.setenv("CNN_MAX_STEPS", "2")
    with pytest.raises(reference.ReferenceError, match="CNN_MAX_STEPS set: a dry run is not a reference"):
        reference.run_all("full")


def test_chapters_are_named_by_prefix_and_unknown_ones_refused(chapters):
    assert reference.resolve(["02"]) == ["02_second"]
    with pytest.raises(reference.ReferenceError, match="no single chapter matches '0'"):
        reference.resolve(["0"])


def test_folder_names_say_profile_and_machine():
    assert reference.folder_name("quick", {"gpu": None}) == "quick-cpu"
    assert reference.folder_name("full", {"gpu": "NVIDIA A100-SXM4-40GB"}) == "full-nvidia-a100-sxm4-40gb"


def test_pricing_dry_runs_every_chapter_and_keeps_old_entries_of_failures(chapters, tmp_path, monkeypatch):
    writes_cost = ("import json, os, pathlib\n"
                   "assert os.environ['CNN_MAX_STEPS'] == '1'\n"
                   "pathlib.Path(os.environ['CNN_RESULTS_DIR']).mkdir(parents=True, exist_ok=True)\n"
                   "(pathlib.Path(os.environ['CNN_RESULTS_DIR']) / 'costs.jsonl').open('a').write("
                   "json.dumps({'name': 'n', 'epochs': 1, 'train_flops': %d}) + '\\n')")
    notebook(chapters / "01_first.ipynb", writes_cost % 7)
    target = tmp_path / "costs.json"
    _, runs = reference.price("full", out=target, log=lambda *_: None)
    assert [r.error for r in runs] == [None, None]
    assert json.loads(target.read_text())["01_first"]["train_flops"] == 7
    assert json.loads(target.read_text())["02_second"]["train_flops"] == 0
    import os
    assert "CNN_MAX_STEPS" not in os.environ  # restored
    notebook(chapters / "01_first.ipynb", "raise RuntimeError('no')")
    reference.price("full", out=target, log=lambda *_: None)
    assert json.loads(target.read_text())["01_first"]["train_flops"] == 7


def _fake_reference(root, profile="quick", chapter="01_first", seconds=300.0, flops=2 * 10**15):
    folder = root / f"{profile}-cpu"
    (folder / chapter).mkdir(parents=True)
    (folder / "machine.json").write_text(json.dumps(
        {"cpu": "Test CPU", "cores": 2, "gpu": None, "torch": "2", "date": "2026-01-01"}))
    (folder / chapter / "run.json").write_text(json.dumps({"seconds": seconds, "train_flops": flops}))
    return folder


def test_chapter_time_reads_measured_runs_and_prices(chapters, tmp_path):
    root = tmp_path / "reference"
    text = reference.chapter_time("01_first", root)
    assert "no reference run and no price yet" in text.splitlines()[0]
    _fake_reference(root)
    (root / "costs").mkdir()
    (root / "costs" / "full.json").write_text(json.dumps({"01_first": {"train_flops": 16 * 10**15, "fits": []}}))
    quick, full = reference.chapter_time("01_first", root).splitlines()
    assert quick.startswith("quick  5.0 min measured on Test CPU (2 cores), 2026-01-01; 2 PFLOP of training")
    # 16 PFLOP at 16 TFLOP/s is 1,000 s on a T4; at 80 TFLOP/s 200 s on an A100
    assert "about 16.7 min on a T4, 3.3 min on an A100 (estimates at 16 and 80 TFLOP/s sustained)" in full
    assert "measured" not in full


def test_cost_table_has_a_row_per_chapter_and_labels_estimates(chapters, tmp_path):
    root = tmp_path / "reference"
    _fake_reference(root, seconds=45.0, flops=8 * 10**14)
    table = reference.cost_markdown(root)
    rows = [line for line in table.splitlines() if line.startswith("| 0")]
    assert [row.split(" | ")[0] for row in rows] == ["| 01_first", "| 02_second"]
    assert rows[0] == "| 01_first | 0.8 | 50 s | 10 s | 45 s (Test CPU (2 cores)) | – | – | – | – |"
    assert rows[1].count("–") == 8
    assert "estimates" in table and "not measurements" in table


# ----------------------------------------------------------------------------- the committed reference

#: The model(s) each chapter is about: their committed ``quick`` runs must reach this test accuracy.
QUICK_TARGET = 0.80
CHAPTER_MODELS = {
    "01_alexnet": ["alexnet"], "02_vgg": ["vgg11_w4"], "03_nin": ["nin"], "04_googlenet": ["googlenet"],
    "05_batch_norm": ["bn_lenet"], "06_resnet": ["resnet18"],  # the concise BN-LeNet: the same network
    "07_inception_v2_v3": ["inception_bn", "inception_v3"],
    "07_inception_v4_resnet": ["inception_v4", "inception_resnet_v1", "inception_resnet_v2"],
    "09_competition": ["competition-fashion-mnist-resnet18-seed0"],  # model 0 of the ensemble
}
QUICK = reference.REFERENCE_ROOT / "quick-cpu"


def test_the_committed_quick_reference_covers_every_chapter_within_ten_minutes():
    runs = reference.load_runs(QUICK)
    assert sorted(runs) == reference.chapter_names(), "run: python -m utils.reference quick"
    slow = {chapter: run["seconds"] for chapter, run in runs.items() if run["seconds"] > 600}
    assert not slow, f"quick chapters over 10 minutes: {slow}"
    assert reference.load_machine(QUICK)["gpu"] is None


@pytest.mark.parametrize("chapter, names", sorted(CHAPTER_MODELS.items()))
def test_each_chapters_model_learns_under_quick(chapter, names):
    histories = reference.history_files(QUICK)
    for name in names:
        path = histories.get(f"{name}-quick")
        assert path is not None and path.parent.parent.name == chapter, f"{chapter} saved no {name} history"
        data = json.loads(path.read_text())
        assert data["meta"]["profile"] == "quick"
        # Chapter 09 evaluates on a validation split during training and records the score on
        # the test set afterwards; every other chapter's test_acc is the full test set's.
        accuracy = data["meta"].get("test_set_accuracy", data["test_acc"][-1])
        assert data["meta"].get("test_set_size", 10_000) == 10_000
        assert accuracy >= QUICK_TARGET, f"{name}: {accuracy:.3f} < {QUICK_TARGET}"


def test_no_full_chapter_costs_more_than_twice_chapter_01():
    costs = reference.load_costs("full")
    missing = set(reference.chapter_names()) - set(costs)
    assert not missing, f"run: python -m utils.reference full {' '.join(sorted(missing))} --price"
    limit = 2 * costs["01_alexnet"]["train_flops"]
    over = {chapter: f"{cost['train_flops'] / limit * 2:.2f}x chapter 01" for chapter, cost in costs.items()
            if cost["train_flops"] > limit}
    assert not over, over


def test_kept_notebooks_get_their_time_cell_recomputed(chapters, tmp_path):
    root = tmp_path / "reference"
    folder = _fake_reference(root, chapter="01_first", seconds=120.0)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(reference.chapter_time('01_first'))")])
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", name="stdout", text="stale\n")]
    nbformat.write(nb, folder / "01_first" / "notebook.ipynb")
    assert reference.refresh_chapter_times(root) == 1
    text = nbformat.read(folder / "01_first" / "notebook.ipynb", as_version=4).cells[0].outputs[0]["text"]
    assert text.startswith("quick  2.0 min measured on Test CPU (2 cores)") and "stale" not in text


def test_reference_outputs_go_into_todays_prose_unless_the_code_changed(chapters, tmp_path):
    folder = tmp_path / "ref"
    reference.run_all("smoke", out=folder, log=lambda *_: None)
    nb = nbformat.read(chapters / "01_first.ipynb", as_version=4)
    nb.cells.insert(0, nbformat.v4.new_markdown_cell("new prose"))
    nbformat.write(nb, chapters / "01_first.ipynb")
    merged = reference.with_reference_outputs(chapters / "01_first.ipynb", folder)
    assert merged.cells[0].source == "new prose" and "done first" in merged.cells[1].outputs[0]["text"]
    assert reference.stale_chapters(folder) == []
    nb.cells[1].source += "\nprint('changed')"
    nbformat.write(nb, chapters / "01_first.ipynb")
    assert reference.with_reference_outputs(chapters / "01_first.ipynb", folder) is None
    assert reference.stale_chapters(folder) == ["01_first"]


def test_the_committed_quick_reference_ran_todays_code():
    assert reference.stale_chapters(QUICK) == [], "code changed since its reference run: rerun those chapters"
