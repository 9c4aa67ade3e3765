"""The shared test of a Keras layer of the package.

A layer is described once by a :class:`LayerCase`; ``tests/test_layers.py``
runs every check below on every case:

* values against golden numbers per dtype (:func:`check_golden`),
* the layer's exact identities (the case's ``identities``),
* a float64 numerical-gradient check of the inputs and every weight
  (:func:`check_numerical_gradient`),
* get_config/from_config round trip compared as JSON, every constructor
  argument present in the config (:func:`check_config`),
* save and load (.keras and SavedModel) in a fresh process giving the same
  predictions (:func:`save_load_job`); on Keras 3, which saves models only
  as .keras, the SavedModel is ``model.export``'s inference SavedModel,
* training that continues after a .keras save and load in a fresh process
  as it would have without one (:func:`training_resumes_job`),

The fresh-process checks of a module run together (:func:`run_fresh_jobs`):
every case's files are written first, then one fresh process loads them all
(two on Keras 3, whose exported SavedModels load without the package), and
each test asserts its own case.
* a one-step fit, plain and DP-SGD, that changes the weights
  (:func:`check_one_step_fit`).
"""

import dataclasses
import inspect
import json
import textwrap
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from keras_tempered_dp.stack import KERAS_3


@dataclasses.dataclass
class LayerCase:
    """One layer under test.

    Attributes:
        name: the id pytest shows.
        cls: the layer class.
        kwargs: constructor arguments, none at its default where possible
            (each must come back from get_config with this value).
        input_shape: one example's shape.
        golden_input: a fixed batch of inputs (float64).
        golden: ``golden(dtype) -> expected outputs`` for ``golden_input``.
        tolerances: dtype name -> absolute tolerance of the golden check.
        set_weights: ``fn(layer)`` giving a built layer fixed weights for
            the golden check; None for layers without weights.
        identities: ``fn(rng)`` checks that hold exactly for the layer.
    """

    name: str
    cls: type
    kwargs: dict
    input_shape: tuple[int, ...]
    golden_input: np.ndarray
    golden: Callable[[str], np.ndarray]
    tolerances: dict[str, float]
    set_weights: Callable[[keras.layers.Layer], None] | None = None
    identities: list[Callable[[np.random.Generator], None]] = \
        dataclasses.field(default_factory=list)

    def make(self, **overrides):
        return self.cls(**dict(self.kwargs, **overrides))


def check_golden(case, dtype):
    layer = case.make(dtype=dtype)
    x = case.golden_input.astype(dtype)
    layer.build(x.shape)
    if case.set_weights is not None:
        case.set_weights(layer)
    y = layer(x)
    assert y.dtype == dtype
    np.testing.assert_allclose(np.asarray(y, "float64"), case.golden(dtype),
                               atol=case.tolerances[dtype], rtol=0)


def check_numerical_gradient(case, rng, directions=3, h=1e-5):
    """Autodiff against central differences of a random projection of the
    output, along random directions of the input and of every weight."""
    layer = case.make(dtype="float64")
    x = tf.Variable(rng.normal(size=(2,) + case.input_shape))
    layer.build(x.shape)
    weights = list(layer.trainable_weights)
    projection = tf.constant(rng.normal(size=layer(x).shape))

    def loss():
        return tf.reduce_sum(layer(x) * projection)

    with tf.GradientTape() as tape:
        value = loss()
    grads = tape.gradient(value, [x] + weights)
    for variable, grad in zip([x] + weights, grads):
        start = variable.numpy()
        for _ in range(directions):
            d = rng.normal(size=start.shape)
            variable.assign(start + h * d)
            up = float(loss())
            variable.assign(start - h * d)
            down = float(loss())
            variable.assign(start)
            numerical = (up - down) / (2 * h)
            analytic = float(np.sum(grad.numpy() * d))
            np.testing.assert_allclose(analytic, numerical, rtol=1e-6,
                                       atol=1e-8, err_msg=variable.name)


def constructor_arguments(cls):
    """The named arguments of ``cls`` and, when it forwards ``*args`` or
    ``**kwargs`` to a Keras parent other than Layer, of that parent."""
    names = []
    for klass in (cls, cls.__mro__[1]):
        if klass in (keras.layers.Layer, object):
            break
        params = inspect.signature(klass.__init__).parameters.values()
        names += [p.name for p in params if p.name != "self" and p.kind in (
            p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
                   for p in params):
            break
    return names


def check_config(case):
    layer = case.make(name="under_test")
    config = layer.get_config()
    for name in constructor_arguments(case.cls):
        assert name in config, f"constructor argument {name!r} not in config"
    for name, value in case.kwargs.items():
        got = config[name]
        if isinstance(got, dict):  # a serialized initializer, activation...
            continue
        assert json.loads(json.dumps(got)) == json.loads(
            json.dumps(list(value) if isinstance(value, tuple) else value)), \
            (name, got, value)
    clone = case.cls.from_config(json.loads(json.dumps(config)))
    assert json.dumps(clone.get_config(), sort_keys=True) == \
        json.dumps(config, sort_keys=True)
    serialized = keras.layers.serialize(layer)
    assert serialized["registered_name"] == \
        f"keras_tempered_dp>{case.cls.__name__}"
    again = keras.layers.deserialize(json.loads(json.dumps(serialized)))
    assert type(again) is case.cls
    assert json.dumps(again.get_config(), sort_keys=True) == \
        json.dumps(config, sort_keys=True)


def _model(case):
    return keras.Sequential([keras.Input(case.input_shape),
                                case.make(),
                                keras.layers.Flatten(),
                                keras.layers.Dense(2)])


def save_model(model, path, fmt):
    """Saves ``model`` as ``fmt`` ("keras" or "savedmodel") at ``path``.

    Keras 3's ``model.save`` writes only .keras (and .h5); its SavedModel is
    ``model.export``'s inference-only SavedModel, loaded with TensorFlow
    (see :func:`fresh_predict_code`).
    """
    if fmt == "savedmodel" and KERAS_3:
        model.export(str(path), verbose=False)
    else:
        model.save(str(path))


def fresh_predict_code(path, fmt, x_path, y_path):
    """Code for a fresh process that loads the model at ``path`` and saves
    its predictions on ``x_path`` to ``y_path``; it leaves ``model`` bound
    (None for an exported SavedModel, which holds no Keras model).

    Everything but Keras 3's exported SavedModel loads where the package is
    imported and nothing registered by hand; an exported SavedModel loads
    with TensorFlow alone, the package not even imported.
    """
    if fmt == "savedmodel" and KERAS_3:
        return f"""
            import numpy as np, tensorflow as tf
            serving = tf.saved_model.load({str(path)!r})
            x = tf.constant(np.load({str(x_path)!r}))
            np.save({str(y_path)!r}, serving.serve(x).numpy())
            model = None
        """
    return f"""
        import keras, numpy as np
        import keras_tempered_dp
        model = keras.models.load_model({str(path)!r})
        np.save({str(y_path)!r},
                model.predict(np.load({str(x_path)!r}), verbose=0))
    """


@dataclasses.dataclass
class FreshJob:
    """Code for a fresh process and the check of what it left behind.

    ``package_free`` jobs run where the package is not even imported (Keras
    3's exported SavedModel, which TensorFlow alone serves); the others
    import it and nothing registered by hand.
    """

    code: str
    verify: Callable[[], None]
    package_free: bool = False


def run_fresh_jobs(jobs, fresh_python):
    """Runs every job's code in fresh processes, one process for the
    package-free jobs and one for the rest (two instead of one per job: a
    TensorFlow start is 3-6 s on 2 cores), each job in its own namespace.

    Returns ``{name: None or the job's traceback}``; a test asserts its own
    job's entry and then calls its ``verify``.
    """
    failures = {}
    for package_free in (False, True):
        group = {name: job.code for name, job in jobs.items()
                 if job.package_free == package_free}
        if not group:
            continue
        out = fresh_python(f"""
            import json, traceback
            failures = {{}}
            for name, code in {group!r}.items():
                try:
                    exec(code, {{"__name__": "fresh_job"}})
                    failures[name] = None
                except BaseException:
                    failures[name] = traceback.format_exc()[-3000:]
            print("FRESH_JOBS" + json.dumps(failures))
        """)
        line = [line for line in out.splitlines()
                if line.startswith("FRESH_JOBS")][-1]
        failures.update(json.loads(line[len("FRESH_JOBS"):]))
    return failures


def check_fresh_job(jobs, failures, name):
    """The assertions of one job run by :func:`run_fresh_jobs`."""
    assert failures[name] is None, failures[name]
    jobs[name].verify()


def predict_job(model, x, fmt, folder, *, check="", exact=False):
    """``model`` saved as ``fmt`` in ``folder``, loaded in a fresh process
    (see :func:`fresh_predict_code`), which runs ``check`` with ``model``
    bound and predicts ``x``: the same predictions, equal where ``exact``,
    else to 1e-6."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ("model.keras" if fmt == "keras" else "saved_model")
    save_model(model, path, fmt)
    np.save(folder / "x.npy", x)
    expected = model.predict(x, verbose=0)
    code = textwrap.dedent(fresh_predict_code(
        path, fmt, folder / "x.npy", folder / "y.npy")) + \
        textwrap.dedent(check)

    def verify():
        got = np.load(folder / "y.npy")
        if exact:
            np.testing.assert_array_equal(got, expected)
        else:
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    return FreshJob(code, verify, package_free=is_package_free(fmt))


def save_load_job(case, fmt, folder, rng):
    """Saved as .keras or SavedModel, loaded in a fresh process: the same
    layer class (where the file holds Keras layers) and the same
    predictions."""
    x = rng.normal(size=(4,) + case.input_shape).astype("float32")
    return predict_job(_model(case), x, fmt, folder, check=f"""
        if model is not None:
            import keras_tempered_dp.layers as layers
            assert type(model.layers[0]).__name__ == {case.cls.__name__!r}
            if {fmt!r} == "keras":
                assert type(model.layers[0]) is layers.{case.cls.__name__}
    """)


def is_package_free(fmt):
    """Whether a saved ``fmt`` loads without the package (Keras 3's
    exported SavedModel; see :func:`fresh_predict_code`)."""
    return fmt == "savedmodel" and KERAS_3


def training_resumes_job(model, x, y, folder):
    """A model trained one epoch, saved as .keras and loaded in a fresh
    process predicts as before and trains on as it would have in this one.

    The optimizer (SGD with momentum) has state, so continuing the same way
    needs the optimizer's variables and step count restored, not only the
    weights. Batches come in a fixed order (no shuffling, no dropout), so
    both continuations see the same steps.
    """
    folder.mkdir(parents=True, exist_ok=True)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    fit = dict(batch_size=4, epochs=1, shuffle=False, verbose=0)
    model.fit(x, y, **fit)
    path = folder / "trained.keras"
    model.save(str(path))
    np.save(folder / "x.npy", x)
    np.save(folder / "y.npy", y)
    predictions = model.predict(x, verbose=0)
    model.fit(x, y, **fit)
    weights_after = [np.asarray(w) for w in model.get_weights()]
    code = textwrap.dedent(f"""
        import keras, numpy as np
        import keras_tempered_dp
        model = keras.models.load_model({str(path)!r})
        assert int(model.optimizer.iterations.numpy()) == {len(x) // 4}
        x, y = np.load({str(folder / 'x.npy')!r}), \
            np.load({str(folder / 'y.npy')!r})
        np.save({str(folder / 'predictions.npy')!r},
                model.predict(x, verbose=0))
        history = model.fit(x, y, batch_size=4, epochs=1, shuffle=False,
                            verbose=0)
        assert np.isfinite(history.history["loss"][0])
        np.savez({str(folder / 'weights.npz')!r},
                 *[np.asarray(w) for w in model.get_weights()])
    """)

    def verify():
        np.testing.assert_allclose(np.load(folder / "predictions.npy"),
                                   predictions, rtol=1e-6, atol=1e-6)
        with np.load(folder / "weights.npz") as resumed:
            weights = [resumed[f"arr_{i}"] for i in range(len(resumed.files))]
        assert len(weights) == len(weights_after)
        for got, expected in zip(weights, weights_after):
            np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    return FreshJob(code, verify)


def check_one_step_fit(case, private, rng):
    """One step of fit (plain SGD or the package's DP-SGD) changes the
    model's weights, the layer's own included."""
    from keras_tempered_dp.privacy.compile import compile_dp
    model = _model(case)
    if private:
        compile_dp(model, l2_norm_clip=1.0, noise_multiplier=0.5,
                   learning_rate=0.5)
    else:
        model.compile(optimizer=keras.optimizers.SGD(0.5),
                      loss=keras.losses.SparseCategoricalCrossentropy(
                          from_logits=True))
    before = [w.numpy().copy() for w in model.trainable_weights]
    x = rng.normal(size=(8,) + case.input_shape).astype("float32")
    history = model.fit(x, rng.integers(0, 2, 8), batch_size=8, epochs=1,
                        verbose=0)
    assert np.isfinite(history.history["loss"][0])
    for w, old in zip(model.trainable_weights, before):
        assert np.abs(w.numpy() - old).max() > 0, f"{w.name} did not move"
