"""One traversal of a model: every nested layer, and the units the engine clips.

:func:`walk_layers` visits every layer nested anywhere in a model (nested
models, custom layers holding sublayers as attributes, KerasHub blocks),
each once; the refusals (:mod:`.checks`) use it. :func:`clip_units` walks
the same tree and yields the *clip units*: the layers whose per-example
gradients the engine computes from one layer's recorded inputs and output
gradients. For each layer, top down:

1. a layer whose class has a registered norm function is a unit (its norm
   function knows the whole layer; the descent stops);
2. a layer that loops over its sublayers (``RNN``: its cell, once per time
   step; ``Bidirectional``; ``TimeDistributed``) is a unit as a whole: its
   sublayers' calls happen inside a loop the engine cannot reach;
3. a layer that holds trainable weights itself (made with ``add_weight``
   or assigned to an attribute, even another layer's), or has no
   sublayers, is a unit, its sublayers included;
4. otherwise (``MultiHeadAttention``, a KerasHub ``TransformerEncoder``, a
   nested model) the traversal descends into its sublayers.

A layer without weights the model trains anywhere below it is no unit. Every
trainable variable of the model must belong to exactly one unit: the
engine's per-example gradient of a unit covers its weights only.
"""

import keras

# Layers that call their sublayers in a loop (or a vectorized map): units
# as a whole, rule 2. Bidirectional is no Wrapper in Keras 3.
_LOOPING = tuple(cls for cls in (
    keras.layers.RNN, keras.layers.Bidirectional,
    keras.layers.TimeDistributed, getattr(keras.layers, "Wrapper", None))
    if cls is not None)


def sublayers(layer):
    """``layer``'s direct sublayers, as Keras tracks them (attributes,
    lists and dicts of attributes, a model's layers), Input layers left
    out."""
    # _flatten_layers is how Keras itself finds a layer's sublayers
    # (weights, training flags): tracked attributes, not only .layers.
    return [child for child in layer._flatten_layers(include_self=False,
                                                     recursive=False)
            if not isinstance(child, keras.layers.InputLayer)]


def walk_layers(layer, prefix=""):
    """Yields ``(path, sublayer)`` for every layer nested anywhere in
    ``layer``: in nested models and in custom layers that hold sublayers as
    attributes (or in lists and dicts of attributes), each once.

    Example:

    >>> model = keras.Sequential([keras.Input((2,)),
    ...                              keras.layers.Dense(1, name="d")],
    ...                             name="m")
    >>> [path for path, _ in walk_layers(model)]
    ['d']
    """
    seen = set()

    def walk(parent, prefix):
        for child in sublayers(parent):
            if id(child) in seen:
                continue
            seen.add(id(child))
            path = f"{prefix}{child.name}"
            yield path, child
            yield from walk(child, path + "/")

    yield from walk(layer, prefix)


def own_trainable_weights(layer):
    """The trainable weights ``layer`` holds itself (made with add_weight
    or assigned to one of its attributes), whether or not a sublayer holds
    them too: a layer that uses another layer's kernel owns it as well."""
    # Keras 3 tracks them in _trainable_variables, Keras 2 in
    # _trainable_weights; neither has a public name for "not through a
    # sublayer".
    own = getattr(layer, "_trainable_variables", None)
    if own is None:
        own = getattr(layer, "_trainable_weights", [])
    trainable = {id(w) for w in layer.trainable_weights}
    return [w for w in own if id(w) in trainable]


def clip_units(model):
    """The clip units of ``model`` (rules in the module docstring), each
    once, in traversal order.

    Example: attention is clipped through its four projections.

    >>> inputs = keras.Input((4, 8))
    >>> attention = keras.layers.MultiHeadAttention(2, 4, name="mha")
    >>> model = keras.Model(inputs, attention(inputs, inputs))
    >>> [unit.name for unit in clip_units(model)]
    ['query', 'key', 'value', 'attention_output']
    """
    # Imported here: the registry's package imports the engine, whose taps
    # import this module.
    from keras_tempered_dp.privacy.clipping.core.registry import has_norm_fn
    seen = set()
    # What the model trains: Keras 3 trains a trainable variable under a
    # layer set trainable=False (KerasHub's enable_lora freezes every layer,
    # then unfreezes the adapted ones, leaving their parents frozen), whose
    # own trainable_weights are then empty.
    trained = {id(w) for w in model.trainable_weights}

    def units(layer):
        if id(layer) in seen or not any(id(w) in trained
                                        for w in layer.weights):
            return
        seen.add(id(layer))
        children = sublayers(layer)
        if (has_norm_fn(layer)
                or isinstance(layer, _LOOPING) or not children
                or own_trainable_weights(layer)):
            yield layer
            return
        for child in children:
            yield from units(child)

    for child in sublayers(model):
        yield from units(child)
