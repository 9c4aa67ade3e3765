"""Moving what the steps recorded into the model's ledger.

The engine's step writes the sigma of every step it runs
(:mod:`~keras_tempered_dp.privacy.clipping.step_record`); the data those
steps sampled (N, B, the sampling scheme) is what an
:class:`~keras_tempered_dp.callbacks.EpsilonCallback` declares for its
``fit`` (a :class:`FitContext`, checked against ``fit``'s data). Draining
joins the two into :class:`~keras_tempered_dp.privacy.accounting.Segment`
objects of the model's :class:`~keras_tempered_dp.privacy.ledger.Ledger`;
steps drained while no ``fit`` declared its data are kept unattributed.

Example:

>>> import keras, tensorflow as tf
>>> from keras_tempered_dp import compile_dp
>>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
>>> _ = compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.0)
>>> _ = model.fit(tf.zeros([8, 2]), tf.zeros([8]), batch_size=4, verbose=0)
>>> privacy_ledger(model).unattributed[0].steps   # no callback: no N
2
"""

import dataclasses

from keras_tempered_dp.privacy.accounting import Segment
from keras_tempered_dp.privacy.ledger import Unattributed
from keras_tempered_dp.privacy.state import get_dp_state, ledger_slot


@dataclasses.dataclass(frozen=True)
class FitContext:
    """The data of one ``fit``, as its epsilon callback declared it."""

    num_examples: int
    batch_size: int
    sampling: str
    used_microbatching: bool

    def segment(self, steps, noise_multiplier):
        return Segment(self.num_examples, self.batch_size, steps,
                       noise_multiplier, self.sampling,
                       self.used_microbatching)


def drain(model):
    """Moves the engine's recorded steps into the model's ledger, under
    the running fit's context (unattributed without one).

    Returns:
        The :class:`~keras_tempered_dp.privacy.clipping.step_record.
        Drained` content, or None for a model without the engine.
    """
    state = get_dp_state(model)
    engine = None if state is None else state.engine
    if engine is None:
        return None
    drained = engine.drain_record()
    slot = ledger_slot(model)
    for sigma, steps in drained.runs:
        if slot.context is None:
            slot.ledger.record_unattributed(
                Unattributed(sigma, steps, drained.max_examples))
        else:
            slot.ledger.record(slot.context.segment(steps, sigma))
    return drained


def privacy_ledger(model):
    """The model's :class:`~keras_tempered_dp.privacy.ledger.Ledger`, with
    every step taken so far in it."""
    drain(model)
    return ledger_slot(model).ledger
