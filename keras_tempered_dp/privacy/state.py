"""DPState: the one object on a model that says how its training is private.

``compile_dp`` and ``make_private`` attach a :class:`DPState` to the model;
the epsilon callback, the noise scheduler and ``train`` read it back with
:func:`get_dp_state`. Nothing else is stored on the model, so this module is
the whole protocol between the parts of the package.

A model compiled by the user with a TF Privacy optimizer carries no state:
the callback then reads the optimizer itself.

Every model that trains privately also carries its
:class:`~keras_tempered_dp.privacy.ledger.Ledger` (:func:`privacy_ledger`):
the steps it took. The ledger outlives the state: compiling the model again
(``compile_dp``, ``make_private``) keeps it, because the steps were taken
whatever the new settings are.

Example:

>>> import keras
>>> from keras_tempered_dp import compile_dp, mnist_cnn
>>> model = mnist_cnn()
>>> _ = compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.1)
>>> state = get_dp_state(model)
>>> state.config.noise_multiplier, state.engine is not None
(1.1, True)
>>> get_dp_state(keras.Sequential()) is None
True
"""

import dataclasses
from typing import Any

from keras_tempered_dp.privacy.config import DPConfig
from keras_tempered_dp.privacy.ledger import Ledger

# The attribute's name on the model; private so that no module reaches past
# attach / get_dp_state.
_ATTRIBUTE = "_keras_tempered_dp_state"
_LEDGER = "_keras_tempered_dp_ledger"


@dataclasses.dataclass
class DPState:
    """How one model trains privately.

    Attributes:
        config: the validated DP-SGD settings (clip, noise, microbatches,
            which optimizer runs the step).
        engine: the package's
            :class:`~keras_tempered_dp.privacy.clipping.ClippingEngine`, or
            None when a TF Privacy optimizer runs the step.
        noise_schedule: the noise schedule a
            :class:`~keras_tempered_dp.callbacks.NoiseScheduler` applies, or
            None for a constant noise multiplier.
    """

    config: DPConfig
    engine: Any | None = None
    noise_schedule: Any | None = None


def attach(model, config, engine=None):
    """Stores a fresh :class:`DPState` on ``model`` and returns it.

    The steps the old engine recorded are moved into the model's ledger
    first: compiling again must not drop steps that were taken.
    """
    if get_dp_state(model) is not None:
        # Imported here: recording builds on this module.
        from keras_tempered_dp.privacy import recording
        recording.drain(model)
    state = DPState(config=config, engine=engine)
    # object.__setattr__: Keras must not track (or save) this attribute.
    object.__setattr__(model, _ATTRIBUTE, state)
    return state


def get_dp_state(model):
    """The model's :class:`DPState`, or None if the package did not make it
    private."""
    return getattr(model, _ATTRIBUTE, None) if model is not None else None


def engine_of(model, refusal):
    """The model's clipping engine; ``ValueError(refusal)`` when it has
    none (not compiled for DP-SGD, or with a TF Privacy optimizer)."""
    state = get_dp_state(model)
    if state is None or state.engine is None:
        raise ValueError(refusal)
    return state.engine


@dataclasses.dataclass
class LedgerSlot:
    """The model's ledger and the data of the ``fit`` now running.

    Attributes:
        ledger: the :class:`~keras_tempered_dp.privacy.ledger.Ledger`.
        context: the :class:`~keras_tempered_dp.privacy.recording.
            FitContext` an epsilon callback declared for the running
            ``fit``, or None between fits.
        optimizer_iterations: a TF Privacy optimizer's ``iterations`` the
            ledger accounts for (their steps are counted by the callback).
    """

    ledger: Ledger
    context: Any | None = None
    # A TF Privacy optimizer's iterations the ledger has accounted for.
    optimizer_iterations: int | None = None


def ledger_slot(model):
    """The model's :class:`LedgerSlot`, made (with an empty ledger) the
    first time."""
    slot = getattr(model, _LEDGER, None)
    if slot is None:
        slot = LedgerSlot(Ledger())
        object.__setattr__(model, _LEDGER, slot)
    return slot


def set_ledger(model, ledger):
    """Gives ``model`` ``ledger`` (a restored one)."""
    if not isinstance(ledger, Ledger):
        raise ValueError(f"{ledger!r} is not a Ledger.")
    object.__setattr__(model, _LEDGER, LedgerSlot(ledger))
