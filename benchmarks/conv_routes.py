"""Time of each exact route of the convolutions' per-example norms.

    python benchmarks/conv_routes.py                 # batch 256
    python benchmarks/conv_routes.py --batch=64,256

For the convolution shapes of the package's models (MNIST CNN, CIFAR-10 CNN,
WRN-16-4), the norm and clipped-sum computation of one layer
(``conv2d_sq_norms`` with the route forced: ``patches`` and ``filter``, see
``keras_tempered_dp/privacy/clipping/core/conv_cost.py``), beside the
layer's ordinary filter gradient (what non-private training computes for
it). The last column is the route the rule picks. Medians of 9 calls of a
``tf.function`` each. It measures and prints; it asserts nothing: rerun it
on other hardware to see whether the rule still picks the faster route
(``conv_cost.FORCE`` overrides it).
"""

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import tensorflow as tf

from keras_tempered_dp.privacy.clipping.core import conv_cost
from keras_tempered_dp.privacy.clipping.backend.tensorflow.norms.conv import (
    conv2d_sq_norms,
)

# (model, input side, C_in, C_out, kernel, stride, padding)
SHAPES = [
    ("mnist_cnn", 28, 1, 16, 8, 2, "same"),
    ("mnist_cnn", 13, 16, 32, 4, 2, "valid"),
    ("cifar10_cnn", 32, 3, 32, 3, 1, "same"),
    ("cifar10_cnn", 32, 32, 32, 3, 1, "same"),
    ("cifar10_cnn", 16, 32, 64, 3, 1, "same"),
    ("cifar10_cnn", 16, 64, 64, 3, 1, "same"),
    ("cifar10_cnn", 8, 64, 128, 3, 1, "same"),
    ("cifar10_cnn", 8, 128, 128, 3, 1, "same"),
    ("wrn16_4", 32, 16, 64, 3, 1, "same"),
    ("wrn16_4", 32, 64, 64, 3, 1, "same"),
    ("wrn16_4", 32, 64, 128, 3, 2, "same"),
    ("wrn16_4", 16, 128, 128, 3, 1, "same"),
    ("wrn16_4", 8, 256, 256, 3, 1, "same"),
    ("wrn16_4", 32, 16, 64, 1, 1, "same"),
]


def _median_ms(fn, *args, calls=9):
    fn(*args)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        np.asarray(fn(*args))
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def measure(batch, side, c_in, c_out, kernel, stride, padding):
    """{route: ms} and the rule's choice for one layer shape."""
    layer = keras.layers.Conv2D(c_out, kernel, strides=stride,
                                padding=padding)
    x = tf.random.normal([batch, side, side, c_in])
    layer.build(x.shape)
    dz = tf.random.normal(layer(x).shape)
    factors = tf.ones([batch])

    def routed(route):
        @tf.function
        def norms_and_sum(x, dz):
            conv_cost.FORCE = route
            try:
                result = conv2d_sq_norms(layer, x, dz, None, None)
            finally:
                conv_cost.FORCE = None
            return tf.reduce_sum(result.clipped_sum(factors)[0]) + \
                tf.reduce_sum(result.sq_norms)
        return norms_and_sum

    @tf.function
    def ordinary(x, dz):
        return tf.reduce_sum(tf.compat.v1.nn.conv2d_backprop_filter(
            x, layer.kernel.shape, dz, [1, stride, stride, 1],
            padding.upper()))

    times = {"ordinary": _median_ms(ordinary, x, dz)}
    for route in ("patches", "filter"):
        times[route] = _median_ms(routed(route), x, dz)
    return times, conv_cost.route(layer, x.shape, dz.shape)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", default="256")
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPU cores; tensorflow {tf.__version__}, keras "
          f"{keras.__version__}")
    print("| model | batch | input | C_out | kernel/stride | ordinary filter "
          "gradient (ms) | patches (ms) | filter (ms) | rule picks |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batch in (int(b) for b in args.batch.split(",")):
        for model, side, c_in, c_out, kernel, stride, padding in SHAPES:
            times, pick = measure(batch, side, c_in, c_out, kernel, stride,
                                  padding)
            print(f"| {model} | {batch} | {side}x{side}x{c_in} | {c_out} | "
                  f"{kernel}/{stride} | {times['ordinary']:.1f} | "
                  f"{times['patches']:.1f} | {times['filter']:.1f} | "
                  f"{pick} |", flush=True)


if __name__ == "__main__":
    main()
