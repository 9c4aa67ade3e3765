"""The README tells the truth: its Python examples run as written."""

import pathlib
import re

import pytest

from keras_tempered_dp.privacy.accounting import compute_epsilon
from keras_tempered_dp.privacy.state import get_dp_state
from keras_tempered_dp.stack import tf_privacy_available

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)


def test_readme_numbers_in_comments_are_what_the_code_returns():
    """``expression  # 2.600`` lines: the expression evaluates to that."""
    import keras_tempered_dp
    lines = [line for block in _blocks() for line in block.splitlines()
             if re.match(r"^(compute_epsilon|calibrate_noise_multiplier)\(",
                         line)]
    assert len(lines) == 3
    for line in lines:
        code, comment = line.split("#", 1)
        value = eval(code, vars(keras_tempered_dp))
        claimed = re.search(r"[0-9.]+", comment)
        if claimed:
            digits = len(claimed.group().split(".")[1])
            assert round(value, digits) == float(claimed.group()), line


def test_readme_install_and_test_commands_are_what_ci_runs():
    """Both stacks' test lines in the README are what .ci/run does."""
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    for extras, stack in (("test,jax,hub", "current"),
                          ("tf-privacy,test", "legacy")):
        assert f'pip install -e ".[{extras}]" && python -m pytest' in text
        assert re.search(rf"run_stack {stack} 3\.1[123] {extras} ", ci)
    assert 'pip install --quiet -e ".[$extras]"' in ci
    # The README's command; --durations only adds a report of the time.
    assert "python -m pytest --durations=30\n" in ci


def test_readme_quickstart_runs_and_prints_its_epsilon():
    """The engine quickstart: epsilon as claimed in its last comment (the
    two values differ by dp_accounting release; docs/sharp_edges.md)."""
    namespace = {}
    exec(compile(_blocks()[0], str(README), "exec"), namespace)  # noqa: S102
    logs = namespace["model"].history.history
    claimed = re.findall(r"epsilon: ([0-9.]+)", _blocks()[0])
    assert round(logs["epsilon"][-1], 4) in [float(c) for c in claimed]
    assert logs["epsilon"][-1] == pytest.approx(
        compute_epsilon(1400, 56, 1.0, epochs=15, delta=1e-4), rel=1e-6)
    assert logs["accuracy"][-1] > 0.6


@pytest.mark.skipif(
    not tf_privacy_available(),
    reason="the README's second example compiles with TF Privacy's "
           "DPKerasSGDOptimizer, which runs only on the legacy stack "
           "(TensorFlow 2.15, Keras 2)")
def test_readme_tf_privacy_block_runs():
    namespace = {}
    exec(compile(_blocks()[0].split("compile_dp(model")[0], str(README),
                 "exec"), namespace)  # noqa: S102
    exec(compile(_blocks()[1], str(README), "exec"), namespace)  # noqa: S102
    logs = namespace["model"].history.history
    # The README prints "epsilon: 4.8945" and "accuracy: 0.85" for this run.
    claimed = re.search(r"epsilon: ([0-9.]+)", _blocks()[1]).group(1)
    assert round(logs["epsilon"][-1], 4) == float(claimed)
    assert logs["accuracy"][-1] > 0.6


def test_recipe_doc_python_blocks_run():
    doc = README.parent / "docs" / "recipe.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), re.DOTALL)
    assert len(blocks) == 2
    namespace = {}
    exec(compile(blocks[0], str(doc), "exec"), namespace)  # noqa: S102
    assert get_dp_state(namespace["model"]).engine.augmentation_multiplicity == 16
    exec(compile(blocks[1], str(doc), "exec"), namespace)  # noqa: S102
    assert get_dp_state(namespace["model"]).engine.clipping == "normalize"
    assert namespace["schedule"].sigma0 > 0


def test_scatternet_doc_python_block_runs():
    doc = README.parent / "docs" / "scatternet.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), re.DOTALL)
    assert len(blocks) == 1
    namespace = {}
    exec(compile(blocks[0], str(doc), "exec"), namespace)  # noqa: S102
    model, head = namespace["model"], namespace["head"]
    assert model.input_shape == (None, 8, 8, 1)
    assert model.layers[0].name == "scattering"
    logs = head.history.history
    assert 0 < logs["epsilon"][-1] < 10
    x_test, y_test = namespace["x_test"], namespace["y_test"]
    accuracy = (model.predict(x_test, verbose=0).argmax(1) == y_test).mean()
    assert accuracy > 0.7, accuracy  # chance is 0.1; seen 0.88 and 0.92


def test_readme_bring_your_own_model_trains():
    """Attention and an LSTM with a tempered sigmoid, as the README
    shows: epsilon in the logs of both epochs."""
    block = [b for b in _blocks() if "MultiHeadAttention" in b]
    assert len(block) == 1
    namespace = {}
    exec(compile(block[0], str(README), "exec"), namespace)  # noqa: S102
    logs = namespace["model"].history.history
    assert len(logs["epsilon"]) == 2
    assert logs["epsilon"][-1] == pytest.approx(
        compute_epsilon(1400, 56, 1.0, epochs=2, delta=1e-4), rel=1e-6)

