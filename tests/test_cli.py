"""The keras-tempered-dp command, run as a user runs it."""

import json
import os
import re
import subprocess

import numpy as np
import pytest

from keras_tempered_dp.experiments import experiment, reproduce
from tests.conftest import console_script


def _main(*args, capsys):
    """``main(args)`` in this process, as the console script calls it:
    (exit status, stdout, stderr). The console script's own exit status is
    checked by test_usage_error_lists_commands and the max_trials test; the
    rest need no TensorFlow start of their own (4-6 s each)."""
    from keras_tempered_dp.cli import main
    try:
        status = main(list(args))
    except SystemExit as exit_:  # argparse's usage errors and --help
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _cli(*args, cwd):
    return subprocess.run([console_script(), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))


def test_usage_error_lists_commands(tmp_path):
    out = _cli("fly", cwd=tmp_path)
    assert out.returncode == 2
    assert "train|reproduce|tune|audit|plot-activations" in out.stderr


def test_audit_command(tmp_path):
    out = _cli("audit", "--epochs=2", "--num_canaries=60",
               "--accountant=pld", "--output_dir=out", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "one-run bound" in out.stdout and "(pld)" in out.stdout
    report = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert report["num_canaries"] == 60 and report["accountant"] == "pld"
    assert 0 <= report["one_run"]["epsilon"] < report["accounted_epsilon"]
    assert (tmp_path / "out" / "canaries.npz").exists()
    bad = _cli("audit", "--confidence=2", "--output_dir=bad", cwd=tmp_path)
    assert bad.returncode == 2 and "confidence=2.0" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_plot_activations(tmp_path):
    out = _cli("plot-activations", "--triples=2,2,1;1,1,0", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    png = tmp_path / "runs" / "plot-activations" / "tempered_sigmoids.png"
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_train_command(digits_train_run, tmp_path):
    out, results, _ = digits_train_run  # train --epochs=2 (conftest.py)
    assert "epsilon" in out.stdout and "test accuracy" in out.stdout
    assert results["config"]["epochs"] == 2
    bad = _cli("train", "--s=-1", "--output_dir=bad", cwd=tmp_path)
    assert bad.returncode == 2 and "s=-1.0: must be > 0" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()


def test_reproduce_writes_table_and_plot(tmp_path):
    rows, folder = reproduce(dataset="digits", output_dir=str(tmp_path),
                             epochs=1, verbose=0,
                             command="keras-tempered-dp reproduce "
                             "--dataset=digits")
    assert folder == str(tmp_path / "digits")
    assert [r["run"] for r in rows] == ["tanh", "relu"]
    assert [r["activation"] for r in rows] == ["tanh", "relu"]
    assert all(2.99 < r["epsilon"] <= 3.0 for r in rows)
    table = (tmp_path / "digits" / "table.md").read_text()
    assert "| tanh |" in table and "| relu |" in table
    assert "keras-tempered-dp reproduce --dataset=digits" in table
    png = tmp_path / "digits" / "accuracy_vs_epsilon.png"
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_tune_private_command(tmp_path):
    """The private search as a user runs it: one statement at or below
    the target, a model that loads, and no line that counts trials."""
    out = _cli("tune", "--private", "--epochs=1", "--trials_mean=2",
               "--target_epsilon=2.5", "--output_dir=out", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("private search: the number of trials is "
                               "secret")
    statement = next(line for line in lines if "-DP for each" in line)
    epsilon = float(statement[1:statement.index(",")])
    assert 2.4 < epsilon <= 2.5
    assert not any(re.search(r"trial #?\d", line, re.I) for line in lines)
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["statement"] == statement and results["epsilon"] <= 2.5
    from keras_tempered_dp.privacy.saving import load_model
    model = load_model(str(tmp_path / "out" / "model.keras"))
    assert model.output_shape == (None, 10)


def test_tune_plain_command_prints_every_trial_and_the_composition(
        tmp_path, capsys):
    status, out, err = _main("tune", "--max_trials=2", "--epochs=1",
                             f"--output_dir={tmp_path / 'o'}", capsys=capsys)
    assert status == 0, err
    assert out.count("validation accuracy") == 2
    assert "releasing all of them: (" in out
    assert "have no privacy guarantee" in out
    results = json.loads((tmp_path / "o" / "results.json").read_text())
    assert len(results["trials"]) == 2


def test_reproduce_scale_recipe_command(tmp_path):
    out = _cli("reproduce", "--recipe=scale", "--dataset=digits",
               "--output_dir=out", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    folder = tmp_path / "out" / "digits_scale"
    table = (folder / "table.md").read_text()
    # The command as typed, flags included.
    assert ("keras-tempered-dp reproduce --recipe=scale --dataset=digits "
            "--output_dir=out") in table
    rows = json.loads((folder / "rows.json").read_text())
    assert rows[1]["settings"]["augmentation_multiplicity"] == 2
    assert rows[1]["settings"]["ema_decay"] == 0.9
    assert rows[1]["activation"] == "tempered_sigmoid"
    assert all(2.99 < r["epsilon"] <= 3.0 for r in rows)
    assert (folder / "accuracy_vs_epsilon.png").read_bytes()[:4] == \
        b"\x89PNG"


def test_reproduce_recurrent_recipe_over_seeds(tmp_path):
    """--seeds: every run once per seed, each with its own epsilon, and
    the table's median per run."""
    rows, folder = reproduce(dataset="digits", recipe="recurrent",
                             output_dir=str(tmp_path), epochs=1, verbose=0,
                             seeds=[0, 1])
    assert [(r["run"], r["seed"]) for r in rows] == [
        ("LSTM, tanh", 0), ("LSTM, tanh", 1), ("LSTM, ReLU", 0),
        ("LSTM, ReLU", 1)]
    assert all(2.99 < r["epsilon"] <= 3.0 for r in rows)
    assert sorted(p.name for p in (tmp_path / "digits_recurrent").iterdir()
                  if p.is_dir()) == ["run0_eps3_seed0", "run0_eps3_seed1",
                                     "run1_eps3_seed0", "run1_eps3_seed1"]
    table = (tmp_path / "digits_recurrent" / "table.md").read_text()
    tanh = [r["test_accuracy"] for r in rows[:2]]
    assert (f"| LSTM, tanh | 3.00 | {sum(tanh) / 2:.2f} | "
            f"{tanh[0]:.2f}, {tanh[1]:.2f} |") in table
    assert table.count("- LSTM, tanh:") == 1  # settings listed once
    assert f"| LSTM, ReLU | 1 | {rows[3]['test_accuracy']:.2f} |" in table


@pytest.mark.parametrize("seeds, match", [
    ([], "at least one"), ([0, 0], "each seed once"), ([-1], "seeds=-1"),
    ([1.5], "seeds=1.5")])
def test_reproduce_seeds_refused(tmp_path, seeds, match):
    with pytest.raises(ValueError, match=match):
        reproduce(dataset="digits", recipe="recurrent",
                  output_dir=str(tmp_path), seeds=seeds)
    assert not list(tmp_path.iterdir())


def test_transformer_recipe_compares_four_mlp_activations():
    plan = experiment("transformer", "fashion_mnist")
    settings = [run.settings for run in plan.runs]
    assert plan.epsilons == (2.7,)
    assert {s["model"] for s in settings} == {"vit"}
    assert [s["activation"] for s in settings] == [
        "gelu", "relu", "tanh", "tempered_sigmoid"]
    assert (settings[3]["s"], settings[3]["T"], settings[3]["o"]) == (
        2.0, 1.0, 1.0)


def test_cifar10_scale_preset_is_de_et_al_s_setting():
    plan = experiment("scale", "cifar10")
    run = dict(plan.runs[0].settings)
    assert plan.epsilons == (1.0, 2.0, 4.0, 8.0)
    assert (run["model"], run["batch_size"], run["augmentation_multiplicity"],
            run["ema_decay"], run["momentum"]) == ("wrn16_4", 4096, 16,
                                                  0.9999, 0.0)


# A WRN-16-4 on 32x32x3 images: about a minute per stack. The same code
# path (augmentation multiplicity, physical batches, EMA, calibration to a
# target) is checked on digits by test_reproduce_scale_recipe_command and
# against per-example references in tests/privacy/test_engine_recipe.py.
@pytest.mark.slow
def test_cifar10_scale_preset_runs_on_cifar_shaped_data(tmp_path):
    """De et al.'s WRN-16-4 preset, as configured, for one tiny epoch on
    CIFAR-shaped data (real CIFAR-10 is not available offline)."""
    import numpy as np

    from keras_tempered_dp.training import train
    plan = experiment("scale", "cifar10")
    run = dict(plan.runs[0].settings)
    # Scaled down to seconds: 48 images, logical batch 16 in chunks of 4.
    run.update(batch_size=16, physical_batch_size=4,
               augmentation_multiplicity=2, epochs=1)
    rng = np.random.default_rng(0)
    data = ((rng.uniform(size=(48, 32, 32, 3)).astype("float32"),
             np.arange(48) % 10),
            (rng.uniform(size=(8, 32, 32, 3)).astype("float32"),
             np.arange(8) % 10))
    results = train(dataset="cifar10", target_epsilon=8.0, delta=1e-3,
                    output_dir=str(tmp_path), verbose=0, data=data, **run)
    assert results["config"]["model"] == "wrn16_4"
    assert 7.9 < results["epsilon"] <= 8.0


def test_train_help_lists_train_flags_only(capsys):
    status, out, _ = _main("train", "--help", capsys=capsys)
    assert status == 0
    for flag in ("--dataset", "--target_epsilon", "--noise_multiplier",
                 "--resume", "--change_privacy", "--augmentation_multiplicity",
                 "--clipping", "--ema_decay"):
        assert flag in out, flag
    assert "--max_trials" not in out and "--triples" not in out


def test_errors_are_one_message_without_traceback(tmp_path, capsys):
    from keras_tempered_dp.cli import main
    (tmp_path / "afile").write_text("x")
    cases = [
        (["--noise_multiplier=1", "--target_epsilon=2"],
         "noise_multiplier=1.0 and target_epsilon=2.0: give one or the other"),
        (["--batch_size=0"], "batch_size=0: must be >= 1"),
        (["--epochs=0"], "epochs=0: must be >= 1"),
        (["--delta=0"], "delta=0.0: must be in (0, 1)"),
        ([f"--output_dir={tmp_path / 'afile'}"], "is a file"),
    ]
    for flags, message in cases:
        status = main(["train", *flags, f"--output_dir={tmp_path / 'o'}"]
                      if not any("output_dir" in f for f in flags)
                      else ["train", *flags])
        err = capsys.readouterr().err
        assert status == 2, flags
        assert message in err, (flags, err)
        assert "Traceback" not in err
        assert not (tmp_path / "o").exists()


def test_unknown_flag_and_bad_choice_are_usage_errors(tmp_path, capsys):
    status, _, err = _main("train", "--epoch=2",
                           f"--output_dir={tmp_path / 'o'}", capsys=capsys)
    assert status == 2 and "unrecognized arguments: --epoch=2" in err
    assert "Traceback" not in err
    status, _, err = _main("train", "--model=resnet",
                           f"--output_dir={tmp_path / 'o'}", capsys=capsys)
    assert status == 2 and "model='resnet': must be one of" in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


def test_offline_download_fails_fast_and_leaves_nothing(tmp_path, capsys):
    import time
    start = time.time()
    status, _, err = _main("train", "--dataset=mnist",
                           f"--data_dir={tmp_path / 'tfds'}",
                           f"--output_dir={tmp_path / 'out'}", capsys=capsys)
    assert status == 2
    assert "No network is reachable" in err or "download failed" in err
    assert "Traceback" not in err
    assert time.time() - start < 120
    assert not (tmp_path / "tfds").exists()
    assert not (tmp_path / "out").exists()


def test_reproduce_scatternet_recipe_command(tmp_path):
    """The ScatterNet table on digits: four rows at one epsilon, features
    computed by the first ScatterNet row and reused by the next."""
    out = _cli("reproduce", "--recipe=scatternet", "--dataset=digits",
               "--epochs=2", "--output_dir=out", "--verbose=0", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    folder = tmp_path / "out" / "digits_scatternet"
    rows = json.loads((folder / "rows.json").read_text())
    assert [r["run"] for r in rows] == [
        "ScatterNet + linear", "ScatterNet + CNN, tanh",
        "ScatterNet + CNN, ReLU", "end-to-end CNN, tanh"]
    assert [r["settings"].get("model") for r in rows] == [
        "scatternet_linear", "scatternet_cnn", "scatternet_cnn", None]
    assert all(2.9 < r["epsilon"] <= 3.0 for r in rows)
    assert rows[0]["feature_time_s"] > rows[1]["feature_time_s"]  # reused
    assert rows[3]["feature_time_s"] is None
    assert "of which features (s)" in (folder / "table.md").read_text()


def test_train_and_reproduce_take_scatternet_models(tmp_path, capsys):
    out = _cli("train", "--model=scatternet_cnn", "--activation=tanh",
               "--epochs=1", "--output_dir=run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["config"]["model"] == "scatternet_cnn"
    assert results["feature_time_s"] > 0
    status, _, err = _main("reproduce", "--model=scatternet_cnn",
                           "--epochs=1", "--activations=tanh",
                           f"--output_dir={tmp_path / 'out'}", "--verbose=0",
                           capsys=capsys)
    assert status == 0, err[-2000:]
    rows = json.loads((tmp_path / "out" / "digits_scatternet_cnn" /
                       "rows.json").read_text())
    assert rows[0]["settings"]["model"] == "scatternet_cnn"
    status, _, err = _main("reproduce", "--model=scatternet_linear",
                           f"--output_dir={tmp_path / 'x'}", capsys=capsys)
    assert status == 2 and "has no activation" in err
    assert not (tmp_path / "x").exists()


def test_tune_refuses_bad_flags_before_any_trial(tmp_path, capsys,
                                                 monkeypatch):
    import keras_tuner

    from keras_tempered_dp.cli import main

    from keras_tempered_dp.tuning.trials import TrialTuner

    def refuse(self, *args, **kwargs):  # --max_trials=0 ran without end
        raise AssertionError("a trial ran")
    monkeypatch.setattr(TrialTuner, "search", refuse)
    monkeypatch.setattr(keras_tuner.RandomSearch, "search", refuse)
    npz = tmp_path / "public.npz"
    np.savez(npz, x=np.zeros((4, 8, 8, 1)))
    cases = [
        (["--delta=0"], "delta=0.0: must be in (0, 1)"),
        (["--private", "--max_trials=3"], "max_trials=3 with private=True"),
        (["--private", "--trials_mean=1"], "trials_mean=1.0: must be > 1"),
        (["--private", "--score_noise=0"], "score_noise=0.0: must be > 0"),
        (["--private", "--accountant=pld"], "accountant='pld' with"),
        (["--public_validation=nothing.npz"],
         "public_validation='nothing.npz': no such file"),
        ([f"--public_validation={npz}"], f"public_validation={str(npz)!r}: "
         "not an .npz file with arrays x and y"),
        (["--learning_rate_range=3,1"],
         "learning_rate_range=(3.0, 1.0): low must be below high"),
        (["--batch_size=5000"], "batch_size=5000: larger than the"),
        (["--delta=0.01"], "delta=0.01: must be below 1/N"),
        (["--epochs=0"], "epochs=0: must be >= 1"),
        (["--max_trials=0"], "max_trials=0: must be >= 1"),
        (["--max_trials=-1"], "max_trials=-1: must be >= 1"),
        (["--batch_size=0"], "batch_size=0: must be >= 1"),
        (["--target_epsilon=-1"], "target_epsilon=-1.0: must be > 0"),
    ]
    for flags, message in cases:
        status = main(["tune", *flags, f"--output_dir={tmp_path / 'o'}"])
        captured = capsys.readouterr()
        assert status == 2, flags
        assert f"keras-tempered-dp tune: error: {message}" in captured.err, (
            flags, captured.err)
        assert "Traceback" not in captured.err and "best" not in captured.out
        assert not (tmp_path / "o").exists()


def test_tune_max_trials_zero_exits_2_from_the_console_script(tmp_path):
    out = _cli("tune", "--max_trials=0", f"--output_dir={tmp_path / 'o'}",
               cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "max_trials=0: must be >= 1" in out.stderr
    assert not (tmp_path / "o").exists()
