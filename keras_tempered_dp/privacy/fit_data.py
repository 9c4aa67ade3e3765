"""The data of the ``fit`` now running, as the epsilon callback checks it.

The accountant is told N, the batch size and the sampling scheme; a wrong
N, or a Poisson claim for batches that are not Poisson, makes epsilon a
lie. Keras gives callbacks no handle on ``fit``'s data, but ``fit``'s own
arguments are on the call stack while it runs: :func:`current_fit_data`
finds the innermost ``fit`` frame whose ``self`` is the model and reads its
``x`` (after Keras' ``validation_split``, which both Keras 2 and 3 apply by
rebinding ``x``) and ``batch_size``. Where none is found (a custom loop, a
wrapper that renamed things) it says so, and the checks that need it are
skipped, never guessed.

Example:

>>> import numpy as np
>>> describe(np.zeros((10, 3)), batch_size=5).num_examples
10
"""

import dataclasses
import sys

import numpy as np

from keras_tempered_dp.privacy.sampling import SamplingMark, sampling_mark


@dataclasses.dataclass(frozen=True)
class FitData:
    """What ``fit`` trains on.

    Attributes:
        kind: "arrays" (NumPy or tensors: N known, shuffled fixed batches),
            "marked" (a dataset of this package's samplers, or marked with
            :func:`~keras_tempered_dp.privacy.sampling.mark_sampling`),
            "dataset" (any other dataset or generator: N unknown), or
            "unknown" (no ``fit`` frame found).
        num_examples: N where known.
        batch_size: fit's ``batch_size`` argument, where given.
        mark: the dataset's :class:`SamplingMark` for "marked".
    """

    kind: str
    num_examples: int | None = None
    batch_size: int | None = None
    mark: SamplingMark | None = None


def _leading_length(x):
    leaves = x.values() if isinstance(x, dict) else (
        x if isinstance(x, (list, tuple)) else [x])
    for leaf in leaves:
        shape = getattr(leaf, "shape", None)
        if shape is not None and len(shape) > 0 and shape[0] is not None:
            return int(shape[0])
    return None


def describe(x, batch_size=None):
    """The :class:`FitData` of ``fit(x, batch_size=...)``."""
    mark = sampling_mark(x)
    if mark is not None:
        return FitData("marked", mark.num_examples, batch_size, mark)
    if isinstance(x, (np.ndarray, list, tuple, dict)) or (
            hasattr(x, "shape") and hasattr(x, "dtype")):
        length = _leading_length(x)
        if length is not None:
            return FitData("arrays", length, batch_size)
    return FitData("dataset", None, batch_size)


def fit_frame(model):
    """The innermost frame of ``model.fit`` on the call stack, or None."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "fit" and \
                frame.f_locals.get("self") is model:
            return frame
        frame = frame.f_back
    return None


def current_fit_data(model):
    """The :class:`FitData` of the ``fit`` of ``model`` now on the stack."""
    frame = fit_frame(model)
    if frame is None:
        return FitData("unknown")
    local = frame.f_locals
    return describe(local.get("x"), local.get("batch_size"))
