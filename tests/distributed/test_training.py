"""``keras-tempered-dp train --strategy=...``: refusals, and real runs.

The runs are the user's: the console script, with ``--cpu_devices=2`` under
MirroredStrategy, and as two worker processes on loopback ports under
MultiWorkerMirroredStrategy (the command docs/distributed.md gives). Epsilon
must equal the one-device run's: the accountant sees the global batch, the
same q and the same steps whatever the number of replicas.
"""

import json
import os
import socket
import subprocess
import sys

import pytest
import tensorflow as tf

from keras_tempered_dp.training import RunConfig
from keras_tempered_dp.training import distribute
from tests.conftest import console_script


@pytest.mark.parametrize("settings, names", [
    (dict(cpu_devices=2), "cpu_devices"),
    (dict(strategy="mirrored", cpu_devices=0), "cpu_devices"),
    (dict(strategy="everywhere"), "strategy"),
    (dict(strategy="multi_worker", sampling="shuffle"), "sampling"),
    (dict(strategy="multi_worker", resume=True), "resume"),
])
def test_refused_settings(settings, names):
    with pytest.raises(ValueError, match=names):
        RunConfig.from_flat(**settings)


@pytest.mark.parametrize("tf_config", [
    None, "", "not json", '{"cluster": {}}',
    '{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker"}}',
])
def test_multi_worker_needs_a_valid_tf_config(monkeypatch, tf_config):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match="TF_CONFIG"):
        distribute.make_strategy(
            RunConfig.from_flat(strategy="multi_worker").distribute)


def test_cpu_devices_after_tensorflow_started_is_refused():
    have = len(tf.config.list_logical_devices("CPU"))  # starts TensorFlow
    with pytest.raises(ValueError, match="cpu_devices=.*already started"):
        distribute.split_cpu(have + 1)
    distribute.split_cpu(have)  # what it has already: nothing to do


def test_one_device_is_the_chief():
    assert distribute.make_strategy(RunConfig().distribute) is None
    assert distribute.is_chief(None)


def _env(**extra):
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **extra)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _results(folder):
    return json.loads((folder / "results.json").read_text())


# digits_train_run (conftest.py) runs this job on one device.
JOB = ("train", "--epochs=2", "--verbose=0")


def test_mirrored_run_matches_one_device_epsilon(tmp_path, digits_train_run):
    two = subprocess.run([console_script(), *JOB, "--output_dir=two",
                          "--strategy=mirrored", "--cpu_devices=2"],
                         cwd=tmp_path, env=_env(), capture_output=True,
                         text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    _, single, _ = digits_train_run  # the same job on one device
    mirrored = _results(tmp_path / "two")
    assert mirrored["config"]["strategy"] == "mirrored"
    assert mirrored["epsilon"] == single["epsilon"]
    assert len(mirrored["epochs"]) == 2
    assert mirrored["test_accuracy"] > 0.2  # it learned (chance: 0.1)


def test_two_workers_train_the_digits_job(tmp_path, digits_train_run):
    """The documented two-worker command, both workers on this machine."""
    ports = [_free_port(), _free_port()]
    scratch = tmp_path / "scratch"  # the workers' temporary folders
    scratch.mkdir()
    workers = []
    for index in range(2):
        tf_config = json.dumps({
            "cluster": {"worker": [f"localhost:{p}" for p in ports]},
            "task": {"type": "worker", "index": index}})
        workers.append(subprocess.Popen(
            [console_script(), *JOB, "--output_dir=run",
             "--strategy=multi_worker"], cwd=tmp_path,
            env=_env(TF_CONFIG=tf_config, TMPDIR=str(scratch)),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=600))
    finally:
        for worker in workers:
            worker.kill()
    for worker, (_, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-3000:]
    results = _results(tmp_path / "run")
    assert results["config"]["strategy"] == "multi_worker"
    assert len(results["epochs"]) == 2
    # Both workers hold one model and report one epsilon.
    statements = [out.splitlines() for out, _ in outputs]
    assert [line for line in statements[0] if "DP for" in line] == \
        [line for line in statements[1] if "DP for" in line]
    assert results["privacy"] in outputs[0][0]
    # The non-chief's outputs went to a temporary folder, since removed.
    assert not [p for p in scratch.iterdir()
                if p.name.startswith("keras_tempered_dp_worker_")]
    # The same job on one device (conftest.py) spent the same epsilon.
    assert results["epsilon"] == digits_train_run[1]["epsilon"]


REFUSE_TF_PRIVACY = """
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from keras_tempered_dp.models import digits_cnn
from keras_tempered_dp.privacy import compile_dp
with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
    try:
        compile_dp(digits_cnn("tanh"), l2_norm_clip=1.0,
                   noise_multiplier=1.1, optimizer="dp_keras_sgd")
    except ValueError as error:
        print("REFUSED:", error)
"""


def test_tf_privacy_optimizer_refused_under_replicas():
    pytest.importorskip("tensorflow_privacy")
    out = subprocess.run([sys.executable, "-c", REFUSE_TF_PRIVACY],
                         env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert "REFUSED: optimizer='dp_keras_sgd' under a tf.distribute " \
        "strategy with 2 replicas" in out.stdout, out.stderr[-2000:]
    assert "optimizer='fast'" in out.stdout


def test_untested_strategies_are_refused():
    from keras_tempered_dp.models import digits_cnn
    from keras_tempered_dp.privacy import compile_dp
    strategy = tf.distribute.experimental.CentralStorageStrategy()
    with strategy.scope():
        model = digits_cnn("tanh")
        with pytest.raises(ValueError, match="CentralStorageStrategy: the "
                           "clipping engine runs under MirroredStrategy"):
            compile_dp(model, l2_norm_clip=1.0, noise_multiplier=1.1)
