"""An independent, slow, obviously-correct DP-SGD reference.

It loops over microbatches (single examples by default), takes each one's
ordinary gradient with a GradientTape on the whole model, clips it by its
global L2 norm and averages: exactly the definition of DP-SGD's clipped sum
(Abadi et al. 2016), with nothing shared with the engine's code.
"""

import numpy as np
import tensorflow as tf


def per_group_gradients(model, loss_fn, x, y, num_groups=None):
    batch = len(y)
    num_groups = num_groups or batch
    size = batch // num_groups
    grads = []
    for m in range(num_groups):
        rows = slice(m * size, (m + 1) * size)
        # a model's inputs may be a dict or list of arrays (KerasHub's)
        xs, ys = tf.nest.map_structure(lambda a: a[rows], x), y[rows]
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(loss_fn(ys, model(xs, training=True)))
        g = tape.gradient(loss, model.trainable_variables)
        # an unused weight (a backbone's pooler under a sequence head) has
        # gradient 0; unconnected_gradients="zero" fails on Keras 3's
        # variables, whose dtype is a string.
        grads.append([np.zeros(v.shape, "float64") if d is None else
                      np.asarray(tf.convert_to_tensor(d), "float64")
                      for v, d in zip(model.trainable_variables, g)])
    return grads


def global_norm(grads):
    return float(np.sqrt(sum(np.sum(np.square(g)) for g in grads)))


def clipped_mean(model, loss_fn, x, y, l2_norm_clip, num_groups=None):
    """The clipped mean gradient, per variable, and its float32 error scale.

    Returns:
        ``(mean, scales)``: ``scales[i]`` is the largest magnitude of one
        group's clipped contribution to variable i, divided by the number of
        groups: float32 rounding in any implementation is relative to the
        terms summed, not to their (possibly cancelling) sum.
    """
    groups = per_group_gradients(model, loss_fn, x, y, num_groups)
    total = [np.zeros_like(g) for g in groups[0]]
    scales = [0.0] * len(total)
    for grads in groups:
        norm = global_norm(grads)
        factor = min(1.0, l2_norm_clip / norm) if norm > 0 else 1.0
        total = [t + factor * g for t, g in zip(total, grads)]
        scales = [max(s, factor * float(np.abs(g).max()))
                  for s, g in zip(scales, grads)]
    return ([t / len(groups) for t in total],
            [s / len(groups) for s in scales])
