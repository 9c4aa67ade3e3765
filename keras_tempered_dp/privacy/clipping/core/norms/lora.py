"""LoRA: per-example gradients of the low-rank adapters of Dense and EinsumDense.

Keras 3's ``layer.enable_lora(r)`` freezes the kernel ``W`` and adds two
trainable factors; the layer then computes with the merged kernel

    W' = W + s * A @ B,    s = lora_alpha / lora_rank,

``A`` of shape ``W.shape[:-1] + (r,)`` and ``B`` of shape ``(r, W.shape[-1])``
(``@`` contracts A's last axis with B's first). With ``G`` one example's
gradient of the merged kernel, the chain rule gives that example's

    dA = s * G @ B^T,       dB = s * A^T @ G

(``A^T @ G`` contracts every axis but the last of both). For Dense,
``G = sum_p x_p^T dz_p`` over positions p, so both are again sums of outer
products, and each gets the ghost norm or the materialized one, whichever
costs less (:mod:`.outer_products`):

    dA = sum_p x_p^T (s dz_p B^T),     dB = sum_p (s x_p A)^T dz_p.

The norms of the layer's trainable weights (the adapters, the bias unless it
was frozen too, the kernel if a user unfroze it) add up; frozen weights add
nothing. This module holds the pieces the Dense and EinsumDense norm
functions share.
"""

from .. import ops

from ..norm_contract import NormResult


def lora_factors(layer):
    """``(A, B, s)`` for a LoRA-enabled layer, else None."""
    if not getattr(layer, "lora_enabled", False):
        return None
    return (layer.lora_kernel_a, layer.lora_kernel_b,
            layer.lora_alpha / layer.lora_rank)


def stored_kernel(layer):
    """The kernel variable itself: with LoRA enabled, Keras 3's
    ``layer.kernel`` is the merged tensor ``W + s * A @ B``."""
    kernel = getattr(layer, "_kernel", None)
    return layer.kernel if kernel is None else kernel


def adapter_grads(kernel_grads, a, b, scale):
    """Per-example ``(dA, dB)`` from per-example merged-kernel gradients
    ``[B, *W.shape]`` (the module's formulas)."""
    d_a = scale * ops.einsum("n...o,ro->n...r", kernel_grads,
                             ops.cast(b, kernel_grads.dtype))
    # A^T @ G: A as [K, r], G as [B, K, o] (K: the axes both share)
    rank, out = b.shape
    d_b = scale * ops.einsum(
        "kr,nko->nro",
        ops.reshape(ops.cast(a, kernel_grads.dtype), (-1, rank)),
        ops.reshape(kernel_grads, (ops.shape(kernel_grads)[0], -1, out)))
    return d_a, d_b


def combined(layer, terms):
    """One :class:`NormResult` for ``layer`` from per-weight results.

    Args:
        layer: the unit; its ``trainable_weights`` fix the order of the
            clipped sums.
        terms: ``{id(weight): NormResult}``, one per trainable weight, each
            with a clipped-sum function returning that weight's sum alone.
            Frozen weights may be present; they are left out.
    """
    weights = layer.trainable_weights
    results = [terms[id(w)] for w in weights]
    norms = 0.0
    for result in results:
        norms = norms + ops.cast(result.sq_norms, "float32")

    def clipped_sum(factors):
        return [r.clipped_sum(factors)[0] for r in results]

    return NormResult(norms, clipped_sum)
