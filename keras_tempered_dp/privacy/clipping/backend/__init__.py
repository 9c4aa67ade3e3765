"""The engine's backends: which Keras backend runs which engine.

The clip units, their registry and the norm contract are shared; the step
that differentiates, clips, noises and updates is written once per Keras
backend, because TensorFlow's ``train_step`` is stateful (variables assigned
inside a ``tf.function``) and JAX's is stateless (``train_step(state,
data) -> (logs, state)``, jitted):

* TensorFlow (and Keras 2): :class:`..engine.ClippingEngine`;
* JAX (Keras 3): :class:`.jax.engine.JaxClippingEngine`;
* PyTorch and others: refused by name (:func:`keras_tempered_dp.stack.
  require_engine_backend`).
"""

from keras_tempered_dp import stack


def engine_class():
    """The engine class for the backend Keras runs on; raises for a
    backend without one, naming those that work."""
    name = stack.require_engine_backend("The clipping engine")
    if name == "jax":
        from keras_tempered_dp.privacy.clipping.backend.jax.engine import (
            JaxClippingEngine,
        )
        return JaxClippingEngine
    from keras_tempered_dp.privacy.clipping.backend.tensorflow.engine import (
        ClippingEngine,
    )
    return ClippingEngine
