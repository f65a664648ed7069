"""The d2l-vs-utils benchmark: same models, same examples, offline data for the book's loader,
a clear message without d2l, and each measurement path run once on tiny fake data."""
from __future__ import annotations

import sys

import pytest
import torch

from benchmarks import d2l_vs_utils as bench
from tests.conftest import make_fake_fashion_mnist
from utils import data, profile


@pytest.fixture
def tiny_data(isolated, monkeypatch):
    """Fake Fashion-MNIST (80 train / 40 test images) and the benchmark's folders in tmp_path."""
    make_fake_fashion_mnist(isolated / "data", n_train=80, n_test=40)
    monkeypatch.setattr(bench, "OUT", isolated / "out")
    monkeypatch.setattr(bench, "D2L_DATA", isolated / "out" / "data")
    monkeypatch.setattr(bench, "D2L_WORKDIR", isolated / "out" / "work")
    monkeypatch.chdir(isolated)  # run_d2l changes directory; monkeypatch restores it
    yield isolated


def tiny(name="data-bound", **changes):
    defaults = dict(train_subset=64, test_subset=32, batch_size=8)
    return bench.replace(bench.SETTINGS[name], **{**defaults, **changes})


def test_bn_lenet_is_d2l_concise_bn_lenet():
    net = bench.bn_lenet()
    # D2L 8.5, concise BN-LeNet (no padding, so 16*4*4 into the first linear layer):
    # convs 156 + 2,416, linears 30,840 + 10,164 + 850, batch norms 2 x (6 + 16 + 120 + 84)
    assert profile.count_params(net) == 156 + 2_416 + 30_840 + 10_164 + 850 + 2 * (6 + 16 + 120 + 84) == 44_878
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_small_vgg_shapes_and_flops():
    net = bench.small_vgg(64)
    assert net(torch.zeros(2, 1, 64, 64)).shape == (2, 10)
    forward = profile.count_flops(net, (1, 1, 64, 64))
    train_flops = profile.train_flops_per_example(net, (1, 64, 64))
    assert 2.5 * forward < train_flops <= 3 * forward  # backward ~ 2x forward


def test_subset_indices_match_utils_data(tiny_data):
    arrays = data.load_arrays()
    for total, key, seed in ((80, "train", 0), (40, "test", 1)):
        index = bench.subset_indices(total, 10, seed)
        images, labels = data._subset(arrays[f"{key}_images"], arrays[f"{key}_labels"], 10, seed)
        assert torch.equal(arrays[f"{key}_labels"][index], labels)
        assert torch.equal(arrays[f"{key}_images"][index], images)
    assert bench.subset_indices(80, None, 0) is None and bench.subset_indices(80, 80, 0) is None


def test_seeds_change_the_shuffling_but_not_the_subsets(tiny_data):
    chosen = tiny("compute-bound", side=32, train_subset=40)
    (a, test_a), (b, test_b) = bench.our_data(chosen, 0), bench.our_data(chosen, 1)
    assert torch.equal(a.labels, b.labels) and torch.equal(test_a.labels, test_b.labels)
    assert not torch.equal(next(iter(a))[1], next(iter(b))[1])


def test_restrict_loader_keeps_the_books_settings():
    dataset = torch.utils.data.TensorDataset(torch.arange(20))
    loader = torch.utils.data.DataLoader(dataset, 4, shuffle=True, num_workers=0)
    assert bench.restrict_loader(loader, None, True) is loader
    smaller = bench.restrict_loader(loader, torch.tensor([1, 3, 5]), shuffle=False)
    assert smaller.batch_size == 4 and smaller.num_workers == 0
    assert [int(x) for (batch,) in smaller for x in batch] == [1, 3, 5]


def test_prepare_d2l_data_works_offline_with_torchvision(tiny_data):
    torchvision = pytest.importorskip("torchvision")
    raw = bench.prepare_d2l_data()
    assert sorted(p.name for p in raw.iterdir()) == sorted(n.removesuffix(".gz") for n in data.FILES.values())
    # torchvision finds the decompressed files and does not try to download
    dataset = torchvision.datasets.FashionMNIST(root=str(bench.D2L_DATA), train=True, download=True)
    arrays = data.load_arrays()
    assert torch.equal(dataset.data, arrays["train_images"][:, 0])
    assert torch.equal(dataset.targets, arrays["train_labels"])


def test_clear_message_without_d2l(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "d2l", None)  # makes `import d2l` fail
    with pytest.raises(bench.D2LMissing, match="pip install --no-deps d2l==1.0.3"):
        bench.import_d2l()
    assert bench.run_worker("d2l", "data-bound", quick=True) == 3
    assert "d2l is not installed" in capsys.readouterr().err


def test_quick_settings_are_small_and_keep_five_batches():
    for name in bench.SETTINGS:
        quick = bench.setting(name, quick=True)
        assert quick.train_subset <= 2_560 and quick.test_subset <= 1_000
        assert quick.train_subset // quick.batch_size >= 5  # train_ch6 divides by num_batches // 5


def test_bare_side_runs_in_fits_layout(tiny_data):
    result = bench.run_bare(tiny("compute-bound", side=32))
    assert result["loop"] == "bare" and result["train_examples"] == 64 and 0 <= result["test_acc"] <= 1


def test_jupyter_rendering_times_the_live_plot_inside_fit(tiny_data):
    train_iter, test_iter = data.fashion_mnist(8, train_subset=64, test_subset=32, device="cpu")
    with bench.jupyter_rendering() as drawing:
        bench.train.fit(bench.bn_lenet(), train_iter, test_iter, epochs=1, lr=0.1, progress="notebook")
    assert len(drawing) >= 1 and all(seconds >= 0 for seconds in drawing)  # at least the final draw
    import IPython.display
    from utils.plot import LivePlot
    assert IPython.display.display.__module__ != bench.__name__  # restored afterwards
    assert LivePlot.update.__module__ == "utils.plot"


def test_utils_side_runs(tiny_data):
    result = bench.run_utils(tiny())
    assert result["loop"] == "utils" and result["train_examples"] == 64
    assert result["wall"] > 0 and 0 <= result["test_acc"] <= 1
    assert not (bench.OUT / "checkpoints" / "data-bound.pt").exists()  # cleaned up


def test_d2l_side_runs_on_the_same_examples(tiny_data):
    pytest.importorskip("d2l")
    result = bench.run_d2l(tiny())
    assert result["loop"] == "d2l" and result["train_examples"] == 64
    assert 0 <= result["test_acc"] <= 1 and result["train_only_examples_per_sec"] > 0


def test_overhead_parts_and_report(tiny_data):
    parts = bench.overhead(tiny(), repeats=1)
    assert set(parts) == {"data", "bare_train", "evaluate", "fit_terminal", "fit_notebook", "live_plot",
                          "bookkeeping", "checkpoint"}
    assert all(seconds > 0 for seconds in parts.values())
    report = "\n".join(bench.overhead_report(tiny(), parts))
    assert "What fit adds" in report and "checkpoint.save" in report


def test_summary_medians_and_speedup():
    walls = {"d2l": (10, 12, 11), "utils": (4, 5, 6), "bare": (4, 4, 5)}
    runs = [{"loop": loop, "wall": wall, "train_examples": 100, "test_acc": 0.8,
             "train_only_examples_per_sec": 50.0 if loop != "bare" else None}
            for repeat in range(3) for loop, wall in ((loop, walls[loop][repeat]) for loop in bench.LOOPS)]
    summary = bench.summarise(tiny(), runs, train_flops=10**9, peak=100.0)
    assert summary["d2l"]["wall"] == 11 and summary["utils"]["wall"] == 5 and summary["bare"]["wall"] == 4
    assert summary["speedup"] == summary["utils"]["speedup"] == pytest.approx(2.2)
    assert summary["bare"]["speedup"] == pytest.approx(11 / 4)
    assert summary["utils"]["speedup_per_repeat"] == pytest.approx([10 / 4, 12 / 5, 11 / 6])
    assert summary["fit_over_bare"] == pytest.approx(5 / 4)
    assert summary["utils"]["gflops"] == pytest.approx(100 * 1.0 / 5)
    assert summary["utils"]["share_of_peak"] == pytest.approx(0.2) and summary["peak"] == 100.0


PARTS = dict.fromkeys(("data", "bare_train", "evaluate", "fit_terminal", "fit_notebook", "live_plot",
                       "bookkeeping", "checkpoint"), 1.0)


def test_overhead_report_names_the_layout_fit_chooses():
    compute_bound = tiny("compute-bound", side=32)  # small VGG: 16-channel first convolution
    assert "memory layout channels-last" in bench.overhead_report(compute_bound, PARTS)[0]
    assert "memory layout default (NCHW)" in bench.overhead_report(tiny(), PARTS)[0]  # BN-LeNet: 6


def test_markdown_reports_the_overhead_of_every_configuration():
    args = bench.argparse.Namespace(argv=["--quick"], repeats=1, quick=True)
    overheads = {name: (tiny(name), PARTS) for name in bench.SETTINGS}
    text = bench.markdown({}, overheads, args, "2026-01-01 00:00")
    assert all(f"Where fit's time goes ({name}" in text for name in bench.SETTINGS)


def test_bookkeeping_replays_one_epoch_of_fits_per_batch_work(tiny_data, monkeypatch):
    train_iter, _ = data.fashion_mnist(8, train_subset=64, device="cpu")
    added = []
    original = bench.train.RunningMetrics.add
    monkeypatch.setattr(bench.train.RunningMetrics, "add",
                        lambda self, *batch: (added.append(len(batch[-1])), original(self, *batch)))
    seconds = bench.bookkeeping(bench.bn_lenet(), train_iter, stored=3)
    assert seconds > 0 and added == [8] * len(train_iter)  # every batch of the epoch


def test_bookkeeping_runs_fits_own_epoch_loop(tiny_data, monkeypatch):
    """The timed loop is ``train.train_epoch`` itself, not a copy of it."""
    train_iter, _ = data.fashion_mnist(8, train_subset=64, device="cpu")
    epochs = []
    original = bench.train.train_epoch
    monkeypatch.setattr(bench.train, "train_epoch", lambda *a, **k: (epochs.append(1), original(*a, **k))[1])
    bench.bookkeeping(bench.bn_lenet(), train_iter, stored=3)
    assert epochs == [1]
