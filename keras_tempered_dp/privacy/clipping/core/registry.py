"""Registry: one per-example squared-norm function per Keras layer class
and backend.

The contract of a norm function is :class:`.norm_contract.NormFn`; it
returns a :class:`.norm_contract.NormResult`, or None where it does not
apply (an option of the layer it does not cover). Lookup is by exact class
(``Conv2DTranspose`` subclasses ``Conv2D`` but is not the same operation)
and by the Keras backend the engine runs on: a function written in
``keras.ops`` (:mod:`.norms`) is registered for both, one written in
TensorFlow for ``"tensorflow"`` alone. The engine asks :func:`norm_fn_for`,
which returns None, sending the layer to its backend's exact fallback
(TensorFlow: the generic recomputation; JAX: the vectorized replay), when
the class has no function for this backend, or when only some of its
weights are trainable (a frozen kernel with a trainable bias): registered
functions may assume every weight of the layer is trainable, unless
registered with ``frozen_weights=True`` (then they return the norms of
``layer.trainable_weights`` alone: Dense and EinsumDense, whose LoRA
adapters train while the kernel is frozen).

A function registered with ``all_calls=True`` is given every call of one
forward pass together, ``fn(layer, calls, num_groups)`` with ``calls`` a
list of ``(inputs, grad_outputs, call)``: for a layer called several times
with the same weights (a tied embedding used for the input tokens and,
reversed, for the output logits), whose per-example gradient is the sum
over its calls, cross terms included. Other layers called several times
take the exact fallback.

The package's own functions are registered in one place,
``keras_tempered_dp/privacy/clipping/__init__.py``; KerasHub's layers when
KerasHub is in use (:mod:`..backend.tensorflow.norms.keras_hub`).
"""

from typing import NamedTuple

from keras_tempered_dp import stack
from .groups import regroup  # noqa: F401
from .norm_contract import ClippedSumFn, NormFn, NormResult

# regroup, NormFn, NormResult and ClippedSumFn are re-exported: what a user
# writing a norm function needs, in one import.
__all__ = [
    "ClippedSumFn", "NormFn", "NormResult", "has_norm_fn", "lookup_norm_fn",
    "norm_fn_for", "register_norm_fn", "registered_classes", "regroup",
    "takes_all_calls",
]

BACKENDS = ("tensorflow", "jax")


class _Entry(NamedTuple):
    fn: NormFn
    frozen_weights: bool
    all_calls: bool


# {layer class: {backend: _Entry}}
_NORM_FNS = {}
# Registrations made the first time a layer of another package is looked
# up: {module prefix: register function} (KerasHub is a heavy import).
_PROVIDERS = {}


def _checked_backends(backends):
    if backends is None:
        return (stack.backend(),)
    backends = (backends,) if isinstance(backends, str) else tuple(backends)
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise ValueError(
            f"backends={backends!r}: name one or more of {BACKENDS} (the "
            "Keras backends the engine runs on).")
    return backends


def register_norm_fn(layer_class, fn: NormFn | None = None, *,
                     frozen_weights=False, all_calls=False, backends=None):
    """Registers ``fn`` as the norm function of ``layer_class``.

    Use it as a decorator (``fn`` omitted) or as a call. A later
    registration for the same class and backend replaces the earlier one.
    ``backends``: the Keras backends ``fn`` runs on, ``"tensorflow"``,
    ``"jax"`` or both (a function written in ``keras.ops``); by default
    the backend Keras runs on now. ``frozen_weights=True`` declares that
    ``fn`` handles a layer of which only some weights are trainable,
    returning the norms and clipped sums of ``layer.trainable_weights``
    alone; otherwise such a layer takes the exact fallback.
    ``all_calls=True``: ``fn(layer, calls, num_groups)`` takes every call
    of a forward pass at once (module docstring).

    Example: a layer ``y = x * w`` with one scalar weight; one example's
    gradient is ``sum_j x_j * dz_j``.

    >>> import keras
    >>> class Scale(keras.layers.Layer):
    ...     def build(self, shape):
    ...         self.w = self.add_weight(name="w", shape=())
    ...     def call(self, x):
    ...         return x * self.w
    >>> @register_norm_fn(Scale)
    ... def scale_sq_norms(layer, inputs, grad_outputs, num_groups, call):
    ...     per_example = tf.reduce_sum(inputs * grad_outputs, axis=[1])
    ...     grouped = regroup(per_example, num_groups)  # [G, B / G]
    ...     return NormResult(tf.square(tf.reduce_mean(grouped, axis=1)))
    >>> lookup_norm_fn(Scale()) is scale_sq_norms
    True
    """
    backends = _checked_backends(backends)

    def decorate(fn):
        entries = _NORM_FNS.setdefault(layer_class, {})
        for backend in backends:
            entries[backend] = _Entry(fn, frozen_weights, all_calls)
        return fn
    return decorate if fn is None else decorate(fn)


def register_provider(module_prefix, register):
    """Calls ``register()`` the first time a layer whose class comes from
    a module under ``module_prefix`` is looked up."""
    _PROVIDERS[module_prefix] = register


def _entries(layer):
    cls = type(layer)
    if cls not in _NORM_FNS:
        module = cls.__module__.split(".")[0]
        register = _PROVIDERS.pop(module, None)
        if register is not None:  # the module is imported: cls is from it
            register()
    return _NORM_FNS.get(cls, {})


def _entry(layer):
    return _entries(layer).get(stack.backend())


def has_norm_fn(layer):
    """Whether ``type(layer)`` has a norm function for any backend: such a
    layer is one clip unit (:func:`keras_tempered_dp.privacy.traversal.
    clip_units`) on every backend, whichever route clips it."""
    return bool(_entries(layer))


def lookup_norm_fn(layer) -> NormFn | None:
    """The function registered for ``type(layer)`` and the backend Keras
    runs on, or None."""
    entry = _entry(layer)
    return None if entry is None else entry.fn


def registered_classes():
    """The layer classes with a norm function for the backend Keras runs
    on."""
    return tuple(cls for cls, entries in _NORM_FNS.items()
                 if stack.backend() in entries)


def norm_fn_for(layer) -> NormFn | None:
    """The function the engine uses for ``layer``: the registered one if
    every weight of the layer is trainable or the function was registered
    with ``frozen_weights=True``, else None (the exact fallback)."""
    entry = _entry(layer)
    if entry is None:
        return None
    trainable = {id(w) for w in layer.trainable_weights}
    if (trainable != {id(w) for w in layer.weights}
            and not entry.frozen_weights):
        return None
    return entry.fn


def takes_all_calls(layer):
    """Whether :func:`norm_fn_for` ``(layer)`` takes every call at once."""
    entry = _entry(layer)
    return (entry is not None and entry.all_calls
            and norm_fn_for(layer) is not None)
