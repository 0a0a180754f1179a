"""The CIFAR augmentation, batched and stateless: pad, random crop, random flip."""

from __future__ import annotations

import tensorflow as tf

# The CIFAR recipe of He et al. 2016: zero-pad 4 pixels, random crop back, random flip.
_AUGMENT_PAD_PIXELS = 4


def cifar_augmenter(height: int, width: int):
    """Returns `augment(images [B, H, W, C], seed [2]) -> images`, per image random."""
    pad = _AUGMENT_PAD_PIXELS

    def augment(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        batch = tf.shape(images)[0]
        crop_seed, flip_seed = tf.unstack(tf.random.split(seed, 2))
        padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        # Top-left corner of each image's window in the padded image, 0..2*pad.
        corners = tf.random.stateless_uniform(
            [batch, 2], seed=crop_seed, minval=0, maxval=2 * pad + 1, dtype=tf.int32
        )
        rows = corners[:, :1] + tf.range(height)[tf.newaxis]  # [B, H]
        cols = corners[:, 1:] + tf.range(width)[tf.newaxis]  # [B, W]
        cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
        cropped = tf.gather(cropped, cols, axis=2, batch_dims=1)
        flip = tf.random.stateless_uniform([batch], seed=flip_seed) < 0.5
        return tf.where(
            flip[:, tf.newaxis, tf.newaxis, tf.newaxis],
            tf.reverse(cropped, axis=[2]),
            cropped,
        )

    return augment
