"""The tensor operations the shared norm math is written in.

On Keras 3 they are ``keras.ops``, which run on TensorFlow (inside the
TensorFlow engine's ``tf.function``, batch size unknown) and on JAX
(inside the JAX engine's jitted step). Keras 2, the legacy stack TF
Privacy needs, has no ``keras.ops``: there the same names are TensorFlow's
operations with ``keras.ops``' signatures (:mod:`._keras2_ops`), for the
few the core uses. ``shape(x)`` gives each axis as an int where it is
static and as a scalar tensor where it is not (TensorFlow's unknown batch
size), as ``keras.ops.shape`` does.
"""

from keras_tempered_dp import stack

OPERATIONS = [  # what the core may use
    "any", "cast", "concatenate", "einsum", "equal", "expand_dims",
    "maximum", "mean", "moments", "ones", "pad", "reshape", "rsqrt", "shape",
    "square", "sum", "tensordot", "where",
]

if stack.KERAS_3:
    from keras import ops as _source
else:
    from . import _keras2_ops as _source

# One name per operation, bound once: ``ops.einsum`` is keras.ops.einsum
# on Keras 3 (no wrapper in the traced step), TensorFlow's on Keras 2.
globals().update({name: getattr(_source, name) for name in OPERATIONS})
