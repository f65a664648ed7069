"""Training FLOPs: counted per example on a meta copy, recorded by fit as the run's planned cost."""
import torch
from torch import nn

from utils import data, profile, train
from tests.conftest import make_fake_fashion_mnist


def small_net():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5),
                         nn.Flatten(), nn.Linear(4 * 28 * 28, 10))


class WithAux(nn.Module):
    """A main head and, in training mode only, an auxiliary one."""
    def __init__(self):
        super().__init__()
        self.body, self.main, self.aux = nn.Flatten(), nn.Linear(28 * 28, 10), nn.Linear(28 * 28, 10)

    def forward(self, x):
        x = self.body(x)
        return (self.main(x), self.aux(x)) if self.training else self.main(x)


def test_per_example_count_is_the_batch_count_halved_and_leaves_the_model_untouched():
    net = small_net()
    net[1].running_mean.fill_(0.25)
    rng = torch.random.get_rng_state()
    per_example = profile.train_flops_per_example(net, (1, 28, 28))
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert torch.equal(net[1].running_mean, torch.full((4,), 0.25)) and net[1].num_batches_tracked == 0
    assert not any(p.is_meta for p in net.parameters()) and all(p.grad is None for p in net.parameters())
    assert per_example == profile.count_train_flops(small_net(), (2, 1, 28, 28)) // 2
    # backward costs about twice the forward: a training example costs about 3 forward passes
    forward = profile.count_flops(small_net(), (1, 1, 28, 28))
    assert 2.5 * forward <= per_example <= 3.5 * forward


def test_auxiliary_heads_count_in_training():
    both = profile.train_flops_per_example(WithAux(), (1, 28, 28))
    main_only = profile.count_train_flops(nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 10)), (2, 1, 28, 28)) // 2
    assert both > 1.9 * main_only


def test_fit_records_the_planned_training_flops(isolated, monkeypatch):
    make_fake_fashion_mnist(isolated / "data", n_train=48, n_test=16)
    train_iter, test_iter = data.fashion_mnist(16)
    monkeypatch.setenv("CNN_MAX_STEPS", "1")  # a dry run: the planned cost is unchanged
    history = train.fit(small_net(), train_iter, test_iter, epochs=2, lr=0.1, progress=False)
    per_example = profile.train_flops_per_example(small_net(), (1, 28, 28))
    assert history.meta["train_flops_per_example"] == per_example
    assert history.meta["train_flops"] == per_example * 48 * 2


def test_every_fit_call_appends_its_cost_to_the_ledger(isolated):
    import json
    make_fake_fashion_mnist(isolated / "data", n_train=48, n_test=16)
    train_iter, test_iter = data.fashion_mnist(16)
    per_example = profile.train_flops_per_example(small_net(), (1, 28, 28))
    train.fit(small_net(), train_iter, test_iter, epochs=2, lr=0.1, progress=False, name="first")
    path = isolated / "results" / "checkpoint.pt"
    train.fit(small_net(), train_iter, test_iter, epochs=1, lr=0.1, progress=False, name="second", checkpoint=path)
    train.fit(small_net(), train_iter, test_iter, epochs=1, lr=0.1, progress=False, name="second", checkpoint=path)
    lines = [json.loads(line) for line in train.cost_ledger_path().read_text().splitlines()]
    assert [(l["name"], l["epochs"]) for l in lines] == [("first", 2), ("second", 1)]  # a full resume trains nothing
    assert lines[0]["train_flops"] == per_example * 48 * 2 and lines[1]["train_flops"] == per_example * 48
    assert lines[0]["seconds"] > 0 and not lines[0]["dry_run"]
