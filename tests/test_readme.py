"""The README tells the truth: its Python examples run as written."""

import pathlib
import re

import pytest

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
    assert len(lines) == 2
    for line in lines:
        code, comment = line.split("#", 1)
        value = eval(code, vars(keras_tempered_dp))
        claimed = re.search(r"[0-9.]+", comment)
        if claimed:
            digits = len(claimed.group().split(".")[1])
            assert round(value, digits) == float(claimed.group()), line


def test_readme_install_and_test_commands_are_what_ci_runs():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    assert 'pip install -e ".[test]" && python -m pytest' in text
    assert 'pip install -e ".[test]"' in ci and "python -m pytest" in ci


@pytest.mark.skipif(
    not tf_privacy_available(),
    reason="the README's first example compiles with TF Privacy's "
           "DPKerasSGDOptimizer, which runs only on the legacy stack "
           "(TensorFlow 2.15, Keras 2)")
def test_readme_tf_privacy_block_runs():
    namespace = {}
    exec(compile(_blocks()[0], str(README), "exec"), namespace)  # noqa: S102
    logs = namespace["model"].history.history
    # The README prints "epsilon: 4.89" and "accuracy: 0.85" for this run.
    assert round(logs["epsilon"][-1], 2) == 4.89
    assert logs["accuracy"][-1] > 0.6


def test_readme_python_blocks_after_the_first_run():
    namespace = {}
    for block in _blocks()[1:]:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    assert namespace["model"].count_params() == 26010


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
