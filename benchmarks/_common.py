"""What the benchmarks share: stacks, child processes, interleaving.

Each benchmark runs its measurements in child processes (``python SCRIPT
--child ...``) that print one JSON line; the parent interleaves the
children round-robin over repeats, so the machine's load drifts over all
of them alike, and reports medians.
"""

import json
import os
import platform
import shlex
import statistics
import subprocess
import sys


def add_run_arguments(parser, backends=False):
    """``--stacks`` and ``--repeats``, as every benchmark takes them (and
    ``--backends``, for those that run on both Keras 3 backends)."""
    parser.add_argument("--stacks", default=None,
                        help="name=python,... : run every child under each "
                        "interpreter (a virtualenv with the package)")
    if backends:
        parser.add_argument("--backends", default=None,
                            help="tensorflow,jax: run every child under "
                            "each Keras backend (default: KERAS_BACKEND's)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="child processes per row, interleaved; the "
                        "table shows medians")


def stacks(spec):
    """{"name": python} from "name=python,..."; this interpreter if None."""
    if not spec:
        return {"this": sys.executable}
    pairs = [item.split("=", 1) for item in spec.split(",")]
    if any(len(pair) != 2 for pair in pairs):
        raise SystemExit(f"--stacks={spec!r}: expected name=python,...")
    return dict(pairs)


def stacks_and_backends(args):
    """{row name: (python, backend or None)}: every ``--stacks``
    interpreter under every ``--backends`` backend ("stack/backend" names
    the rows), or under KERAS_BACKEND's without ``--backends``."""
    found = stacks(args.stacks)
    if not getattr(args, "backends", None):
        return {name: (python, None) for name, python in found.items()}
    chosen = args.backends.split(",")
    unknown = [b for b in chosen if b not in ("tensorflow", "jax")]
    if unknown:
        raise SystemExit(f"--backends: {', '.join(unknown)}: expected "
                         "tensorflow and/or jax")
    return {f"{name}/{backend}": (python, backend)
            for name, python in found.items() for backend in chosen}


def describe(python):
    """One line: the Python, TensorFlow, Keras, NumPy (and JAX,
    jax-privacy where installed) of ``python``."""
    code = ("import platform, importlib.metadata as m, tensorflow as tf, "
            "keras, numpy as np\n"
            "extra = ''\n"
            "for name in ('jax', 'jax-privacy'):\n"
            "    try: extra += f', {name} {m.version(name)}'\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(f'Python {platform.python_version()}, tensorflow "
            "{tf.__version__}, keras {keras.__version__}, numpy "
            "{np.__version__}{extra}')")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    out = subprocess.run([python, "-c", code], capture_output=True,
                         text=True, env=env)
    return out.stdout.strip() or f"{python}: {out.stderr.strip()[-200:]}"


def machine():
    """The processor and the number of CPU cores."""
    return (f"{platform.processor() or platform.machine()}, "
            f"{platform.platform()}, {os.cpu_count()} CPU cores")


def command_line():
    """This process's command line, quoted for a shell."""
    return shlex.join([sys.executable] + sys.argv)


def run_child(python, script, arguments, backend=None, timeout=None):
    """Runs ``python script arguments`` (with ``KERAS_BACKEND=backend``
    when given, for at most ``timeout`` seconds); its last stdout line as
    JSON, or ``{"error": <last stderr line>}``."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if backend:
        env["KERAS_BACKEND"] = backend
    try:
        out = subprocess.run([python, script] + [str(a) for a in arguments],
                             capture_output=True, text=True, env=env,
                             timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if out.returncode:
        lines = out.stderr.strip().splitlines() or [f"exit {out.returncode}"]
        return {"error": lines[-1][:120]}
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": f"no result in the output: {out.stdout[-120:]!r}"}


def interleaved(repeats, keys, run):
    """{key: [run(key), ...]}: ``repeats`` rounds, each over all keys."""
    results = {key: [] for key in keys}
    for _ in range(repeats):
        for key in keys:
            results[key].append(run(key))
    return results


def median(runs, key):
    return statistics.median(run[key] for run in runs)


def spread(runs, key):
    """"min-max" of ``key`` over ``runs`` (empty for a single run)."""
    values = [run[key] for run in runs]
    if len(values) < 2:
        return ""
    return f"{min(values):.3g}-{max(values):.3g}"


def rss_kib(field):
    """``field`` of this process's /proc/self/status in KiB (``VmRSS``,
    ``VmHWM``: the high-water mark), or -1 where there is none."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def use_generic_route_for_recurrent_layers():
    """Sends LSTM, GRU and SimpleRNN to the engine's exact generic route
    (per-example recomputation): the last route, as it was before their
    time-step route."""
    import keras

    from keras_tempered_dp.privacy.clipping import (
        generic_sq_norms,
        register_norm_fn,
    )
    for layer_class in (keras.layers.LSTM, keras.layers.GRU,
                        keras.layers.SimpleRNN):
        register_norm_fn(layer_class, generic_sq_norms)
