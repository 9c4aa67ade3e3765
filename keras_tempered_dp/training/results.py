"""What a finished run writes: ``results.json`` and its privacy statement.

Files are written under a temporary name and moved into place, so a
``results.json`` exists only for a run that finished.
"""

import csv
import json
import os

from keras_tempered_dp.privacy import saving
from keras_tempered_dp.privacy.accounting import (
    accountant_name,
    privacy_statement,
)


def write_json(path, value):
    """Writes ``value`` as JSON to ``path`` atomically."""
    tmp = path + ".writing"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=2)
    os.replace(tmp, path)


def save_model(model, path):
    """Saves ``model`` with its privacy ledger to ``path`` (.keras)
    atomically."""
    tmp = path[:-len(".keras")] + ".writing.keras"
    saving.save_model(model, tmp)
    os.replace(tmp, path)


def truncate_log(path, epochs):
    """Keeps the CSV log's header and its first ``epochs`` rows (rows of
    epochs after the checkpoint belong to a part that is trained again)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    with open(path + ".writing", "w") as f:
        f.writelines(lines[:1 + epochs])
    os.replace(path + ".writing", path)


def read_log(path):
    """The CSVLogger's rows as dictionaries of floats (a column that a
    resumed part does not log, such as an adapted clip, is left out)."""
    with open(path) as f:
        return [{k: float(v) for k, v in row.items()
                 if k is not None and v not in (None, "")}
                for row in csv.DictReader(f)]


def statement(plan, epochs, epsilon):
    """A sentence stating epsilon and every assumption behind it."""
    n, b, steps = plan.num_examples, plan.batch_size, plan.steps_per_epoch
    if not plan.previous and plan.schedule is None:
        text = privacy_statement(n, b, plan.noise_multiplier,
                                 steps=epochs * steps, delta=plan.delta,
                                 accountant=plan.accountant)
    else:
        if plan.schedule is not None:
            noise = (f"noise multiplier by epoch {plan.schedule!r} (last "
                     f"{plan.schedule(epochs - 1):.4g})")
        else:
            noise = f"noise_multiplier={plan.noise_multiplier:g}"
        earlier = ""
        if plan.previous:
            earlier = (" after earlier parts of the run with other settings ("
                       + "; ".join(
                           f"{s.steps} steps at N={s.num_examples}, "
                           f"batch_size={s.batch_size}, noise_multiplier="
                           f"{s.noise_multiplier:g}" for s in plan.previous)
                       + "), composed exactly")
        text = (f"({epsilon:.3f}, {plan.delta:g})-DP for each example: "
                f"DP-SGD, {epochs * steps} steps, N={n}, batch_size={b}, "
                f"{noise}{earlier}; each step's subsampled Gaussian event "
                f"composed with {accountant_name(plan.accountant)} assuming "
                "Poisson subsampling with q = batch_size / N, "
                "add-or-remove-one neighbours.")
    text += (" The training loss and accuracy in the logs are computed on "
             "the raw batches and are not private; the validation numbers "
             "are the test set's.")
    if plan.sampling != "poisson":
        text += (" Training used shuffled fixed-size batches: this epsilon "
                 "is the Poisson number by convention, not a proof for "
                 "shuffling.")
    return text
