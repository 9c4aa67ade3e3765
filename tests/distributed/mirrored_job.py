"""One child process of tests/distributed/test_mirrored.py.

``python -m tests.distributed.mirrored_job R OUT.json`` splits the CPU into
R logical devices (possible only before TensorFlow starts, hence a child
process), runs every check under one MirroredStrategy over them (one
strategy per process: collective keys of two would collide) and writes the
measurements as JSON. Importing this module runs nothing.
"""

import json
import sys

import numpy as np

CLIP, SIGMA, BATCH = 0.5, 1.1, 32

# Engine settings whose noise-free update must equal one device's: one per
# code path the replicas change. Settings that only change per-replica math
# share an entry with a path that does:
# normalization (the clip factor, local to each row) rides with
# expected_batch_size (a constant denominator instead of the replicas'
# total); augmentation (copies averaged per row before clipping, their
# generator per replica) with physical batches (the accumulation loop
# inside each replica).
OPTIONS = {
    "per_example": {},
    "microbatches": {"num_microbatches": 8},
    "expected_batch_size+normalize": {"expected_batch_size": 40.0,
                                      "clipping": "normalize"},
    "quantile": {"clipping": "quantile", "expected_batch_size": 32},
    "physical_batch_size+augmentation": {
        "physical_batch_size": 4, "augmentation_multiplicity": 2,
        "augment": lambda images, generator: images[:, ::-1]},
}


def main(replicas, out):
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)

    strategy = tf.distribute.MirroredStrategy(
        [f"/cpu:{i}" for i in range(replicas)])
    result = {"replicas": strategy.num_replicas_in_sync}
    rng = np.random.default_rng(0)
    result.update(_updates(strategy, replicas, rng))
    result["update_std"] = _noise_std(strategy)
    result["shares"] = _shares(strategy, replicas)
    result["poisson"] = _poisson(strategy, replicas, rng)
    with open(out, "w") as f:
        json.dump(result, f)


def _digits(where, **settings):
    """The digits CNN made and compiled for DP-SGD under ``where``."""
    import keras

    from keras_tempered_dp.models import digits_cnn
    from keras_tempered_dp.privacy import compile_dp
    with where.scope():
        keras.utils.set_random_seed(1)
        model = digits_cnn("tanh")
        compile_dp(model, l2_norm_clip=CLIP, learning_rate=0.5,
                   momentum=0.0, **settings)
        model.build((None, 8, 8, 1))
    return model


def _updates(strategy, replicas, rng):
    """1. Noise 0: the update equals one device's on the same global
    batch, for every entry of OPTIONS; an indivisible microbatch count is
    refused."""
    import tensorflow as tf

    from keras_tempered_dp.privacy.state import get_dp_state
    one = tf.distribute.get_strategy()
    x = rng.normal(size=(BATCH, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, BATCH)

    def update(where, **settings):
        model = _digits(where, noise_multiplier=0.0, **settings)
        before = [v.numpy() for v in model.trainable_variables]
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
        engine = get_dp_state(model).engine
        return ([a.numpy() - b for a, b in
                 zip(model.trainable_variables, before)],
                int(engine.steps_taken), int(engine.examples_seen))

    result = {}
    for name, settings in OPTIONS.items():
        single, _, _ = update(one, **settings)
        multi, steps, examples = update(strategy, **settings)
        result[name] = {
            "max_diff": max(float(np.max(np.abs(a - b)))
                            for a, b in zip(single, multi)),
            "max_update": max(float(np.max(np.abs(a))) for a in single),
            "steps": steps, "examples": examples}
    try:
        update(strategy, num_microbatches=replicas * 2 + 1)
        result["indivisible_microbatches"] = "trained"
    except ValueError as error:
        result["indivisible_microbatches"] = str(error)
    return result


def _noise_std(strategy):
    """2. Noise: a wide Dense layer on zero inputs has a pure-noise kernel
    update; its std must be sigma * C / B (not sqrt(R) times it)."""
    import keras

    from keras_tempered_dp.privacy import compile_dp
    with strategy.scope():
        wide = keras.Sequential([keras.Input((400,)),
                                 keras.layers.Dense(250, use_bias=False)])
        compile_dp(wide, l2_norm_clip=CLIP, noise_multiplier=SIGMA,
                   learning_rate=1.0, momentum=0.0)
    kernel = wide.trainable_variables[0]
    before = kernel.numpy()
    wide.fit(np.zeros((BATCH, 400), "float32"), np.zeros(BATCH), epochs=1,
             batch_size=BATCH, verbose=0)
    return float(np.std(kernel.numpy() - before))


def _share_draws(strategy, replicas, engine_in_scope, seed):
    """Per-replica noised gradients of zero inputs (before the optimizer's
    sum), the engine made in the scope or outside it (moved in at
    install)."""
    import keras
    import tensorflow as tf

    from keras_tempered_dp.privacy.clipping import ClippingEngine
    with strategy.scope():
        model = keras.Sequential([keras.Input((400,)),
                                  keras.layers.Dense(50, use_bias=False)])
        model.compile(optimizer=keras.optimizers.SGD(1.0),
                      loss=keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True))
        engine = (ClippingEngine(CLIP, SIGMA, seed=seed)
                  if engine_in_scope else None)
    if engine is None:
        engine = ClippingEngine(CLIP, SIGMA, seed=seed)
    engine.install(model)
    zeros_x = tf.zeros((BATCH // replicas, 400))
    zeros_y = tf.zeros((BATCH // replicas,), tf.int64)
    run = tf.function(lambda: strategy.run(
        lambda: engine.compute_gradients(zeros_x, zeros_y)[0][0]))
    local = strategy.experimental_local_results(run())
    return np.stack([t.numpy().ravel() for t in local])


def _shares(strategy, replicas):
    """3. Every replica draws its own share, with and without a seed, the
    engine made in the scope and outside it."""
    shares = {}
    for label, in_scope, seed in (("in_scope", True, None),
                                  ("seeded", True, 7),
                                  ("moved_in", False, 7)):
        draws = _share_draws(strategy, replicas, in_scope, seed)
        corr = np.corrcoef(draws) if replicas > 1 else np.ones((1, 1))
        shares[label] = {
            "std": [float(s) for s in draws.std(axis=1)],
            "max_abs_corr": float(np.max(np.abs(
                corr - np.eye(replicas)))),
            "any_equal": bool(any(np.array_equal(draws[i], draws[j])
                                  for i in range(replicas)
                                  for j in range(i + 1, replicas)))}
    return shares


def _poisson(strategy, replicas, rng):
    """4. Poisson batches per replica: shards, rate, then epsilon of a
    two-epoch fit against the accountant's."""
    from keras_tempered_dp.privacy.sampling import distributed_poisson_batches
    n, b = 200, 40
    index = np.arange(n)
    data = distributed_poisson_batches(strategy, index[:, None]
                                       .astype("float32"), index, b, seed=5)
    counts = np.zeros(n)
    wrong_shard = duplicates = 0
    iterator = iter(data)
    draws_taken = 300
    for _ in range(draws_taken):
        _, labels, weights = next(iterator)
        step = []
        for r, (ids, w) in enumerate(zip(
                strategy.experimental_local_results(labels),
                strategy.experimental_local_results(weights))):
            ids = ids.numpy()[w.numpy() > 0]
            wrong_shard += int(np.sum(ids % replicas != r))
            step.extend(ids.tolist())
        duplicates += len(step) - len(set(step))
        counts[step] += 1
    result = {"wrong_shard": wrong_shard, "duplicates": duplicates,
              "min_rate": float(counts.min() / draws_taken),
              "max_rate": float(counts.max() / draws_taken),
              "mean_rate": float(counts.mean() / draws_taken),
              "q": b / n, "steps": draws_taken}
    result.update(_poisson_epsilon(strategy, rng, n, b))
    return result


def _poisson_epsilon(strategy, rng, n, b):
    from keras_tempered_dp.callbacks import EpsilonCallback
    from keras_tempered_dp.privacy.sampling import (
        distributed_poisson_batches, steps_per_epoch)
    from keras_tempered_dp.privacy.state import get_dp_state
    px = rng.normal(size=(n, 8, 8, 1)).astype("float32")
    py = rng.integers(0, 10, n)
    model = _digits(strategy, noise_multiplier=SIGMA, expected_batch_size=b)
    steps = steps_per_epoch(n, b, "poisson")
    history = model.fit(
        distributed_poisson_batches(strategy, px, py, b),
        steps_per_epoch=steps, epochs=2, verbose=0, callbacks=[
            EpsilonCallback(n, b, delta=1e-5, steps_per_epoch=steps)])
    return {
        "epsilon": history.history["epsilon"],
        "reference_epsilon": [
            EpsilonCallback(n, b, noise_multiplier=SIGMA, delta=1e-5,
                            steps_per_epoch=steps)
            .epsilon_after(steps=steps * e) for e in (1, 2)],
        "steps_taken": int(get_dp_state(model).engine.steps_taken),
        "steps_per_epoch": steps}


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
