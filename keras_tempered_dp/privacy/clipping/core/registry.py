"""Registry: one per-example squared-norm function per Keras layer class.

The contract of a norm function is :class:`.norm_contract.NormFn`; it
returns a :class:`.norm_contract.NormResult`. Lookup is by exact class
(``Conv2DTranspose`` subclasses ``Conv2D`` but is not the same operation).
The engine asks :func:`norm_fn_for`, which sends a layer to the exact
generic route (:mod:`.norms.generic`) when its class has no entry or when
only some of its weights are trainable (a frozen kernel with a trainable
bias): registered functions may assume every weight of the layer is
trainable, unless registered with ``frozen_weights=True`` (then they return
the norms of ``layer.trainable_weights`` alone: Dense and EinsumDense, whose
LoRA adapters train while the kernel is frozen).

A function registered with ``all_calls=True`` is given every call of one
forward pass together, ``fn(layer, calls, num_groups)`` with ``calls`` a
list of ``(inputs, grad_outputs, call)``: for a layer called several times
with the same weights (a tied embedding used for the input tokens and,
reversed, for the output logits), whose per-example gradient is the sum
over its calls, cross terms included. Other layers called several times
take the exact generic route.

The package's own functions are registered in one place,
``keras_tempered_dp/privacy/clipping/__init__.py``; KerasHub's layers when
KerasHub is in use (:mod:`.norms.keras_hub`).
"""


from ..backend.tensorflow.norms.generic import generic_sq_norms
from .groups import regroup  # noqa: F401
from .norm_contract import ClippedSumFn, NormFn, NormResult

# regroup, NormFn, NormResult and ClippedSumFn are re-exported: what a user
# writing a norm function needs, in one import.
__all__ = [
    "ClippedSumFn", "NormFn", "NormResult", "lookup_norm_fn", "norm_fn_for",
    "register_norm_fn", "registered_classes", "regroup", "takes_all_calls",
]

_NORM_FNS = {}
_FROZEN_OK = set()  # classes whose function handles frozen weights
_ALL_CALLS = set()  # classes whose function takes every call at once
# Registrations made the first time a layer of another package is looked
# up: {module prefix: register function} (KerasHub is a heavy import).
_PROVIDERS = {}


def register_norm_fn(layer_class, fn: NormFn | None = None, *,
                     frozen_weights=False, all_calls=False):
    """Registers ``fn`` as the norm function of ``layer_class``.

    Use it as a decorator (``fn`` omitted) or as a call. A later
    registration for the same class replaces the earlier one.
    ``frozen_weights=True`` declares that ``fn`` handles a layer of which
    only some weights are trainable, returning the norms and clipped sums
    of ``layer.trainable_weights`` alone; otherwise such a layer takes the
    exact generic route. ``all_calls=True``: ``fn(layer, calls,
    num_groups)`` takes every call of a forward pass at once (module
    docstring).

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
    def decorate(fn):
        _NORM_FNS[layer_class] = fn
        (_FROZEN_OK.add if frozen_weights else _FROZEN_OK.discard)(
            layer_class)
        (_ALL_CALLS.add if all_calls else _ALL_CALLS.discard)(layer_class)
        return fn
    return decorate if fn is None else decorate(fn)


def register_provider(module_prefix, register):
    """Calls ``register()`` the first time a layer whose class comes from
    a module under ``module_prefix`` is looked up."""
    _PROVIDERS[module_prefix] = register


def lookup_norm_fn(layer) -> NormFn | None:
    """The function registered for ``type(layer)``, or None."""
    cls = type(layer)
    if cls not in _NORM_FNS:
        module = cls.__module__.split(".")[0]
        register = _PROVIDERS.pop(module, None)
        if register is not None:  # the module is imported: cls is from it
            register()
    return _NORM_FNS.get(cls)


def registered_classes():
    """The layer classes with a registered norm function."""
    return tuple(_NORM_FNS)


def takes_all_calls(layer):
    """Whether :func:`norm_fn_for` ``(layer)`` takes every call at once."""
    return (type(layer) in _ALL_CALLS
            and norm_fn_for(layer) is not generic_sq_norms)


def norm_fn_for(layer) -> NormFn:
    """The function the engine uses for ``layer``: the registered one if
    every weight of the layer is trainable or the function was registered
    with ``frozen_weights=True``, else the exact generic route."""
    fn = lookup_norm_fn(layer)
    if fn is None:
        return generic_sq_norms
    trainable = {id(w) for w in layer.trainable_weights}
    if (trainable != {id(w) for w in layer.weights}
            and type(layer) not in _FROZEN_OK):
        return generic_sq_norms
    return fn
