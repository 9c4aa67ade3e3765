"""Refusals that protect the privacy guarantee, each explaining why."""

import importlib

import keras

from keras_tempered_dp import stack
from keras_tempered_dp.privacy.traversal import walk_layers

# Layers whose training-mode output for one example depends on the others.
# Keras 3 has one BatchNormalization (synchronized=True included). Keras
# 2.15's BatchNormalization, its v1 class and SyncBatchNormalization all
# derive from BatchNormalizationBase; the public classes are listed too in
# case a Keras build moves the base.
_BATCH_MIXING = (keras.layers.BatchNormalization,)
_SYNC = getattr(getattr(keras.layers, "experimental", None),
                "SyncBatchNormalization", None)
if _SYNC is not None:  # Keras 2 only
    _BATCH_MIXING += (_SYNC,)
for _module, _name in (
        ("keras.src.layers.normalization.batch_normalization",
         "BatchNormalizationBase"),
        # Keras 2.15 keeps the v1 layer in a separate class.
        ("keras.src.layers.normalization.batch_normalization_v1",
         "BatchNormalization")):
    try:
        _BATCH_MIXING += (getattr(importlib.import_module(_module), _name),)
    except (ImportError, AttributeError):  # depends on the Keras build
        pass


def check_no_batch_mixing(model):
    """Raises if ``model`` has a layer that mixes examples of a batch.

    Every BatchNormalization variant (v1, v2, SyncBatchNormalization, any
    subclass) is found wherever it is nested: in nested models and inside
    custom layers that hold it as an attribute.

    Raises:
        ValueError: naming the layer and its path, saying why it breaks the
            guarantee and what to use instead.
    """
    for path, layer in walk_layers(model):
        if isinstance(layer, _BATCH_MIXING):
            raise ValueError(
                f"Layer {layer.name!r} ({type(layer).__name__}, at "
                f"{model.name}/{path}) cannot be trained with DP-SGD. Batch "
                "normalization normalizes each example with the mean and "
                "variance of the whole batch, so one example's data reaches "
                "every other example's output and every other example's "
                "gradient; clipping each example's gradient then no longer "
                "bounds that example's influence, and the privacy guarantee "
                "does not hold. Use keras.layers.GroupNormalization or "
                "LayerNormalization (per-example statistics) instead, or no "
                "normalization, as in the paper's models."
            )


def check_microbatches(num_microbatches, batch_size=None, num_examples=None):
    """Checks that ``num_microbatches`` divides every batch of an epoch.

    TF Privacy reshapes each batch into ``num_microbatches`` equal parts, so
    it fails (deep inside a reshape) on the first batch it does not divide,
    often the last, partial batch of the epoch.

    Raises:
        ValueError: naming the sizes and suggesting sizes that work.
    """
    if num_microbatches is None:
        return
    if batch_size is not None and batch_size % num_microbatches:
        raise ValueError(
            f"num_microbatches={num_microbatches} does not divide "
            f"batch_size={batch_size}. Choose a batch size that is a multiple "
            "of num_microbatches, or num_microbatches=None for per-example "
            "clipping."
        )
    if batch_size is not None and num_examples is not None:
        last = num_examples % batch_size
        if last and last % num_microbatches:
            raise ValueError(
                f"The last batch of each epoch holds {last} examples "
                f"({num_examples} examples, batch_size={batch_size}), which "
                f"num_microbatches={num_microbatches} does not divide. Drop "
                "the remainder (e.g. dataset.batch(batch_size, "
                f"drop_remainder=True), or use the first "
                f"{num_examples - last} examples), or pick a batch size that "
                f"divides {num_examples}."
            )


_REGULARIZERS = ("kernel_regularizer", "bias_regularizer",
                 "activity_regularizer", "embeddings_regularizer",
                 "depthwise_regularizer", "pointwise_regularizer",
                 "recurrent_regularizer", "beta_regularizer",
                 "gamma_regularizer")


def check_no_regularizers(model):
    """Raises if ``model`` adds losses that are not per-example losses.

    A regularizer's loss (``kernel_regularizer=``, ``activity_regularizer=``
    or ``add_loss``) is added once to the batch's loss: it is no example's
    own, so per-example clipping cannot bound it, and TF Privacy's
    optimizers fail on it in the middle of a step.

    Raises:
        ValueError: naming the layer and the regularizer.
    """
    for path, layer in walk_layers(model):
        found = [a for a in _REGULARIZERS if getattr(layer, a, None)]
        if found:
            raise ValueError(
                f"Layer {path!r} ({type(layer).__name__}) has "
                f"{', '.join(found)}. DP-SGD clips each example's own "
                "gradient; a regularizer's loss belongs to no example and "
                "would escape the clipping. Remove it: use the optimizer's "
                "weight decay (e.g. keras.optimizers.SGD(weight_decay=...)"
                " with make_private) instead of an L2 kernel regularizer.")
    if getattr(model, "built", False) and model.losses:
        raise ValueError(
            "The model adds losses of its own (add_loss): they belong to no "
            "example, so per-example clipping cannot bound them. Remove "
            "them, or fold them into the per-example loss.")


def check_float32(model):
    """Raises if ``model`` computes in float16 or bfloat16 (mixed precision).

    The clip factors, the norms and the noise are computed in the layers'
    dtype. In float16 a per-example norm above 65504 overflows to inf, so
    its clip factor is 0 or NaN, and the Gaussian noise is rounded to a
    coarse grid; neither matches the mechanism the accountant assumes.

    Raises:
        ValueError: naming the layer and its dtype.
    """
    for path, layer in walk_layers(model):
        dtype = getattr(layer, "compute_dtype", None)
        name = getattr(dtype, "name", dtype)  # a string on both stacks
        if name in ("float16", "bfloat16"):
            raise ValueError(
                f"Layer {path!r} computes in {name} "
                "(mixed precision). DP-SGD's norms, clip factors and noise "
                "need float32: in 16 bits large norms overflow and the "
                "noise is rounded. Build the model under "
                "keras.mixed_precision.set_global_policy('float32').")


def check_dp_trainable(model):
    """Every refusal that a DP training entry point applies to a model: a
    Keras backend without an engine (PyTorch), batch-mixing layers,
    regularizers and 16-bit computation."""
    stack.require_engine_backend("DP-SGD training (compile_dp, "
                                 "make_private, the clipping engine)")
    check_no_batch_mixing(model)
    check_no_regularizers(model)
    check_float32(model)
