"""Which stack the package runs on, and the errors that say how to change it.

One code base, two stacks (docs/install.md):

* **current** (the default install): Keras 3 on TensorFlow >= 2.16, numpy 2,
  Python 3.10 to 3.13. The layers, the activation registry and the models run
  on any Keras 3 backend (tested on TensorFlow and JAX; written in
  ``keras.ops`` for PyTorch too, untested); DP training (the
  clipping engine, the epsilon callback's checks, ``train``) runs on the
  TensorFlow and JAX backends (:mod:`.privacy.clipping.backend`) and refuses
  the others by name.
* **legacy** (``pip install "keras-tempered-dp[tf-privacy]"``): TensorFlow
  2.15 with Keras 2, Python 3.9 to 3.11, where TF Privacy 0.9.0 (its last
  release) runs beside the engine.

``import keras`` names the right Keras on both: on TensorFlow 2.15 the
``keras`` package *is* ``keras`` (Keras 2.15); on TensorFlow >= 2.16 it is
Keras 3.

Example:

>>> KERAS_3 in (True, False)
True
>>> backend() in ("tensorflow", "jax", "torch", "numpy")
True
"""

import importlib

import keras

KERAS_VERSION = keras.__version__
KERAS_3 = int(KERAS_VERSION.split(".")[0]) >= 3

LEGACY_INSTALL = ('pip install "keras-tempered-dp[tf-privacy]" in a fresh '
                  'virtualenv on Python 3.9 to 3.11')


def backend():
    """The Keras backend's name ("tensorflow" on Keras 2)."""
    return keras.backend.backend()


def describe():
    """One line naming the stack, for error messages and result files."""
    import tensorflow as tf
    return (f"Keras {KERAS_VERSION} ({backend()} backend), "
            f"TensorFlow {tf.__version__}")


def tf_privacy_available():
    """True where TF Privacy imports (the legacy stack)."""
    try:
        importlib.import_module("tensorflow_privacy")
    except ImportError:
        return False
    return True


def require_tf_privacy(what):
    """Imports and returns ``tensorflow_privacy``, or raises an ImportError
    that says which stack runs it and how to install that stack.

    Args:
        what: what asked for TF Privacy, for the message.
    """
    try:
        return importlib.import_module("tensorflow_privacy")
    except ImportError as error:
        raise ImportError(
            f"{what} needs TF Privacy, which is not installed. TF Privacy "
            "0.9.0 (its last release) supports only TensorFlow <= 2.15 with "
            f"Keras 2 and Python <= 3.11; this is {describe()}. Either "
            "use the package's own clipping engine (optimizer='fast', the "
            "default: the same DP-SGD, exact per-example clipping), or "
            f"install the legacy stack: {LEGACY_INSTALL}.") from error


# The Keras backends the clipping engine runs on (privacy/clipping/backend).
ENGINE_BACKENDS = ("tensorflow", "jax")


def require_engine_backend(what):
    """Returns the backend's name, or raises unless the clipping engine
    has a step for it (TensorFlow, JAX).

    The layers and models run on any backend; DP training does not, and
    ordinary training in its place would be training without privacy.
    """
    name = backend()
    if name not in ENGINE_BACKENDS:
        raise RuntimeError(
            f"{what} runs on the TensorFlow and JAX backends, but Keras runs "
            f"on the {name!r} backend. The engine's per-example gradients "
            "are written for those two, so nothing private would run here. "
            "Set KERAS_BACKEND=tensorflow or KERAS_BACKEND=jax before Keras "
            "is imported (TemperedSigmoid, the activations and the models "
            "work on any backend; for PyTorch, Opacus is one choice).")
    return name
