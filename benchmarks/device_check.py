"""One command for a machine with an accelerator: is the engine right, and
how fast is it, on both Keras backends?

    python benchmarks/device_check.py --budget_s=420 --output_dir=device_check

On whatever devices TensorFlow and JAX see (a GPU if there is one; else
the CPU), for each Keras backend in turn:

1. the reference check: a small CNN (Conv2D, Dense) and a small transformer
   block (attention, LayerNormalization, Dense), each engine's clipped mean
   against the per-example reference of tests/privacy/reference.py (a
   GradientTape per example on TensorFlow, ``jax.grad`` on JAX), as the
   largest deviation relative to the largest clipped contribution;
2. the step benchmark of benchmarks/clipping_speed.py: the paper's MNIST
   CNN at batch 256 and 1024, the CIFAR-10 CNN at 256, ordinary training
   against the engine (and jax_privacy's Keras API where it is installed),
   XLA as Keras picks it (on by default for JAX; for TensorFlow where a GPU
   is present).

Each item runs in a child process with a time limit; an item that would not
fit in what is left of ``--budget_s`` is skipped and listed as such. It
writes ``device_check.json`` (everything measured, the devices, the stack)
and ``device_check.md`` (the table) to ``--output_dir``. Timings are
medians of ``--steps`` steps in one process: a check, not a benchmark of
record. On this package's 2-core CPU it runs in CI's slow set
(tests/test_benchmarks.py).
"""

import argparse
import json
import os
import sys
import time

from _common import describe, machine, run_child

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEED = os.path.join(ROOT, "benchmarks", "clipping_speed.py")
BACKENDS = ("tensorflow", "jax")
CONFIGS = [("mnist_cnn", 256), ("mnist_cnn", 1024), ("cifar10_cnn", 256)]
# Seconds one item is given at most, and kept in reserve for writing.
ITEM_LIMIT_S = 240
RESERVE_S = 5


def reference_check():
    """Runs in the child: ``{"models": {name: relative deviation},
    "devices": [...]}`` for the current backend."""
    sys.path.insert(0, ROOT)
    import keras
    import numpy as np

    from keras_tempered_dp.privacy.compile import make_private
    from keras_tempered_dp.privacy.losses import per_example_loss
    from keras_tempered_dp.privacy.state import get_dp_state
    from tests.privacy.reference import clipped_mean, per_group_gradients

    L = keras.layers
    rng = np.random.default_rng(0)

    def cnn():
        return keras.Sequential([
            keras.Input((8, 8, 2)), L.Conv2D(4, 3, activation="tanh"),
            L.Flatten(), L.Dense(3)]), rng.normal(size=(8, 8, 8, 2))

    def attention():
        inputs = keras.Input((5, 6))
        h = L.MultiHeadAttention(2, 3)(inputs, inputs)
        h = L.LayerNormalization()(inputs + h)
        outputs = L.Dense(3)(L.GlobalAveragePooling1D()(h))
        return keras.Model(inputs, outputs), rng.normal(size=(8, 5, 6))

    deviations = {}
    for name, build in (("cnn", cnn), ("attention", attention)):
        keras.utils.set_random_seed(0)
        model, x = build()
        x = x.astype("float32")
        y = (np.arange(8) % 3).astype("int32")
        model.compile(optimizer="sgd",
                      loss=keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True))
        loss_fn = per_example_loss(model.loss)
        norms = [np.sqrt(sum(np.sum(g ** 2) for g in grads)) for grads
                 in per_group_gradients(model, loss_fn, x, y)]
        clip = float(np.median(norms))
        make_private(model, l2_norm_clip=clip, noise_multiplier=0.0)
        grads, _ = get_dp_state(model).engine.compute_gradients(x, y)
        want, scales = clipped_mean(model, loss_fn, x, y, clip)
        scale = max(scales)
        deviations[name] = max(
            float(np.abs(np.asarray(g) - w).max()) / scale
            for g, w in zip(grads, want))
    return {"models": deviations, "devices": _devices()}


def _devices():
    if os.environ.get("KERAS_BACKEND") == "jax":
        import jax
        return [str(d) for d in jax.devices()]
    import tensorflow as tf
    return [d.name for d in tf.config.list_physical_devices()]


def _items(args):
    """``(backend, kind, child arguments, script)`` in the order run: the
    reference checks first, then each configuration on both backends (so
    that a tight budget cuts configurations, not a backend)."""
    items = [(backend, "reference", ["--child_reference"], __file__)
             for backend in BACKENDS]
    for name, batch in CONFIGS:
        for backend in BACKENDS:
            for method in args.methods.split(","):
                items.append((backend, f"{name}:{batch}:{method}",
                              ["--child", name, batch, method, args.steps],
                              SPEED))
    return items


def _run(items, budget_s, python):
    start, found = time.monotonic(), []
    for backend, kind, arguments, script in items:
        left = budget_s - (time.monotonic() - start) - RESERVE_S
        if left < 30:
            found.append({"backend": backend, "item": kind,
                          "error": "skipped: over the budget"})
            continue
        result = run_child(python, script, arguments, backend=backend,
                           timeout=min(left, ITEM_LIMIT_S))
        found.append(dict(result, backend=backend, item=kind))
        print(json.dumps(found[-1]), flush=True)
    return found, time.monotonic() - start


def _table(found):
    lines = ["| backend | item | result | x ordinary |", "|---|---|---|---|"]
    base = {}
    for row in found:
        if "error" in row:
            lines.append(f"| {row['backend']} | {row['item']} | "
                         f"{row['error']} | |")
        elif row["item"] == "reference":
            worst = ", ".join(f"{k} {v:.1e}" for k, v in
                              row["models"].items())
            lines.append(f"| {row['backend']} | reference | max deviation "
                         f"/ largest contribution: {worst} | |")
        else:
            config = row["item"].rsplit(":", 1)[0]
            if row["item"].endswith(":ordinary"):
                base[row["backend"], config] = row["step_s"]
            ordinary = base.get((row["backend"], config))
            ratio = f"{row['step_s'] / ordinary:.2f}" if ordinary else ""
            lines.append(f"| {row['backend']} | {row['item']} | "
                         f"{row['step_s']:.4f} s/step | {ratio} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget_s", type=float, default=420)
    parser.add_argument("--output_dir", default="device_check")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--methods", default="ordinary,engine,jax_privacy")
    parser.add_argument("--child_reference", action="store_true",
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_reference:
        print(json.dumps(reference_check()))
        return
    if args.budget_s <= RESERVE_S + 30:
        raise SystemExit(f"--budget_s={args.budget_s}: give it at least "
                         f"{RESERVE_S + 30} seconds.")
    found, took = _run(_items(args), args.budget_s, sys.executable)
    os.makedirs(args.output_dir, exist_ok=True)
    report = {"machine": machine(), "stack": describe(sys.executable),
              "budget_s": args.budget_s, "took_s": took, "results": found}
    with open(os.path.join(args.output_dir, "device_check.json"), "w") as f:
        json.dump(report, f, indent=1)
    table = (f"# Device check\n\n{report['machine']}; {report['stack']}; "
             f"{took:.0f} s of a {args.budget_s:.0f} s budget.\n\n"
             + _table(found) + "\n")
    with open(os.path.join(args.output_dir, "device_check.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
