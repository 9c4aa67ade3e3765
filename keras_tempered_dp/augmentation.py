"""Data augmentation for augmentation multiplicity: random crops and flips.

De et al. (2022) average each example's gradient over K augmented copies
(random crop after padding, random horizontal flip) *before* clipping, so
the clipped quantity is still one example's contribution and epsilon does
not change (:class:`~keras_tempered_dp.privacy.clipping.ClippingEngine`,
``augmentation_multiplicity=``).
"""

from typing import Protocol

import keras
import tensorflow as tf

from keras_tempered_dp.validation import check_choice, check_number


class Augment(Protocol):
    """What ``augment=`` accepts: a function of a batch of images and a
    generator returning the augmented batch, same shape.

    It must treat images independently (one image's copy may not depend on
    another image) and draw its randomness from ``generator`` only.
    """

    def __call__(self, images: tf.Tensor,
                 generator: tf.random.Generator) -> tf.Tensor:
        ...


@keras.utils.register_keras_serializable(package="keras_tempered_dp")
class RandomCropFlip:
    """Pads images by ``padding`` pixels, crops back at a random offset,
    and flips left-right with probability 1/2; per image, vectorized.

    Args:
        padding: pixels added on every side before the crop, >= 0.
        flip: also flip horizontally at random.
        mode: ``tf.pad`` mode: "REFLECT" (De et al.), "CONSTANT" (zeros) or
            "SYMMETRIC".

    Example:

    >>> images = tf.reshape(tf.range(2 * 4 * 4, dtype=tf.float32),
    ...                     [2, 4, 4, 1])
    >>> out = RandomCropFlip(padding=1)(images,
    ...                                 tf.random.Generator.from_seed(0))
    >>> out.shape
    TensorShape([2, 4, 4, 1])
    """

    def __init__(self, padding=4, flip=True, mode="REFLECT"):
        padding = check_number(
            "padding", padding, low=0, integer=True,
            hint="It is the number of pixels added to each side before "
                 "the crop.")
        check_choice("mode", mode, ("REFLECT", "CONSTANT", "SYMMETRIC"),
                     hint="It is how the padding is filled (tf.pad's mode).")
        self.padding, self.flip, self.mode = padding, bool(flip), mode

    def __call__(self, images, generator):
        """``images`` ``[B, H, W, C]``; ``generator`` a tf.random.Generator."""
        p = self.padding
        batch = tf.shape(images)[0]
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        out = images
        if p:
            padded = tf.pad(images, [[0, 0], [p, p], [p, p], [0, 0]],
                            mode=self.mode)
            dy = generator.uniform([batch], 0, 2 * p + 1, dtype=tf.int32)
            dx = generator.uniform([batch], 0, 2 * p + 1, dtype=tf.int32)
            rows = dy[:, None] + tf.range(height)[None]
            cols = dx[:, None] + tf.range(width)[None]
            out = tf.gather(padded, rows, axis=1, batch_dims=1)
            out = tf.gather(out, cols, axis=2, batch_dims=1)
        if self.flip:
            flip = generator.uniform([batch]) < 0.5
            out = tf.where(flip[:, None, None, None], out[:, :, ::-1], out)
        return tf.ensure_shape(out, images.shape)

    def get_config(self):
        return {"padding": self.padding, "flip": self.flip,
                "mode": self.mode}

    def __repr__(self):
        return (f"RandomCropFlip(padding={self.padding}, flip={self.flip}, "
                f"mode={self.mode!r})")
