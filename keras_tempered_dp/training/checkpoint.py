"""Epoch checkpoints and resuming, with a ledger of the privacy spent.

After every epoch the run writes ``<output_dir>/checkpoint/``:

    model.keras   the model with its optimizer state
    ema.npz       the weight average (when an EMA is kept)
    state.json    the epochs done, the run's *record* (every setting that
                  matters to privacy or to the model), the model's privacy
                  ledger (every step it took, as the steps recorded them:
                  :mod:`keras_tempered_dp.privacy.ledger`; epsilon comes
                  from it alone) and a per-epoch report of it (N, batch
                  size, sampling, steps, noise multiplier)

The folder is written beside the old one and swapped in, so an interrupted
write leaves the previous checkpoint whole.

A resume compares the new run's record with the checkpoint's. A different
model or activation is always refused (the checkpoint holds the model); a
different privacy setting is refused unless the user asks to change it
(``change_privacy``), in which case the new part's epsilon is composed with
the ledger's steps exactly, never recomputed as if the whole run had used
the new values.
"""

import dataclasses
import json
import os
import shutil
import zipfile

import keras
import numpy as np

from keras_tempered_dp import stack

# Settings that shape the model: never changed by a resume.
MODEL_KEYS = ("model", "activation", "s", "T", "o", "ema_decay",
              "precompute_features")
# The optimizer's settings: the checkpoint restores its optimizer, so a
# resume with other values would train with the old ones while the results
# recorded the new.
OPTIMIZER_KEYS = ("learning_rate", "momentum")
# Settings that shape the privacy guarantee.
PRIVACY_KEYS = ("num_examples", "batch_size", "sampling", "steps_per_epoch",
                "l2_norm_clip", "clipping", "noise_multiplier",
                "noise_schedule", "delta", "accountant")


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed as asked; says what to do."""


@dataclasses.dataclass
class Checkpoint:
    """What a checkpoint holds, besides the model file."""

    epochs_done: int
    record: dict
    ledger: list[dict]
    l2_norm_clip: float | None = None  # the adaptive clip, if any
    part_start: int = 0  # the epoch where the record's settings began
    # The model's privacy ledger (Ledger.to_dict()): every step it took.
    # None in checkpoints older than the ledger.
    privacy_ledger: dict | None = None
    folder: str = ""

    def model_path(self):
        return os.path.join(self.folder, "model.keras")

    def ema_path(self):
        return os.path.join(self.folder, "ema.npz")


def folder_of(output_dir):
    return os.path.join(output_dir, "checkpoint")


def save(output_dir, model, checkpoint, averaging=None):
    """Writes the checkpoint beside the old one, then swaps it in."""
    final = folder_of(output_dir)
    fresh, old = final + ".writing", final + ".old"
    shutil.rmtree(fresh, ignore_errors=True)
    os.makedirs(fresh)
    model.save(os.path.join(fresh, "model.keras"))
    if averaging is not None:
        state = averaging.get_state()
        np.savez(os.path.join(fresh, "ema.npz"), updates=state["updates"],
                 *state["average"])
    state = dataclasses.asdict(checkpoint)
    state.pop("folder")
    with open(os.path.join(fresh, "state.json"), "w") as f:
        json.dump(state, f, indent=1)
    if os.path.exists(final):
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(fresh, final)
    shutil.rmtree(old, ignore_errors=True)


def _candidates(output_dir):
    """Checkpoint folders, newest complete first: the swapped-in one; a
    fresh write whose state.json (written last) exists, if the swap was
    interrupted; the one it replaced."""
    final = folder_of(output_dir)
    return (final, final + ".writing", final + ".old")


def exists(output_dir):
    return any(os.path.exists(os.path.join(p, "state.json"))
               for p in _candidates(output_dir))


def remove(output_dir):
    """Deletes every checkpoint folder of ``output_dir``."""
    for folder in _candidates(output_dir):
        shutil.rmtree(folder, ignore_errors=True)


def load(output_dir):
    """The checkpoint in ``output_dir``, or None if there is none.

    Raises:
        CheckpointError: for a checkpoint that cannot be read whole.
    """
    for folder in _candidates(output_dir):
        path = os.path.join(folder, "state.json")
        if os.path.exists(path):
            break
    else:
        return None
    try:
        with open(path) as f:
            state = json.load(f)
        checkpoint = Checkpoint(folder=folder, **state)
        if not os.path.exists(checkpoint.model_path()):
            raise FileNotFoundError(checkpoint.model_path())
    except (ValueError, TypeError, OSError) as error:
        raise CheckpointError(
            f"The checkpoint in {folder} cannot be read "
            f"({type(error).__name__}"
            f": {str(error)[:200]}): it is incomplete or not this package's. "
            "Start over with --overwrite (deletes it) or use another "
            "--output_dir.") from error
    return checkpoint


def saved_keras_version(path):
    """The Keras version that wrote the ``.keras`` file at ``path`` (its
    ``metadata.json``), or None where the file does not say."""
    try:
        with zipfile.ZipFile(path) as archive:
            metadata = json.loads(archive.read("metadata.json"))
        return str(metadata["keras_version"])
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile):
        return None


def _major(version):
    return version.split(".")[0]


def load_model(checkpoint):
    """The checkpoint's model, or a CheckpointError saying why not: written
    by the other Keras (a checkpoint of Keras 2, the legacy stack, does not
    load on Keras 3, nor the reverse), or damaged."""
    path = checkpoint.model_path()
    written_by = saved_keras_version(path)
    if written_by is not None and \
            _major(written_by) != _major(keras.__version__):
        raise CheckpointError(
            f"The checkpoint in {checkpoint.folder} was written by Keras "
            f"{written_by}; this is {stack.describe()}. A checkpoint does "
            "not move between Keras 2 (the legacy stack, TensorFlow 2.15) "
            "and Keras 3: resume it with the stack that wrote it, or start "
            "over here with --overwrite (deletes it) or another "
            "--output_dir.")
    try:
        return keras.models.load_model(path)
    except Exception as error:  # Keras raises many types for bad files
        raise CheckpointError(
            f"The model in {checkpoint.model_path()} cannot be loaded "
            f"({type(error).__name__}: {str(error)[:200]}): the file is "
            "damaged or truncated. Start over with --overwrite or use "
            "another --output_dir.") from error


def load_ema(checkpoint):
    if not os.path.exists(checkpoint.ema_path()):
        raise CheckpointError(
            f"{checkpoint.ema_path()} is missing: the checkpoint has no "
            "weight average to continue. Resume without --ema_decay, or "
            "start a new run.")
    with np.load(checkpoint.ema_path()) as data:
        average = [data[f"arr_{i}"] for i in range(len(data.files) - 1)]
        return {"updates": int(data["updates"]), "average": average}


def differences(old, new, keys):
    """``["key: old -> new", ...]`` for the keys whose values differ."""
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys
            if old.get(k) != new.get(k)]


def check_resume(checkpoint, record, change_privacy):
    """Refuses a resume whose settings differ from the checkpoint's.

    Returns:
        True when privacy settings differ and ``change_privacy`` allows it
        (the new part's epsilon must then compose with the ledger).

    Raises:
        CheckpointError: listing the differences and what to do.
    """
    model = differences(checkpoint.record, record, MODEL_KEYS)
    if model:
        raise CheckpointError(
            "The checkpoint holds a different model than these settings "
            f"ask for ({'; '.join(model)}). A resume continues the saved "
            "model: resume with the checkpoint's settings, or start a new "
            "run in another --output_dir.")
    # Checkpoints older than these keys do not hold them: not compared.
    optimizer = differences(checkpoint.record, record,
                            [k for k in OPTIMIZER_KEYS
                             if k in checkpoint.record])
    if optimizer:
        raise CheckpointError(
            "The checkpoint's optimizer trains with other settings than "
            f"these ({'; '.join(optimizer)}): a resume restores the saved "
            "optimizer, so the new values would be recorded but not used. "
            "Resume with the checkpoint's values, or start a new run in "
            "another --output_dir.")
    privacy = differences(checkpoint.record, record, PRIVACY_KEYS)
    if privacy and not change_privacy:
        raise CheckpointError(
            "These privacy settings differ from the checkpoint's ("
            f"{'; '.join(privacy)}). Epsilon would be computed as if the "
            "whole run had used the new values, which understates what the "
            "first part spent. Resume with the checkpoint's settings, or "
            "pass --change_privacy (change_privacy=True) to continue with "
            "the new ones: epsilon then composes both parts exactly.")
    return bool(privacy)


def ledger_entry(record, epoch, noise_multiplier):
    """One finished epoch as the ledger keeps it."""
    return {"epoch": epoch, "num_examples": record["num_examples"],
            "batch_size": record["batch_size"],
            "sampling": record["sampling"],
            "steps": record["steps_per_epoch"],
            "noise_multiplier": noise_multiplier}
