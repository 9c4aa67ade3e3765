"""Registry: one per-example squared-norm function per Keras layer class.

A norm function has the signature ``fn(layer, inputs, grad_outputs,
num_groups, call) -> (squared_norms, clipped_sum)`` where ``inputs`` is what the layer's ``call``
received, ``grad_outputs`` the gradient of the summed per-example loss with
respect to the layer's pre-activation output, and the result (shape
``[num_groups]``) is, for each group of ``batch / num_groups`` consecutive
examples, the squared L2 norm of the gradient of the group's *mean* loss with
respect to all of the layer's trainable weights; ``call`` computes the layer
without its activation, for functions that recompute. ``clipped_sum`` is
None or a function ``factors -> grads`` returning, for each trainable weight
of the layer in order, ``sum_m factors[m] * grad_m`` (the engine otherwise
recomputes the layer with re-weighted ``grad_outputs``).
``num_groups=None`` is per-example clipping (one group per example); an
integer G is TF Privacy's microbatches; ``GroupsOf(K)`` groups the K
augmented copies of each example (:mod:`.groups`, whose ``regroup`` handles
all three).

Lookup is by exact class (``Conv2DTranspose`` subclasses ``Conv2D`` but is not
the same operation); a class without an entry uses the exact generic
fallback in :mod:`.generic`.
"""

from keras_tempered_dp.privacy.clipping.groups import regroup  # noqa: F401

_NORM_FNS = {}


def register_norm_fn(layer_class):
    """Decorator: registers a per-example squared-norm function.

    Example:

    >>> import tensorflow as tf
    >>> class Scale(tf.keras.layers.Layer):  # y = x * w, one weight
    ...     def build(self, shape):
    ...         self.w = self.add_weight("w", ())
    ...     def call(self, x):
    ...         return x * self.w
    >>> @register_norm_fn(Scale)
    ... def scale_sq_norms(layer, inputs, grad_outputs, num_groups, call):
    ...     per_example = tf.reduce_sum(inputs * grad_outputs, axis=[1])
    ...     grouped = regroup(per_example, num_groups)  # [G, B / G]
    ...     return tf.square(tf.reduce_mean(grouped, axis=1)), None
    >>> lookup_norm_fn(Scale()) is scale_sq_norms
    True
    """
    def decorate(fn):
        _NORM_FNS[layer_class] = fn
        return fn
    return decorate


def lookup_norm_fn(layer):
    """The registered function for ``type(layer)``, or None."""
    return _NORM_FNS.get(type(layer))


def registered_classes():
    return tuple(_NORM_FNS)
