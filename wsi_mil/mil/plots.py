"""ROC curves and confusion matrices of the out-of-fold predictions, as PNG (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsi_mil.store.atomic import atomic_output


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_roc(path: Path, y_true: np.ndarray, probs: np.ndarray, classes: list[str], *, title: str) -> Path:
    """One curve per fold-pooled class (one-vs-rest; only the positive class for two classes)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _figure()
    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    targets = [1] if len(classes) == 2 else range(len(classes))
    for c in targets:
        positive = (np.asarray(y_true) == c).astype(int)
        if positive.min() == positive.max():
            continue
        fpr, tpr, _ = roc_curve(positive, probs[:, c])
        ax.plot(fpr, tpr, label=f"{classes[c]} (AUC {roc_auc_score(positive, probs[:, c]):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title, xlim=(0, 1), ylim=(0, 1.01))
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "undefined: the test slides hold one class", ha="center", va="center", fontsize=8)
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def plot_confusion(path: Path, y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], *, title: str) -> Path:
    from sklearn.metrics import confusion_matrix

    plt = _figure()
    matrix = confusion_matrix(y_true, y_pred, labels=list(range(len(classes))))
    size = 2.5 + 0.5 * len(classes)
    fig, ax = plt.subplots(figsize=(size, size), dpi=120)
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center", color="white" if value > matrix.max() / 2 else "black")
    ax.set(
        xticks=range(len(classes)),
        yticks=range(len(classes)),
        xticklabels=classes,
        yticklabels=classes,
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path
