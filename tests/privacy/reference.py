"""An independent, slow, obviously-correct DP-SGD reference.

It loops over microbatches (single examples by default), takes each one's
ordinary gradient of the whole model, clips it by its global L2 norm and
averages: exactly the definition of DP-SGD's clipped sum (Abadi et al.
2016), with nothing shared with the engine's code. The gradient is the
backend's own: a GradientTape on TensorFlow, ``jax.grad`` of the model's
``stateless_call`` on JAX.
"""

import keras
import numpy as np


def _tf_gradient(model, loss_fn):
    return lambda xs, ys: _tf_one_gradient(model, loss_fn, xs, ys)


def _tf_one_gradient(model, loss_fn, xs, ys):
    import tensorflow as tf
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(loss_fn(ys, model(xs, training=True)))
    g = tape.gradient(loss, model.trainable_variables)
    # an unused weight (a backbone's pooler under a sequence head) has
    # gradient 0; unconnected_gradients="zero" fails on Keras 3's
    # variables, whose dtype is a string.
    return [None if d is None else tf.convert_to_tensor(d) for d in g]


def _jax_gradient(model, loss_fn):
    import jax
    import jax.numpy as jnp
    non_trainable = [v.value for v in model.non_trainable_variables]
    trainable = [v.value for v in model.trainable_variables]

    def loss(trainable, xs, ys):
        y_pred, _ = model.stateless_call(trainable, non_trainable, xs,
                                         training=True)
        return jnp.mean(loss_fn(ys, y_pred))

    # Jitted once for all groups: an LSTM's steps op by op take minutes.
    gradient = jax.jit(jax.grad(loss))
    return lambda xs, ys: gradient(trainable, xs, ys)


def per_group_gradients(model, loss_fn, x, y, num_groups=None):
    batch = len(y)
    num_groups = num_groups or batch
    size = batch // num_groups
    gradient = (_jax_gradient if keras.backend.backend() == "jax"
                else _tf_gradient)(model, loss_fn)
    grads = []
    for m in range(num_groups):
        rows = slice(m * size, (m + 1) * size)
        # a model's inputs may be a dict or list of arrays (KerasHub's)
        xs = _map(lambda a, rows=rows: a[rows], x)
        g = gradient(xs, y[rows])
        grads.append([np.zeros(v.shape, "float64") if d is None else
                      np.asarray(d, "float64")
                      for v, d in zip(model.trainable_variables, g)])
    return grads


def _map(fn, x):
    """``fn`` on every array of ``x`` (Keras 2 has no keras.tree)."""
    if keras.backend.backend() == "jax":
        import jax
        return jax.tree_util.tree_map(fn, x)
    import tensorflow as tf
    return tf.nest.map_structure(fn, x)


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
