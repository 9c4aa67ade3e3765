"""Fixed features computed once: a ScatterNet model's front over a dataset.

A front (:func:`~keras_tempered_dp.models.split_fixed_front`: the
scattering, then layers without weights such as the group normalization)
depends on one image at a time and on nothing learned, so its output over
the training set is computed once, before DP-SGD, at no privacy cost; the
head then trains on it with the same sampling, clipping, noise and
accounting as any model.

The scattering is the expensive part (:func:`scatter`): the last one
computed is kept for the next run in
the same process on the same images (``reproduce``'s rows, repeats),
matched by the scattering layer's configuration and a hash of the images'
bytes; what follows it is cheap and always recomputed.
"""

import hashlib
import json
import time

import keras
import numpy as np
import tensorflow as tf

from keras_tempered_dp import stack

_LAST_SCATTERING = {}


def clear_feature_cache():
    """Frees the kept scattering (1.1 GB for Fashion-MNIST)."""
    _LAST_SCATTERING.clear()


def scatter(layer, images, chunk=64):
    """``layer(images)`` in chunks of ``chunk`` images, through XLA on the
    current stack.

    XLA fuses the transform's many elementwise steps around its FFTs: about
    twice the throughput of the layer's ordinary call on 2 CPU cores with
    TensorFlow 2.21, and small chunks keep its tensors in cache. TensorFlow
    2.15's XLA is 10 times slower than no XLA here (measured), so the legacy
    stack runs the ordinary graph. Every chunk has the same shape (the last
    is padded with zeros, then cut): one trace, one compilation.
    """
    run = tf.function(lambda batch: layer(batch),
                      jit_compile=stack.KERAS_3)
    out = []
    for start in range(0, len(images), chunk):
        batch = images[start:start + chunk]
        pad = chunk - len(batch)
        if pad:
            batch = np.concatenate(
                [batch, np.zeros((pad,) + batch.shape[1:], batch.dtype)])
        out.append(run(tf.constant(batch)).numpy()[:chunk - pad])
    return np.concatenate(out)


def precompute(front, x, x_test, verbose=0):
    """``(features of x, features of x_test, seconds)`` through ``front``.

    Example:

    >>> from keras_tempered_dp.models import scatternet_linear, split_fixed_front
    >>> front, _ = split_fixed_front(scatternet_linear(input_shape=(8, 8, 1)))
    >>> images = np.zeros((5, 8, 8, 1), "float32")
    >>> f, f_test, _ = precompute(front, images[:3], images[3:])
    >>> f.shape, f_test.shape
    ((3, 324), (2, 324))
    """
    began = time.time()
    images = np.concatenate([x, x_test])  # one call: one trace
    first, rest = front.layers[0], front.layers[1:]
    key = (json.dumps(first.get_config(), sort_keys=True, default=str),
           images.shape, str(images.dtype),
           hashlib.blake2b(np.ascontiguousarray(images).data).hexdigest())
    reused = key in _LAST_SCATTERING
    if not reused:
        _LAST_SCATTERING.clear()
        _LAST_SCATTERING[key] = scatter(first, images)
    features = _LAST_SCATTERING[key]
    if rest:
        features = keras.Sequential(
            [keras.Input(features.shape[1:])] + rest).predict(
                features, batch_size=4096, verbose=0)
    seconds = time.time() - began
    if verbose:
        print(f"Fixed features ({', '.join(l.name for l in front.layers)}) "
              f"of {len(images)} images, shape {features.shape[1:]}, in "
              f"{seconds:.1f} s"
              + (f" ({first.name} reused from the previous run)."
                 if reused else "."))
    return features[:len(x)], features[len(x):], seconds
