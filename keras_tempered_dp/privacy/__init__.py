"""DP-SGD for Keras: settings, refusals, the optimizers' glue and accounting."""

from keras_tempered_dp.privacy.accounting import (
    Segment,
    calibrate_noise_multiplier,
    compose_epsilon,
    compute_epsilon,
    privacy_statement,
    steps_per_epoch,
)
from keras_tempered_dp.privacy.checks import (
    check_dp_trainable,
    check_microbatches,
    check_no_batch_mixing,
)
from keras_tempered_dp.privacy.compile import compile_dp, make_private
from keras_tempered_dp.privacy.config import DPConfig
from keras_tempered_dp.privacy.losses import per_example_loss
from keras_tempered_dp.privacy.ledger import Ledger, UnattributedStepsError
from keras_tempered_dp.privacy.recording import privacy_ledger
from keras_tempered_dp.privacy.sampling import mark_sampling
from keras_tempered_dp.privacy.saving import load_model, save_model
from keras_tempered_dp.privacy.state import DPState, get_dp_state

__all__ = [
    "DPConfig",
    "DPState",
    "Ledger",
    "Segment",
    "UnattributedStepsError",
    "calibrate_noise_multiplier",
    "check_dp_trainable",
    "check_microbatches",
    "check_no_batch_mixing",
    "compile_dp",
    "compose_epsilon",
    "compute_epsilon",
    "get_dp_state",
    "load_model",
    "make_private",
    "mark_sampling",
    "per_example_loss",
    "privacy_ledger",
    "privacy_statement",
    "save_model",
    "steps_per_epoch",
]
