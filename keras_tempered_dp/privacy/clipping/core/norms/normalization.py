"""Exact per-example gradients of LayerNormalization.

It computes ``z = gamma * xhat + beta`` with ``xhat`` normalized per
example, so each example's gradients are ``sum dz * xhat`` (gamma) and
``sum dz`` (beta) over the axes the weights are broadcast along.
"""

from .. import ops
from .materialized import materialized_sq_norms


def weight_grads(layer, xhat, dz, param_axes):
    """Per-example gamma/beta gradients, in weight order."""
    summed = tuple(a for a in range(1, len(dz.shape)) if a not in param_axes)
    wanted = {}
    if layer.scale:
        wanted[id(layer.gamma)] = ops.sum(dz * xhat, axis=summed)
    if layer.center:
        wanted[id(layer.beta)] = ops.sum(dz, axis=summed)
    return [wanted[id(w)] for w in layer.weights]


def layer_norm_sq_norms(layer, inputs, grad_outputs, num_groups, call):
    """LayerNormalization; Keras 3's ``rms_scaling=True`` (a different
    normalization, gain only) returns None: the backend's exact fallback."""
    if getattr(layer, "rms_scaling", False):
        return None
    x = ops.cast(inputs, "float32")
    # An int until the layer is built (both stacks), a list after.
    axis = layer.axis if isinstance(layer.axis, (list, tuple)) \
        else [layer.axis]
    axes = sorted(a % len(x.shape) for a in axis)
    mean, variance = ops.moments(x, axes, keepdims=True)
    xhat = (x - mean) * ops.rsqrt(variance + layer.epsilon)
    dz = ops.cast(grad_outputs, "float32")
    return materialized_sq_norms(weight_grads(layer, xhat, dz, axes),
                                 num_groups)
