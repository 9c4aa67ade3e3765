"""How the generic route's step time and memory grow with an LSTM's steps.

    python benchmarks/generic_route_scaling.py               # 16, 32, 64 steps
    python benchmarks/generic_route_scaling.py --steps=16,64

For each sequence length T, one child process per route (ordinary
training, the engine's time-step route, the generic route) trains
``sequence_lstm(input_shape=(T, 32, 1), width=128)`` at batch 256 and
prints the median of 3 timed steps and the training memory (the process's
peak RSS minus its RSS before the first step). It measures and prints; it
asserts nothing.
"""

import argparse
import json
import sys
import time

from _common import (
    machine,
    rss_kib,
    run_child,
    use_generic_route_for_recurrent_layers,
)

ROUTES = ("ordinary", "engine", "generic")


def measure(steps, route):
    """Runs in the child process."""
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_tempered_dp.models import sequence_lstm
    from keras_tempered_dp.privacy import compile_dp

    if route == "generic":
        use_generic_route_for_recurrent_layers()
    keras.utils.set_random_seed(0)
    model = sequence_lstm("tanh", input_shape=(steps, 32, 1), width=128)
    if route == "ordinary":
        model.compile(optimizer=keras.optimizers.SGD(0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True))
    else:
        compile_dp(model, metrics=(), l2_norm_clip=1.0,
                   noise_multiplier=1.1, learning_rate=0.1)
    x = tf.constant(np.random.default_rng(0).uniform(
        size=(256, steps, 32, 1)).astype("float32"))
    y = tf.constant(np.arange(256) % 10)
    before = rss_kib("VmRSS")
    model.train_on_batch(x, y)
    model.train_on_batch(x, y)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    return {"step_s": float(np.median(times)),
            "train_mib": (rss_kib("VmHWM") - before) / 1024}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", default="16,32,64")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(int(args.child[0]), args.child[1])))
        return
    print(f"# {machine()}")
    print("| steps | route | step (s) | training memory (MiB) |")
    print("|---|---|---|---|")
    for steps in args.steps.split(","):
        for route in ROUTES:
            result = run_child(sys.executable, __file__,
                               ["--child", steps, route])
            if "error" in result:
                print(f"| {steps} | {route} | failed: {result['error']} | |")
                continue
            print(f"| {steps} | {route} | {result['step_s']:.3f} | "
                  f"{result['train_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
