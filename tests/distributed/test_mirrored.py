"""The engine under MirroredStrategy over 2 and 4 logical CPU devices.

Replica r adds the share ``Z_r ~ N(0, (sigma C)^2 / R)`` to its clipped sum
and the optimizer sums the replicas: the update's noise is ``N(0, (sigma
C)^2) / B``, once per global step, when the shares are independent. Each
child process (tests/distributed/mirrored_job.py; logical devices are fixed
when TensorFlow starts) measures:

1. with noise 0, the update equals the one-device engine's on the same
   global batch, for every engine option (five runs: options that only
   change per-replica math ride with one that changes the replicas' path,
   see ``mirrored_job.OPTIONS``); counters count global steps and
   examples; microbatches not divisible by R are refused;
2. the update's noise std is sigma C / B within 2% over 100,000 draws (full
   noise on every replica would make it sqrt(R) larger);
3. the replicas' shares (before the sum) differ and are uncorrelated, each
   of std sigma C / (sqrt(R) B), with the engine made in the scope, seeded,
   or moved into it at install;
4. Poisson batches per replica: only the replica's shard, no example twice
   in a step, inclusion rate q, and the one-device epsilon.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.distributed.mirrored_job import BATCH, CLIP, OPTIONS, SIGMA

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


# 4 replicas repeat every check of 2 at twice the cost (a minute of CI):
# run with -m slow.
@pytest.fixture(scope="module", params=[
    2, pytest.param(4, marks=pytest.mark.slow)])
def measured(request, tmp_path_factory):
    out = tmp_path_factory.mktemp("mirrored") / "result.json"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join(
                   [ROOT, os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run(
        [sys.executable, "-m", "tests.distributed.mirrored_job",
         str(request.param), str(out)], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["replicas"] == request.param
    return result


@pytest.mark.parametrize("option", list(OPTIONS))
def test_noise_free_update_equals_one_device(measured, option):
    found = measured[option]
    assert found["max_update"] > 1e-3  # something to compare
    assert found["max_diff"] <= 1e-5, found
    assert (found["steps"], found["examples"]) == (1, BATCH)


def test_microbatches_must_split_over_replicas(measured):
    # (Keras 2 prefixes the traceback of the traced step.)
    message = measured["indivisible_microbatches"]
    assert "num_microbatches=" in message and "is not divisible" in message
    assert f"{measured['replicas']} replicas" in message


def test_update_noise_is_added_once(measured):
    expected = SIGMA * CLIP / BATCH
    assert measured["update_std"] == pytest.approx(expected, rel=0.02)


@pytest.mark.parametrize("setup", ["in_scope", "seeded", "moved_in"])
def test_every_replica_draws_its_own_share(measured, setup):
    found = measured["shares"][setup]
    share = SIGMA * CLIP / np.sqrt(measured["replicas"]) / BATCH
    assert not found["any_equal"]
    assert found["max_abs_corr"] < 0.05  # 20,000 draws: sd 0.007
    for std in found["std"]:
        assert std == pytest.approx(share, rel=0.03)


def test_poisson_batches_per_replica(measured):
    found = measured["poisson"]
    assert found["wrong_shard"] == 0 and found["duplicates"] == 0
    q, steps = found["q"], found["steps"]
    sd = np.sqrt(q * (1 - q) / steps)
    assert abs(found["mean_rate"] - q) < 0.01  # 60,000 trials: sd 0.0016
    assert q - 5 * sd < found["min_rate"] <= found["max_rate"] < q + 5 * sd
    np.testing.assert_allclose(found["epsilon"], found["reference_epsilon"],
                               rtol=1e-12)
    assert found["steps_taken"] == 2 * found["steps_per_epoch"]
