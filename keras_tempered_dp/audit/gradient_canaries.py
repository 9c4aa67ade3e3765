"""Gradient canaries: white-box audit examples injected by the clipping engine.

Canary ``i`` is a fictitious example whose per-example gradient is the same
at every step, ``g_i = C e_{j_i}``: the clipping norm ``C`` on one coordinate
``j_i`` of the flattened trainable weights and 0 elsewhere (a *Dirac*
canary, Nasr et al. 2023), so its norm equals the clip and clipping keeps it
whole, the largest contribution one example may make. Before training each
canary is included with probability 1/2, secretly; an included canary then
joins each step's batch independently with the run's sampling rate
``q = batch_size / N``, exactly as a real example does under Poisson
sampling. The engine adds the sampled canaries' gradients to the clipped sum
*before* the noise, so they pass through the mechanism the accountant
describes, and each canary enjoys the run's (epsilon, delta) guarantee.

The auditor is the strongest DP allows: it sees every step's noised sum and
knows every other example (DP protects a canary even from an adversary who
knows the rest of the data). Its score for canary ``i`` is

    score_i = sum_t (noised_sum_t - data_clipped_sum_t)[j_i]
            = C * (times canary i was sampled) + N(0, T (sigma C)^2),

an included canary scoring about ``q T C`` above an excluded one (with a
noise schedule or quantile clipping, sigma and C are each step's own, and
quantile clipping's gradient share sigma_g > sigma). This is
the statistic whose distribution the accountant bounds; any noise too small,
a clip not applied to the noise scale, or steps uncounted show as a lower
bound above the accounted epsilon.

Example:

>>> canaries = GradientCanaries([True, False, True], sampling_rate=0.5,
...                             seed=1)
>>> canaries.num_canaries
3
"""

import numpy as np
import tensorflow as tf


class GradientCanaries:
    """Dirac gradient canaries for one training run.

    Args:
        included: one bool per canary, the secret inclusion draws (see
            :func:`~keras_tempered_dp.audit.canaries.draw_inclusion`).
        sampling_rate: q, the probability that an included canary joins a
            step (the run's ``batch_size / num_examples``).
        seed: seeds the canaries' coordinates and their per-step draws; None
            draws it from the operating system.

    Raises:
        ValueError: for an empty ``included`` or a rate outside (0, 1].
    """

    def __init__(self, included, *, sampling_rate, seed=None):
        included = np.asarray(included)
        if included.ndim != 1 or included.size == 0 or \
                included.dtype != bool:
            raise ValueError(f"included: must be a non-empty 1-D array of "
                             f"bools, got shape {included.shape} of "
                             f"{included.dtype}.")
        if not 0 < float(sampling_rate) <= 1:
            raise ValueError(f"sampling_rate={sampling_rate!r}: must be in "
                             "(0, 1], the run's batch_size / num_examples.")
        self.included = included
        self.sampling_rate = float(sampling_rate)
        self._rng = np.random.default_rng(seed)
        self._variables = None

    num_canaries = property(lambda self: int(self.included.size))

    def attach(self, trainable_variables):
        """Places the canaries on distinct coordinates of these variables
        and makes the score accumulators; called by the engine."""
        sizes = [int(np.prod(v.shape)) for v in trainable_variables]
        total = sum(sizes)
        if total < self.num_canaries:
            raise ValueError(
                f"{self.num_canaries} gradient canaries need as many "
                f"distinct weights; the model has {total}. Use fewer "
                "canaries.")
        flat = self._rng.choice(total, self.num_canaries, replace=False)
        starts = np.cumsum([0] + sizes[:-1])
        owner = np.searchsorted(starts, flat, side="right") - 1
        # For each variable: (canary ids on it, their flat offsets in it).
        self._placement = [
            (np.flatnonzero(owner == k), flat[owner == k] - starts[k])
            for k in range(len(sizes))]
        self._generator = tf.random.Generator.from_seed(
            int(self._rng.integers(2**62)))
        self._included = tf.constant(self.included, tf.bool)
        self._scores = tf.Variable(tf.zeros([self.num_canaries], tf.float64),
                                   trainable=False, name="canary_scores")
        self._sampled = tf.Variable(tf.zeros([self.num_canaries], tf.int64),
                                    trainable=False, name="canary_sampled")
        self._variables = list(trainable_variables)

    def inject(self, sums, clip):
        """``sums`` plus ``C e_j`` for every included canary that this
        step's Poisson draw samples (before the noise)."""
        draw = self._generator.uniform([self.num_canaries])
        present = tf.logical_and(self._included, draw < self.sampling_rate)
        self._sampled.assign_add(tf.cast(present, tf.int64))
        value = tf.cast(present, tf.float32) * tf.cast(clip, tf.float32)
        return [self._add(s, value, ids, offsets)
                for s, (ids, offsets) in zip(sums, self._placement)]

    @staticmethod
    def _add(total, value, ids, offsets):
        if ids.size == 0:
            return total
        flat = tf.tensor_scatter_nd_add(
            tf.reshape(total, [-1]), offsets[:, None].astype(np.int64),
            tf.cast(tf.gather(value, ids), total.dtype))
        return tf.reshape(flat, tf.shape(total))

    def observe(self, noised_sums, data_sums):
        """Adds this step's ``(noised - data)`` at each canary's coordinate
        to its score."""
        step = tf.zeros([self.num_canaries], tf.float64)
        for noised, data, (ids, offsets) in zip(noised_sums, data_sums,
                                                self._placement):
            if ids.size == 0:
                continue
            seen = tf.gather(tf.reshape(tf.cast(noised, tf.float64)
                                        - tf.cast(data, tf.float64), [-1]),
                             offsets)
            step = tf.tensor_scatter_nd_add(step, ids[:, None], seen)
        self._scores.assign_add(step)

    def scores(self):
        """The score of every canary (higher: more likely included)."""
        if self._variables is None:
            raise RuntimeError("The canaries were never attached to an "
                               "engine (no training ran with them).")
        return self._scores.numpy()

    def times_sampled(self):
        """How many steps each canary joined (0 for excluded ones)."""
        return self._sampled.numpy()
