"""Chapter 09's competition helpers: the confusion matrix, a gallery of mistakes, and a
simulated public/private leaderboard.

A Kaggle leaderboard scores every submission on a *public* part of the test set while the
competition runs and on the *private* rest at the end. :func:`leaderboard_study` replays
that split many times over predictions we already have, to measure how much choosing a
submission by its public score overfits the public part.
"""
from __future__ import annotations

import torch
from matplotlib.figure import Figure


def _labels(values) -> torch.Tensor:
    return torch.as_tensor(values).detach().cpu().long().flatten()


def confusion_matrix(predicted, true, num_classes: int) -> torch.Tensor:
    """Counts ``(K, K)``: row = true class, column = predicted class."""
    predicted, true = _labels(predicted), _labels(true)
    if predicted.shape != true.shape:
        raise ValueError(f"{len(predicted)} predictions for {len(true)} labels")
    if len(true) and (min(predicted.min(), true.min()) < 0 or max(predicted.max(), true.max()) >= num_classes):
        raise ValueError(f"class indices must lie in 0..{num_classes - 1}")
    return torch.bincount(true * num_classes + predicted, minlength=num_classes ** 2).view(num_classes, num_classes)


def per_class_recall(matrix: torch.Tensor) -> torch.Tensor:
    """Share of each true class predicted correctly (the diagonal over the row sums)."""
    matrix = matrix.double()
    return matrix.diagonal() / matrix.sum(1).clamp(min=1)


def most_confused(matrix: torch.Tensor, class_names, top: int = 3) -> list[tuple[str, str, int]]:
    """The ``top`` off-diagonal cells: ``(true name, predicted name, count)``, largest first."""
    off = matrix.clone()
    off.fill_diagonal_(0)
    values, flat = off.flatten().sort(descending=True)
    k = matrix.shape[0]
    return [(class_names[int(i) // k], class_names[int(i) % k], int(v))
            for v, i in zip(values[:top], flat[:top]) if v > 0]


def confusion_figure(matrix: torch.Tensor, class_names, *, title: str | None = None) -> Figure:
    """The matrix as a heat map with its counts; rows true, columns predicted."""
    k = matrix.shape[0]
    figure = Figure(figsize=(0.55 * k + 2.2, 0.5 * k + 1.6), layout="constrained")
    ax = figure.subplots()
    ax.imshow(matrix.numpy(), cmap="Blues")
    threshold = matrix.max().item() / 2
    for i in range(k):
        for j in range(k):
            value = int(matrix[i, j])
            ax.text(j, i, str(value), ha="center", va="center", fontsize=7,
                    color="white" if value > threshold else "black")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set(xlabel="predicted class", ylabel="true class")
    if title:
        ax.set_title(title)
    return figure


def misclassified(probabilities: torch.Tensor, true, limit: int | None = None) -> torch.Tensor:
    """Indices of the wrong predictions, the most confident mistakes first."""
    probabilities, true = probabilities.detach().cpu(), _labels(true)
    confidence, predicted = probabilities.max(1)
    wrong = torch.nonzero(predicted != true).flatten()
    order = confidence[wrong].argsort(descending=True, stable=True)
    return wrong[order][:limit]


def gallery_figure(images: torch.Tensor, true, predicted, class_names, *, columns: int = 8,
                   title: str | None = None) -> Figure:
    """Images ``(N, C, H, W)`` (uint8 or float in [0, 1]) titled 'true -> predicted'."""
    n = len(images)
    rows = max(1, -(-n // columns))
    figure = Figure(figsize=(1.25 * columns, 1.45 * rows + 0.3), layout="constrained")
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, image, t, p in zip(axes.flat, images, _labels(true), _labels(predicted)):
        picture = image.detach().cpu().float().permute(1, 2, 0).squeeze(-1)
        picture = picture / 255 if image.dtype == torch.uint8 else picture
        ax.imshow(picture.numpy(), cmap="gray_r" if picture.dim() == 2 else None)
        ax.set_title(f"{class_names[int(t)]}\n-> {class_names[int(p)]}", fontsize=7)
    if n == 0:
        axes.flat[0].text(0.5, 0.5, "no mistakes", ha="center", va="center")
    if title:
        figure.suptitle(title, fontsize=9)
    return figure


# ----------------------------------------------------------------------------- leaderboard

def public_private_split(n: int, public_fraction: float = 0.3, seed: int = 0):
    """Indices ``(public, private)`` of a test set of ``n`` examples, drawn at random."""
    if not 0 < public_fraction < 1:
        raise ValueError(f"public_fraction must lie strictly between 0 and 1, got {public_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = max(1, min(n - 1, round(public_fraction * n)))
    return order[:cut].sort().values, order[cut:].sort().values


def split_scores(correct: torch.Tensor, public, private):
    """Public and private accuracy of every submission; ``correct`` is ``(S, N)`` booleans."""
    correct = correct.float()
    return correct[:, public].mean(1), correct[:, private].mean(1)


def leaderboard_study(correct: torch.Tensor, public_fraction: float = 0.3, splits: int = 1000,
                      seed: int = 0) -> dict:
    """Choose the public winner among ``S`` submissions on ``splits`` random public/private
    splits of the test set. ``correct[s, i]``: submission ``s`` got example ``i`` right.

    Returns the share of splits where the public winner is also the private winner, the mean
    public-minus-private gap of the chosen submission, the mean private accuracy it loses
    against the private winner (``regret``), the mean gap of all submissions (no choice: about
    zero), and how often each submission was chosen. A tie for the private best counts as
    the same winner.
    """
    correct = torch.as_tensor(correct).bool()
    if correct.dim() != 2 or correct.shape[0] < 2:
        raise ValueError("correct must be (submissions >= 2, examples)")
    same, gaps, regrets, any_gaps = 0, [], [], []
    chosen_counts = torch.zeros(correct.shape[0], dtype=torch.long)
    for k in range(splits):
        public, private = public_private_split(correct.shape[1], public_fraction, seed + k)
        public_acc, private_acc = split_scores(correct, public, private)
        chosen = int(public_acc.argmax())  # ties: the first submission listed
        chosen_counts[chosen] += 1
        same += bool(private_acc[chosen] == private_acc.max())
        gaps.append(float(public_acc[chosen] - private_acc[chosen]))
        regrets.append(float(private_acc.max() - private_acc[chosen]))
        any_gaps.append(float((public_acc - private_acc).mean()))
    return {"same_winner": same / splits, "mean_gap": sum(gaps) / splits,
            "mean_regret": sum(regrets) / splits, "mean_gap_all": sum(any_gaps) / splits,
            "chosen_counts": chosen_counts.tolist(),
            "splits": splits}
