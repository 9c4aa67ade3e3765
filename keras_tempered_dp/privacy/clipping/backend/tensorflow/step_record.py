"""What each DP-SGD step ran, recorded by the step itself.

The noise multiplier is a variable that anything may change between two
steps (a schedule, a callback, a hand-written loop). So that no change goes
unseen, every step writes the sigma it *used* into a small run-length table
kept in variables:

    noise[i], steps[i]   for i < used:  ``steps[i]`` consecutive steps ran
                          with noise multiplier ``noise[i]``

and keeps the largest number of examples one step saw. The host drains the
table into the model's :class:`~keras_tempered_dp.privacy.ledger.Ledger`
(at each epoch's end, at the end of ``fit``, before saving).

Should the table fill up between two drains (more than :data:`CAPACITY`
changes of sigma), further steps are merged into the last row with the
*smaller* of the two sigmas: epsilon grows as sigma shrinks, so the merged
row can only overstate what was spent, never understate it; the number of
merged steps is kept and reported.

The update runs inside the traced step (XLA included), in replica context
under a tf.distribute strategy: every replica writes the same values, and
the variables aggregate ONLY_FIRST_REPLICA.
"""

import dataclasses

import numpy as np
import tensorflow as tf

# Rows of the table: changes of sigma between two drains before merging.
CAPACITY = 512


@dataclasses.dataclass(frozen=True)
class Drained:
    """The table's content at one drain.

    Attributes:
        runs: ``[(sigma, steps), ...]`` in the order they ran; sigma as the
            float32 the step used.
        max_examples: the most examples (over all replicas) one step saw.
        merged_steps: steps accounted at a smaller sigma than they ran with
            because the table was full.
    """

    runs: tuple
    max_examples: int
    merged_steps: int

    @property
    def steps(self):
        return sum(steps for _, steps in self.runs)


class StepRecord:
    """The table's variables, made in ``strategy``'s scope."""

    def __init__(self, strategy):
        only_first = tf.VariableAggregation.ONLY_FIRST_REPLICA
        with strategy.scope():
            def variable(value, dtype, name):
                return tf.Variable(value, trainable=False, dtype=dtype,
                                   name=name, aggregation=only_first)
            self._noise = variable(tf.zeros([CAPACITY], tf.float32),
                                   tf.float32, "ledger_noise")
            self._steps = variable(tf.zeros([CAPACITY], tf.int64),
                                   tf.int64, "ledger_steps")
            self._used = variable(0, tf.int32, "ledger_used")
            self._max_examples = variable(0, tf.int64, "ledger_max_examples")
            self._merged = variable(0, tf.int64, "ledger_merged_steps")

    def update(self, sigma, examples):
        """Records one step that used ``sigma`` (float32 scalar) and saw
        ``examples`` (int64 scalar, all replicas) examples. In graph."""
        used = self._used.read_value()
        last = tf.maximum(used - 1, 0)
        last_sigma = tf.gather(self._noise.read_value(), last)
        same = tf.logical_and(used > 0, tf.equal(last_sigma, sigma))
        full = tf.logical_and(tf.logical_not(same), used >= CAPACITY)
        index = tf.where(tf.logical_or(same, full), last, used)
        recorded = tf.where(full, tf.minimum(last_sigma, sigma), sigma)
        at = tf.reshape(index, [1, 1])
        steps = self._steps.read_value()
        return tf.group(
            self._noise.assign(tf.tensor_scatter_nd_update(
                self._noise.read_value(), at, tf.reshape(recorded, [1]))),
            self._steps.assign(tf.tensor_scatter_nd_update(
                steps, at, tf.reshape(tf.gather(steps, index) + 1, [1]))),
            self._used.assign(index + 1),
            self._max_examples.assign(tf.maximum(
                self._max_examples.read_value(),
                tf.cast(examples, tf.int64))),
            self._merged.assign_add(tf.cast(full, tf.int64)))

    def drain(self):
        """The table's rows since the last drain, then an empty table."""
        used = int(self._used.numpy())
        noise = np.asarray(self._noise.numpy())[:used]
        steps = np.asarray(self._steps.numpy())[:used]
        drained = Drained(
            tuple((float(n), int(s)) for n, s in zip(noise, steps)),
            int(self._max_examples.numpy()), int(self._merged.numpy()))
        self._steps.assign(tf.zeros([CAPACITY], tf.int64))
        self._used.assign(0)
        self._max_examples.assign(0)
        self._merged.assign(0)
        return drained
