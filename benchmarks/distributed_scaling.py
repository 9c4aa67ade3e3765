"""Throughput of DP training under MirroredStrategy, by number of devices.

    python benchmarks/distributed_scaling.py                  # ~5 min
    python benchmarks/distributed_scaling.py --repeats=3 \
        --stacks=current=.venv/bin/python,legacy=.venv-legacy/bin/python
    python benchmarks/distributed_scaling.py --comm           # 8-GPU estimate

Each row is one child process: the CPU split into ``devices`` logical
devices (``tf.config.set_logical_device_configuration``), the model built
and compiled in a MirroredStrategy over them (``none``: no strategy, one
device), and ``model.fit`` timed over ``--steps`` steps after ``--warmup``
steps (tracing). Methods:

    dp        compile_dp (the clipping engine), noise 1.1, clip 1, Poisson
              batches per replica (distributed_poisson_batches; one device:
              poisson_batches), divided by the expected global batch
    ordinary  the same model and global batch, keras SGD, fixed batches

Throughput is examples per second of the global batch (expected size under
Poisson sampling). Logical devices share the same cores: on a CPU the
table shows what the strategy costs, not a speed-up.

``--comm`` prints, instead, the all-reduce traffic per step of the paper's
models in float32 on 8 GPUs (ring all-reduce: each GPU sends and receives
``2 (R - 1) / R`` times the gradient's bytes) and its time at a few
bandwidths. DP adds no all-reduce of its own: the noise shares are added
before the gradients' one all-reduce.

It measures and prints; it asserts nothing.
"""

import argparse
import json
import time

from _common import (
    add_run_arguments,
    command_line,
    describe,
    interleaved,
    machine,
    median,
    run_child,
    spread,
    stacks,
)

MODELS = {"mnist": ("mnist_cnn", (28, 28, 1), 256),
          "digits": ("digits_cnn", (8, 8, 1), 64)}


def child(model_key, devices, strategy_name, method, warmup, steps):
    import numpy as np
    import tensorflow as tf

    from keras_tempered_dp.training.distribute import split_cpu
    if strategy_name == "mirrored":
        split_cpu(devices)  # before TensorFlow starts
    import keras

    from keras_tempered_dp import models
    from keras_tempered_dp.privacy import compile_dp
    from keras_tempered_dp.privacy.sampling import (
        distributed_poisson_batches,
        poisson_batches,
    )

    name, shape, batch = MODELS[model_key]
    strategy = (tf.distribute.MirroredStrategy(
        [f"/cpu:{i}" for i in range(devices)])
        if strategy_name == "mirrored" else tf.distribute.get_strategy())
    rng = np.random.default_rng(0)
    n = 16 * batch
    x = rng.normal(size=(n,) + shape).astype("float32")
    y = rng.integers(0, 10, n)
    with strategy.scope():
        model = getattr(models, name)("tanh")
        if method == "dp":
            compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.1,
                       learning_rate=0.1, expected_batch_size=batch)
        else:
            model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                          loss=keras.losses.SparseCategoricalCrossentropy(
                              from_logits=True))
    if method == "ordinary":
        data = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(
            batch, drop_remainder=True)
    elif strategy_name == "mirrored":
        data = distributed_poisson_batches(strategy, x, y, batch)
    else:
        data = poisson_batches(x, y, batch)
    model.fit(data, steps_per_epoch=warmup, epochs=1, verbose=0)
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    seconds = time.perf_counter() - start
    print(json.dumps({"examples_per_s": steps * batch / seconds,
                      "step_ms": 1000 * seconds / steps}))


def configurations(devices):
    yield "none", 1
    for count in devices:
        yield "mirrored", count


def comm_table():
    """The all-reduce per step of the package's paper models on 8 GPUs."""
    from keras_tempered_dp import models
    replicas = 8
    bandwidths = {"NVLink (A100, 300 GB/s per direction)": 300e9,
                  "PCIe 4.0 x16 (~25 GB/s)": 25e9,
                  "100 Gb/s Ethernet (12.5 GB/s)": 12.5e9,
                  "25 Gb/s Ethernet (3.1 GB/s)": 3.125e9}
    print(f"# ring all-reduce of float32 gradients over R={replicas} "
          "devices: each sends and receives 2(R-1)/R x the bytes; time = "
          "traffic / bandwidth (latency and overlap with compute ignored)")
    print("| model | parameters | gradient (MB) | traffic per device (MB) | "
          + " | ".join(bandwidths) + " |")
    print("|---|---|---|---|" + "---|" * len(bandwidths))
    for name in ("mnist_cnn", "cifar10_cnn", "wrn16_4"):
        params = getattr(models, name)("tanh").count_params()
        size = 4 * params
        traffic = 2 * (replicas - 1) / replicas * size
        times = " | ".join(f"{1000 * traffic / bw:.3g} ms"
                           for bw in bandwidths.values())
        print(f"| {name} | {params:,} | {size / 1e6:.3g} | "
              f"{traffic / 1e6:.3g} | {times} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(parser)
    parser.add_argument("--models", default="mnist,digits",
                        help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--devices", default="1,2,4",
                        help="logical device counts under MirroredStrategy")
    parser.add_argument("--methods", default="dp,ordinary")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--comm", action="store_true",
                        help="print the 8-GPU all-reduce estimate only")
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model, devices, strategy, method, warmup, steps = args.child
        child(model, int(devices), strategy, method, int(warmup), int(steps))
        return
    if args.comm:
        comm_table()
        return
    pythons = stacks(args.stacks)
    keys = [(stack, model, strategy, devices, method)
            for stack in pythons
            for model in args.models.split(",")
            for strategy, devices in configurations(
                [int(d) for d in args.devices.split(",")])
            for method in args.methods.split(",")]

    def run(key):
        stack, model, strategy, devices, method = key
        return run_child(pythons[stack], __file__, [
            "--child", model, devices, strategy, method, args.warmup,
            args.steps])

    print_table(interleaved(args.repeats, keys, run), pythons)


def print_table(results, pythons):
    """The table: examples/s, spread, step time, DP over ordinary and the
    speed-up over one device, each a median over the row's processes."""
    print(f"# command: {command_line()}")
    print(f"# machine: {machine()}")
    for stack, python in pythons.items():
        print(f"# {stack}: {describe(python)}")
    print("| stack | model | global batch | strategy | devices | method | "
          "examples/s | spread | step (ms) | dp / ordinary (time) | "
          "vs one device |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    ok = {k: runs for k, runs in results.items()
          if all("error" not in r for r in runs)}
    for key, runs in results.items():
        stack, model, strategy, devices, method = key
        if key not in ok:
            print(f"| {stack} | {model} | | {strategy} | {devices} | "
                  f"{method} | error: {runs[0].get('error')} | | | | |")
            continue
        rate = median(runs, "examples_per_s")
        ordinary = ok.get((stack, model, strategy, devices, "ordinary"))
        ratio = (f"{median(ordinary, 'examples_per_s') / rate:.2f}"
                 if method == "dp" and ordinary else "")
        base = ok.get((stack, model, "none", 1, method))
        versus = f"{rate / median(base, 'examples_per_s'):.2f}" if base \
            else ""
        print(f"| {stack} | {model} | {MODELS[model][2]} | {strategy} | "
              f"{devices} | {method} | {rate:.0f} | "
              f"{spread(runs, 'examples_per_s')} | "
              f"{median(runs, 'step_ms'):.1f} | {ratio} | {versus} |")

if __name__ == "__main__":
    main()
