"""The engine's tests on Keras 3's JAX backend, in a process of their own.

The backend is fixed when Keras is first imported, and this process runs
TensorFlow; so the tests marked ``jax_backend`` (the engine's reference
tests shared with TensorFlow, tests/privacy/clipping/test_norms.py and
test_any_model.py, KerasHub's backbones in test_keras_hub.py, and the
JAX engine's own, test_jax_engine.py) run in a
second pytest process with ``KERAS_BACKEND=jax``, whose report is shown
whole when any of them fails.

XLA's CPU code generation runs at optimization level 0 there: the tests
compile a step per model and barely run it, and level 0 compiles about
1.5x faster. It changes how XLA's operations are turned into machine
code, not which operations run. The CPU is split into two JAX devices
(``--xla_force_host_platform_device_count=2``) for the
``keras.distribution.DataParallel`` tests; the others run on the first.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

from keras_tempered_dp.stack import KERAS_3

pytestmark = pytest.mark.skipif(
    not KERAS_3 or importlib.util.find_spec("jax") is None,
    reason='the JAX backend is Keras 3\'s: pip install -e ".[test,jax]"')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_engine_suite_on_the_jax_backend():
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "")
                          + " --xla_backend_optimization_level=0"
                          + " --xla_force_host_platform_device_count=2"
                          ).strip())
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "-m", "jax_backend and not slow", "--durations=10",
         "tests/privacy/clipping"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    report = result.stdout[-20000:] + result.stderr[-4000:]
    assert result.returncode == 0, report
    assert " passed" in result.stdout and " failed" not in result.stdout, \
        report
    print(report)
