"""Step time and peak memory of DP-SGD implementations, side by side.

    python benchmarks/clipping_speed.py            # the full table (~25 min)
    python benchmarks/clipping_speed.py --quick    # MNIST CNN at batch 256
    # a transformer encoder, an LSTM and the ViT (issue 25's rows):
    python benchmarks/clipping_speed.py --configs=encoder:64,lstm:256,vit:256 \
        --methods=ordinary,engine --repeats=3
    # both Keras 3 backends, with jax_privacy's Keras API (issue 27; the
    # interpreter of a virtualenv with jax-privacy installed, docs/engine.md):
    python benchmarks/clipping_speed.py --backends=tensorflow,jax \
        --methods=ordinary,engine,jax_privacy --configs=mnist_cnn:256 \
        --repeats=3 --stacks=bench=.venv-bench/bin/python
    # two stacks side by side, 3 interleaved repeats, medians:
    python benchmarks/clipping_speed.py --methods=ordinary,engine --repeats=3 \
        --stacks=current=.venv/bin/python,legacy=.venv-legacy/bin/python

Each (model, batch size, method) runs in its own Python process, so peak
memory (the process's high-water mark, VmHWM) is not shared between them.
A process builds the model, compiles it, takes warm-up steps (tracing), then
times single ``train_on_batch`` steps on a fixed random batch and reports
the median. Methods:

    ordinary     keras SGD, mean loss (no privacy): the baseline
    engine       keras_tempered_dp's clipping engine (compile_dp default)
    generic      the engine with recurrent layers sent to the exact generic
                 route (per-example recomputation, vectorized): the last
                 route of layers without a norm function
    dp_keras     TF Privacy DPKerasSGDOptimizer
    vectorized   TF Privacy VectorizedDPKerasSGDOptimizer
    dp_sequential TF Privacy DPSequential (fast clipping; its registry
                 covers Dense and Embedding only, so convolutional models fall
                 back to per-example gradients), use_xla as shipped (True)
    jax_privacy  jax_privacy 2.0.0's Keras API (keras_api.make_private:
                 per-example gradients by jax.vmap, clipped, noised), on the
                 JAX backend

With ``--backends=tensorflow,jax`` every method runs under each Keras
backend that has it (``KERAS_BACKEND`` set in the child); each ratio is to
ordinary training on the same backend. "engine" is the TensorFlow engine on
TensorFlow and the JAX engine on JAX.

With ``--stacks``, every child runs under each named interpreter (each a
virtualenv with the package installed) and each ratio is to ordinary
training on the same stack. With ``--repeats=R`` each (stack, method) runs
R child processes, interleaved with the others so that the machine's load
drifts over all of them alike, and the table reports the medians. TF
Privacy's methods exist only on the legacy stack; elsewhere their rows
say so.

On a GPU the script runs unchanged: TensorFlow places the model on the
first GPU it sees, and the memory columns then come from that device's
allocator (``tf.config.experimental.get_memory_info``: peak, and peak minus
what was held before the first step) instead of the process's RSS.

It measures and prints; it asserts nothing.
"""

import argparse
import importlib.util
import json
import sys
import time

from _common import (
    add_run_arguments,
    describe,
    interleaved,
    machine,
    median,
    rss_kib,
    run_child,
    stacks_and_backends,
    use_generic_route_for_recurrent_layers,
)

CONFIGS = [("mnist_cnn", 256), ("mnist_cnn", 1024), ("cifar10_cnn", 256),
           ("wrn16_4", 64), ("encoder", 64), ("lstm", 256), ("vit", 256)]
# Beyond the package's image models (issue 25's rows): a transformer
# encoder (4 blocks, width 128, 4 heads, sequence 64, vocabulary 1000), an
# LSTM classifier (width 128, sequence 64 of 32 features) and the
# Fashion-MNIST ViT (docs/results/fashion_mnist_transformer/).
SEQUENCE_MODELS = ("encoder", "lstm", "vit")
METHODS = ["ordinary", "engine", "dp_keras", "vectorized", "dp_sequential"]
# What runs on which Keras backend; the others' rows say "skipped".
TENSORFLOW_ONLY = ("dp_keras", "vectorized", "dp_sequential", "generic")
JAX_ONLY = ("jax_privacy",)
# "generic" runs only when asked for (--methods=...,generic): on a model
# without recurrent layers it is the engine itself.


def _compiled(build, shape, method):
    """The model compiled for ``method`` (see the module docstring)."""
    import keras

    from keras_tempered_dp.privacy import compile_dp

    if method == "dp_sequential":
        from tensorflow_privacy import DPSequential
        from tensorflow_privacy.privacy.fast_gradient_clipping import (
            layer_registry,
        )
        reference = build("tanh")
        model = DPSequential(
            l2_norm_clip=1.0, noise_multiplier=1.1,
            layer_registry=layer_registry.make_default_layer_registry(),
            layers=[keras.Input(shape)] + reference.layers)
        model.compile(optimizer=keras.optimizers.SGD(0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True, reduction="none"))
        return model
    model = build("tanh")
    if method == "jax_privacy":
        return _jax_privacy(model, shape)
    if method == "ordinary":
        model.compile(optimizer=keras.optimizers.SGD(0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True))
        return model
    if method == "generic":
        use_generic_route_for_recurrent_layers()
    optimizer = {"engine": "fast", "generic": "fast",
                 "dp_keras": "dp_keras_sgd",
                 "vectorized": "vectorized_dp_keras_sgd"}[method]
    compile_dp(model, optimizer=optimizer, metrics=(), l2_norm_clip=1.0,
               noise_multiplier=1.1, learning_rate=0.1)
    return model


def _jax_privacy(model, shape):
    """jax_privacy's Keras API on ``model``: clip 1, sigma 1.1, as the
    engine's rows; epsilon is required, so a bound it stays under."""
    import keras
    from jax_privacy import keras_api

    model.compile(optimizer=keras.optimizers.SGD(0.1),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    batch = _BATCH[0]
    params = keras_api.DPKerasConfig(
        epsilon=1e6, delta=1e-5, clipping_norm=1.0, batch_size=batch,
        gradient_accumulation_steps=1, train_steps=100,
        train_size=100 * batch, noise_multiplier=1.1)
    return keras_api.make_private(model, params)


_BATCH = [None]  # the child's batch size, for jax_privacy's config


def _workload(model_name, batch_size):
    """``(build(activation), one example's shape, x, y)``."""
    import functools

    import numpy as np
    import tensorflow as tf

    from keras_tempered_dp import models, stack

    rng = np.random.default_rng(0)
    build, shape = {
        "encoder": (functools.partial(models.transformer_encoder,
                                      sequence_length=64, width=128,
                                      depth=4, heads=4), (64,)),
        "lstm": (functools.partial(models.sequence_lstm,
                                   input_shape=(64, 32, 1), width=128),
                 (64, 32, 1)),
        "vit": (models.vit, (28, 28, 1)),
        "mnist_cnn": (models.mnist_cnn, (28, 28, 1)),
    }.get(model_name, (models.MODELS.get(model_name), (32, 32, 3)))
    if model_name == "encoder":
        x = rng.integers(0, 1000, (batch_size,) + shape).astype("int32")
    else:
        x = rng.uniform(size=(batch_size,) + shape).astype("float32")
    y = np.arange(batch_size) % (2 if model_name == "encoder" else 10)
    if stack.backend() == "jax":
        return build, shape, x, y.astype("int32")
    return build, shape, tf.constant(x), tf.constant(y)


def measure(model_name, batch_size, method, steps):
    """Runs in the child process; returns a dict of measurements."""
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_tempered_dp import stack

    backend = stack.backend()
    if method in TENSORFLOW_ONLY and backend != "tensorflow":
        return {"error": "skipped: TensorFlow backend only"}
    if method in JAX_ONLY and backend != "jax":
        return {"error": "skipped: JAX backend only"}
    if method == "jax_privacy" and importlib.util.find_spec(
            "jax_privacy") is None:
        return {"error": "skipped: jax_privacy is not installed here"}
    if method in ("dp_keras", "vectorized", "dp_sequential") \
            and not stack.tf_privacy_available():
        return {"error": "skipped: TF Privacy runs on the legacy stack only"}
    if method == "dp_sequential" and model_name in SEQUENCE_MODELS:
        return {"error": "skipped: DPSequential takes Sequential models"}

    keras.utils.set_random_seed(0)
    _BATCH[0] = batch_size
    build, shape, x, y = _workload(model_name, batch_size)
    gpu = backend == "tensorflow" and bool(
        tf.config.list_physical_devices("GPU"))
    model = _compiled(build, shape, method)
    baseline = rss_kib("VmRSS")
    if gpu:
        tf.config.experimental.reset_memory_stats("GPU:0")
        device_baseline = tf.config.experimental.get_memory_info(
            "GPU:0")["current"]
    start = time.perf_counter()
    model.train_on_batch(x, y)  # traces
    first = time.perf_counter() - start
    model.train_on_batch(x, y)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    result = {"step_s": float(np.median(times)), "first_step_s": first,
              "peak_mib": rss_kib("VmHWM") / 1024,
              "train_mib": (rss_kib("VmHWM") - baseline) / 1024}
    if gpu:  # the device's allocator: what training holds on the GPU
        peak = tf.config.experimental.get_memory_info("GPU:0")["peak"]
        result.update(peak_mib=peak / 2 ** 20,
                      train_mib=(peak - device_baseline) / 2 ** 20)
    return result


def _child(model_name, batch_size, method, steps, python=sys.executable,
           backend=None):
    return run_child(python, __file__, ["--child", model_name, batch_size,
                                        method, steps], backend=backend)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="only the MNIST CNN at batch 256")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--configs", default=None,
                        help="e.g. mnist_cnn:256,cifar10_cnn:256")
    parser.add_argument("--steps", type=int, default=10,
                        help="timed steps for ordinary training and the "
                        "engine")
    parser.add_argument("--slow_steps", type=int, default=3,
                        help="timed steps for TF Privacy's methods and the "
                        "generic route (each takes seconds to minutes)")
    add_run_arguments(parser, backends=True)
    args = parser.parse_args()
    if args.child:
        name, batch, method, steps = args.child
        print(json.dumps(measure(name, int(batch), method, int(steps))))
        return
    stacks = stacks_and_backends(args)
    print(f"# {machine()}; median of {args.repeats} "
          "interleaved process(es) per row")
    for stack, (python, _) in stacks.items():
        print(f"# {stack}: {describe(python)}")
    print("| stack | model | batch | method | step (s) | x ordinary "
          "| peak RSS (MiB) | training memory (MiB) | x ordinary |")
    print("|---|---|---|---|---|---|---|---|---|")
    configs = CONFIGS[:1] if args.quick else CONFIGS
    if args.configs:
        configs = [(c.split(":")[0], int(c.split(":")[1]))
                   for c in args.configs.split(",")]
    methods = args.methods.split(",")
    for name, batch in configs:
        results = _measure_interleaved(name, batch, methods, stacks, args)
        for stack in stacks:
            _print_rows(stack, name, batch, methods, results[stack])


def _measure_interleaved(name, batch, methods, stacks, args):
    """{stack: {method: [result, ...]}}, children run round-robin."""
    def run(key):
        method, stack = key
        slow = method in ("dp_keras", "vectorized", "dp_sequential",
                          "generic")
        steps = args.slow_steps if slow else args.steps
        return _child(name, batch, method, steps, *stacks[stack])

    found = interleaved(args.repeats, [(m, s) for m in methods
                                       for s in stacks], run)
    return {s: {m: found[m, s] for m in methods} for s in stacks}


def _print_rows(stack, name, batch, methods, results):
    base = None
    for method in methods:
        runs = [r for r in results[method] if "error" not in r]
        if not runs:
            error = results[method][0]["error"]
            if not error.startswith("skipped"):
                error = f"failed: {error}"
            print(f"| {stack} | {name} | {batch} | {method} | {error} "
                  "| | | | |", flush=True)
            continue
        row = {k: median(runs, k) for k in ("step_s", "peak_mib",
                                            "train_mib")}
        if method == "ordinary":
            base = row
        ratio = row["step_s"] / base["step_s"] if base else float("nan")
        mem = (row["train_mib"] / base["train_mib"]
               if base and base["train_mib"] > 0 else float("nan"))
        print(f"| {stack} | {name} | {batch} | {method} | "
              f"{row['step_s']:.4f} | {ratio:.2f} | {row['peak_mib']:.0f} | "
              f"{row['train_mib']:.0f} | {mem:.2f} |", flush=True)

if __name__ == "__main__":
    main()
