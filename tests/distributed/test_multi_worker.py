"""MultiWorkerMirroredStrategy with two real worker processes on loopback.

The engine's distributed design (see ``privacy/clipping/replicas.py``) is
only fully exercised across *processes*: collectives over gRPC, the chief's
broadcast of initial variables, replica ids that span workers, and input
pipelines per worker. One pair of workers (plus a one-device reference
process, run at the same time) runs every phase of
``tests/distributed/worker_job.py``; this test compares their results:

1. noise 0, fixed global batches split by the strategy (auto-shard DATA):
   both workers' weights, steps_taken and examples_seen equal the
   one-device run's to 1e-5;
2. noise > 0 with the same explicit noise_seed on both workers: the
   replicas' noise shares differ (the generator folds in the global replica
   id), the weights after noised steps are identical on both workers;
3. ``distributed_poisson_batches`` for two epochs with EpsilonCallback:
   both workers log the one-device epsilon, and steps_taken counts global
   steps.

Everything runs in child processes: TensorFlow in the pytest process is
already initialized, and MWMS must be created before any other TF op.
"""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
TIMEOUT = 150


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _run_all(tmp_path):
    """Starts two workers and the reference; returns their npz results."""
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    path = os.environ.get("PYTHONPATH", "")
    base = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
                PYTHONPATH=ROOT + (os.pathsep + path if path else ""))
    base.pop("TF_CONFIG", None)
    jobs = {}
    for name, mode, tf_config in [
            ("worker0", "multi", {"cluster": cluster,
                                  "task": {"type": "worker", "index": 0}}),
            ("worker1", "multi", {"cluster": cluster,
                                  "task": {"type": "worker", "index": 1}}),
            ("single", "single", None)]:
        env = dict(base)
        if tf_config:
            env["TF_CONFIG"] = json.dumps(tf_config)
        err = open(tmp_path / f"{name}.err", "w+")
        out = tmp_path / f"{name}.npz"
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.distributed.worker_job", str(out),
             mode], cwd=ROOT, env=env, stdout=err, stderr=err)
        jobs[name] = (proc, err, out)
    deadline = time.monotonic() + TIMEOUT
    failed = []
    try:
        for name, (proc, _, _) in jobs.items():
            try:
                code = proc.wait(max(1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                code = f"timeout after {TIMEOUT} s"
            if code != 0:
                failed.append(f"{name}: {code}")
                break
    finally:
        for proc, _, _ in jobs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    tails = {}
    for name, (_, err, _) in jobs.items():
        err.seek(0)
        tails[name] = err.read()[-3000:]
        err.close()
    if failed:
        pytest.fail("distributed run failed (" + "; ".join(failed) + ")\n" +
                    "\n".join(f"--- {n} stderr tail ---\n{t}"
                              for n, t in tails.items()))
    return {name: dict(np.load(out)) for name, (_, _, out) in jobs.items()}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return _run_all(tmp_path_factory.mktemp("multi_worker"))


def _weights(result, prefix):
    return [result[k] for k in sorted(
        (k for k in result if k.startswith(prefix + "_w")),
        key=lambda k: int(k[len(prefix) + 2:]))]


def test_two_workers_two_replicas(results):
    assert int(results["worker0"]["replicas"]) == 2
    assert int(results["worker1"]["replicas"]) == 2
    assert int(results["single"]["replicas"]) == 1


def test_noise_free_update_matches_one_device(results):
    single = _weights(results["single"], "fixed")
    for name in ("worker0", "worker1"):
        r = results[name]
        for a, b in zip(_weights(r, "fixed"), single):
            np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
        assert int(r["fixed_steps"]) == 3
        assert int(r["fixed_examples"]) == 96
    assert int(results["single"]["fixed_examples"]) == 96


def test_same_seed_different_shares_one_model(results):
    w0, w1 = results["worker0"], results["worker1"]
    # One replica per worker (one CPU device each).
    assert w0["share"].shape[0] == w1["share"].shape[0] == 1
    assert np.max(np.abs(w0["share"][0] - w1["share"][0])) > 1e-3
    for a, b in zip(_weights(w0, "noisy"), _weights(w1, "noisy")):
        np.testing.assert_array_equal(a, b)
    # Noise was added: the update differs from the noise-free one.
    assert not all(np.allclose(a, b) for a, b in zip(
        _weights(w0, "noisy"), _weights(results["single"], "noisy")))


def test_poisson_epsilon_and_steps(results):
    single = results["single"]
    steps = int(single["poisson_steps_per_epoch"])
    for name in ("worker0", "worker1", "single"):
        r = results[name]
        np.testing.assert_allclose(r["poisson_epsilon"],
                                   single["poisson_reference_epsilon"],
                                   rtol=1e-12)
        assert int(r["poisson_steps"]) == 2 * steps
    for a, b in zip(_weights(results["worker0"], "poisson"),
                    _weights(results["worker1"], "poisson")):
        np.testing.assert_array_equal(a, b)
    assert (int(results["worker0"]["poisson_examples"]) ==
            int(results["worker1"]["poisson_examples"]))


def test_whole_dataset_draws_refused_across_workers(results):
    """Each worker would train a slice of its own draw: an example could
    join a step twice. One device trains on them as usual."""
    for name in ("poisson", "shuffled"):
        for worker in ("worker0", "worker1"):
            message = str(results[worker][f"global_draw_{name}"])
            assert "under a multi-worker strategy" in message, message
            assert "distributed_poisson_batches" in message
        assert str(results["single"][f"global_draw_{name}"]) == "trained"
