"""EinsumDense: per-example gradients from the layer's own equation.

``z = einsum("X,K->O", x, W) + b`` (attention's projections, KerasHub's
feed-forward projections, LoRA-enabled or not). With the batch letter ``n`` (the
first of ``X``), example m's kernel gradient is the same contraction with
the roles turned round, kept per example:

    dW_m = einsum("X,O->nK", x, dz)[m]

(every letter of ``X`` and ``O`` that is not in ``nK`` is summed over:
positions, heads' other axes). The bias is added by broadcasting against
the trailing output axes, so its gradient is ``dz`` summed over the axes the
bias does not have (or has with size 1). Both are formed outright
(:mod:`.materialized`): exact for every equation Keras' EinsumDense accepts
(explicit letters or an ellipsis on either side), at ``B * |W|`` memory.
Recomputing the layer under ``tf.vectorized_map`` is not an option on
TensorFlow: on TensorFlow 2.21 ``keras.ops.einsum`` gives wrong values
there.
"""

import string

from .. import ops

from .lora import adapter_grads, lora_factors, stored_kernel
from .materialized import materialized_sq_norms


def explicit_equation(equation, input_rank):
    """``(x_spec, kernel_spec, output_spec)`` with ``...`` spelled out in
    letters the equation does not use.

    >>> explicit_equation("...b,bc->...c", 3)
    ('ABb', 'bc', 'ABc')
    """
    lhs, output_spec = equation.replace(" ", "").split("->")
    x_spec, kernel_spec = lhs.split(",")
    if "..." in x_spec:
        elided = input_rank - (len(x_spec) - 3)
        letters = string.ascii_uppercase + string.ascii_lowercase
        free = "".join([c for c in letters if c not in equation][:elided])
        x_spec = x_spec.replace("...", free)
        output_spec = output_spec.replace("...", free)
    return x_spec, kernel_spec, output_spec


def per_example_kernel_grads(equation, inputs, grad_outputs):
    """``[B, *kernel_shape]``: each example's gradient of the kernel."""
    x_spec, kernel_spec, output_spec = explicit_equation(
        equation, len(inputs.shape))
    batch = x_spec[0]
    if batch not in output_spec or batch in kernel_spec:
        raise ValueError(
            f"EinsumDense equation {equation!r}: its first input axis (the "
            "batch) must reach the output and not the kernel, or examples "
            "would share terms and their gradients could not be separated.")
    return ops.einsum(f"{x_spec},{output_spec}->{batch}{kernel_spec}",
                      ops.cast(inputs, grad_outputs.dtype), grad_outputs)


def per_example_bias_grads(bias_shape, grad_outputs):
    """``[B, *bias_shape]``: ``dz`` summed over the axes the bias is
    broadcast along (it is aligned with the trailing output axes)."""
    lead = len(grad_outputs.shape) - len(bias_shape)
    g = grad_outputs
    if lead > 1:
        g = ops.sum(g, axis=tuple(range(1, lead)))
    for axis, size in enumerate(bias_shape, start=1):
        if size == 1 and g.shape[axis] != 1:
            g = ops.sum(g, axis=axis, keepdims=True)
    return g


def einsum_dense_sq_norms(layer, inputs, grad_outputs, num_groups, call):
    """EinsumDense, any equation; any of its weights may be frozen (LoRA:
    the kernel, whose adapters' gradients come from the merged kernel's,
    :mod:`.lora`)."""
    kernel_grads = per_example_kernel_grads(layer.equation, inputs,
                                            grad_outputs)
    grads = {id(stored_kernel(layer)): kernel_grads}
    if layer.bias is not None:
        grads[id(layer.bias)] = per_example_bias_grads(
            tuple(layer.bias.shape), grad_outputs)
    lora = lora_factors(layer)
    if lora is not None:
        lora_a, lora_b, scale = lora
        grads[id(lora_a)], grads[id(lora_b)] = adapter_grads(
            kernel_grads, lora_a, lora_b, scale)
    return materialized_sq_norms([grads[id(w)]
                                  for w in layer.trainable_weights],
                                 num_groups)
