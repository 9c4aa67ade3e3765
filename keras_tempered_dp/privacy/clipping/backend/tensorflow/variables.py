"""Keras variables as TensorFlow sees them, on both stacks.

Keras 2's weights are ``tf.Variable``s. Keras 3's are ``keras.Variable``s
wrapping one (``.value``): ``tape.gradient`` and ``convert_to_tensor``
accept them, ``tape.watch`` does not, and their ``name`` is the bare weight
name ("kernel") where Keras 2 says "dense/kernel:0" (Keras 3 calls that
``path``).
"""

from keras_tempered_dp import stack


def tf_variables(weights):
    """The ``tf.Variable`` behind each weight, for ``tape.watch``."""
    if stack.KERAS_3:
        return [w.value for w in weights]
    return list(weights)


def variable_name(variable):
    """The weight's full name, for messages: "encoder/kernel" (Keras 3) or
    "encoder/kernel:0" (Keras 2)."""
    return getattr(variable, "path", None) or variable.name
