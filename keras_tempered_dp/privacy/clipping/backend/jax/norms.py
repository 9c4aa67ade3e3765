"""Per-group squared gradient norms from a unit's inputs and ``dz``.

Written in ``keras.ops``. A layer whose weight gradient is a sum of outer
products over positions, ``grad_W = sum_p a_p^T g_p`` (Dense, Conv2D from
its input patches), gets the cheaper of two exact forms (Bu et al. 2022,
as :mod:`...norms.outer_products` chooses them):

* materialized: ``||sum_p a_p^T g_p||^2`` from the ``[G, D_in, D_out]``
  per-group gradients;
* ghost (Goodfellow 2015, Li et al. 2022): ``sum_{p,q} (a_p . a_q)(g_p .
  g_q)``, two Gram matrices, no per-group gradient.

An Embedding's norm is ``sum_{p,q: id_p == id_q} g_p . g_q``.
EinsumDense, LayerNormalization and AddPositionEmbedding form each
example's gradient outright (:func:`materialized`), as their TensorFlow
norm functions do. Groups:
``num_groups`` None (one example each) or G dividing the batch; a group's
gradient is that of its *mean* loss, so ``g`` is divided by its size.

Each function returns a :class:`NormResult` (the engine's norm contract:
``[G]`` squared norms, and the clipped sum where it is cheaper than the
replay's), or None where it does not apply (frozen weights, LoRA, other
data formats): the unit then takes the exact vectorized route of
:mod:`.clipped_sum`.
"""

import keras
from keras import ops

from keras_tempered_dp.layers.position_embedding import AddPositionEmbedding
from ...core.norm_contract import NormResult
from ..tensorflow.norms.einsum_dense import explicit_equation
from ..tensorflow.norms.outer_products import uses_ghost


def _grouped(tensor, num_groups, scale=False):
    """``[B, P, D] -> [G, (B / G) * P, D]``; ``scale``: divided by B / G."""
    if num_groups is None:
        return tensor
    rows = tensor.shape[0]
    out = ops.reshape(tensor, (num_groups, -1, tensor.shape[-1]))
    return out / (rows // num_groups) if scale else out


def _positions(tensor):
    """``[B, ..., D] -> [B, P, D]``."""
    return ops.reshape(tensor, (tensor.shape[0], -1, tensor.shape[-1]))


def outer_product_sq_norms(layer, a, g, num_groups, bias):
    """The :class:`~...norm_contract.NormResult` of ``sum_p a_p^T g_p``
    (and of ``sum_p g_p`` with ``bias``), ``a``: ``[B, P, D_in]``, ``g``:
    ``[B, P, D_out]``: ``[G]`` squared norms, and where the per-group
    gradients were materialized, their factor-weighted sum (cheaper than
    the replay's weight gradient); the ghost forms leave the sum to the
    replay (None)."""
    g = _grouped(g, num_groups, scale=True)
    a = _grouped(ops.cast(a, g.dtype), num_groups)
    positions, d_in, d_out = a.shape[1], a.shape[-1], g.shape[-1]
    if positions == 1:
        norms = (ops.sum(ops.square(a), axis=(1, 2))
                 * ops.sum(ops.square(g), axis=(1, 2)))
    elif uses_ghost(positions, d_in, d_out):
        gram_a = ops.einsum("bpi,bqi->bpq", a, a)
        gram_g = ops.einsum("bpo,bqo->bpq", g, g)
        norms = ops.sum(gram_a * gram_g, axis=(1, 2))
    else:
        per_group = ops.matmul(ops.transpose(a, (0, 2, 1)), g)
        norms = ops.sum(ops.square(per_group), axis=(1, 2))
    bias_grads = ops.sum(g, axis=1) if bias else None
    if bias:
        norms = norms + ops.sum(ops.square(bias_grads), axis=1)
    if positions == 1 or uses_ghost(positions, d_in, d_out):
        return NormResult(norms)

    def clipped_sum(factors):
        # In the layer's weight order (kernel, bias), kernel reshaped: the
        # patches' features run (row, column, channel), the kernel's layout.
        grads = [ops.reshape(weighted_sum(factors, per_group),
                             layer.kernel.shape)]
        if bias:
            grads.append(weighted_sum(factors, bias_grads))
        return grads

    return NormResult(norms, clipped_sum)


def _all_trained(layer, trained):
    return all(id(w) in trained for w in layer.weights) and not getattr(
        layer, "lora_enabled", False)


def dense_sq_norms(layer, inputs, dz, num_groups, trained):
    if not _all_trained(layer, trained) or not keras.ops.is_tensor(inputs):
        return None
    return outer_product_sq_norms(layer, _positions(inputs),
                                  _positions(dz), num_groups, layer.use_bias)


def _same_padding(size, out, kernel, stride, dilation):
    """TensorFlow's "same" padding of one axis: ``(before, after)``."""
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def conv2d_patches(layer, x, out_shape):
    """``[B, H', W', kh * kw * C]``: the input patch under every output
    position, by ``kh * kw`` strided slices (only copies: an identity
    convolution would cost ``(kh * kw * C)^2`` per position)."""
    (kh, kw), (sh, sw) = layer.kernel_size, layer.strides
    dh, dw = layer.dilation_rate
    out_h, out_w = out_shape[1], out_shape[2]
    if layer.padding == "same":
        x = ops.pad(x, [(0, 0),
                        _same_padding(x.shape[1], out_h, kh, sh, dh),
                        _same_padding(x.shape[2], out_w, kw, sw, dw),
                        (0, 0)])
    slices = [x[:, i * dh:i * dh + (out_h - 1) * sh + 1:sh,
                j * dw:j * dw + (out_w - 1) * sw + 1:sw, :]
              for i in range(kh) for j in range(kw)]
    return ops.concatenate(slices, axis=-1)


def conv2d_sq_norms(layer, inputs, dz, num_groups, trained):
    """Conv2D, channels_last, one convolution group: input patches, then
    :func:`outer_product_sq_norms`."""
    if (not _all_trained(layer, trained) or layer.groups != 1
            or layer.data_format != "channels_last"
            or layer.padding not in ("same", "valid")):
        return None
    patches = conv2d_patches(layer, ops.cast(inputs, dz.dtype), dz.shape)
    return outer_product_sq_norms(layer, _positions(patches),
                                  _positions(dz), num_groups, layer.use_bias)


def embedding_sq_norms(layer, inputs, dz, num_groups, trained):
    if not _all_trained(layer, trained):
        return None
    g = _grouped(_positions(dz), num_groups, scale=True)
    ids = ops.reshape(ops.cast(inputs, "int32"), (g.shape[0], -1))
    # JAX's take wraps a negative id to id + V: the same row, so the same
    # cross term (ids beyond [-V, V) give NaN outputs: a group left out).
    ids = ops.where(ids < 0, ids + layer.input_dim, ids)
    same = ops.cast(ops.equal(ids[:, :, None], ids[:, None, :]), g.dtype)
    return NormResult(ops.sum(same * ops.einsum("bpd,bqd->bpq", g, g),
                              axis=(1, 2)))


def materialized(per_example, num_groups):
    """The :class:`NormResult` of per-example gradients given outright
    (one ``[B, *weight_shape]`` tensor per weight, in the layer's order):
    each group's mean, its squared norm, and the factor-weighted sum."""
    grouped = [g if num_groups is None else ops.mean(
        ops.reshape(g, (num_groups, -1) + tuple(g.shape[1:])), axis=1)
        for g in per_example]
    norms = sum(ops.sum(ops.reshape(ops.square(g), (g.shape[0], -1)),
                        axis=1) for g in grouped)
    return NormResult(norms, lambda factors: [
        weighted_sum(factors, g) for g in grouped])


def weighted_sum(factors, per_group):
    """``sum_m factors[m] * per_group[m]``, a group of factor 0 adding
    exactly 0 even where its gradient overflowed (``0 * inf`` is NaN)."""
    kept = ops.reshape(factors != 0, (-1,) + (1,) * (len(per_group.shape)
                                                     - 1))
    return ops.tensordot(factors, ops.where(kept, per_group, 0.0), axes=1)


def einsum_dense_sq_norms(layer, inputs, dz, num_groups, trained):
    """EinsumDense: each example's kernel gradient is the layer's own
    contraction with the roles turned round (:mod:`...norms.einsum_dense`
    gives the derivation), its bias gradient ``dz`` summed over the axes
    the bias is broadcast along."""
    if not _all_trained(layer, trained):
        return None
    x_spec, kernel_spec, output_spec = explicit_equation(
        layer.equation, len(inputs.shape))
    batch = x_spec[0]
    if batch not in output_spec or batch in kernel_spec:
        return None  # the replay route says what is wrong, if anything
    grads = {id(layer.kernel): ops.einsum(
        f"{x_spec},{output_spec}->{batch}{kernel_spec}",
        ops.cast(inputs, dz.dtype), dz)}
    if layer.bias is not None:
        lead = len(dz.shape) - len(layer.bias.shape)
        g = ops.sum(dz, axis=tuple(range(1, lead))) if lead > 1 else dz
        for axis, size in enumerate(layer.bias.shape, start=1):
            if size == 1 and g.shape[axis] != 1:
                g = ops.sum(g, axis=axis, keepdims=True)
        grads[id(layer.bias)] = g
    return materialized([grads[id(w)] for w in layer.weights], num_groups)


def layer_norm_sq_norms(layer, inputs, dz, num_groups, trained):
    """LayerNormalization, ``z = gamma * xhat + beta``: per example ``sum
    dz * xhat`` and ``sum dz`` over the axes the weights are broadcast
    along (``rms_scaling`` takes the replay route)."""
    if not _all_trained(layer, trained) or getattr(layer, "rms_scaling",
                                                   False):
        return None
    x = ops.cast(inputs, "float32")
    rank = len(x.shape)
    axis = layer.axis if isinstance(layer.axis, (list, tuple)) \
        else [layer.axis]
    axes = tuple(sorted(a % rank for a in axis))
    mean, variance = ops.moments(x, axes, keepdims=True)
    xhat = (x - mean) * ops.rsqrt(variance + layer.epsilon)
    dz = ops.cast(dz, "float32")
    summed = tuple(a for a in range(1, rank) if a not in axes)
    wanted = {}
    if layer.scale:
        wanted[id(layer.gamma)] = ops.sum(dz * xhat, axis=summed)
    if layer.center:
        wanted[id(layer.beta)] = ops.sum(dz, axis=summed)
    return materialized([wanted[id(w)] for w in layer.weights], num_groups)


def position_embedding_sq_norms(layer, inputs, dz, num_groups, trained):
    """AddPositionEmbedding, ``z = x + E``: example b's gradient is
    ``dz_b``."""
    if not _all_trained(layer, trained):
        return None
    return materialized([ops.cast(dz, "float32")], num_groups)


# Exact classes, as in the registry (Conv2DTranspose is no Conv2D here).
NORM_FNS = {
    keras.layers.Dense: dense_sq_norms,
    keras.layers.Conv2D: conv2d_sq_norms,
    keras.layers.Embedding: embedding_sq_norms,
    keras.layers.EinsumDense: einsum_dense_sq_norms,
    keras.layers.LayerNormalization: layer_norm_sq_norms,
    AddPositionEmbedding: position_embedding_sq_norms,
}
