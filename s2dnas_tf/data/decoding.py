"""Decoding streamed images: bytes -> raw pixels of one size, and the scan that checks a
whole source before anything trains.

`decode_image` turns JPEG/PNG (also GIF/BMP) bytes into float32 pixels in [0, 255] of
`image_shape`: with a target size, each image is resized to it the way
`keras.utils.image_dataset_from_directory` does (bilinear; with `crop_to_aspect_ratio`,
the largest centred window of the target's aspect ratio is cropped first, so nothing is
stretched); without one, every image must already have that size. Channels are
converted to the set's: a greyscale image in an RGB set becomes RGB, an alpha channel
is dropped.

`scan` decodes every element once when a dataset is loaded, in parallel and in bounded
memory (only each image's shape is kept), so a corrupt file, a record without the
expected features or an image of the wrong size is reported by name before a run writes
anything, rather than killing a training epoch hours in.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

# Elements per scanning batch: large enough that Python's per-batch cost is negligible.
_SCAN_BATCH_SIZE = 1024


def set_channels(native: np.ndarray) -> int:
    """The channels a set of images is decoded to, from each image's own count: 3 (RGB)
    if any image has colour (3 or 4 channels; alpha is dropped), else 1."""
    return 3 if np.any(np.asarray(native) >= 3) else 1


def decode_image(
    encoded: tf.Tensor,
    channels: int,
    image_size: tuple[int, int] | None,
    crop_to_aspect_ratio: bool,
    shape: tuple[int, int, int],
) -> tf.Tensor:
    """Encoded bytes -> float32 [*shape] (see the module docstring)."""
    image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
    if image_size is None:
        image = tf.ensure_shape(image, shape)
        return tf.cast(image, tf.float32)
    return tf.ensure_shape(resize_images(image, image_size, crop_to_aspect_ratio), shape)


def resize_images(
    images: tf.Tensor, image_size: tuple[int, int], crop_to_aspect_ratio: bool
) -> tf.Tensor:
    """Resizes an image [H, W, C] or a batch [N, H, W, C] to `image_size` (float32), as
    `keras.utils.image_dataset_from_directory` does: bilinear, after cropping the largest
    centred window of the target's aspect ratio when `crop_to_aspect_ratio`."""
    if crop_to_aspect_ratio:
        # Keras's window (keras.ops.image.resize): truncated, at least 1 pixel, centred.
        size = tf.shape(images)
        height, width = size[-3], size[-2]
        target_height, target_width = image_size
        crop_height = tf.cast(tf.cast(width * target_height, tf.float32) / target_width,
                              tf.int32)
        crop_height = tf.maximum(tf.minimum(height, crop_height), 1)
        crop_width = tf.cast(tf.cast(height * target_width, tf.float32) / target_height,
                             tf.int32)
        crop_width = tf.maximum(tf.minimum(width, crop_width), 1)
        images = tf.image.crop_to_bounding_box(
            images, (height - crop_height) // 2, (width - crop_width) // 2, crop_height,
            crop_width)
    return tf.image.resize(images, image_size, method="bilinear")


def scan(
    elements: tf.data.Dataset,
    count: int,
    inspect: Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor]],
    diagnose: Callable[[int], None],
    name: Callable[[int], str],
) -> tuple[np.ndarray, np.ndarray]:
    """Runs `inspect` on every element; returns (image shapes [N, 3], labels [N]).

    A tf.data map cannot say which element failed, so each element carries its index:
    failed ones are dropped (`ignore_errors`) and found as missing indices. The first is
    then inspected eagerly by `diagnose(index)`, which raises a `ValueError` naming it;
    if it does not (a transient read error), the element is named here.

    Args:
        elements: The raw elements, in index order.
        count: How many there are.
        inspect: raw -> (image shape int32 [3], label int64 scalar; -1 when the label is
            known elsewhere).
        diagnose: Raises the error of element `index`.
        name: What element `index` is called in messages.
    """

    def run(index, raw):
        image_shape, label = inspect(raw)
        return index, image_shape, label

    ds = (
        elements.enumerate()
        .map(run, num_parallel_calls=tf.data.AUTOTUNE)
        .ignore_errors()
        .batch(_SCAN_BATCH_SIZE)
        .prefetch(tf.data.AUTOTUNE)
    )
    shapes = np.zeros((count, 3), np.int64)
    labels = np.full(count, -1, np.int64)
    seen = np.zeros(count, bool)
    for indices, image_shapes, batch_labels in ds.as_numpy_iterator():
        shapes[indices] = image_shapes
        labels[indices] = batch_labels
        seen[indices] = True
    failed = np.flatnonzero(~seen)
    if len(failed):
        more = f" ({len(failed) - 1} more failed too)" if len(failed) > 1 else ""
        try:
            diagnose(int(failed[0]))
        except ValueError as err:
            raise ValueError(f"{err}{more}") from err
        raise ValueError(f"Cannot read {name(int(failed[0]))}{more}.")
    return shapes, labels


def decode_error(what: str, encoded) -> None:
    """Decodes `encoded` eagerly; raises a ValueError naming `what` if it is not an image."""
    try:
        tf.io.decode_image(encoded, expand_animations=False)
    except (tf.errors.OpError, ValueError) as err:
        message = getattr(err, "message", str(err))
        raise ValueError(
            f"Cannot decode image {what}: it is corrupt or not a JPEG/PNG ({message})."
        ) from err
