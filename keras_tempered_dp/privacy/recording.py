"""Moving what the steps recorded into the model's ledger.

The engine's step writes the sigma of every step it runs
(:mod:`~keras_tempered_dp.privacy.clipping.backend.tensorflow.step_record`); the data those
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
import sys

from keras_tempered_dp.privacy.accounting import Segment
from keras_tempered_dp.privacy.ledger import Unattributed
from keras_tempered_dp.privacy.state import get_dp_state, ledger_slot


@dataclasses.dataclass(frozen=True)
class FitContext:
    """The data of one ``fit``, as its epsilon callback declared it.

    ``fit_frame`` is that ``fit``'s frame on the call stack (None where it
    was not found): a ``fit`` that raised never ran its callbacks'
    ``on_train_end``, and its context must not be lent to the steps of a
    later ``fit`` (:func:`live_context`).
    """

    num_examples: int
    batch_size: int
    sampling: str
    used_microbatching: bool
    fit_frame: object = dataclasses.field(default=None, compare=False,
                                          repr=False)

    def segment(self, steps, noise_multiplier):
        return Segment(self.num_examples, self.batch_size, steps,
                       noise_multiplier, self.sampling,
                       self.used_microbatching)


def _on_stack(frame):
    current = sys._getframe(1)
    while current is not None:
        if current is frame:
            return True
        current = current.f_back
    return False


def live_context(slot):
    """The slot's context if its ``fit`` is still running, else None (and
    the stale context dropped)."""
    context = slot.context
    if context is not None and context.fit_frame is not None \
            and not _on_stack(context.fit_frame):
        slot.context = None
    return slot.context


def drain(model, check=None):
    """Moves the engine's recorded steps into the model's ledger, under
    the running fit's context (unattributed without one).

    Args:
        check: called with the drained content before it is attributed;
            if it raises, the steps are recorded unattributed (they ran,
            but not as declared) and the error propagates.

    Returns:
        The :class:`~keras_tempered_dp.privacy.clipping.backend.tensorflow.step_record.
        Drained` content, or None for a model without the engine.
    """
    state = get_dp_state(model)
    engine = None if state is None else state.engine
    if engine is None:
        return None
    drained = engine.drain_record()
    slot = ledger_slot(model)
    context = live_context(slot)
    micro = (engine.num_microbatches is not None
             and engine.num_microbatches < drained.max_examples)
    try:
        if check is not None and context is not None:
            check(drained)
    except BaseException:
        context = None
        raise
    finally:
        for sigma, steps in drained.runs:
            if context is None:
                slot.ledger.record_unattributed(Unattributed(
                    sigma, steps, drained.max_examples, micro))
            else:
                slot.ledger.record(context.segment(steps, sigma))
    return drained


def privacy_ledger(model):
    """The model's :class:`~keras_tempered_dp.privacy.ledger.Ledger`, with
    every step taken so far in it."""
    drain(model)
    return ledger_slot(model).ledger
