"""A reversible (tied) embedding: token lookup and output logits, one table.

``ReversibleEmbedding`` (Keras 3, KerasHub) looks tokens up in its table
``E`` (``[V, D]``) and, called with ``reverse=True``, turns hidden states
``h`` into logits ``h E^T`` (GPT-2's and Gemma's tied output layer; with
``tie_weights=False`` a separate ``[D, V]`` table). One example's gradient
of a tied table is the sum over both kinds of calls::

    G = sum_p e_{id_p} g_p^T   +   sum_q l_q h_q^T

(``g_p``: the gradient at lookup p, ``l_q``: at the logits of position q,
before a soft cap). Its squared norm, without forming ``V x D`` per example::

    ||G||^2 = sum_{p,p': id_p = id_p'} g_p . g_p'        (lookups: ghost)
            + || sum_q l_q h_q^T ||^2                   (outer products)
            + 2 sum_{p,q} l_q[id_p] (g_p . h_q)          (cross terms)

The clipped sum scatters the re-weighted lookup gradients into the table
and adds one matmul for the logits. Exact for any number of calls of
either kind.
"""

import tensorflow as tf

from ....core.groups import merge_positions
from ....core.norm_contract import NormResult
from ....core.norms.outer_products import (
    factored_sq_norms,
    flatten_positions,
    grouped_mean_grads,
)


def _table(layer):
    """The ``[V, D]`` variable (``embeddings`` is a computed property on
    Keras 3, the sum with LoRA adapters when they are enabled)."""
    table = getattr(layer, "_embeddings", None)
    return layer.embeddings if table is None else table


def _is_reverse(call):
    args, kwargs = call.arguments
    return bool(kwargs.get("reverse", args[0] if args else False))


def _lookups(layer, calls, num_groups):
    """Every lookup's token ids ``[G, P]`` and gradients ``[G, P, D]``."""
    ids, grads = [], []
    for inputs, dz, _ in calls:
        g = grouped_mean_grads(flatten_positions(tf.cast(dz, tf.float32)),
                               num_groups)
        grads.append(g)
        ids.append(tf.reshape(tf.cast(inputs, tf.int64), tf.shape(g)[:2]))
    return tf.concat(ids, 1), tf.concat(grads, 1)


def _logits(layer, calls, num_groups):
    """Every reverse call's hidden states ``[G, Q, D]`` and the gradients
    at its logits before the soft cap, ``[G, Q, V]``."""
    states, grads = [], []
    for inputs, dz, call in calls:
        dz = tf.cast(dz, tf.float32)
        cap = getattr(layer, "logit_soft_cap", None)
        if cap is not None:  # out = cap tanh(l / cap)
            capped = tf.cast(call.recorded, tf.float32) / cap
            dz = dz * (1 - tf.square(capped))
        grads.append(grouped_mean_grads(flatten_positions(dz), num_groups))
        states.append(merge_positions(
            flatten_positions(tf.cast(inputs, tf.float32)), num_groups))
    return tf.concat(states, 1), tf.concat(grads, 1)


def _lookup_sq_norms(ids, g):
    same = tf.cast(tf.equal(ids[:, :, None], ids[:, None, :]), g.dtype)
    return tf.reduce_sum(same * tf.matmul(g, g, transpose_b=True), [1, 2])


def _scatter(ids, g, factors, vocabulary):
    weighted = g * tf.cast(factors, g.dtype)[:, None, None]
    return tf.math.unsorted_segment_sum(
        tf.reshape(weighted, [-1, g.shape[-1]]), tf.reshape(ids, [-1]),
        vocabulary)


def reversible_embedding_sq_norms(layer, calls, num_groups):
    """Every call of a ``ReversibleEmbedding`` at once (``all_calls``)."""
    vocabulary = layer.input_dim
    forward = [c for c in calls if not _is_reverse(c[2])]
    reverse = [c for c in calls if _is_reverse(c[2])]
    table = {}  # weight id -> list of (sq_norms, clipped sum fn)
    norms = 0.0
    if forward:
        ids, g = _lookups(layer, forward, num_groups)
        norms += _lookup_sq_norms(ids, g)
        table[id(_table(layer))] = [
            lambda f: _scatter(ids, g, f, vocabulary)]
    if reverse:
        h, l = _logits(layer, reverse, num_groups)
        if layer.tie_weights:
            # E's gradient from the logits: sum_q l_q^T h_q, [V, D]
            outer = factored_sq_norms(l, h, None)
            if forward:
                at_ids = tf.gather(l, ids, axis=2, batch_dims=1)  # [G, Q, P]
                cross = tf.reduce_sum(
                    tf.transpose(at_ids, [0, 2, 1])
                    * tf.matmul(g, h, transpose_b=True), [1, 2])
                norms += 2 * cross
            key = id(_table(layer))
        else:
            outer = factored_sq_norms(h, l, None)  # [D, V]
            key = id(layer.reverse_embeddings)
        norms += outer.sq_norms
        table.setdefault(key, []).append(
            lambda f: outer.clipped_sum(f)[0])

    def clipped_sum(factors):
        return [tf.add_n([part(factors) for part in table[id(w)]])
                if id(w) in table else tf.zeros_like(w)
                for w in layer.trainable_weights]

    return NormResult(norms, clipped_sum)
