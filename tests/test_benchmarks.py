"""The benchmarks run: real, seconds-long runs of benchmarks/fit_speed.py
and benchmarks/distributed_scaling.py."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIT_SPEED = os.path.join(ROOT, "benchmarks", "fit_speed.py")


def _run(*arguments, timeout=600, script=FIT_SPEED):
    path = os.environ.get("PYTHONPATH")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=ROOT + (os.pathsep + path if path else ""))
    out = subprocess.run([sys.executable, script, *arguments],
                         capture_output=True, text=True, env=env,
                         timeout=timeout)
    assert out.returncode == 0, f"{out.stdout}\n{out.stderr[-3000:]}"
    return out.stdout


def _rows(output, job, stack="this"):
    """{method: [cells]} of the table's rows for ``job`` on ``stack``."""
    header = [line for line in output.splitlines()
              if line.startswith("| stack |")][0]
    names = [cell.strip() for cell in header.strip("|").split("|")]
    rows = {}
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if line.startswith("| ") and len(cells) == len(names) \
                and cells[:2] == [stack, job]:
            rows[cells[names.index("method")]] = dict(zip(names, cells))
    return rows


def test_fit_speed_digits_has_dp_and_ordinary_rows_and_epsilon():
    # Both Keras 3 backends where JAX is installed (the current stack's
    # test set-up); TensorFlow alone on the legacy stack.
    jax = importlib.util.find_spec("jax") is not None
    flags = ["--backends=tensorflow,jax"] if jax else []
    output = _run("--jobs=digits", "--epochs=2", "--repeats=1", *flags)
    stacks = ["this/tensorflow", "this/jax"] if jax else ["this"]
    for stack in stacks:
        rows = _rows(output, "digits", stack)
        assert set(rows) == {"dp", "ordinary"}, output
        for row in rows.values():
            for column in ("epoch (s)", "first epoch (s)", "fit (s)",
                           "process (s)"):
                assert float(row[column]) > 0, (column, row)
        assert float(rows["dp"]["epsilon"]) > 0
        assert rows["ordinary"]["epsilon"] == ""
        assert f"# {stack} digits dp: final epsilon " in output
    if jax:  # the same plan, so the same epsilon on both backends
        assert (_rows(output, "digits", stacks[0])["dp"]["epsilon"]
                == _rows(output, "digits", stacks[1])["dp"]["epsilon"])
        assert "JAX device(s)" in output
    assert "# command: " in output and "tensorflow" in output
    assert "device" in output


def test_fit_speed_paper_row_code_path():
    # The paper row's child, on digits for one epoch: reproduce() runs
    # tanh and ReLU and each has a wall time.
    found = json.loads(_run("--child", "paper_row", "digits",
                            "1").strip().splitlines()[-1])
    assert [row["run"] for row in found["rows"]] == ["tanh", "relu"]
    assert all(row["wall_time_s"] > 0 for row in found["rows"])
    assert found["total_s"] > 0


@pytest.mark.slow  # half a minute of CI for the benchmark script itself
def test_distributed_scaling_quick_rows():
    script = os.path.join(ROOT, "benchmarks", "distributed_scaling.py")
    output = _run("--models=digits", "--devices=1,2", "--steps=2",
                  "--warmup=1", script=script)
    rows = [line.split("|")[1:-1] for line in output.splitlines()
            if line.startswith("| this | digits")]
    found = {(cells[3].strip(), cells[4].strip(), cells[5].strip()):
             float(cells[6]) for cells in rows}
    assert set(found) == {(s, d, m) for s, d in (("none", "1"),
                                                 ("mirrored", "1"),
                                                 ("mirrored", "2"))
                          for m in ("dp", "ordinary")}, output
    assert all(rate > 0 for rate in found.values())


def test_scattering_speed_prints_both_paths_on_digits():
    script = os.path.join(ROOT, "benchmarks", "scattering_speed.py")
    out = subprocess.run(
        [sys.executable, script, "--dataset=digits", "--repeats=1"],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines()
            if line.startswith("| ") and "s |" not in line[:8]]
    assert any(r.startswith("| Keras predict") for r in rows)
    assert any(r.startswith("| compiled") for r in rows)
    difference = float(out.stdout.split("largest difference ")[1].split()[0])
    assert difference < 1e-5


def test_clipping_speed_lstm_child_on_the_generic_route():
    """benchmarks/clipping_speed.py's child for the LSTM row with the
    generic method (recurrent layers sent to the last route): one timed
    step, its measurements as one JSON line."""
    out = _run("--child", "lstm", "4", "generic", "1",
               script=os.path.join(ROOT, "benchmarks", "clipping_speed.py"))
    result = json.loads(out.strip().splitlines()[-1])
    assert result["step_s"] > 0 and result["peak_mib"] > 0, result


@pytest.mark.slow
def test_device_check_runs_both_backends_within_its_budget(tmp_path):
    """benchmarks/device_check.py as on a GPU, here on the CPU: the
    reference check passes on both backends and the step rows come back,
    within the budget."""
    pytest.importorskip("jax")
    out = tmp_path / "check"
    _run("--budget_s=400", "--steps=2", "--methods=ordinary,engine",
         f"--output_dir={out}", timeout=500,
         script=os.path.join(ROOT, "benchmarks", "device_check.py"))
    report = json.loads((out / "device_check.json").read_text())
    assert report["took_s"] <= 400
    references = [r for r in report["results"] if r["item"] == "reference"]
    assert [r["backend"] for r in references] == ["tensorflow", "jax"]
    for row in references:
        assert max(row["models"].values()) < 1e-5, row
    steps = [r for r in report["results"] if "step_s" in r]
    assert {r["backend"] for r in steps} == {"tensorflow", "jax"}
    assert "| jax | reference |" in (out / "device_check.md").read_text()
