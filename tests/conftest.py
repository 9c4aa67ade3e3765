import gc
import os
import subprocess
import sys
import textwrap
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest


# Keras 3's clear_session runs a full garbage collection by default, which
# walks every object alive: about a second a test with TensorFlow, Keras
# and the test modules loaded (650 s of the suite's 1,800 on 2 cores).
# Python collects on its own schedule instead. What collection imported
# lives for the whole session, so it is frozen out of the collector: those
# automatic collections walk only what the tests made. (Measured: a
# collection after every test, even with the freeze, made three modules
# take 87 s instead of 59.)
CLEAR_SESSION = ({"free_memory": False}
                 if keras.__version__.startswith("3") else {})


def pytest_collection_modifyitems(config, items):
    """On the JAX backend only the tests marked ``jax_backend`` run (the
    engine's reference tests and the JAX engine's own; tests/
    test_jax_backend.py runs them in a process with KERAS_BACKEND=jax): the
    rest of the suite is TensorFlow's."""
    if keras.backend.backend() != "jax":
        return
    skip = pytest.mark.skip(reason="TensorFlow backend only")
    for item in items:
        if "jax_backend" not in item.keywords:
            item.add_marker(skip)


def pytest_collection_finish(session):
    gc.collect()
    gc.freeze()


@pytest.fixture(autouse=True)
def seeded():
    """Seeds Python, NumPy and TensorFlow before every test."""
    keras.utils.set_random_seed(1234)
    yield
    keras.backend.clear_session(**CLEAR_SESSION)


def run_fresh_python(code, timeout=300):
    """Runs ``code`` in a new Python process; returns its stdout.

    Used to prove that saved models load where nothing was registered by
    hand, only the package imported.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=timeout, env=env)
    if result.returncode != 0:
        raise AssertionError(
            f"fresh process failed:\n{result.stdout}\n{result.stderr[-4000:]}")
    return result.stdout


@pytest.fixture
def rng(request):
    """A NumPy generator seeded per test (from the test's name), so tests
    never share random state and each is reproducible on its own."""
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


def console_script():
    """The installed ``keras-tempered-dp`` (beside this Python first)."""
    import shutil
    exe = shutil.which("keras-tempered-dp", path=os.path.dirname(
        sys.executable)) or shutil.which("keras-tempered-dp")
    assert exe, "the console script is not installed"
    return exe


@pytest.fixture(scope="session")
def digits_train_run(tmp_path_factory):
    """``keras-tempered-dp train --epochs=2`` on one device, as a user runs
    it: (the finished process, its results.json, its folder).

    Run once per session: the CLI test reads its output, and the
    distributed runs compare their epsilon with it.
    """
    import json
    cwd = tmp_path_factory.mktemp("digits_train_run")
    run = subprocess.run([console_script(), "train", "--epochs=2",
                          "--output_dir=out"], cwd=cwd, capture_output=True,
                         text=True, timeout=600,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert run.returncode == 0, run.stderr[-2000:]
    folder = cwd / "out"
    return run, json.loads((folder / "results.json").read_text()), folder


@pytest.fixture(scope="session")
def fresh_python():
    return run_fresh_python


@pytest.fixture
def digits():
    from keras_tempered_dp.data import load_digits
    return load_digits()


def assert_close(a, b, rtol=1e-6, atol=1e-6):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=rtol,
                               atol=atol)


# The script that wrote the kymatio reference needs kymatio; it is run by
# hand, not collected (pytest's --doctest-modules would import it).
collect_ignore = ["layers/reference/make_scattering_reference.py"]
