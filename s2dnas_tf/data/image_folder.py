"""The `"image_folder"` source: one folder of images per class, decoded into memory.

`data_dir/train/<class>/*.{jpg,jpeg,png}` and `data_dir/test/<class>/...` (the layout
of `keras.utils.image_dataset_from_directory`, not recursive). Class names and files
are sorted; labels are class indices in sorted order. Every image of both sets must
share the HxWxC of the first training image (no resizing, no colour conversion).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from s2dnas_tf.data.config import DataConfig

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Images per decoding batch: large enough that Python's per-batch cost is negligible.
_DECODE_BATCH_SIZE = 1024


def _class_folders(split_dir: str) -> list[str]:
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(
            f"Image folder {split_dir} is missing; expected data_dir/train/<class>/ "
            "and data_dir/test/<class>/ sub-folders."
        )
    names = sorted(
        entry.name
        for entry in os.scandir(split_dir)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if not names:
        raise ValueError(f"Image folder {split_dir} has no class sub-folders.")
    return names


def _image_files(class_dir: str, limit: int | None) -> list[str]:
    names = sorted(
        entry.name
        for entry in os.scandir(class_dir)
        if entry.is_file()
        and not entry.name.startswith(".")
        and entry.name.lower().endswith(_IMAGE_EXTENSIONS)
    )
    if not names:
        raise ValueError(
            f"Class folder {class_dir} is empty: it has no "
            f"{'/'.join(_IMAGE_EXTENSIONS)} files."
        )
    return [os.path.join(class_dir, name) for name in names[:limit]]


def _decode_eagerly(path: str) -> np.ndarray:
    """Decodes one file, with an error naming it when it is not a readable image."""
    try:
        return tf.io.decode_image(
            tf.io.read_file(path), expand_animations=False
        ).numpy()
    except (tf.errors.OpError, ValueError) as err:
        message = getattr(err, "message", str(err))
        raise ValueError(
            f"Cannot decode image {path}: it is corrupt or not a JPEG/PNG ({message})."
        ) from err


def _decode_images(
    paths: Sequence[str], shape: tuple[int, int, int], reference: str
) -> np.ndarray:
    """Decodes `paths` in parallel into uint8 `[N, *shape]`; every image must match.

    A tf.data map cannot say which file failed, so each element carries its index:
    failed decodes are dropped (`ignore_errors`) and found as missing indices, and a
    wrong-sized image comes back with its shape instead of its pixels. The offending
    file is then named.
    """
    expected = tf.constant(shape, dtype=tf.int32)

    def decode(index, path):
        image = tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
        image_shape = tf.shape(image, out_type=tf.int32)
        matches = tf.reduce_all(tf.equal(image_shape, expected))
        image = tf.cond(
            matches,
            lambda: tf.reshape(image, shape),
            lambda: tf.zeros(shape, dtype=tf.uint8),
        )
        return index, image_shape, image

    ds = (
        tf.data.Dataset.from_tensor_slices(list(paths))
        .enumerate()
        .map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        .ignore_errors()
        .batch(_DECODE_BATCH_SIZE)
        .prefetch(tf.data.AUTOTUNE)
    )
    images = np.zeros((len(paths),) + tuple(shape), dtype=np.uint8)
    decoded = np.zeros(len(paths), dtype=bool)
    wrong_shapes = {}
    for indices, image_shapes, batch in ds.as_numpy_iterator():
        images[indices] = batch
        decoded[indices] = True
        for i in np.flatnonzero(np.any(image_shapes != shape, axis=1)):
            wrong_shapes[int(indices[i])] = tuple(int(d) for d in image_shapes[i])

    failed = np.flatnonzero(~decoded)
    if len(failed):
        more = f" ({len(failed) - 1} more files failed too)" if len(failed) > 1 else ""
        try:
            _decode_eagerly(paths[failed[0]])
        except ValueError as err:
            raise ValueError(f"{err}{more}") from err
        # Decoded fine alone: a transient read error; say so rather than guess.
        raise ValueError(f"Cannot read image {paths[failed[0]]}{more}.")
    if wrong_shapes:
        first = min(wrong_shapes)
        others = len(wrong_shapes) - 1
        more = f" ({others} more differ too)" if others else ""
        raise ValueError(
            f"Image {paths[first]} has size {wrong_shapes[first]} (HxWxC) but all "
            f"images must share the size {tuple(shape)} of the first training image "
            f"{reference}{more}."
        )
    return images


def load_image_folder(config: DataConfig):
    root = config.data_dir
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"Image folder {root} does not exist or is not a folder; expected "
            "train/<class>/ and test/<class>/ sub-folders."
        )
    train_dir, test_dir = os.path.join(root, "train"), os.path.join(root, "test")
    class_names = _class_folders(train_dir)
    test_classes = _class_folders(test_dir)
    if test_classes != class_names:
        only_train = sorted(set(class_names) - set(test_classes))
        only_test = sorted(set(test_classes) - set(class_names))
        raise ValueError(
            f"The class folders of {train_dir} and {test_dir} differ: only in "
            f"train: {only_train}, only in test: {only_test}."
        )

    def listing(split_dir: str, limit: int | None):
        paths, labels = [], []
        for label, name in enumerate(class_names):
            files = _image_files(os.path.join(split_dir, name), limit)
            paths += files
            labels += [label] * len(files)
        return paths, np.asarray(labels, dtype=np.int64)

    # The limit applies while listing, so unused files are never decoded.
    train_paths, y_train = listing(train_dir, config.per_class_limit)
    test_paths, y_test = listing(test_dir, None)
    shape = _decode_eagerly(train_paths[0]).shape
    x_train = _decode_images(train_paths, shape, reference=train_paths[0])
    x_test = _decode_images(test_paths, shape, reference=train_paths[0])
    return (x_train, y_train), (x_test, y_test), class_names
