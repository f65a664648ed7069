"""Chapter 09: on-device augmentation, test-time augmentation, the submission file."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from utils.models import (RandomCropFlip, flip_tta_probabilities, predict_probabilities,
                          score_submission, write_submission)


# --------------------------------------------------------------------- augmentation

@pytest.mark.parametrize("shape", [(5, 1, 28, 28), (3, 3, 32, 32), (2, 1, 96, 96)])
def test_augmentation_keeps_shape_dtype_device(shape):
    x = torch.rand(shape)
    out = RandomCropFlip(padding=4)(x)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device


def test_augmentation_is_deterministic_per_seed():
    x = torch.rand(16, 1, 28, 28)
    assert torch.equal(RandomCropFlip(seed=5)(x), RandomCropFlip(seed=5)(x))
    assert not torch.equal(RandomCropFlip(seed=5)(x), RandomCropFlip(seed=6)(x))
    transform = RandomCropFlip(seed=5)
    assert not torch.equal(transform(x), transform(x))  # a new draw on every call (every epoch)


def test_augmentation_identity_and_flip():
    x = torch.rand(16, 3, 20, 20)
    assert torch.equal(RandomCropFlip(padding=0, flip=False)(x), x)
    flipped_or_not = RandomCropFlip(padding=0, seed=2)(x)
    kinds = [torch.equal(a, b) for a, b in zip(flipped_or_not, x)]
    assert all(same or torch.equal(a, b.flip(-1)) for same, a, b in zip(kinds, flipped_or_not, x))
    assert 0 < sum(kinds) < len(kinds)  # some flipped, some not


def test_augmentation_is_a_window_of_the_padded_image():
    x = torch.rand(12, 1, 10, 10)
    out = RandomCropFlip(padding=3, flip=False, seed=1)(x)
    padded = F.pad(x, (3, 3, 3, 3))
    for o, p in zip(out, padded):
        assert any(torch.equal(o, p[:, dy:dy + 10, dx:dx + 10]) for dy in range(7) for dx in range(7))


def test_augmentation_reaches_every_shift_and_flip():
    copies = torch.rand(1, 1, 12, 12).expand(2000, 1, 12, 12)
    views = {tuple(v.flatten().tolist()) for v in RandomCropFlip(padding=2, seed=0)(copies)}
    assert len(views) == 5 * 5 * 2


# --------------------------------------------------------------------- TTA

def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()


def test_tta_is_mean_of_two_views():
    net, x = small_net(), torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        expected = (F.softmax(net(x), 1) + F.softmax(net(x.flip(-1)), 1)) / 2
        torch.testing.assert_close(flip_tta_probabilities(net, x), expected)
        torch.testing.assert_close(flip_tta_probabilities(net, x).sum(1), torch.ones(5))


def test_tta_leaves_symmetric_images_unchanged():
    net, x = small_net(), torch.rand(5, 1, 8, 8)
    symmetric = (x + x.flip(-1)) / 2
    with torch.no_grad():
        torch.testing.assert_close(flip_tta_probabilities(net, symmetric), F.softmax(net(symmetric), 1))


def test_predict_probabilities_over_a_loader():
    net = small_net().train()
    batches = [(torch.rand(4, 1, 8, 8), torch.zeros(4)), (torch.rand(2, 1, 8, 8), torch.zeros(2))]
    probs = predict_probabilities(net, batches, tta=True)
    assert probs.shape == (6, 3) and net.training  # mode restored
    with torch.no_grad():
        torch.testing.assert_close(probs[:4], flip_tta_probabilities(net.eval(), batches[0][0]))


# --------------------------------------------------------------------- submission

def test_submission_format_and_round_trip(tmp_path):
    classes = ["t-shirt", "trouser", "bag"]
    path = write_submission(tmp_path / "submission.csv", torch.tensor([2, 0, 1, 1]), classes)
    lines = path.read_text().splitlines()
    assert lines == ["id,label", "1,bag", "2,t-shirt", "3,trouser", "4,trouser"]  # Kaggle: id,label
    assert score_submission(path, [2, 0, 1, 0], classes) == 0.75


@pytest.mark.parametrize("text, message", [
    ("label,id\n1,bag\n", "first line"),
    ("id,label\n1,bag\n", "1 predictions for 2"),
    ("id,label\n1,bag\n3,bag\n", "line 3"),
    ("id,label\n1,bag\n2,hat\n", "line 3"),
])
def test_malformed_submissions_are_rejected(tmp_path, text, message):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        score_submission(path, [2, 2], ["t-shirt", "trouser", "bag"])


# --------------------------------------------------------------------- the final grid of each stem

@pytest.mark.parametrize("small_input, side, grid", [(True, 28, 4), (True, 32, 4), (False, 32, 1), (False, 96, 3)])
def test_final_grid_of_the_two_stems(small_input, side, grid):
    from utils.models import resnet18
    with torch.device("meta"):
        net = resnet18(small_input=small_input).eval()
        features = net.forward_features(torch.zeros(1, 1, side, side))
    assert tuple(features.shape[-2:]) == (grid, grid)
