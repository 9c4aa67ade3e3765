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
from keras_tempered_dp.privacy.state import DPState, get_dp_state
