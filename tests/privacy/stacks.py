"""Skip markers for tests that make sense on one stack only."""

import pytest

from keras_tempered_dp import stack

needs_tf_privacy = pytest.mark.skipif(
    not stack.tf_privacy_available(),
    reason="TF Privacy runs only on the legacy stack (TensorFlow 2.15, "
           "Keras 2); this stack has none")

without_tf_privacy = pytest.mark.skipif(
    stack.tf_privacy_available(),
    reason="checks the error raised where TF Privacy is not installed")


def compiled(model):
    """Whether ``model.compile`` ran (Keras 3 sets ``optimizer`` only then;
    Keras 2 sets it to None at construction)."""
    return getattr(model, "optimizer", None) is not None
