"""One process of tests/distributed/test_multi_worker.py.

``python -m tests.distributed.worker_job OUT.npz multi`` runs as one worker
of a MultiWorkerMirroredStrategy (TF_CONFIG from the environment, set by
the test); ``... OUT.npz single`` runs the same phases on one device with no
strategy, the reference. Everything happens under ``__main__``: importing
this module (pytest's --doctest-modules does) runs nothing.

Phases, each writing arrays into OUT.npz:

1. ``fixed_*``: noise 0, three fixed global batches of 32 through
   ``model.fit``; weights after, steps_taken, examples_seen.
2. ``share``: noise 1, ``noise_seed=7`` on every worker; each local replica's
   noised gradient of zero inputs (``compute_gradients`` in
   ``strategy.run``), then ``noisy_*``: weights after two noised fit steps.
3. ``poisson_*``: ``distributed_poisson_batches``, two epochs with
   EpsilonCallback; the logged epsilons, steps_taken, examples_seen.
4. ``global_draw_*``: what ``fit`` on ``poisson_batches`` and
   ``shuffled_batches`` (whole-dataset draws) does: refused across
   workers, trained on one device.
"""

import json
import os
import sys

import numpy as np

GLOBAL_BATCH = 32
FIXED_STEPS = 3
POISSON_N, POISSON_B = 256, 32


def _initial_weights(model):
    """The same starting point in every process, whatever the strategy does
    with Keras' initializers."""
    rng = np.random.default_rng(0)
    return [0.1 * rng.standard_normal(v.shape).astype("float32")
            for v in model.get_weights()]


def main(out, mode):
    import tensorflow as tf
    if mode == "multi":
        # Must exist before any other TF op initializes the eager context.
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    job = _Job(strategy)
    job.fixed()
    job.noisy()
    model = job.poisson()
    job.global_draws(model)
    np.savez(out, **job.result)


class _Job:
    """The phases of the module docstring, each adding to ``result``."""

    def __init__(self, strategy):
        self.strategy = strategy
        self.result = {"replicas": strategy.num_replicas_in_sync}
        self.rng = np.random.default_rng(1)
        self.x = self.rng.normal(
            size=(GLOBAL_BATCH * FIXED_STEPS, 8, 8, 1)).astype("float32")
        self.y = self.rng.integers(0, 10, len(self.x))
        self.px = self.rng.normal(size=(POISSON_N, 8, 8, 1)).astype(
            "float32")
        self.py = self.rng.integers(0, 10, POISSON_N)

    def make(self, **kw):
        import keras

        from keras_tempered_dp.models import digits_cnn
        from keras_tempered_dp.privacy import compile_dp
        from keras_tempered_dp.privacy.state import get_dp_state
        with self.strategy.scope():
            keras.utils.set_random_seed(1)
            model = digits_cnn("tanh")
            compile_dp(model, l2_norm_clip=0.5, learning_rate=0.5, **kw)
            model.build((None, 8, 8, 1))
            model.set_weights(_initial_weights(model))
        return model, get_dp_state(model).engine

    def save(self, prefix, model, engine):
        for i, w in enumerate(model.get_weights()):
            self.result[f"{prefix}_w{i}"] = w
        self.result[f"{prefix}_steps"] = int(engine.steps_taken)
        self.result[f"{prefix}_examples"] = int(engine.examples_seen)

    def fixed_batches(self):
        import tensorflow as tf
        data = tf.data.Dataset.from_tensor_slices(
            (self.x, self.y)).batch(GLOBAL_BATCH)
        # Keras hands the dataset to strategy.experimental_distribute_dataset,
        # which under MWMS first rebatches every global batch of 32 into 2
        # per-worker batches of 16 (consecutive elements), then auto-shards.
        # DATA keeps element i on worker i mod 2: worker 0 the first half
        # of each global batch, worker 1 the second, one global batch per
        # step. OFF would give every worker every half batch (worker 0 and 1
        # both train the first half in step 1, the second in step 2: a
        # different, duplicated batch). AUTO tries FILE first, which fails
        # for in-memory data and falls back to DATA with a warning; DATA
        # says it outright.
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA)
        return data.with_options(options)

    def fixed(self):
        """1. Noise 0: the distributed update is the one-device update."""
        model, engine = self.make(noise_multiplier=0.0)
        model.fit(self.fixed_batches(), epochs=1, verbose=0)
        self.save("fixed", model, engine)

    def noisy(self):
        """2. Same explicit noise_seed everywhere: different shares per
        replica, one model."""
        import tensorflow as tf
        model, engine = self.make(noise_multiplier=1.0, noise_seed=7)
        zeros_x = tf.zeros((4, 8, 8, 1))
        zeros_y = tf.zeros((4,), tf.int64)
        share = tf.function(
            lambda: self.strategy.run(
                lambda: engine.compute_gradients(zeros_x, zeros_y)[0]))()
        local = self.strategy.experimental_local_results(share)
        self.result["share"] = np.stack([
            np.concatenate([tf.reshape(g, [-1]).numpy() for g in grads])
            for grads in local])
        model.fit(self.fixed_batches().take(2), epochs=1, verbose=0)
        self.save("noisy", model, engine)

    def poisson(self):
        """3. Poisson batches per replica shard, epsilon per epoch."""
        from keras_tempered_dp.callbacks import EpsilonCallback
        from keras_tempered_dp.privacy.sampling import (
            distributed_poisson_batches, steps_per_epoch)
        model, engine = self.make(noise_multiplier=1.1,
                                  expected_batch_size=POISSON_B)
        steps = steps_per_epoch(POISSON_N, POISSON_B, "poisson")
        data = distributed_poisson_batches(self.strategy, self.px, self.py,
                                           POISSON_B, seed=3)
        callback = EpsilonCallback(POISSON_N, POISSON_B, delta=1e-5,
                                   steps_per_epoch=steps)
        history = model.fit(data, steps_per_epoch=steps, epochs=2,
                            verbose=0, callbacks=[callback])
        self.result["poisson_epsilon"] = np.array(history.history["epsilon"])
        self.result["poisson_steps_per_epoch"] = steps
        self.result["poisson_reference_epsilon"] = np.array(
            [EpsilonCallback(POISSON_N, POISSON_B, noise_multiplier=1.1,
                             delta=1e-5, steps_per_epoch=steps)
             .epsilon_after(steps=steps * e) for e in (1, 2)])
        self.save("poisson", model, engine)
        return model

    def global_draws(self, model):
        """4. Whole-dataset draws (one per worker) are refused across
        workers."""
        from keras_tempered_dp.privacy.sampling import (
            poisson_batches, shuffled_batches)
        for name, sampler in (("poisson", poisson_batches),
                              ("shuffled", shuffled_batches)):
            try:
                model.fit(sampler(self.px, self.py, POISSON_B, seed=3),
                          steps_per_epoch=1, epochs=1, verbose=0)
                self.result[f"global_draw_{name}"] = "trained"
            except ValueError as error:
                self.result[f"global_draw_{name}"] = str(error)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[2] not in ("multi", "single"):
        sys.exit("usage: worker_job.py OUT.npz multi|single")
    if sys.argv[2] == "multi":
        json.loads(os.environ["TF_CONFIG"])  # fail early without a cluster
    main(sys.argv[1], sys.argv[2])
