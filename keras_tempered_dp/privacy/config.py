"""DPConfig: the DP-SGD settings of one training run, validated on creation."""

import dataclasses
import math
import numbers
from typing import Optional

# Names a user can pass as `optimizer=` to compile_dp: the package's own
# clipping engine (default) and TF Privacy's two Keras optimizers.
OPTIMIZERS = ("fast", "dp_keras_sgd", "vectorized_dp_keras_sgd")


def _number(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name}={value!r}: must be a real number.")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}={value!r}: must be finite.")
    return value


@dataclasses.dataclass(frozen=True)
class DPConfig:
    """DP-SGD settings, in TF Privacy's names.

    Each example's gradient is clipped to ``l2_norm_clip`` in L2 norm, the
    clipped gradients are summed, Gaussian noise of standard deviation
    ``noise_multiplier * l2_norm_clip`` is added once per step and the result
    is divided by the batch size (or ``num_microbatches``, see below).

    Args:
        l2_norm_clip: clipping norm C, > 0.
        noise_multiplier: sigma, >= 0 (0 means no privacy, only clipping).
        learning_rate: SGD learning rate, > 0; None when the model was
            compiled with an optimizer of the user's choice (make_private).
        momentum: SGD momentum in [0, 1).
        num_microbatches: None for per-example clipping; otherwise the batch
            is split into this many microbatches whose mean gradients are
            clipped (TF Privacy's semantics). Must divide every batch.
        optimizer: which implementation runs the step: "fast" (this
            package's clipping engine), "dp_keras_sgd" or
            "vectorized_dp_keras_sgd" (TF Privacy).
        noise_seed: seeds the engine's noise generator; None (default) seeds
            it from the operating system. TF Privacy's optimizers ignore it.

    Raises:
        ValueError: naming the field and the bad value.

    Example:

    >>> DPConfig(l2_norm_clip=1.0, noise_multiplier=1.1, learning_rate=0.15)
    ... # doctest: +ELLIPSIS
    DPConfig(l2_norm_clip=1.0, noise_multiplier=1.1, ...)
    """

    l2_norm_clip: float
    noise_multiplier: float
    learning_rate: Optional[float] = 0.15
    momentum: float = 0.0
    num_microbatches: Optional[int] = None
    optimizer: str = OPTIMIZERS[0]
    noise_seed: Optional[int] = None

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        set_("l2_norm_clip", _number("l2_norm_clip", self.l2_norm_clip))
        if self.l2_norm_clip <= 0:
            raise ValueError(
                f"l2_norm_clip={self.l2_norm_clip!r}: must be > 0; it bounds "
                "each example's gradient norm (typical values 0.1 to 1.0)."
            )
        set_("noise_multiplier",
             _number("noise_multiplier", self.noise_multiplier))
        if self.noise_multiplier < 0:
            raise ValueError(
                f"noise_multiplier={self.noise_multiplier!r}: must be >= 0; "
                "it is the noise standard deviation in units of l2_norm_clip."
            )
        if self.learning_rate is not None:
            set_("learning_rate",
                 _number("learning_rate", self.learning_rate))
        if self.learning_rate is not None and self.learning_rate <= 0:
            raise ValueError(
                f"learning_rate={self.learning_rate!r}: must be > 0.")
        set_("momentum", _number("momentum", self.momentum))
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum={self.momentum!r}: must be in [0, 1).")
        if self.num_microbatches is not None:
            if (isinstance(self.num_microbatches, bool)
                    or not isinstance(self.num_microbatches, numbers.Integral)
                    or self.num_microbatches < 1):
                raise ValueError(
                    f"num_microbatches={self.num_microbatches!r}: must be a "
                    "positive integer, or None for per-example clipping."
                )
            set_("num_microbatches", int(self.num_microbatches))
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer={self.optimizer!r}: must be one of "
                f"{', '.join(OPTIMIZERS)}."
            )
