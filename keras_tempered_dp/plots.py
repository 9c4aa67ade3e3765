"""Plots: the tempered-sigmoid family, and test accuracy against epsilon."""

import matplotlib

matplotlib.use("Agg")  # files only; no display needed

import matplotlib.pyplot as plt
import numpy as np

from keras_tempered_dp.activations import tempered_sigmoid


def plot_activations(triples=((2, 2, 1), (1, 1, 0), (2, 1, 1), (3, 4, 1.5)),
                     path="tempered_sigmoids.png", x_range=(-4, 4)):
    """Draws ``s * sigmoid(T x) - o`` for each (s, T, o), with ReLU for scale.

    Returns the path written.
    """
    x = np.linspace(*x_range, 401).astype("float32")
    fig, ax = plt.subplots(figsize=(6, 4))
    for s, T, o in triples:
        label = f"s={s:g}, T={T:g}, o={o:g}"
        if (s, T, o) == (2, 2, 1):
            label += " (tanh)"
        ax.plot(x, np.asarray(tempered_sigmoid(x, s, T, o)), label=label)
    ax.plot(x, np.maximum(x, 0), "k:", label="ReLU")
    ax.set_ylim(-2.5, 3.5)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xlabel("x")
    ax.set_ylabel("phi(x)")
    ax.set_title("Tempered sigmoids  s * sigmoid(T x) - o")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_accuracy_vs_epsilon(runs, path, title=""):
    """One line per run: test accuracy after each epoch against epsilon.

    Args:
        runs: ``{label: results}`` with results as written by ``train``.
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, results in runs.items():
        eps = [e["epsilon"] for e in results["epochs"]]
        acc = [100 * e["val_accuracy"] for e in results["epochs"]]
        ax.plot(eps, acc, marker="o", ms=3, label=label)
    ax.set_xlabel("epsilon (RDP, Poisson sampling)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
