"""Which route a convolution's per-example norms take: a measured rule.

Both routes are exact; they differ in time and memory. Per example, with P
output positions, ``D_in = kh * kw * C_in`` and ``D_out = C_out`` (per
convolution group):

* ``"patches"`` writes the input patches, ``P * D_in`` values, then either
  materializes the gradient (``P * D_in * D_out`` multiply-adds as small
  batched matrix products) or takes the ghost norm (``P^2 * (D_in +
  D_out)``), whichever :func:`.outer_products.uses_ghost` finds cheaper;
* ``"filter"`` runs one grouped filter gradient with the examples in the
  channels (:mod:`.conv_filter`): the same ``P * D_in * D_out``
  multiply-adds, no patches, but at an efficiency that depends strongly on
  the channel counts.

Counting operations does not predict which is faster: on this package's
CPU (oneDNN, 2 cores) the grouped filter gradient is 1.2-3x faster than the
patches for stride-1 convolutions over many positions with 16 to 64 input
channels (the CIFAR-10 CNN's and WRN-16-4's 32x32 and 16x16 layers), and
2-15x slower for few channels, strides, 1x1 kernels, small images or 128+
channels. The rule below encodes those measurements
(``python benchmarks/conv_routes.py`` reruns them; docs/results/
clipping_speed.md has the table). On other hardware the balance may differ:
``FORCE`` overrides the rule for every layer.
"""

# None: the rule; "patches" or "filter": that route for every convolution
# (tests force each in turn; a benchmark on other hardware may too).
FORCE = None

# The region where the grouped filter gradient measured faster.
_MIN_POSITIONS = 256
_CHANNELS_IN = (16, 64)
_MAX_CHANNELS_OUT = 64


def route(layer, input_shape, output_shape):
    """``"patches"`` or ``"filter"`` for a Conv2D-like layer (channels_last)
    with these static input and output shapes.

    >>> import keras
    >>> route(keras.layers.Conv2D(32, 3, padding="same"), (None, 32, 32, 32),
    ...       (None, 32, 32, 32))
    'filter'
    >>> route(keras.layers.Conv2D(16, 8, strides=2), (None, 28, 28, 1),
    ...       (None, 11, 11, 16))
    'patches'
    """
    if FORCE is not None:
        return FORCE
    height, width = output_shape[1], output_shape[2]
    if height is None or width is None:
        return "patches"
    c_in = input_shape[-1] // layer.groups
    c_out = output_shape[-1] // layer.groups
    if (tuple(layer.strides) == (1, 1)
            and tuple(layer.kernel_size) != (1, 1)
            and height * width >= _MIN_POSITIONS
            and _CHANNELS_IN[0] <= c_in <= _CHANNELS_IN[1]
            and c_out <= _MAX_CHANNELS_OUT):
        return "filter"
    return "patches"
