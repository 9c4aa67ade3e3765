"""Canaries and their scores: the secret draws, input-space canaries, the
per-example loss, and the callback that hands gradient canaries to the engine.

Every canary is included in training independently with probability 1/2.
The draws are secret: by default they come from the operating system's
entropy, so nothing in the training run (its seeds, its data order) can
predict them; a bound computed from draws the training could anticipate
would prove nothing. A seed is accepted for tests and exact reruns only.

Input-space canaries (the black-box audit) are training examples given a
wrong label, drawn uniformly among the other classes: a mislabelled example
is the one a model most visibly memorises, so its loss separates members
from non-members best among natural inputs (Jagielski et al. 2020; Steinke
et al. 2023, section 6). The score of an example is its negative loss under
the trained model: higher means "more likely trained on".
"""

import keras
import numpy as np

from keras_tempered_dp.privacy.state import engine_of
from keras_tempered_dp.validation import check_number


def draw_inclusion(num_canaries, seed=None):
    """One secret fair coin per canary: True = included in training.

    Args:
        num_canaries: m >= 2.
        seed: None (default): the operating system's entropy; an int only
            for tests and reruns.

    >>> draw_inclusion(6, seed=0).tolist()
    [False, True, True, True, False, False]
    """
    num_canaries = check_number("num_canaries", num_canaries, low=2,
                                integer=True,
                                hint="Hundreds or more give useful bounds.")
    return np.random.default_rng(seed).random(num_canaries) < 0.5


def mislabelled_canaries(x, y, num_canaries, rng):
    """Takes ``num_canaries`` examples out of ``(x, y)`` as canaries.

    Returns:
        ``((x_rest, y_rest), (x_canary, y_canary))``: the remaining
        examples, and the canaries with labels moved to a uniformly drawn
        other class.

    >>> x, y = np.arange(10.0)[:, None], np.arange(10) % 3
    >>> (xr, yr), (xc, yc) = mislabelled_canaries(
    ...     x, y, 4, np.random.default_rng(0))
    >>> len(xr), len(xc), bool(np.all(yc != xc[:, 0].astype(int) % 3))
    (6, 4, True)
    """
    num_classes = int(np.max(y)) + 1
    if num_classes < 2:
        raise ValueError("Mislabelled canaries need at least two classes.")
    if not 2 <= num_canaries <= len(x) // 2:
        raise ValueError(
            f"num_canaries={num_canaries!r}: must be between 2 and half the "
            f"training set ({len(x) // 2}); the canaries are taken out of "
            "it.")
    order = rng.permutation(len(x))
    chosen, rest = order[:num_canaries], np.sort(order[num_canaries:])
    shift = rng.integers(1, num_classes, num_canaries)
    wrong = ((y[chosen].astype(np.int64) + shift) % num_classes)
    return (x[rest], y[rest]), (x[chosen], wrong.astype(y.dtype))


def loss_scores(model, x, y, batch_size=1024):
    """Minus each example's cross-entropy under ``model`` (logits out):
    the loss-threshold attack's score (Yeom et al. 2018)."""
    loss = keras.losses.SparseCategoricalCrossentropy(
        from_logits=True, reduction="none")
    scores = []
    for start in range(0, len(x), batch_size):
        logits = model(x[start:start + batch_size], training=False)
        scores.append(-np.asarray(loss(y[start:start + batch_size],
                                       logits), dtype=np.float64))
    return np.concatenate(scores)


class GradientCanaryCallback(keras.callbacks.Callback):
    """Gives the model's clipping engine its gradient canaries when
    training begins (before the first step is traced)."""

    def __init__(self, canaries):
        super().__init__()
        self.canaries = canaries

    def on_train_begin(self, logs=None):
        engine_of(self.model,
                  "Gradient canaries are injected by the package's clipping "
                  "engine; this model has none (compile it with compile_dp "
                  "or make_private). Use input-space canaries to audit any "
                  "model.").canaries = self.canaries
