"""The README tells the truth: its Python examples run as written."""

import pathlib
import re
from keras_tempered_dp.privacy.state import get_dp_state

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_the_design_usage():
    text = README.read_text()
    assert "model.add(TemperedSigmoid(s=2, T=2, o=1))" in text
    assert "DPKerasSGDOptimizer(" in text and "python -m pytest" in text


def test_readme_python_blocks_run():
    blocks = _blocks()
    namespace = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)  # noqa: S102
    logs = namespace["model"].history.history
    # The README prints "epsilon: 4.89" and "accuracy: 0.85" for this run.
    assert round(logs["epsilon"][-1], 2) == 4.89
    assert logs["accuracy"][-1] > 0.6
    for block in blocks[1:]:
        exec(compile(block, str(README), "exec"), namespace)  # noqa: S102
    assert namespace["model"].count_params() == 26010


def test_recipe_doc_python_blocks_run():
    doc = README.parent / "docs" / "recipe.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)
    assert len(blocks) == 2
    namespace = {}
    exec(compile(blocks[0], str(doc), "exec"), namespace)  # noqa: S102
    assert get_dp_state(namespace["model"]).engine.augmentation_multiplicity == 16
    exec(compile(blocks[1], str(doc), "exec"), namespace)  # noqa: S102
    assert get_dp_state(namespace["model"]).engine.clipping == "normalize"
    assert namespace["schedule"].sigma0 > 0
