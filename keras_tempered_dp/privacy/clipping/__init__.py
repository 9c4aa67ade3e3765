"""The per-example clipping engine (see :mod:`.engine`)."""

from keras_tempered_dp.privacy.clipping.engine import ClippingEngine
from keras_tempered_dp.privacy.clipping.registry import (
    lookup_norm_fn,
    register_norm_fn,
    registered_classes,
)
