"""The sum over a batch's groups of each group's clipped gradient, on JAX.

The same computation as the TensorFlow engine's :mod:`....clipped_sum`,
written as a pure function of the model's state (Keras' stateless
``train_step`` on JAX):

1. one forward pass, ``model.stateless_call``, every clip unit recorded and
   its outputs perturbed by zeros (:mod:`.recording`); the gradient of the
   summed per-example loss with respect to the perturbations is every
   call's ``dz``;
2. per-group squared norms unit by unit: the registry's norm function for
   JAX where the unit's class has one (the shared ``keras.ops`` functions
   of :mod:`...core.norms`: Dense, EinsumDense, Conv2D from patches,
   Embedding, LayerNormalization, AddPositionEmbedding), and for every
   other unit (LSTM, a layer called several times, your own)
   the exact vectorized route: ``jax.vmap`` over groups of the
   vector-Jacobian product of a replay of the unit's calls on the group's
   rows (cross terms between calls included);
3. clip factors (:mod:`...core.factors`);
4. each unit's clipped sum: its norm function's where it gives one;
   otherwise the vector-Jacobian product of the replay of its calls on
   the whole batch with ``dz`` re-weighted per row by ``factor_m / |group
   m|``.

A group whose loss, unit inputs, other batched arguments or output
gradients hold a NaN or an infinity, or whose norm is not finite, gets
factor 0, and its rows of the inputs and ``dz`` are replaced by zeros
(``where``, which selects: ``0 * NaN`` is NaN) before the norms and the
sums: it adds exactly nothing, as on TensorFlow.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import keras

from ...core.factors import clip_factors
from ...core.groups import groups_with_weight, regroup, rows_with_weight
from ...core.norm_contract import NormResult
from ...core.registry import norm_fn_for, takes_all_calls
from ..tensorflow.installation import refuse_regularization_losses
from .recording import recording, split_arrays


class ClippedSum(NamedTuple):
    """``sums`` (in the order of ``model.trainable_variables``), the
    outputs, the new non-trainable values, ``counted`` (rows of weight >
    0) and ``nonfinite`` (groups of weight > 0 left out), as on
    TensorFlow, and ``mismatch``: a replay did not reproduce its recorded
    call, and ``sums`` are zero."""

    sums: list
    y_pred: object
    non_trainable: list
    counted: object
    nonfinite: object
    mismatch: object  # bool: a replay differed; sums are zero


class _Call(NamedTuple):
    """One recorded call, split into arrays and the rest."""

    unit: int
    arguments: list  # array leaves of (inputs, args, kwargs)
    rebuild: object
    batched: list  # bool per argument leaf: has the batch axis
    state: tuple
    dz: object
    outputs: object  # the recorded z, to check replays against
    good: object = None  # [B] bool: rows whose replay must match


def _forward(model, taps, trainable, non_trainable, x, perturbations):
    kwargs = {"training": True} if model._call_has_training_arg else {}
    with recording(taps, perturbations) as recorder:
        y_pred, non_trainable, losses = model.stateless_call(
            trainable, non_trainable, x, return_losses=True, **kwargs)
    refuse_regularization_losses(model, losses)  # when traced: no step ran
    return y_pred, non_trainable, recorder.calls


def _record(model, taps, loss_fn, state, batch):
    """Step 1: ``(losses, y_pred, non_trainable, calls)``."""
    trainable, non_trainable = state
    x, y, sample_weight = batch
    shapes = jax.eval_shape(lambda: [
        c.outputs for c in _forward(model, taps, trainable, non_trainable,
                                    x, None)[2]])
    rebuilds = []

    def loss_of(perturbations):
        y_pred, new_state, calls = _forward(model, taps, trainable,
                                            non_trainable, x, perturbations)
        losses = loss_fn(y, y_pred, sample_weight=sample_weight)
        arrays = []
        rebuilds.clear()
        for call in calls:
            leaves, rebuild = split_arrays(call.arguments)
            rebuilds.append((call.unit, rebuild))
            arrays.append((leaves, call.state, call.outputs))
        return jnp.sum(losses), (losses, y_pred, new_state, arrays)

    zeros = [jnp.zeros(s.shape, s.dtype) for s in shapes]
    (_, (losses, y_pred, new_state, arrays)), dzs = jax.value_and_grad(
        loss_of, has_aux=True)(zeros)
    rows = losses.shape[0]
    calls = [_Call(unit, leaves, rebuild,
                   [_has_rows(t, rows) for t in leaves], state, dz, z)
             for (unit, rebuild), (leaves, state, z), dz
             in zip(rebuilds, arrays, dzs)]
    return losses, y_pred, new_state, calls


def _has_rows(tensor, rows):
    return tensor.ndim >= 1 and tensor.shape[0] == rows


def _is_float(tensor):
    return jnp.issubdtype(tensor.dtype, jnp.floating)


def _row_finite(tensor, rows):
    return jnp.all(jnp.isfinite(jnp.reshape(tensor, (rows, -1))), axis=1)


def _bad_rows(losses, calls, num_groups):
    """``[B]`` bool: the rows of groups holding a non-finite value."""
    rows = losses.shape[0]
    tensors = [losses] + [c.dz for c in calls] + [
        t for c in calls for t, b in zip(c.arguments, c.batched)
        if b and _is_float(t)]
    finite = jnp.all(jnp.stack([_row_finite(t, rows) for t in tensors]),
                     axis=0)
    bad_groups = ~jnp.all(regroup(finite, num_groups), axis=1)
    return jnp.repeat(bad_groups, rows // bad_groups.shape[0])


def _zero_rows(bad, tensor):
    if not _is_float(tensor):
        return tensor
    mask = jnp.reshape(bad, (-1,) + (1,) * (tensor.ndim - 1))
    return jnp.where(mask, jnp.zeros_like(tensor), tensor)


def _sanitized(calls, bad):
    return [c._replace(
        arguments=[_zero_rows(bad, t) if b else t
                   for t, b in zip(c.arguments, c.batched)],
        dz=_zero_rows(bad, c.dz), good=~bad) for c in calls]


# A replay may differ from the recorded outputs by round-off only (the same
# operations, batched differently), relative to the largest output.
_RELATIVE_TOLERANCE = 1e-4


def _replays_match(zs, calls):
    """Whether every replayed output equals the recorded one on the rows
    that were not zeroed, within round-off: a scalar bool."""
    ok = jnp.array(True)
    for z, call in zip(zs, calls):
        recorded = call.outputs.astype(jnp.float32)
        mask = jnp.reshape(call.good, (-1,) + (1,) * (recorded.ndim - 1))
        deviation = jnp.max(jnp.where(
            mask, jnp.abs(z.astype(jnp.float32) - recorded), 0.0))
        scale = jnp.max(jnp.where(mask, jnp.abs(recorded), 0.0))
        ok = ok & (deviation <= _RELATIVE_TOLERANCE * scale + 1e-6)
    return ok


def _replay(tap, weights, calls):
    """The unit's outputs ``z`` at each of ``calls``, its differentiated
    weights set to ``weights`` and its other variables to the state
    recorded at the call."""
    outputs = []
    for call in calls:
        inputs, args, kwargs = call.rebuild(call.arguments)
        mapping = (list(zip(tap.weights, weights))
                   + list(zip(tap.state_variables, call.state)))
        with keras.StatelessScope(state_mapping=mapping):
            outputs.append(tap.linear_call(inputs, *args, **kwargs))
    return outputs


def _vectorized_sq_norms(tap, weights, calls, num_groups):
    """``[G]`` squared norms by ``vmap`` over groups of the replay's
    vector-Jacobian product on each group's rows."""
    size = calls[0].dz.shape[0] // (
        calls[0].dz.shape[0] if num_groups is None else num_groups)
    grouped = [([regroup(t, num_groups) if b else t
                 for t, b in zip(c.arguments, c.batched)],
                regroup(c.dz, num_groups) / size,
                regroup(c.outputs, num_groups), regroup(c.good, num_groups))
               for c in calls]
    axes = [([0 if b else None for b in c.batched], 0, 0, 0) for c in calls]

    def one_group(group):
        group_calls = [c._replace(arguments=args, outputs=z, good=good)
                       for c, (args, _, z, good) in zip(calls, group)]
        zs, vjp = jax.vjp(lambda w: _replay(tap, w, group_calls), weights)
        grads = vjp([dz for _, dz, _, _ in group])[0]
        return (sum(jnp.sum(jnp.square(g)) for g in grads),
                _replays_match(zs, group_calls))

    norms, matches = jax.vmap(one_group, in_axes=(axes,))(grouped)
    return norms, jnp.all(matches)


def _unit_norms(tap, weights, calls, num_groups):
    """The unit's :class:`NormResult` (its clipped sum None: the
    replay's), and whether its replays matched the recorded outputs: its
    norm function's for one call (the registry's, for JAX), else the
    vectorized replay's."""
    fn = norm_fn_for(tap.layer)
    if fn is not None and len(calls) == 1 and not takes_all_calls(
            tap.layer):
        inputs = calls[0].rebuild(calls[0].arguments)[0]
        result = (fn(tap.layer, inputs, calls[0].dz, num_groups, None)
                  if keras.ops.is_tensor(inputs) else None)
        if result is not None:
            return result, jnp.array(True)
    norms, match = _vectorized_sq_norms(tap, weights, calls, num_groups)
    return NormResult(norms), match


def _unit_sum(tap, weights, calls, row_weights):
    """The replay's weight gradient with re-weighted ``dz``, and whether
    the replay matched the recorded outputs."""
    zs, vjp = jax.vjp(lambda w: _replay(tap, w, calls), weights)
    scaled = [c.dz * jnp.reshape(row_weights, (-1,) + (1,) * (c.dz.ndim - 1))
              .astype(c.dz.dtype) for c in calls]
    return vjp(scaled)[0], _replays_match(zs, calls)


def clipped_sum(model, taps, loss_fn, state, batch, num_groups, clip,
                options):
    """The :class:`ClippedSum` of ``batch`` = ``(x, y, sample_weight)``;
    ``state`` = ``(trainable, non_trainable)`` values, in the model's
    order."""
    trainable = state[0]
    losses, y_pred, new_state, calls = _record(model, taps, loss_fn, state,
                                               batch)
    rows = losses.shape[0]
    bad = _bad_rows(losses, calls, num_groups)
    calls = _sanitized(calls, bad)
    position = {id(v): i for i, v in enumerate(model.trainable_variables)}
    per_unit = []
    matched = jnp.array(True)
    total = jnp.zeros([rows if num_groups is None else num_groups])
    for index, tap in enumerate(taps):
        unit_calls = [c for c in calls if c.unit == index]
        weights = [trainable[position[id(w)]] for w in tap.weights]
        result = None
        if unit_calls:
            result, match = _unit_norms(tap, weights, unit_calls,
                                        num_groups)
            total = total + result.sq_norms
            matched = matched & match
        per_unit.append((tap, weights, unit_calls, result))
    norms = jnp.sqrt(total)
    groups = norms.shape[0]
    bad_groups = regroup(bad, num_groups)[:, 0]
    kept = ~bad_groups & jnp.isfinite(norms)
    factors = jnp.where(kept, clip_factors(
        jnp.where(kept, norms, 0.0), clip, options.clipping, options.gamma),
        0.0)
    per_group = rows // groups
    row_weights = jnp.repeat(factors / per_group, per_group)
    sums = [jnp.zeros_like(v) for v in trainable]
    for tap, weights, unit_calls, result in per_unit:
        if not unit_calls:
            continue  # not called in this pass: gradient 0
        if result.clipped_sum is None:
            unit_sums, match = _unit_sum(tap, weights, unit_calls,
                                         row_weights)
            matched = matched & match
        else:
            unit_sums = result.clipped_sum(factors)
        for w, g in zip(tap.weights, unit_sums):
            sums[position[id(w)]] = g
    # A replay that did not reproduce its call (a draw of random numbers,
    # an argument taken for a batched one) could let a contribution exceed
    # the clip: such a step adds no data at all, only the noise, and is
    # counted (the engine then refuses to go on: engine.py).
    sums = [jnp.where(matched, g, jnp.zeros_like(g)) for g in sums]
    counted = rows_with_weight(batch[2], rows)
    weighted_groups = groups_with_weight(batch[2], rows, num_groups) > 0
    nonfinite = jnp.sum(weighted_groups & ~kept)
    return ClippedSum(sums, y_pred, new_state,
                      jnp.sum(counted.astype(jnp.float32)), nonfinite,
                      ~matched)
