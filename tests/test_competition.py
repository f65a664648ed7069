"""utils.competition: confusion matrix, mistakes gallery, simulated public/private leaderboard."""
import pytest
import torch

from utils import competition


def test_confusion_matrix_counts_true_rows_predicted_columns():
    true = torch.tensor([0, 0, 1, 2, 2, 2])
    predicted = torch.tensor([0, 1, 1, 2, 0, 2])
    matrix = competition.confusion_matrix(predicted, true, 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert matrix.sum() == len(true) and matrix.trace() == 4  # correct predictions on the diagonal
    assert matrix.sum(1).tolist() == torch.bincount(true, minlength=3).tolist()
    torch.testing.assert_close(competition.per_class_recall(matrix), torch.tensor([0.5, 1.0, 2 / 3], dtype=torch.float64))


def test_confusion_matrix_rejects_bad_input():
    with pytest.raises(ValueError, match="predictions for"):
        competition.confusion_matrix([0, 1], [0], 2)
    with pytest.raises(ValueError, match="0..1"):
        competition.confusion_matrix([0, 2], [0, 1], 2)


def test_confusion_matrix_matches_a_loop():
    generator = torch.Generator().manual_seed(0)
    true, predicted = torch.randint(0, 5, (200,), generator=generator), torch.randint(0, 5, (200,), generator=generator)
    loop = torch.zeros(5, 5, dtype=torch.long)
    for t, p in zip(true, predicted):
        loop[t, p] += 1
    assert torch.equal(competition.confusion_matrix(predicted, true, 5), loop)


def test_most_confused_and_misclassified_order():
    matrix = torch.tensor([[5, 3, 0], [1, 4, 0], [0, 7, 2]])
    assert competition.most_confused(matrix, ["a", "b", "c"], top=2) == [("c", "b", 7), ("a", "b", 3)]
    probabilities = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.7, 0.3]])
    true = torch.tensor([1, 1, 0, 1])  # wrong: 0 (conf 0.9), 2 (0.8), 3 (0.7)
    assert competition.misclassified(probabilities, true).tolist() == [0, 2, 3]
    assert competition.misclassified(probabilities, true, limit=2).tolist() == [0, 2]


@pytest.mark.parametrize("shape", [(5, 1, 28, 28), (3, 3, 32, 32), (0, 1, 28, 28)])
def test_figures_draw(shape):
    images = torch.randint(0, 256, shape, dtype=torch.uint8)
    labels = torch.zeros(shape[0], dtype=torch.long)
    figure = competition.gallery_figure(images, labels, labels + 1, ["a", "b"], columns=4)
    drawn = [ax for ax in figure.axes if ax.images]
    assert len(drawn) == shape[0]
    assert all(ax.get_title().startswith("a\n-> b") for ax in drawn)
    matrix_figure = competition.confusion_figure(torch.eye(3, dtype=torch.long), ["a", "b", "c"])
    assert len(matrix_figure.axes[0].texts) == 9


def test_public_private_split_is_a_fixed_partition():
    public, private = competition.public_private_split(1000, 0.3, seed=4)
    assert len(public) == 300 and len(private) == 700
    assert sorted(public.tolist() + private.tolist()) == list(range(1000))
    assert torch.equal(public, competition.public_private_split(1000, 0.3, seed=4)[0])
    with pytest.raises(ValueError):
        competition.public_private_split(10, 1.0)


def test_leaderboard_study_identical_submissions_never_overfit():
    correct = torch.rand(1, 500, generator=torch.Generator().manual_seed(0)) < 0.9
    study = competition.leaderboard_study(correct.expand(3, 500), splits=50)
    assert study["same_winner"] == 1.0 and study["mean_regret"] == 0.0
    assert study["chosen_counts"] == [50, 0, 0]  # ties go to the first


def test_leaderboard_study_equal_submissions_overfit_the_public_part():
    # ten submissions of the same true accuracy, independent mistakes: the public winner is
    # only chance, and its public score is optimistic
    correct = torch.rand(10, 2000, generator=torch.Generator().manual_seed(1)) < 0.9
    study = competition.leaderboard_study(correct, splits=200)
    assert study["same_winner"] < 0.5
    assert study["mean_gap"] > 0.005 and abs(study["mean_gap_all"]) < 0.002
    assert study["mean_regret"] > 0 and sum(study["chosen_counts"]) == 200


def test_leaderboard_study_finds_a_clearly_better_submission():
    generator = torch.Generator().manual_seed(2)
    correct = torch.stack([torch.rand(2000, generator=generator) < p for p in (0.7, 0.95)])
    study = competition.leaderboard_study(correct, splits=100)
    assert study["same_winner"] == 1.0 and study["chosen_counts"] == [0, 100]
