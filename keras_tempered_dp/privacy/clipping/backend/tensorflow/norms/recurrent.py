"""Exact per-example gradients of LSTM, GRU and SimpleRNN, by time step.

A recurrent layer applies the same weights at every step t. Its gate
pre-activations are affine in the step's input and the previous output::

    LSTM, SimpleRNN:  z_t = x_t K + h_{t-1} R + b
    GRU (reset_after): z_t^x = x_t K + b_x,   z_t^h = h_{t-1} R + b_h

so each example's weight gradients are sums of outer products over the
steps, like a Dense layer over a sequence's positions::

    dK = sum_t x_t^T dz_t^x,   dR = sum_t h_{t-1}^T dz_t^h,   db = sum_t dz_t

The engine recomputes the layer unrolled, with a zero tensor added to
every step's ``x K`` and ``h R`` and the recorded output gradient fed
back: the gradients with respect to those zeros are every example's
``dz_t`` at once, in one batched backward pass (examples do not interact).
The norms then come from :func:`.outer_products.factored_sq_norms` (ghost
or materialized, whichever is cheaper), not from a per-example
recomputation. The norms and the clipped sum both come from this one
recomputation, so every example's contribution is clipped to C whatever it
computes; its outputs are still checked against the ones the forward pass
recorded (to 1e-2 of their size), so that a cell whose arithmetic differs
from the formulas above fails the step instead of training on another function's gradient.
``go_backwards``
runs the steps over the reversed sequence; a ``Bidirectional`` unit runs
both of its layers in one tape and merges them as Keras does. Layers with
options outside these formulas (masks, initial states, dropout,
``stateful``, GRU with ``reset_after=False``, ``merge_mode=None``) take the
exact generic route.
"""

import keras
import tensorflow as tf

from ....core.routes import announce_generic
from ..recompute import check_same_outputs, deviation
from .generic import generic_sq_norms
from ....core.norms.lora import combined
from ....core.norms.materialized import materialized_sq_norms
from ....core.norms.outer_products import factored_sq_norms


def _lstm_step(cell, x_proj, h_proj, state):
    h, c = state
    i, f, g, o = tf.split(x_proj + h_proj, 4, axis=-1)
    act, gate = cell.activation, cell.recurrent_activation
    c = gate(f) * c + gate(i) * act(g)
    h = gate(o) * act(c)
    return h, (h, c)


def _gru_step(cell, x_proj, h_proj, state):
    (h,) = state
    x_z, x_r, x_h = tf.split(x_proj, 3, axis=-1)
    h_z, h_r, h_h = tf.split(h_proj, 3, axis=-1)
    gate = cell.recurrent_activation
    z, r = gate(x_z + h_z), gate(x_r + h_r)
    h = z * h + (1 - z) * cell.activation(x_h + r * h_h)
    return h, (h,)


def _simple_step(cell, x_proj, h_proj, state):
    h = cell.activation(x_proj + h_proj)
    return h, (h,)


# How far the unrolled outputs may drift from Keras' own. The steps add in
# Keras' order, and the outputs then agree exactly on this CPU; another
# order drifted by 1.3e-4 of the outputs' size through 28 steps of a ReLU
# LSTM (round-off amplified step after step), and a GPU kernel may add in
# its own order. A check of fidelity, not of privacy: the norms and the
# clipped sum both come from this one recomputation, so each example's
# contribution is clipped to C whatever the drift. A wrong formula moves
# the outputs by a large fraction of their size.
FIDELITY_TOLERANCE = 1e-2

_STEPS = {keras.layers.LSTM: (_lstm_step, 2), keras.layers.GRU: (_gru_step, 1),
          keras.layers.SimpleRNN: (_simple_step, 1)}
_MERGES = {"concat": lambda y, r: tf.concat([y, r], -1),
           "sum": lambda y, r: y + r, "ave": lambda y, r: (y + r) / 2,
           "mul": lambda y, r: y * r}


def _biases(cell):
    """``(b_x, b_h)`` added to the input and the recurrent projections."""
    if not cell.use_bias:
        return 0.0, 0.0
    bias = tf.convert_to_tensor(cell.bias)
    if bias.shape.rank == 2:  # GRU reset_after: [2, 3H]
        return bias[0], bias[1]
    return bias, 0.0


def _parts(layer):
    """The recurrent layers of the unit: itself, or a Bidirectional's
    forward and backward layers."""
    if isinstance(layer, keras.layers.Bidirectional):
        return [layer.forward_layer, layer.backward_layer]
    return [layer]


def _part_supported(layer):
    cell = layer.cell
    return (type(layer) in _STEPS and not layer.stateful
            and not getattr(layer, "time_major", False)
            and getattr(cell, "dropout", 0) == 0
            and getattr(cell, "recurrent_dropout", 0) == 0
            and getattr(cell, "reset_after", True))


def _supported(layer, call):
    if (isinstance(layer, keras.layers.Bidirectional)
            and layer.merge_mode not in _MERGES):  # None: refused anyway
        return False
    return (all(_part_supported(part) for part in _parts(layer))
            and not getattr(call, "batched_args", list)())


def _unrolled(layer, x, taps):
    """The layer's outputs as Keras returns them, the step inputs and
    ``h_{t-1}`` ``[B, T, .]`` in the order the steps run (reversed with
    ``go_backwards``), with ``taps`` (two lists of T ``[B, n]`` zeros)
    added to each step's input and recurrent projections."""
    step, num_states = _STEPS[type(layer)]
    cell = layer.cell
    if layer.go_backwards:
        x = tf.reverse(x, [1])
    kernel = tf.convert_to_tensor(cell.kernel)
    recurrent = tf.convert_to_tensor(cell.recurrent_kernel)
    b_x, b_h = _biases(cell)
    h = tf.zeros([tf.shape(x)[0], cell.units], x.dtype)
    state = (h,) * num_states
    outputs, previous = [], []
    for t, (tap_x, tap_h) in enumerate(zip(*taps)):
        previous.append(state[0])
        x_proj = tf.matmul(x[:, t], kernel)
        h_proj = tf.matmul(state[0], recurrent)
        if type(layer) is keras.layers.LSTM:
            # Keras' order, (x K + h R) + b: in a recurrence whose outputs
            # grow (ReLU), another order's round-off is amplified step
            # after step. The taps are zeros: adding them rounds nothing.
            x_proj, h_proj = (x_proj + h_proj) + b_x + tap_x, tap_h
        else:
            x_proj, h_proj = x_proj + b_x + tap_x, h_proj + b_h + tap_h
        h, state = step(cell, x_proj, h_proj, state)
        outputs.append(h)
    returned = (tf.stack(outputs, axis=1) if layer.return_sequences
                else outputs[-1])
    return returned, x, tf.stack(previous, axis=1)


def _merged(layer, outputs):
    """The unit's output from its parts' outputs (Bidirectional: the
    backward sequence flipped back in time, then merged)."""
    if len(outputs) == 1:
        return outputs[0]
    forward, backward = outputs
    if layer.return_sequences:
        backward = tf.reverse(backward, [1])
    return _MERGES[layer.merge_mode](forward, backward)


def _terms(layer, x, previous, g_x, g_h, num_groups):
    """``{id(weight): NormResult}`` of one recurrent layer."""
    cell = layer.cell
    terms = {id(cell.kernel): factored_sq_norms(x, g_x, num_groups),
             id(cell.recurrent_kernel): factored_sq_norms(previous, g_h,
                                                          num_groups)}
    if cell.use_bias:
        bias = tf.reduce_sum(g_x, axis=1)
        if cell.bias.shape.rank == 2:
            bias = tf.stack([bias, tf.reduce_sum(g_h, axis=1)], axis=1)
        terms[id(cell.bias)] = materialized_sq_norms([bias], num_groups)
    return terms


def recurrent_sq_norms(layer, inputs, grad_outputs, num_groups, call):
    """LSTM, GRU (``reset_after=True``) and SimpleRNN over ``[B, T, F]``,
    alone or in a ``Bidirectional``."""
    if not _supported(layer, call) or inputs.shape[1] is None:
        announce_generic(layer, 1, "a mask, an initial state, dropout, "
                         "stateful, reset_after=False or an unknown sequence "
                         "length")
        return generic_sq_norms(layer, inputs, grad_outputs, num_groups,
                                call)
    x = tf.cast(inputs, tf.float32)
    parts = _parts(layer)
    # One zero tensor per step and projection: the gradient of a slice of
    # one [B, T, n] tensor would be a dense [B, T, n] tensor per step.
    taps = [[[tf.zeros([tf.shape(x)[0], part.cell.kernel.shape[-1]])
              for _ in range(x.shape[1])] for _ in range(2)]
            for part in parts]
    with tf.GradientTape() as tape:
        tape.watch(taps)
        runs = [_unrolled(part, x, part_taps)
                for part, part_taps in zip(parts, taps)]
        outputs = _merged(layer, [run[0] for run in runs])
    grads = tape.gradient(outputs, taps, output_gradients=tf.cast(
        grad_outputs, tf.float32))
    terms = {}
    for part, (_, seen, previous), (g_x, g_h) in zip(parts, runs, grads):
        terms.update(_terms(part, seen, previous, tf.stack(g_x, axis=1),
                            tf.stack(g_h, axis=1), num_groups))
    result = combined(layer, terms)
    recorded = getattr(call, "recorded", None)
    if recorded is None:
        return result
    checked = check_same_outputs(
        layer, deviation(outputs, recorded), recorded,
        tolerance=FIDELITY_TOLERANCE, message=(
            f"Layer {layer.name!r} ({type(layer).__name__}): the engine's "
            "time-step recomputation differs from the layer's own outputs "
            "by more than round-off, so its formulas do not fit this "
            "layer (a subclass or an option the route does not know). "
            "Register keras_tempered_dp.privacy.clipping.generic_sq_norms "
            "for its class (register_norm_fn) to take the exact generic "
            "route. Maximum difference (then the allowed one):"))
    with tf.control_dependencies([checked]):
        return result._replace(sq_norms=tf.identity(result.sq_norms))
