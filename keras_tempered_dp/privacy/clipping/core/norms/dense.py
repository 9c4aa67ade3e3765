"""Dense: per-example norms of a sum of outer products over positions.

``z = x W + b``: example m's kernel gradient is ``sum_p x_p^T dz_p`` over
its positions p (one, or a sequence's), its bias gradient ``sum_p dz_p``.
A LoRA-enabled layer (frozen ``W``, trainable adapters) is handled by
:mod:`.lora`: its adapters' gradients are sums of outer products too.
"""

from .. import ops
from .lora import combined, lora_factors, stored_kernel
from .materialized import materialized_sq_norms
from .outer_products import factored_sq_norms, flatten_positions


def dense_sq_norms(layer, inputs, grad_outputs, num_groups, call):
    """Dense on ``[B, D_in]`` or ``[B, ..., D_in]`` (a sequence); any of
    its weights may be frozen (LoRA: the kernel)."""
    a = flatten_positions(ops.cast(inputs, grad_outputs.dtype))
    g = flatten_positions(grad_outputs)
    trainable = {id(w) for w in layer.trainable_weights}
    lora = lora_factors(layer)
    if lora is None and trainable == {id(w) for w in layer.weights}:
        return factored_sq_norms(a, g, num_groups, bias=layer.use_bias)
    terms = {id(stored_kernel(layer)): factored_sq_norms(a, g, num_groups)}
    if layer.use_bias:
        terms[id(layer.bias)] = materialized_sq_norms(
            [ops.sum(g, axis=1)], num_groups)
    if lora is not None:
        lora_a, lora_b, scale = lora
        terms[id(lora_a)] = factored_sq_norms(
            a, scale * ops.einsum("bpo,ro->bpr", g,
                                  ops.cast(lora_b, g.dtype)), num_groups)
        terms[id(lora_b)] = factored_sq_norms(
            scale * ops.einsum("bpi,ir->bpr", a, ops.cast(lora_a, a.dtype)),
            g, num_groups)
    # Only the trainable weights' terms are used (and so computed).
    return combined(layer, terms)
