"""The tempered-sigmoid math and the activation-name registry.

The tempered sigmoid of Papernot et al. (AAAI 2021, arXiv:2007.14191) is

    phi_{s,T,o}(x) = s * sigmoid(T * x) - o = s / (1 + exp(-T * x)) - o

with scale ``s``, inverse temperature ``T`` and offset ``o``. Its output lies
in ``(-o, s - o)`` and its slope is at most ``s * T / 4``, which keeps
activations and per-example gradient norms small under DP-SGD. ``(2, 2, 1)`` is
exactly ``tanh`` and ``(1, 1, 0)`` is the logistic sigmoid.

The registry maps names to activation functions and makes every registered
name usable wherever Keras takes an activation string, e.g.
``keras.layers.Conv2D(16, 3, activation="tempered_sigmoid")``. Models built
that way save and load once this module has been imported.

The math is written against :data:`ops`, Keras 3's backend-neutral
``keras.ops`` (TensorFlow, JAX or PyTorch tensors alike), or on Keras 2,
where ``keras.ops`` does not exist, the few TensorFlow functions of the
same names and meaning.
"""

import types

import keras

from keras_tempered_dp import stack
from keras_tempered_dp.validation import check_number

# Written into every saved model (as "keras_tempered_dp>name"): never rename.
PACKAGE = "keras_tempered_dp"


def _keras2_ops():
    """The part of ``keras.ops`` this package's layers use, in TensorFlow.

    Keras 2 runs only on TensorFlow and has no ``keras.ops``; these are the
    TensorFlow functions with the signatures and results of their Keras 3
    namesakes.
    """
    import tensorflow as tf

    def moments(x, axes, keepdims=False):
        return tf.nn.moments(x, axes=axes, keepdims=keepdims)

    return types.SimpleNamespace(
        cast=tf.cast, convert_to_tensor=tf.convert_to_tensor,
        expand_dims=tf.expand_dims, maximum=tf.maximum, moments=moments,
        rsqrt=tf.math.rsqrt, sigmoid=tf.math.sigmoid)


ops = keras.ops if stack.KERAS_3 else _keras2_ops()

__all__ = [
    "get_activation",
    "list_activations",
    "make_tempered_sigmoid",
    "register_activation",
    "tempered_sigmoid",
]


# Ends every refusal of s, T or o: what they mean and their usual values.
_PARAMETER_HINT = (
    "s is the output scale, T the inverse temperature (both > 0), o the "
    "offset; each a Python or NumPy scalar, not a tensor. The paper's "
    "default is s=2, T=2, o=1.")


def check_tempered_sigmoid_parameters(s, T, o):
    """Validates (s, T, o) and returns them as floats.

    Raises:
        ValueError: if ``s <= 0``, ``T <= 0`` or any argument is not finite;
            the message names the argument.
    """
    return (
        check_number("s", s, low=0, low_open=True, hint=_PARAMETER_HINT),
        check_number("T", T, low=0, low_open=True, hint=_PARAMETER_HINT),
        check_number("o", o, hint=_PARAMETER_HINT),
    )


# The dtypes the result keeps; anything else is refused, not converted.
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def _dtype_name(dtype):
    """``dtype`` (a TensorFlow, NumPy, JAX or torch dtype) as a string."""
    if stack.KERAS_3:
        return keras.backend.standardize_dtype(dtype)
    import tensorflow as tf
    return tf.as_dtype(dtype).name


def _check_float_input(x):
    """Raises a TypeError naming ``x`` unless its dtype is a float dtype.

    Integer and boolean inputs are refused rather than cast: cast to an
    integer, T=0.5 would become 0 and s, o would be truncated, and casting
    the input instead would pick a float dtype the caller never chose.
    """
    dtype = _dtype_name(x.dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"x has dtype {dtype}: the tempered sigmoid needs a float tensor "
            f"({', '.join(FLOAT_DTYPES)}). Cast it first, e.g. "
            "keras.ops.cast(x, \"float32\") (tf.cast on Keras 2); image "
            "pixels usually also want scaling to [0, 1]."
        )


def tempered_sigmoid(x, s=2.0, T=2.0, o=1.0):
    """Tempered sigmoid ``s * sigmoid(T * x) - o``, elementwise.

    Computed through the backend's sigmoid (``ops.sigmoid``), so values and
    gradients stay finite for any finite input (the sigmoid saturates
    instead of overflowing). Runs on any Keras 3 backend.

    The result has the dtype of ``x`` (s, T and o are cast to it): float16
    and bfloat16 stay half precision, float64 keeps its precision. A NumPy
    array or Python list is first converted by the backend, which on JAX
    (unless ``jax_enable_x64`` is set) turns float64 into float32.

    Args:
        x: a float tensor or array (float16, bfloat16, float32 or float64).
        s: output scale, > 0.
        T: inverse temperature, > 0.
        o: offset (any finite number).

    Returns:
        A tensor of the dtype and shape of ``x``.

    Raises:
        ValueError: if ``s <= 0``, ``T <= 0`` or an argument is not finite.
        TypeError: if ``x`` is not of a float dtype (an integer or boolean
            tensor, e.g. raw image pixels); cast it to a float dtype first.

    Example:

    >>> import numpy as np
    >>> y = tempered_sigmoid(np.array([0.0, 1.0], "float32"), s=2, T=2, o=1)
    >>> bool(abs(float(y[1]) - 0.7615942) < 1e-6)  # tanh(1)
    True
    >>> tempered_sigmoid(np.array([0.0], "float16")).dtype == np.float16
    True
    """
    s, T, o = check_tempered_sigmoid_parameters(s, T, o)
    x = ops.convert_to_tensor(x)
    _check_float_input(x)
    dtype = x.dtype
    # s, T and o are cast to x's dtype so that float16 inputs stay float16
    # (and float64 ones keep their precision).
    return (
        ops.cast(s, dtype) * ops.sigmoid(ops.cast(T, dtype) * x)
        - ops.cast(o, dtype)
    )


def make_tempered_sigmoid(s=2.0, T=2.0, o=1.0, name=None):
    """Returns a plain function ``x -> tempered_sigmoid(x, s, T, o)``.

    The function's ``__name__`` is ``name`` (by default
    ``tempered_sigmoid_s{s}_T{T}_o{o}``); register it with
    :func:`register_activation` under that name, and Keras saves models using
    it as ``"keras_tempered_dp>name"`` and loads them again wherever the
    registration ran.

    Example:

    >>> fn = make_tempered_sigmoid(s=3, T=1, o=1.5)
    >>> fn.__name__
    'tempered_sigmoid_s3_T1_o1.5'
    """
    s, T, o = check_tempered_sigmoid_parameters(s, T, o)

    def fn(x):
        return tempered_sigmoid(x, s=s, T=T, o=o)

    fn.__name__ = name or f"tempered_sigmoid_s{s:g}_T{T:g}_o{o:g}"
    fn.__qualname__ = fn.__name__
    fn.__doc__ = f"Tempered sigmoid with s={s:g}, T={T:g}, o={o:g}."
    fn.tempered_sigmoid_parameters = (s, T, o)
    return fn


_REGISTRY = {}


def register_activation(name, fn, force=False):
    """Registers ``fn`` under ``name`` for this package and for Keras.

    After registration ``get_activation(name)`` returns ``fn`` and Keras layers
    accept ``activation=name``. Keras stores ``"keras_tempered_dp>name"`` in
    saved models, so the registration must run again (import the module that
    does it) before such a model is loaded in a new process.

    Args:
        name: a non-empty string.
        fn: a callable taking and returning a tensor. A plain Python function
            is renamed to ``name`` so that Keras serializes it by that name;
            any other callable (a layer instance, a ``functools.partial``) is
            wrapped in such a function.
        force: replace an existing registration, or an activation Keras
            already knows by this name (built-in, like "softplus", or in
            Keras' custom objects), instead of raising.

    Returns:
        The registered function.

    Raises:
        ValueError: if the name is empty, ``fn`` is not callable, or the name
            is taken (here or by Keras) and ``force`` is False.

    Example:

    >>> fn = register_activation("ts_soft", make_tempered_sigmoid(2, 1, 1),
    ...                          force=True)
    >>> get_activation("ts_soft") is fn
    True
    """
    _check_registration(name, fn, force)
    fn = _as_named_function(name, fn)
    _REGISTRY[name] = fn
    _register_with_keras(name, fn)
    return fn


def _check_registration(name, fn, force):
    """Raises the ValueError :func:`register_activation` documents."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name={name!r}: must be a non-empty string.")
    if not callable(fn):
        raise ValueError(f"fn={fn!r}: must be callable (tensor -> tensor).")
    if name in _REGISTRY and not force:
        raise ValueError(
            f"name={name!r}: an activation is already registered under this "
            "name. Pass force=True to replace it, or choose another name."
        )
    if not force and _known_to_keras(name):
        raise ValueError(
            f"name={name!r}: Keras already knows an activation by this name; "
            "registering would replace it for every model in this process "
            "(and change what saved models mean). Choose another name, or "
            "pass force=True if replacing it is what you want."
        )


def _as_named_function(name, fn):
    """``fn`` if it is a plain function called ``name``; else a plain
    function of that name calling it, so that Keras serializes it by
    ``name``."""
    if hasattr(fn, "__code__") and getattr(fn, "__name__", None) == name:
        return fn
    inner = fn

    def fn(x):
        return inner(x)

    fn.__doc__ = getattr(inner, "__doc__", None)
    if hasattr(inner, "tempered_sigmoid_parameters"):
        fn.tempered_sigmoid_parameters = inner.tempered_sigmoid_parameters
    fn.__name__ = name
    fn.__qualname__ = name
    return fn


def _register_with_keras(name, fn):
    """Makes ``name`` an activation string of Keras and ``fn`` serializable.

    Three entries, each for a reason:

    * ``"keras_tempered_dp>name"`` through Keras' own
      ``register_keras_serializable``: Keras (2 and 3) then writes that
      qualified name into saved models and finds ``fn`` by it on loading, in
      any process that imported this module. The package prefix keeps the
      name from colliding with another library's function of the same name.
      A function someone registered under their own package keeps their
      name.
    * the bare ``name`` among the custom objects: Keras 2 resolves
      activation strings there, and Keras 3 finds there the functions of
      files that stored bare names (as this package did before).
    * the bare ``name`` in Keras 3's table of activation strings
      (:func:`_keras3_string_names`).
    """
    custom = keras.utils.get_custom_objects()
    qualified = f"{PACKAGE}>{name}"
    if keras.utils.get_registered_name(fn) == fn.__name__:  # unregistered
        # Keras 2 refuses to register a taken name: replacing is what
        # force=True asked for, so the old entry goes first.
        custom.pop(qualified, None)
        keras.utils.register_keras_serializable(package=PACKAGE,
                                                name=name)(fn)
    custom[name] = fn
    _keras3_string_names()[name] = fn


def _keras3_string_names():
    """The dict Keras 3 resolves activation *strings* in.

    Keras 2 looks strings up among the custom objects too; Keras 3's
    ``activations.get`` only in its own table of built-ins, so a name must
    be entered there to work as ``Dense(..., activation="name")``. A
    throwaway dict on Keras 2.
    """
    if not stack.KERAS_3:
        return {}
    from keras.src import activations as keras_activations
    return keras_activations.ALL_OBJECTS_DICT


def _known_to_keras(name):
    """True if Keras resolves ``name`` (a built-in or someone's custom
    object) to something this module did not register."""
    custom = keras.utils.get_custom_objects()
    if name in custom:
        # Ours from an earlier import of this module (e.g. a reload).
        return getattr(custom[name], "__module__", None) != __name__
    try:
        keras.activations.get(name)
    except (ValueError, TypeError):
        return False
    return True


def get_activation(identifier):
    """Resolves an activation given by name or as a callable.

    Args:
        identifier: a registered name (see :func:`list_activations`), or any
            callable (returned unchanged), e.g. a ``TemperedSigmoid`` layer.

    Returns:
        A callable.

    Raises:
        ValueError: for an unknown name; the message lists the known ones.

    Example:

    >>> get_activation("tempered_sigmoid").tempered_sigmoid_parameters
    (2.0, 2.0, 1.0)
    """
    if callable(identifier):
        return identifier
    if isinstance(identifier, str):
        if identifier in _REGISTRY:
            return _REGISTRY[identifier]
        raise ValueError(
            f"activation={identifier!r} is not a known activation. Known: "
            f"{', '.join(list_activations())}. Register your own with "
            "keras_tempered_dp.register_activation(name, fn)."
        )
    raise ValueError(
        f"activation={identifier!r}: expected a registered name or a "
        "callable."
    )


def list_activations():
    """Returns the registered activation names, sorted."""
    return sorted(_REGISTRY)


# Keras' own functions keep their Keras names, so models stay loadable
# without this package for these three.
_REGISTRY["relu"] = keras.activations.relu
_REGISTRY["tanh"] = keras.activations.tanh
_REGISTRY["sigmoid"] = keras.activations.sigmoid
_REGISTRY["gelu"] = keras.activations.gelu  # ViT's MLP activation
register_activation(
    "tempered_sigmoid", make_tempered_sigmoid(2.0, 2.0, 1.0, "tempered_sigmoid")
)
register_activation(
    "tempered_sigmoid_logistic",
    make_tempered_sigmoid(1.0, 1.0, 0.0, "tempered_sigmoid_logistic"),
)
