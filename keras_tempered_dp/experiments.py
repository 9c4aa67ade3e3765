"""Reproductions as data: the paper's table and De et al.'s recipe.

An experiment is a list of runs (each a label, a reference accuracy and
:func:`~keras_tempered_dp.training.train` settings) at one or more target
epsilons; :func:`reproduce` trains each, then writes ``table.md``,
``accuracy_vs_epsilon.png`` and ``rows.json``. Every epsilon is the run's
own: the noise is calibrated for each run's steps under Poisson
subsampling (delta 1e-5), which is how its batches are drawn.

``recipe="paper"`` (Papernot et al., AAAI 2021): the same CNN with tanh
and with ReLU at the paper's epsilon. The paper's per-dataset
hyperparameters are not published; the settings are Tramer & Boneh's (ICLR
2021) for the same tanh CNNs (SGD, momentum 0.9, clip 0.1), used for both
activations (ReLU is not tuned separately).

``recipe="scale"`` (De et al. 2022, with tempered sigmoids):

* ``fashion_mnist``: the paper's CNN with tanh against the tempered sigmoid
  (2, 2, 1) with augmentation multiplicity K = 4 (crops after 2-pixel
  padding, flips) and an EMA, at epsilon 2.7;
* ``cifar10``: De et al.'s WRN-16-4 setting (batch 4096 by accumulation,
  K = 16, EMA 0.9999, SGD lr 2 without momentum, clip 1, about 2500
  steps) at epsilon 1, 2, 4 and 8; days of CPU time, meant for a GPU;
* ``digits``: a seconds-long smoke version of the Fashion-MNIST comparison.

``recipe="transformer"`` and ``recipe="recurrent"`` (beyond the paper):
does its finding hold beyond CNNs? A small ViT with its MLP activation set
to GELU, ReLU, tanh and a tempered sigmoid, and an LSTM reading an image
row by row (tanh against ReLU), at the paper's Fashion-MNIST epsilon; run
with ``seeds=`` for medians over several seeds.

``recipe="scatternet"`` (Tramer and Boneh, ICLR 2021): ScatterNet features
(J=2, L=8, group-normalized, computed once) under a linear model and under
their small CNN (tanh, and ReLU beside it), next to the paper's end-to-end
CNN, all at the paper's epsilon. Their Fashion-MNIST settings: linear batch
8192, learning rate 16; CNN batch 2048, learning rate 4 (the end-to-end
CNN's); SGD momentum 0.9, clip 0.1, 40 epochs. ``digits``: the smoke
version.

Example:

>>> [run.label for run in experiment("paper", "mnist").runs]
['tanh', 'relu']
>>> experiment("scale", "cifar10").epsilons
(1.0, 2.0, 4.0, 8.0)
"""

import dataclasses
import json
import os
import statistics

from keras_tempered_dp.plots import plot_accuracy_vs_epsilon
from keras_tempered_dp.privacy.accounting import (
    accountant_name,
    check_accountant,
)
from keras_tempered_dp.training import train
from keras_tempered_dp.training.results import write_json

DELTA = 1e-5
_MOMENTUM = dict(momentum=0.9, l2_norm_clip=0.1)


@dataclasses.dataclass(frozen=True)
class Run:
    """One row: a label, the published accuracy to compare with (by
    epsilon, or one number), and train() settings."""

    label: str
    settings: dict
    reference: None | float | dict[float, float] = None

    def reference_at(self, epsilon):
        if isinstance(self.reference, dict):
            return self.reference.get(epsilon)
        return self.reference


@dataclasses.dataclass(frozen=True)
class Experiment:
    title: str
    epsilons: tuple[float, ...]
    runs: tuple[Run, ...]


def _paper(epsilon, paper, **settings):
    """tanh and ReLU with the same settings at the paper's epsilon."""
    settings = dict(_MOMENTUM, **settings)
    return Experiment(
        "tempered sigmoid (tanh) against ReLU under DP-SGD", (epsilon,),
        tuple(Run(a, dict(settings, activation=a), paper.get(a))
              for a in ("tanh", "relu")))


_FASHION = dict(batch_size=2048, learning_rate=4.0, epochs=40)
_SCATTER_LINEAR = dict(_MOMENTUM, model="scatternet_linear",
                       batch_size=8192, learning_rate=16.0, epochs=40)


# A small ViT (vit(): 16 tokens of width 64, 2 blocks) and the sequential
# LSTM (28 steps of 28 pixels, width 128): SGD with momentum, clip 1.
_SEQUENCE = dict(batch_size=1024, learning_rate=0.5, momentum=0.9,
                 l2_norm_clip=1.0, epochs=10)
_SEQUENCE_DIGITS = dict(_SEQUENCE, batch_size=64, epochs=3)


def _transformer(epsilon, settings):
    """The ViT with its MLP activation set to GELU (ViT's own), ReLU, tanh
    and the tempered sigmoid (2, 1, 1) = tanh(x / 2); (2, 2, 1) is tanh."""
    vit = dict(settings, model="vit")
    return Experiment(
        "the MLP activation of a ViT under DP-SGD", (epsilon,), tuple(
            Run(label, dict(vit, **act)) for label, act in (
                ("ViT, GELU", dict(activation="gelu")),
                ("ViT, ReLU", dict(activation="relu")),
                ("ViT, tanh", dict(activation="tanh")),
                ("ViT, tempered sigmoid (2, 1, 1)",
                 dict(activation="tempered_sigmoid", s=2.0, T=1.0,
                      o=1.0)))))


def _recurrent(epsilon, settings):
    """The LSTM's cell and output activation (Keras' ``activation=``; the
    gates stay sigmoids): tanh against ReLU."""
    lstm = dict(settings, model="sequence_lstm")
    return Experiment(
        "the activation of an LSTM under DP-SGD (sequential images)",
        (epsilon,), tuple(Run(f"LSTM, {name}", dict(lstm, activation=act))
                          for name, act in (("tanh", "tanh"),
                                            ("ReLU", "relu"))))


def _scatternet(epsilon, references, linear, cnn, end_to_end):
    """ScatterNet + linear, + CNN (tanh, ReLU), and the end-to-end CNN."""
    return Experiment(
        "ScatterNet features (Tramer & Boneh) against end-to-end CNNs, "
        "DP-SGD", (epsilon,), (
            Run("ScatterNet + linear", dict(linear, activation="tanh"),
                references.get("linear")),
            Run("ScatterNet + CNN, tanh",
                dict(cnn, model="scatternet_cnn", activation="tanh"),
                references.get("cnn")),
            Run("ScatterNet + CNN, ReLU",
                dict(cnn, model="scatternet_cnn", activation="relu")),
            Run("end-to-end CNN, tanh", dict(end_to_end, activation="tanh"),
                references.get("end_to_end"))))


RECIPES = {
    "paper": {
        "mnist": _paper(2.93, {"tanh": 98.1, "relu": 96.6},
                        batch_size=512, learning_rate=0.5, epochs=40),
        "fashion_mnist": _paper(2.7, {"tanh": 86.1, "relu": 81.9},
                                **_FASHION),
        "cifar10": _paper(7.53, {"tanh": 66.2, "relu": 61.6},
                          batch_size=1024, learning_rate=1.0, epochs=30),
        # Not in the paper: a minute-long check that the pipeline works.
        "digits": _paper(3.0, {}, batch_size=64, learning_rate=0.5,
                         epochs=15, l2_norm_clip=1.0),
    },
    "scale": {
        "fashion_mnist": Experiment(
            "De et al.'s recipe with tempered sigmoids, DP-SGD", (2.7,), (
                Run("paper CNN, tanh",
                    dict(_MOMENTUM, activation="tanh", **_FASHION), 86.1),
                Run("tempered sigmoid + K=4 augmentation + EMA",
                    dict(_MOMENTUM, activation="tempered_sigmoid",
                         augmentation_multiplicity=4, crop_padding=2,
                         ema_decay=0.999, physical_batch_size=512,
                         **_FASHION)))),
        "cifar10": Experiment(
            "De et al.'s recipe with tempered sigmoids, DP-SGD",
            (1.0, 2.0, 4.0, 8.0), (
                Run("WRN-16-4, tempered sigmoid, De et al. recipe",
                    dict(model="wrn16_4", activation="tempered_sigmoid",
                         batch_size=4096, learning_rate=2.0, momentum=0.0,
                         l2_norm_clip=1.0, epochs=208,
                         augmentation_multiplicity=16, crop_padding=4,
                         ema_decay=0.9999, physical_batch_size=16),
                    # De et al.'s WRN-16-4 with ReLU (their table; eps
                    # 1/2/4 unchecked, see PAPERS.md).
                    {1.0: 56.8, 2.0: 65.9, 4.0: 73.5, 8.0: 79.5}),)),
        "digits": Experiment(
            "De et al.'s recipe with tempered sigmoids, DP-SGD", (3.0,), (
                Run("digits CNN, tanh",
                    dict(activation="tanh", batch_size=64, learning_rate=0.5,
                         momentum=0.9, l2_norm_clip=1.0, epochs=3)),
                Run("tempered sigmoid + K=2 augmentation + EMA",
                    dict(activation="tempered_sigmoid",
                         augmentation_multiplicity=2, crop_padding=1,
                         flip=False, ema_decay=0.9, batch_size=64,
                         learning_rate=0.5, momentum=0.9, l2_norm_clip=1.0,
                         epochs=3, physical_batch_size=32)))),
    },
    "transformer": {
        "fashion_mnist": _transformer(2.7, _SEQUENCE),
        "digits": _transformer(3.0, _SEQUENCE_DIGITS),
    },
    "recurrent": {
        "fashion_mnist": _recurrent(2.7, _SEQUENCE),
        "digits": _recurrent(3.0, _SEQUENCE_DIGITS),
    },
    "scatternet": {
        # Tramer & Boneh's accuracies at epsilon 3 (ours run at 2.7).
        "fashion_mnist": _scatternet(
            2.7, {"linear": 89.7, "cnn": 89.0, "end_to_end": 86.0},
            _SCATTER_LINEAR, dict(_MOMENTUM, **_FASHION),
            dict(_MOMENTUM, **_FASHION)),
        "digits": _scatternet(
            3.0, {}, dict(_SCATTER_LINEAR, batch_size=256, learning_rate=4.0,
                          epochs=15),
            dict(_MOMENTUM, batch_size=64, learning_rate=0.5, epochs=15,
                 l2_norm_clip=1.0),
            dict(_MOMENTUM, batch_size=64, learning_rate=0.5, epochs=15,
                 l2_norm_clip=1.0)),
    },
}


def experiment(recipe, dataset):
    """The :class:`Experiment` for ``recipe`` on ``dataset``."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe={recipe!r}: must be one of "
                         f"{', '.join(RECIPES)}.")
    if dataset not in RECIPES[recipe]:
        raise ValueError(f"dataset={dataset!r}: recipe={recipe!r} has "
                         f"settings for {', '.join(RECIPES[recipe])}.")
    return RECIPES[recipe][dataset]


def reproduce(*, dataset, recipe="paper", activations=None,
              output_dir="runs/reproduce", epochs=None, data_dir=None,
              manual_dir=None, download=True, seed=0, verbose=2,
              command=None, accountant="rdp", model=None, seeds=None):
    """Trains every run of ``experiment(recipe, dataset)``, once per seed.

    Args:
        activations: with ``recipe="paper"``, the activations to compare
            (default tanh and ReLU), each with the same settings.
        epochs: overrides every run's epochs (a quick look).
        model: with ``recipe="paper"``, a registry model instead of the
            dataset's (e.g. ``"scatternet_cnn"``: tanh against ReLU on
            ScatterNet features, at the paper's settings).
        accountant: "rdp" (default, as the paper) or "pld": calibrates each
            run's noise to the target epsilon with that accountant (PLD
            needs less noise for the same epsilon); the folder then ends in
            ``_pld``.
        seeds: several seeds (instead of ``seed``): every run is trained
            once per seed, and the table adds each run's median test
            accuracy over them. Each run is its own release with its own
            epsilon; the seeds do not compose.

    Returns:
        ``(rows, folder)``: one row per run and epsilon, and the folder
        holding ``table.md``, ``accuracy_vs_epsilon.png``, ``rows.json``
        and one training folder per run.
    """
    for name, value in (("activations", activations), ("model", model)):
        if value is not None and recipe != "paper":
            raise ValueError(f"{name}= changes the paper recipe's rows; "
                             f"recipe={recipe!r} has fixed runs.")
    check_accountant(accountant)
    seeds = _check_seeds(seed if seeds is None else seeds, seeds is not None)
    plan = _select(experiment(recipe, dataset), activations, model)
    folder = os.path.join(output_dir, (dataset if recipe == "paper"
                                       else f"{dataset}_{recipe}")
                          + ("" if model is None else f"_{model}")
                          + ("" if accountant == "rdp" else f"_{accountant}"))
    data = _load(dataset, data_dir, manual_dir, download)
    rows, runs = [], {}
    for epsilon in plan.epsilons:
        for index, run in enumerate(plan.runs):
            for seed in seeds:
                name = f"run{index}_eps{epsilon:g}" + (
                    f"_seed{seed}" if len(seeds) > 1 else "")
                settings = dict(run.settings, dataset=dataset,
                                target_epsilon=epsilon, delta=DELTA,
                                sampling="poisson", seed=seed,
                                verbose=verbose, accountant=accountant,
                                output_dir=os.path.join(folder, name))
                if epochs is not None:
                    settings["epochs"] = epochs
                results = train(data=data, **settings)
                runs[f"{run.label} (eps {epsilon:g}"
                     + (f", seed {seed})" if len(seeds) > 1 else ")")] = results
                rows.append(dict(_row(run, epsilon, results), seed=seed))
    _write(folder, plan, rows, runs, dataset, command, accountant)
    return rows, folder


def _check_seeds(seeds, several):
    """``seeds`` as a tuple of distinct integers >= 0."""
    from keras_tempered_dp.validation import check_number
    seeds = tuple(seeds) if several else (seeds,)
    name = "seeds" if several else "seed"
    if not seeds:
        raise ValueError("seeds=(): give at least one seed.")
    for value in seeds:
        check_number(name, value, low=0, integer=True)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds={seeds}: each seed once (a repeated seed "
                         "repeats a run, and its median would count it "
                         "twice).")
    return seeds


def _select(plan, activations, model=None):
    """The paper experiment restricted to (or extended by) activations,
    with another model if asked."""
    if model is not None:
        from keras_tempered_dp.models import (
            MODELS,
            MODELS_WITHOUT_ACTIVATION,
        )
        if model not in MODELS:
            raise ValueError(f"model={model!r}: must be one of "
                             f"{', '.join(MODELS)}.")
        if model in MODELS_WITHOUT_ACTIVATION:
            raise ValueError(
                f"model={model!r} has no activation, so the "
                "paper's tanh-against-ReLU table has nothing to compare; "
                "use recipe='scatternet' (ScatterNet + linear beside the "
                "CNNs).")
        plan = dataclasses.replace(plan, runs=tuple(
            Run(r.label, dict(r.settings, model=model)) for r in plan.runs))
    if activations is None:
        return plan
    base = plan.runs[0]
    runs = []
    for name in activations:
        known = [r for r in plan.runs if r.label == name]
        runs.append(known[0] if known else Run(
            name, dict(base.settings, activation=name)))
    return dataclasses.replace(plan, runs=tuple(runs))


def _load(dataset, data_dir, manual_dir, download):
    """The dataset, loaded once for all runs (None: digits, embedded)."""
    if dataset == "digits":
        return None
    from keras_tempered_dp.data import load_dataset
    return load_dataset(dataset, data_dir=data_dir, manual_dir=manual_dir,
                        download=download)


def _row(run, epsilon, results):
    config = results["config"]
    return {"run": run.label, "activation": config["activation"],
            "test_accuracy": 100 * results["test_accuracy"],
            "epsilon": results["epsilon"],
            "noise_multiplier": config["noise_multiplier"],
            "reference": run.reference_at(epsilon),
            "wall_time_min": results["wall_time_s"] / 60,
            "feature_time_s": results.get("feature_time_s"),
            "settings": {k: config[k] for k in sorted(run.settings)}}


def _write(folder, plan, rows, runs, dataset, command, accountant="rdp"):
    os.makedirs(folder, exist_ok=True)
    plot_accuracy_vs_epsilon(
        runs, os.path.join(folder, "accuracy_vs_epsilon.png"),
        title=f"{dataset}: DP-SGD, delta {DELTA:g}")
    with open(os.path.join(folder, "table.md"), "w") as f:
        f.write(format_table(dataset, plan, rows, command, accountant))
    write_json(os.path.join(folder, "rows.json"), rows)


def _median_lines(rows):
    """With several seeds: each run's median test accuracy over them."""
    seeds = sorted({r.get("seed") for r in rows} - {None})
    if len(seeds) < 2:
        return []
    lines = ["", f"Median over seeds {', '.join(map(str, seeds))}:", "",
             "| run | epsilon | median test accuracy (%) | per seed (%) |",
             "|---|---|---|---|"]
    groups = {}
    for r in rows:
        groups.setdefault((r["run"], round(r["epsilon"], 2)), []).append(r)
    for (run, epsilon), group in groups.items():
        accuracies = [r["test_accuracy"] for r in group]
        lines.append(
            f"| {run} | {epsilon:.2f} | {statistics.median(accuracies):.2f} "
            f"| {', '.join(f'{a:.2f}' for a in accuracies)} |")
    return lines


def format_table(dataset, plan, rows, command=None, accountant="rdp"):
    """The Markdown table of ``rows``, with settings and the command."""
    features = any(r.get("feature_time_s") is not None for r in rows)
    seeds = len({r.get("seed") for r in rows}) > 1
    lines = [f"# {dataset}: {plan.title}", "",
             "| run |" + (" seed |" if seeds else "")
             + " test accuracy (%) | epsilon | noise multiplier | "
             "reference (%) | wall time (min) |"
             + (" of which features (s) |" if features else ""),
             "|---|---|---|---|---|---|" + ("---|" if seeds else "")
             + ("---|" if features else "")]
    for r in rows:
        ref = "" if r["reference"] is None else f"{r['reference']:.1f}"
        feature = r.get("feature_time_s")
        lines.append(
            f"| {r['run']} |" + (f" {r['seed']} |" if seeds else "")
            + f" {r['test_accuracy']:.2f} | {r['epsilon']:.3f} "
            f"| {r['noise_multiplier']:.4f} | {ref} | "
            f"{r['wall_time_min']:.1f} |" + (
                "" if not features else " |" if feature is None
                else f" {feature:.1f} |"))
    lines += _median_lines(rows)
    lines += ["", "Settings:", ""]
    lines += list(dict.fromkeys(
        f"- {r['run']}: `{json.dumps(r['settings'], sort_keys=True)}`"
        for r in rows))
    lines += [
        "",
        f"Epsilon: {accountant_name(accountant)}, Poisson subsampling (q = "
        f"batch_size / N, add-or-remove-one neighbours), delta {DELTA:g}; "
        "training used Poisson-sampled batches, so the number is the run's "
        "guarantee. Augmentation copies are averaged before clipping and "
        "the EMA is post-processing: neither changes epsilon. Test accuracy "
        "of the EMA weights where an EMA is kept."]
    if features:
        lines += [
            "", "ScatterNet features are computed once per process and "
            "reused by the next run on the same images (a few seconds "
            "then); they depend on one image each and on nothing learned, "
            "so they cost no privacy. The wall time includes them."]
    if command:
        lines += ["", "Command:", "", f"    {command}"]
    return "\n".join(lines) + "\n"


__all__ = [
    "RECIPES",
    "Experiment",
    "Run",
    "experiment",
    "format_table",
    "reproduce",
]
