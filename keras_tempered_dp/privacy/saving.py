"""Saving a model with its privacy ledger, and loading both back.

Keras saves a model's weights, optimizer and configuration; the ledger of
the DP-SGD steps it took is the package's, so :func:`save_model` writes it
beside them, as ``keras_tempered_dp_ledger.json``: a member of the
``.keras`` zip archive (Keras ignores members it does not know), or a file
in a SavedModel folder (Keras 2). :func:`load_model` reads the model with
Keras and gives it its ledger back, so that the next epsilon covers the
steps taken before the save.

A model saved with plain ``model.save`` has no ledger: loaded, it starts a
new one, and epsilon covers only the steps taken after; declare the earlier
ones with ``EpsilonCallback(initial_steps=...)``.

Example:

>>> import os, tempfile, keras, tensorflow as tf
>>> from keras_tempered_dp import compile_dp, EpsilonCallback
>>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
>>> _ = compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0)
>>> _ = model.fit(tf.zeros([8, 2]), tf.zeros([8]), batch_size=4, verbose=0,
...               callbacks=[EpsilonCallback(8, 4, delta=1e-2)])
>>> path = os.path.join(tempfile.mkdtemp(), "m.keras")
>>> save_model(model, path)
>>> privacy_ledger(load_model(path)).steps
2
"""

import json
import os
import zipfile

import keras

from keras_tempered_dp.privacy.ledger import Ledger
from keras_tempered_dp.privacy.recording import privacy_ledger
from keras_tempered_dp.privacy.state import set_ledger

LEDGER_FILE = "keras_tempered_dp_ledger.json"


def save_model(model, path, **kwargs):
    """``model.save(path, **kwargs)``, then the model's ledger beside it."""
    text = json.dumps(privacy_ledger(model).to_dict(), indent=1)
    model.save(path, **kwargs)
    if os.path.isdir(path):  # a Keras 2 SavedModel
        with open(os.path.join(path, LEDGER_FILE), "w") as f:
            f.write(text)
        return
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(LEDGER_FILE, text)


def read_ledger(path):
    """The ledger saved with the model at ``path``, or None (a model saved
    without one)."""
    try:
        if os.path.isdir(path):
            with open(os.path.join(path, LEDGER_FILE)) as f:
                return Ledger.from_dict(json.load(f))
        with zipfile.ZipFile(path) as archive:
            if LEDGER_FILE not in archive.namelist():
                return None
            return Ledger.from_dict(json.loads(archive.read(LEDGER_FILE)))
    except FileNotFoundError:
        return None


def load_model(path, **kwargs):
    """``keras.models.load_model(path, **kwargs)`` with the saved ledger
    given back to the model (an empty one if it was saved without)."""
    model = keras.models.load_model(path, **kwargs)
    ledger = read_ledger(path)
    if ledger is not None:
        set_ledger(model, ledger)
    return model
