"""Recording the clip units' calls in a stateless forward pass, on JAX.

JAX has no tape to ask for the gradient of the loss with respect to an
intermediate tensor. So every call of every clip unit adds a perturbation
to its output, ``z_c + e_c``; the perturbations are arguments of the loss,
all zero, and ``d loss / d e_c`` at ``e = 0`` is exactly ``dz_c``, the
output gradient the norm functions need. Their shapes come from a first,
abstract pass (``jax.eval_shape``: tracing only, no computation).

Each call also records what a replay of the call needs: its inputs, its
other arguments and the unit's non-trainable state at that moment (a
layer's seed state advances between two calls). A replay of a call is then
the same function of the same values, so the norm computed from the
recorded ``dz`` and the clipped sum computed by differentiating the replay
belong to one and the same per-example gradient.
"""

import contextlib
from typing import Any, NamedTuple

import jax
import keras

from ..tensorflow.tap import Tap


class Call(NamedTuple):
    """One recorded call of a clip unit, its arrays as leaves.

    ``unit``: the index of the unit's tap; ``arguments``: ``(inputs, args,
    kwargs)``; ``state``: the values of the unit's variables that the step
    does not differentiate (frozen or non-trainable), at the call;
    ``outputs``: ``z`` (before the unit's activation), perturbed.
    """

    unit: int
    arguments: Any
    state: tuple
    outputs: Any


class Recorder:
    """Collects the calls of one forward pass, in call order."""

    def __init__(self):
        self.calls = []
        self.perturbations = None


class RecordingTap(Tap):
    """A tap whose calls are recorded into a :class:`Recorder` and whose
    outputs are perturbed (module docstring)."""

    def __init__(self, layer, index, recorder, trained):
        super().__init__(layer)
        self.index = index
        self.recorder = recorder
        # What the step differentiates, in the unit's own order; every other
        # variable of the unit is state.
        self.weights = [w for w in layer.weights if id(w) in trained]
        self.state_variables = [w for w in layer.weights
                                if id(w) not in trained]

    def recording_call(self, inputs, *args, **kwargs):
        z = self.linear_call(inputs, *args, **kwargs)
        self.refuse_several_outputs(keras.ops.is_tensor(z))
        recorder = self.recorder
        if recorder.perturbations is not None:
            z = z + recorder.perturbations[len(recorder.calls)]
        # Inside the stateless scope, .value is the value at this call.
        state = tuple(v.value for v in self.state_variables)
        recorder.calls.append(Call(self.index, (inputs, args, kwargs),
                                   state, z))
        activation = self.layer.activation if self.strips_activation else None
        return z if activation is None else activation(z)


@contextlib.contextmanager
def recording(taps, perturbations=None):
    """Installs ``taps`` (sharing one recorder) for one forward pass;
    yields the recorder."""
    recorder = taps[0].recorder
    recorder.calls = []
    recorder.perturbations = perturbations
    with contextlib.ExitStack() as stack:
        for tap in taps:
            stack.enter_context(tap.installed())
        yield recorder


def split_arrays(tree):
    """``(arrays, rebuild)``: the array leaves of ``tree`` and a function
    that puts other arrays in their places (everything else is kept: flags,
    None, Python numbers)."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    where = [i for i, leaf in enumerate(leaves) if keras.ops.is_tensor(leaf)]

    def rebuild(arrays):
        out = list(leaves)
        for i, array in zip(where, arrays):
            out[i] = array
        return jax.tree_util.tree_unflatten(treedef, out)

    return [leaves[i] for i in where], rebuild
