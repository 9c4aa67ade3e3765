"""compile_dp: the one entry point that makes a Keras model train with DP-SGD."""

from tensorflow_privacy import (
    DPKerasSGDOptimizer,
    VectorizedDPKerasSGDOptimizer,
)

from keras_tempered_dp.privacy.checks import (
    check_microbatches,
    check_no_batch_mixing,
)
from keras_tempered_dp.privacy.config import DPConfig
from keras_tempered_dp.privacy.losses import per_example_loss

_TFP_OPTIMIZERS = {
    "dp_keras_sgd": DPKerasSGDOptimizer,
    "vectorized_dp_keras_sgd": VectorizedDPKerasSGDOptimizer,
}


def compile_dp(model, *, l2_norm_clip, noise_multiplier, learning_rate=0.15,
               momentum=0.0, num_microbatches=None, optimizer=None,
               loss=None, metrics=("accuracy",), batch_size=None,
               num_examples=None, **compile_kwargs):
    """Compiles ``model`` for DP-SGD training with ``model.fit``.

    Each example's gradient is clipped to ``l2_norm_clip``, the clipped
    gradients are summed, Gaussian noise of std
    ``noise_multiplier * l2_norm_clip`` is added once per step and the sum is
    divided by the batch size. The loss is made per-example (reduction NONE)
    here, so pass an ordinary Keras loss.

    Args:
        model: a built or unbuilt Keras model without batch-mixing layers.
        l2_norm_clip, noise_multiplier, learning_rate, momentum,
        num_microbatches: see :class:`DPConfig`.
        optimizer: "dp_keras_sgd" (TF Privacy's ``DPKerasSGDOptimizer``, the
            default) or "vectorized_dp_keras_sgd".
        loss: None (sparse categorical cross-entropy on logits), a Keras loss
            name, instance or function; see :func:`per_example_loss`.
        metrics: forwarded to ``model.compile``.
        batch_size, num_examples: optional; when given, the microbatch split of
            every batch, the last partial batch included, is checked now
            instead of failing in the middle of training.
        **compile_kwargs: forwarded to ``model.compile``.

    Returns:
        The :class:`DPConfig`, also stored as ``model.dp_config`` (the epsilon
        callback reads the noise multiplier from it).

    Raises:
        ValueError: for BatchNormalization layers, microbatch sizes that do
            not divide the batches, and invalid settings; the message says
            what to change.

    Example:

    >>> from keras_tempered_dp.models import mnist_cnn
    >>> config = compile_dp(mnist_cnn(), l2_norm_clip=1.0,
    ...                     noise_multiplier=1.1, learning_rate=0.15)
    >>> config.optimizer
    'dp_keras_sgd'
    """
    config = DPConfig(
        l2_norm_clip=l2_norm_clip,
        noise_multiplier=noise_multiplier,
        learning_rate=learning_rate,
        momentum=momentum,
        num_microbatches=num_microbatches,
        **({} if optimizer is None else {"optimizer": optimizer}),
    )
    check_no_batch_mixing(model)
    check_microbatches(config.num_microbatches, batch_size, num_examples)
    optimizer_class = _TFP_OPTIMIZERS[config.optimizer]
    dp_optimizer = optimizer_class(
        l2_norm_clip=config.l2_norm_clip,
        noise_multiplier=config.noise_multiplier,
        num_microbatches=config.num_microbatches,
        learning_rate=config.learning_rate,
        momentum=config.momentum,
    )
    model.compile(optimizer=dp_optimizer, loss=per_example_loss(loss),
                  metrics=list(metrics or []), **compile_kwargs)
    model.dp_config = config
    return config
