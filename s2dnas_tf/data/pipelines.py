"""`make_dataset`: arrays held in memory -> a batched, prefetched `tf.data.Dataset`.

Shuffled and augmented (`s2dnas_tf.data.augment`) on request.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from s2dnas_tf.data.augment import cifar_augmenter
from s2dnas_tf.data.config import is_int

try:  # TensorFlow has a public setter of op determinism but no public getter
    from tensorflow.python.framework.config import (
        is_op_determinism_enabled as _op_determinism_enabled,
    )
except ImportError:  # pragma: no cover - a TensorFlow without it

    def _op_determinism_enabled() -> bool:
        return False


def parallel_calls():
    """`num_parallel_calls` for a map: AUTOTUNE, or None (sequential) under TensorFlow's op
    determinism (a search's). tf.data would rewrite a parallel map into a sequential one then
    anyway, logging an error line per dataset (TF 2.21: "NodeDef mentions attribute
    use_unbounded_threadpool ..."); mapping sequentially ourselves computes the same."""
    return None if _op_determinism_enabled() else tf.data.AUTOTUNE


def check_batching(batch_size, seed) -> None:
    """Raises a ValueError unless `batch_size` is an int >= 1 and `seed` an int."""
    if not is_int(batch_size) or batch_size < 1:
        raise ValueError(
            "Expected `batch_size` to be an integer >= 1. "
            f"Received: batch_size={batch_size!r}"
        )
    if not is_int(seed):
        raise ValueError(f"Expected `seed` to be an integer. Received: seed={seed!r}")


def predict_dataset(x: np.ndarray, batch_size: int) -> tf.data.Dataset:
    """Batches of `x` (float32) for `Model.predict`, in order. `predict` on a numpy array
    builds Keras's own pipeline, whose parallel map tf.data rewrites under op determinism
    with an error line on the terminal (see `parallel_calls`); this one has no map."""
    images = np.asarray(x, np.float32)
    return tf.data.Dataset.from_tensor_slices(images).batch(batch_size).prefetch(
        tf.data.AUTOTUNE)


def make_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    training: bool,
    augment: bool = False,
    seed: int = 0,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Returns a batched, prefetched `tf.data.Dataset` of `(images, labels)`.

    Images stay raw (float32, the scale of `x`); see the normalisation rule of
    `s2dnas_tf.data`. Like Keras's own array adapter, the arrays are held once as
    tensors and each batch is gathered from a (shuffled) index stream, so shuffling
    costs no copy of the images. The arrays become constants of the dataset's graph,
    so whatever serialises that graph (tf.data service, some multi-worker sharding)
    is bound by the 2 GB protobuf limit: about 170,000 32x32x3 float32 images, 4x
    more as uint8.

    Args:
        x: Images, NHWC. uint8 is kept as uint8 in memory; any other dtype is
            converted to float32.
        y: Integer labels, one per image.
        batch_size: Images per batch.
        training: Shuffle, with a new order every epoch (iteration) drawn from `seed`.
            Otherwise the order of `x` is kept.
        augment: Apply the CIFAR augmentation to every image: zero-pad 4 pixels
            on each side, crop a random window of the original size (32x32 for
            CIFAR), flip horizontally with probability 1/2. Random per image, new
            every epoch, drawn from `seed`. Meant for natural images, not digits.
        seed: Seed of the shuffle and the augmentation; the same seed gives the
            same sequence of batches.
        drop_remainder: Drop the last batch when it is smaller than `batch_size`.

    Returns:
        A dataset of `(images float32 [B, H, W, C], labels int32 [B])`.

    Raises:
        ValueError: If `x` is not 4-D, `y` does not hold one integer per image, or
            `batch_size` is not a positive integer.
    """
    x = np.asarray(x)
    # uint8 images are held as uint8 (4x less memory) and cast per batch.
    if x.dtype != np.uint8:
        x = x.astype(np.float32, copy=False)
    y = np.asarray(y)
    if x.ndim != 4:
        raise ValueError(
            "Expected `x` to be images of shape (N, height, width, channels). "
            f"Received: x.shape={x.shape}"
        )
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            "Expected `y` to hold one integer label per image, shape "
            f"({len(x)},). Received: y.shape={y.shape}, y.dtype={y.dtype}"
        )
    check_batching(batch_size, seed)
    images = tf.constant(x)
    labels = tf.constant(y.astype(np.int32))
    parallel = parallel_calls()
    order = tf.data.Dataset.range(len(x))
    if training:
        order = order.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = order.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(
        lambda idx: (
            tf.cast(tf.gather(images, idx), tf.float32),
            tf.gather(labels, idx),
        ),
        num_parallel_calls=parallel,
    )
    if augment:
        ds = augment_batches(ds, x.shape[1], x.shape[2], seed)
    return ds.prefetch(tf.data.AUTOTUNE)


def augment_batches(ds: tf.data.Dataset, height: int, width: int, seed: int) -> tf.data.Dataset:
    """`ds`'s `(images, labels)` batches with the CIFAR augmentation applied to the images:
    one seed pair per batch, a different stream every epoch (iteration), drawn from `seed`."""
    batch_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    augment_batch = cifar_augmenter(height=height, width=width)
    return tf.data.Dataset.zip((ds, batch_seeds)).map(
        lambda batch, batch_seed: (augment_batch(batch[0], batch_seed), batch[1]),
        num_parallel_calls=parallel_calls(),
    )

