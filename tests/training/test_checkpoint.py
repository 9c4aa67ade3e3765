"""Checkpoints: swapped in whole, found after an interrupted swap, removed
whole, and the ledger written before the logs."""

import json
import shutil

import pytest

from keras_tempered_dp.training import checkpoint as ckpt
from keras_tempered_dp.training import train
from tests.training.support import run_args


def _args(tmp_path, **kwargs):
    return run_args(tmp_path, **kwargs)


def test_interrupted_swap_resumes_from_the_complete_write(tmp_path):
    train(**_args(tmp_path, epochs=2))
    folder = tmp_path / "run" / "checkpoint"
    # As if the swap stopped after "checkpoint -> .old": the fresh write
    # (state.json written last) is complete and newer than .old.
    shutil.copytree(folder, str(folder) + ".writing")
    state = json.loads((folder / "state.json").read_text())
    older = dict(state, epochs_done=1, ledger=state["ledger"][:1])
    (folder / "state.json").write_text(json.dumps(older))
    folder.rename(str(folder) + ".old")
    found = ckpt.load(str(tmp_path / "run"))
    assert found.epochs_done == 2 and found.folder.endswith(".writing")


def test_overwrite_removes_every_checkpoint_folder(tmp_path):
    train(**_args(tmp_path))
    folder = tmp_path / "run" / "checkpoint"
    folder.rename(str(folder) + ".old")  # only the replaced one is left
    with pytest.raises(ckpt.CheckpointError, match="--overwrite"):
        train(**_args(tmp_path))
    train(**_args(tmp_path, overwrite=True))
    assert not (tmp_path / "run" / "checkpoint.old").exists()
    assert ckpt.load(str(tmp_path / "run")).epochs_done == 1


def test_log_rows_never_outnumber_the_ledger(tmp_path):
    """A crash after an epoch's checkpoint leaves at most that many log
    rows; rows of epochs after the checkpoint are dropped on resume."""
    train(**_args(tmp_path, epochs=2))
    run = tmp_path / "run"
    log = run / "log.csv"
    rows = log.read_text().splitlines()
    log.write_text("\n".join(rows + [rows[-1]]) + "\n")  # a stray row
    state = run / "checkpoint" / "state.json"
    saved = json.loads(state.read_text())
    state.write_text(json.dumps(dict(saved, epochs_done=1,
                                     ledger=saved["ledger"][:1])))
    resumed = train(**_args(tmp_path, epochs=2, resume=True))
    assert [round(e["epoch"]) for e in resumed["epochs"]] == [0, 1]
    assert len(resumed["ledger"]) == 2


def test_ema_turned_on_at_resume_is_refused(tmp_path):
    train(**_args(tmp_path))
    with pytest.raises(ckpt.CheckpointError, match="ema_decay"):
        train(**_args(tmp_path, epochs=2, resume=True, ema_decay=0.9))


def test_leaving_quantile_clipping_uses_the_new_clip(tmp_path):
    import keras_tempered_dp.training.run as run_module
    from keras_tempered_dp.privacy.state import get_dp_state
    train(**_args(tmp_path, clipping="quantile", l2_norm_clip=1000.0))
    seen = []
    original = run_module._fit

    def spy(config, part, built, *args):
        seen.append(get_dp_state(built.network).engine.l2_norm_clip)
        return original(config, part, built, *args)

    run_module._fit = spy
    try:
        train(**_args(tmp_path, epochs=2, resume=True, change_privacy=True,
                      l2_norm_clip=0.5))
    finally:
        run_module._fit = original
    assert seen == [0.5]


def test_checkpoint_of_the_other_keras_is_a_clear_error(tmp_path):
    """Keras 2 (legacy stack) and Keras 3 checkpoints do not load on the
    other: the resume says so and leaves the checkpoint as it was."""
    import zipfile

    import keras
    train(**_args(tmp_path))
    path = tmp_path / "run" / "checkpoint" / "model.keras"
    other = "2.15.0" if keras.__version__.startswith("3.") else "3.15.1"
    with zipfile.ZipFile(path) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    members["metadata.json"] = json.dumps({"keras_version": other}).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    before = path.read_bytes()
    with pytest.raises(ckpt.CheckpointError,
                       match=f"written by Keras {other}.*resume it with the "
                             "stack that wrote it"):
        train(**_args(tmp_path, epochs=2, resume=True))
    assert path.read_bytes() == before
    assert ckpt.load(str(tmp_path / "run")).epochs_done == 1


def test_resume_continues_the_models_ledger_and_epsilon_is_its(tmp_path):
    from keras_tempered_dp import compute_epsilon, load_model, privacy_ledger
    first = train(**_args(tmp_path, epochs=1))
    state = json.loads(
        (tmp_path / "run" / "checkpoint" / "state.json").read_text())
    steps = first["ledger"][0]["steps"]
    assert state["privacy_ledger"]["segments"][0]["steps"] == steps
    resumed = train(**_args(tmp_path, epochs=3, resume=True))
    n, b = resumed["config"]["num_examples"], resumed["config"]["batch_size"]
    assert resumed["privacy_ledger"]["segments"] == [dict(
        num_examples=n, batch_size=b, steps=3 * steps, noise_multiplier=1.0,
        sampling="poisson", used_microbatching=False)]
    assert resumed["epsilon"] == pytest.approx(compute_epsilon(
        n, b, 1.0, steps=3 * steps, delta=resumed["config"]["delta"]),
        rel=1e-12)
    # The released model carries the same ledger.
    model = load_model(str(tmp_path / "run" / "model.keras"))
    assert privacy_ledger(model).steps == 3 * steps


@pytest.mark.parametrize("change, listed", [
    (dict(learning_rate=0.5), "learning_rate: 0.15 -> 0.5"),
    (dict(momentum=0.0), "momentum: 0.9 -> 0.0"),
])
def test_resume_with_other_optimizer_settings_is_refused(tmp_path, change,
                                                         listed):
    # The checkpoint restores its optimizer: new values would be recorded
    # in results.json but not used.
    first = dict(learning_rate=0.15, momentum=0.9)
    train(**_args(tmp_path, **first))
    with pytest.raises(ckpt.CheckpointError, match=listed):
        train(**_args(tmp_path, epochs=2, resume=True,
                      **dict(first, **change)))
