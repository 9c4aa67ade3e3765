"""Seconds to scatter images (J=2, L=8): the layer through Keras' predict
against the precomputation's compiled path; prints Markdown.

    python benchmarks/scattering_speed.py                       # Fashion-MNIST, 20,000 images, ~2 min
    python benchmarks/scattering_speed.py --dataset=digits      # offline, seconds

The two are timed alternately in one process, ``--repeats`` times each;
the table shows medians. "compiled" is what ``train`` uses
(:func:`keras_tempered_dp.training.features.scatter`: chunks of 64 through
XLA on the current stack, the ordinary graph on the legacy stack).
"""

import argparse
import platform
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from keras_tempered_dp.data import load_dataset
from keras_tempered_dp.layers import Scattering2D
from keras_tempered_dp.training.features import scatter


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion_mnist")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    (x, _), _ = load_dataset(args.dataset, download=False)
    x = x[:args.images]
    layer = Scattering2D(J=2, L=8)
    model = keras.Sequential([keras.Input(x.shape[1:]), layer])
    ways = {"Keras predict, batch 512":
            lambda: model.predict(x, batch_size=512, verbose=0),
            "compiled (train's precomputation)": lambda: scatter(layer, x)}
    for way in ways.values():  # trace and compile once, untimed
        way()
    times = {name: [] for name in ways}
    outputs = {}
    for _ in range(args.repeats):
        for name, way in ways.items():
            began = time.perf_counter()
            outputs[name] = way()
            times[name].append(time.perf_counter() - began)
    first, second = (outputs[name] for name in ways)
    print(f"{len(x)} {args.dataset} images {x.shape[1:]}, J=2, L=8; "
          f"TensorFlow {tf.__version__}, Keras {keras.__version__}, "
          f"{platform.machine()}; medians of {args.repeats}; largest "
          f"difference {np.abs(first - second).max() / np.abs(first).max():.1e}"
          " of the largest coefficient\n")
    print("| path | seconds | images / s | ratio |")
    print("|---|---|---|---|")
    base = statistics.median(times[next(iter(ways))])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {len(x) / median:.0f} | "
              f"{base / median:.2f}x |")


if __name__ == "__main__":
    main()
