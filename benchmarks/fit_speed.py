"""End-to-end time of ``model.fit`` with DP-SGD against ordinary training.

    python benchmarks/fit_speed.py                     # both jobs (~10 min)
    python benchmarks/fit_speed.py --jobs=digits       # seconds
    # two stacks side by side, 3 interleaved repeats, medians:
    python benchmarks/fit_speed.py --repeats=3 \
        --stacks=current=.venv/bin/python,legacy=.venv-legacy/bin/python
    # the digits job on both Keras 3 backends (the JAX engine, issue 27):
    python benchmarks/fit_speed.py --jobs=digits --backends=tensorflow,jax \
        --repeats=3
    # also the paper's Fashion-MNIST row (tanh and ReLU, 40 epochs each):
    python benchmarks/fit_speed.py --jobs= --paper_row

What a user waits for, where clipping_speed.py times single steps. Each
(job, method) is one child process that loads the data, builds the model
and runs ``model.fit`` over ``--epochs`` epochs with validation data:

    dp        DP-SGD as ``keras-tempered-dp train`` runs it: the job's
              RunConfig, the noise from its plan (``plan_noise``),
              ``compile_dp`` (the clipping engine, optimizer "fast"),
              Poisson-sampled batches (``poisson_batches``, divided by the
              expected batch size) and the ``EpsilonCallback``
    ordinary  the same model and batch size without privacy: keras SGD with
              the same learning rate and momentum, fixed-size batches
              reshuffled every epoch (``shuffled_batches``)

``train``'s own outputs (checkpoint, CSV log, TensorBoard, the non-finite
loss guard) are left out of both. Both use the job's learning rate and
momentum: at the paper's Fashion-MNIST settings (lr 4, tuned for the
clipped and averaged gradient) ordinary training diverges, so its accuracy
means nothing there; its times are those of the same computation. Jobs:

    fashion_mnist  the paper's Fashion-MNIST settings (experiments.py, the
                   tanh run: mnist_cnn, batch 2048, lr 4, momentum 0.9, clip
                   0.1, noise for epsilon 2.7 after --epochs), default 4
                   epochs; data from the package's loader (offline: Debian's
                   dataset-fashion-mnist)
    digits         ``keras-tempered-dp train`` with no flags: digits_cnn,
                   tempered sigmoid, batch 64, 15 epochs

An epoch's time runs from the end of the one before (the first: from the
call of ``fit``) to the end of its validation and epsilon; the table gives
the median over the epochs after the first (the first traces). ``fit`` is the whole ``fit`` call, ``process`` the child's
wall time (imports, data, model, fit). With ``--repeats=R`` every (stack,
job, method) runs R child processes, interleaved round-robin, and the table
gives medians and the min-max spread over the repeats. ``--paper_row``
times ``keras-tempered-dp reproduce --dataset=fashion_mnist`` (the library
call, into a temporary folder) once per stack; ``--paper_epochs`` shortens
it for a check of the code path.

With ``--backends=tensorflow,jax`` every (stack, job, method) also runs
under each Keras backend (``KERAS_BACKEND`` set in the child): "dp" is the
TensorFlow engine on TensorFlow and the JAX engine on JAX, each ratio is to
ordinary training on the same backend. ``--paper_row`` runs on the
backend Keras picks.

It measures and prints; it asserts nothing.
"""

import argparse
import dataclasses
import json
import tempfile
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
    stacks_and_backends,
)

JOBS = ("fashion_mnist", "digits")
METHODS = ("ordinary", "dp")
DEFAULT_EPOCHS = {"fashion_mnist": 4, "digits": None}  # None: train's


def job_config(job, epochs=None):
    """The job's :class:`~keras_tempered_dp.training.RunConfig`."""
    from keras_tempered_dp.experiments import DELTA, experiment
    from keras_tempered_dp.training import RunConfig

    settings = {}
    if job == "fashion_mnist":
        paper = experiment("paper", job)
        tanh = [run for run in paper.runs if run.label == "tanh"][0]
        # As reproduce() runs it.
        settings = dict(tanh.settings, dataset=job,
                        target_epsilon=paper.epsilons[0], delta=DELTA,
                        sampling="poisson")
    elif job != "digits":
        raise SystemExit(f"job {job!r}: expected one of {', '.join(JOBS)}")
    epochs = epochs or DEFAULT_EPOCHS[job]
    if epochs:
        settings["epochs"] = epochs
    return RunConfig.from_flat(**settings)


def _epoch_timer():
    """A callback that keeps each epoch's wall time: from the end of the
    one before (the first: from ``start()``, just before ``fit``) to this
    one's end, its validation and epsilon included (put it last)."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def start(self):
            self.ends = [time.perf_counter()]

        def on_epoch_end(self, epoch, logs=None):
            self.ends.append(time.perf_counter())

        @property
        def times(self):
            return [b - a for a, b in zip(self.ends, self.ends[1:])]

    return EpochTimer()


def _build(config, input_shape, num_classes):
    """The job's model, as ``train`` builds it."""
    from keras_tempered_dp.models import DEFAULT_MODEL, MODELS, activation_layer

    model = config.model
    activation = model.activation
    if activation == "tempered_sigmoid":
        activation = activation_layer(activation, s=model.s, T=model.T,
                                      o=model.o)
    name = model.model or DEFAULT_MODEL[config.data.dataset]
    return name, MODELS[name](activation=activation, input_shape=input_shape,
                              num_classes=num_classes)


def _device(model):
    """Where the model's first variable lives, and the accelerators."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return (f"{jax.devices()[0]} ({jax.device_count()} JAX device(s), "
                f"{jax.default_backend()})")
    import tensorflow as tf

    variable = model.trainable_variables[0]
    inner = getattr(variable, "value", None)  # Keras 3: the tf.Variable
    if inner is not None and not callable(inner):
        variable = inner
    gpus = len(tf.config.list_logical_devices("GPU"))
    return f"{variable.device or '?'} ({gpus} GPU(s) visible)"


def _compile_dp(model, config, plan, x, y):
    """DP-SGD as ``train`` compiles it; returns (batches, steps, callbacks)."""
    from keras_tempered_dp.callbacks import EpsilonCallback
    from keras_tempered_dp.privacy.compile import compile_dp
    from keras_tempered_dp.privacy.sampling import poisson_batches, shuffled_batches

    batch_size = config.optimizer.batch_size
    poisson = config.data.sampling == "poisson"
    compile_dp(model, config=dataclasses.replace(
                   config.dp, noise_multiplier=plan.noise_multiplier),
               expected_batch_size=batch_size if poisson else None,
               engine_options=config.engine_options)
    batches = (poisson_batches if poisson else shuffled_batches)(
        x, y, batch_size)
    epsilon = EpsilonCallback(plan.num_examples, batch_size,
                              delta=plan.delta,
                              steps_per_epoch=plan.steps_per_epoch)
    return batches, plan.steps_per_epoch, [epsilon]


def _compile_ordinary(model, config, x, y):
    """Keras SGD, no privacy, fixed-size shuffled batches."""
    import keras

    from keras_tempered_dp.privacy.accounting import steps_per_epoch
    from keras_tempered_dp.privacy.sampling import shuffled_batches

    batch_size = config.optimizer.batch_size
    model.compile(
        optimizer=keras.optimizers.SGD(
            learning_rate=config.dp.learning_rate,
            momentum=config.dp.momentum),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    return (shuffled_batches(x, y, batch_size),
            steps_per_epoch(len(x), batch_size, "shuffle"), [])


def measure(job, method, epochs=None):
    """Runs in the child process; returns a dict of measurements."""
    import keras
    import numpy as np

    from keras_tempered_dp.data import load_dataset
    from keras_tempered_dp.training.plan import plan_noise

    config = job_config(job, epochs)
    keras.utils.set_random_seed(config.data.seed)
    (x, y), (x_test, y_test) = load_dataset(
        config.data.dataset, data_dir=config.data.data_dir,
        manual_dir=config.data.manual_dir, download=config.data.download)
    name, model = _build(config, x.shape[1:], int(np.max(y)) + 1)
    if method == "dp":
        plan = plan_noise(config.privacy, num_examples=len(x),
                          batch_size=config.optimizer.batch_size,
                          sampling=config.data.sampling,
                          epochs=config.optimizer.epochs)
        batches, steps, callbacks = _compile_dp(model, config, plan, x, y)
    else:
        batches, steps, callbacks = _compile_ordinary(model, config, x, y)
    timer = _epoch_timer()
    timer.start()
    start = timer.ends[0]
    history = model.fit(batches, epochs=config.optimizer.epochs,
                        steps_per_epoch=steps, shuffle=False,
                        validation_data=(x_test, y_test), verbose=0,
                        callbacks=callbacks + [timer])
    fit_s = time.perf_counter() - start
    later = timer.times[1:] or timer.times
    logs = history.history
    return {"model": name, "batch": config.optimizer.batch_size,
            "steps": steps, "epochs": config.optimizer.epochs,
            "epoch_s": float(np.median(later)),
            "first_epoch_s": timer.times[0], "fit_s": fit_s,
            "val_accuracy": float(logs["val_accuracy"][-1]),
            "epsilon": (float(logs["epsilon"][-1]) if "epsilon" in logs
                        else None),
            "device": _device(model)}


def paper_row(dataset="fashion_mnist", epochs=None):
    """Runs in the child process: the paper's row for ``dataset`` (tanh and
    ReLU) through ``reproduce``, into a temporary folder, timed."""
    from keras_tempered_dp.experiments import reproduce

    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        rows, _ = reproduce(dataset=dataset, recipe="paper",
                            output_dir=folder, epochs=epochs, verbose=0)
        total = time.perf_counter() - start
    return {"total_s": total, "rows": [
        {"run": r["run"], "wall_time_s": 60 * r["wall_time_min"],
         "test_accuracy": r["test_accuracy"], "epsilon": r["epsilon"]}
        for r in rows]}


def _child(arguments):
    kind, job, value = arguments
    epochs = None if value == "default" else int(value)
    if kind == "paper_row":
        return paper_row(job, epochs)
    return measure(job, kind, epochs)


def _timed_child(python, arguments, backend=None):
    start = time.perf_counter()
    result = run_child(python, __file__, ["--child"] + arguments,
                       backend=backend)
    result["process_s"] = time.perf_counter() - start
    return result


def _print_table(stacks, jobs, results):
    print("| stack | job | model | batch | steps/epoch | method | epoch (s) "
          "| spread | x ordinary | first epoch (s) | fit (s) | process (s) "
          "| val. accuracy | epsilon |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for stack in stacks:
        for job in jobs:
            base = None
            for method in METHODS:
                found = results[stack, job, method]
                runs = [r for r in found if "error" not in r]
                if not runs:
                    print(f"| {stack} | {job} | | | | {method} | failed: "
                          f"{found[0]['error']} | | | | | | | |")
                    continue
                epoch = median(runs, "epoch_s")
                base = epoch if method == "ordinary" else base
                ratio = f"{epoch / base:.2f}" if base else ""
                eps = ("" if runs[0]["epsilon"] is None
                       else f"{median(runs, 'epsilon'):.3f}")
                r = runs[0]
                print(f"| {stack} | {job} | {r['model']} | {r['batch']} | "
                      f"{r['steps']} | {method} | {epoch:.3f} | "
                      f"{spread(runs, 'epoch_s')} | {ratio} | "
                      f"{median(runs, 'first_epoch_s'):.2f} | "
                      f"{median(runs, 'fit_s'):.1f} | "
                      f"{median(runs, 'process_s'):.1f} | "
                      f"{median(runs, 'val_accuracy'):.4f} | {eps} |",
                      flush=True)


def _print_notes(stacks, jobs, results):
    for stack in stacks:
        for job in jobs:
            for method in METHODS:
                runs = [r for r in results[stack, job, method]
                        if "error" not in r]
                if runs:
                    print(f"# {stack} {job} {method}: device "
                          f"{runs[0]['device']}")
                if runs and method == "dp":
                    print(f"# {stack} {job} dp: final epsilon "
                          f"{runs[-1]['epsilon']:.3f} after "
                          f"{runs[-1]['epochs']} epochs")


def _print_paper_rows(stacks, epochs):
    label = "paper's epochs" if epochs is None else f"epochs={epochs}"
    print(f"\n## The paper's Fashion-MNIST row ({label})\n")
    print("| stack | run | wall time (s) | test accuracy (%) | epsilon |")
    print("|---|---|---|---|---|")
    for stack, (python, backend) in stacks.items():
        found = _timed_child(python, ["paper_row", "fashion_mnist",
                                      epochs or "default"], backend)
        if "error" in found:
            print(f"| {stack} | failed: {found['error']} | | | |")
            continue
        for row in found["rows"]:
            print(f"| {stack} | {row['run']} | {row['wall_time_s']:.0f} | "
                  f"{row['test_accuracy']:.2f} | {row['epsilon']:.3f} |")
        print(f"| {stack} | total (reproduce) | {found['total_s']:.0f} | "
              f"| |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--jobs", default=",".join(JOBS),
                        help="comma-separated: " + ", ".join(JOBS))
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of every job (default: fashion_mnist "
                        "4, digits train's 15)")
    add_run_arguments(parser, backends=True)
    parser.add_argument("--paper_row", action="store_true",
                        help="also time reproduce --dataset=fashion_mnist "
                        "(tanh and ReLU, 40 epochs each: most of an hour "
                        "on 2 CPU cores)")
    parser.add_argument("--paper_epochs", type=int, default=None,
                        help="--paper_row with this many epochs per run "
                        "instead of the paper's (a check of the code path)")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child)))
        return
    stacks = stacks_and_backends(args)
    jobs = [job for job in args.jobs.split(",") if job]
    unknown = [job for job in jobs if job not in JOBS]
    if unknown:
        raise SystemExit(f"--jobs: {', '.join(unknown)}: expected some of "
                         f"{', '.join(JOBS)}")
    print(f"# {machine()}; median of {args.repeats} interleaved "
          "process(es) per row")
    for stack, (python, _) in stacks.items():
        print(f"# {stack}: {describe(python)}")
    print(f"# command: {command_line()}")
    if jobs:
        epochs = args.epochs or "default"
        keys = [(s, j, m) for j in jobs for m in METHODS for s in stacks]
        results = interleaved(args.repeats, keys, lambda key: _timed_child(
            stacks[key[0]][0], [key[2], key[1], epochs], stacks[key[0]][1]))
        _print_table(stacks, jobs, results)
        _print_notes(stacks, jobs, results)
    if args.paper_row:
        _print_paper_rows(stacks, args.paper_epochs)


if __name__ == "__main__":
    main()
