"""The `"image_folder"` source: one folder of images per class, streamed from the files.

`data_dir/train/<class>/*.{jpg,jpeg,png}` and `data_dir/test/<class>/...` (the layout
of `keras.utils.image_dataset_from_directory`, not recursive). Class names and files
are sorted; labels are class indices in sorted order. Only the file list and the labels
are held in memory; images are decoded batch by batch (`s2dnas_tf.data.decoding`),
resized to `DataConfig.image_size` when it is set; without it every image must have the
first training image's height and width.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from s2dnas_tf.data import decoding
from s2dnas_tf.data.config import DataConfig
from s2dnas_tf.data.splits import StreamSource, StreamSplit

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


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


class EncodedImages(StreamSource):
    """Streams encoded images: `raw` elements -> bytes (`encoded`) -> pixels. Subclasses
    say where the bytes are; this class scans them and fixes the set's image shape."""

    def encoded(self, raw: tf.Tensor) -> tf.Tensor:
        raise NotImplementedError

    def configure(self, channels, image_size, crop_to_aspect_ratio, shape) -> None:
        self._decode_args = (channels, image_size, crop_to_aspect_ratio, shape)

    def decode(self, raw):
        return decoding.decode_image(self.encoded(raw), *self._decode_args)


class _Files(EncodedImages):
    random_access = True

    def __init__(self, paths: list[str]):
        self.paths = np.asarray(paths, dtype=object)

    def elements(self, indices):
        chosen = [str(p) for p in self.paths[np.asarray(indices, np.int64)]]
        return tf.data.Dataset.from_tensor_slices(tf.constant(chosen, tf.string))

    def encoded(self, raw):
        return tf.io.read_file(raw)

    def name(self, index):
        return str(self.paths[index])

    def diagnose(self, index):
        decoding.decode_error(self.name(index), tf.io.read_file(self.name(index)))


def image_shapes(source: EncodedImages, count: int) -> np.ndarray:
    """Every image's native (height, width, channels), from a scan naming a bad file."""

    def inspect(raw):
        image = tf.io.decode_image(source.encoded(raw), expand_animations=False)
        return tf.shape(image, out_type=tf.int32), tf.constant(-1, tf.int64)

    shapes, _ = decoding.scan(
        source.elements(np.arange(count)), count, inspect, source.diagnose, source.name)
    return shapes


def fix_shape(config: DataConfig, parts) -> tuple[int, int, int]:
    """Fixes the set's image shape from each part's `(source, native shapes)` (train
    first) and configures the sources to decode to it.

    Raises:
        ValueError: Without `image_size`, if an image's height and width differ from
            the first training image's (naming both files).
    """
    channels = decoding.set_channels(np.concatenate([s[:, 2] for _, s in parts]))
    first_source, first_shapes = parts[0]
    if config.image_size is None:
        size = tuple(int(d) for d in first_shapes[0, :2])
        for source, shapes in parts:
            wrong = np.flatnonzero(np.any(shapes[:, :2] != size, axis=1))
            if len(wrong):
                others = len(wrong) - 1
                more = f" ({others} more differ too)" if others else ""
                raise ValueError(
                    f"Image {source.name(int(wrong[0]))} is "
                    f"{shapes[wrong[0], 0]}x{shapes[wrong[0], 1]} but the first training "
                    f"image {first_source.name(0)} is {size[0]}x{size[1]}{more}. Pass "
                    "image_size (--image_size=HEIGHT,WIDTH) to resize every image, or "
                    "use images of one size."
                )
    else:
        size = tuple(int(d) for d in config.image_size)
    shape = size + (channels,)
    for source, _ in parts:
        source.configure(channels, config.image_size and size,
                         config.crop_to_aspect_ratio, shape)
    return shape


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
        return _Files(paths), np.asarray(labels, dtype=np.int64)

    # The limit applies while listing, so unused files are never read.
    train, y_train = listing(train_dir, config.per_class_limit)
    test, y_test = listing(test_dir, None)
    parts = [(train, image_shapes(train, len(y_train))),
             (test, image_shapes(test, len(y_test)))]
    shape = fix_shape(config, parts)
    return (
        StreamSplit(train, np.arange(len(y_train)), y_train, shape),
        StreamSplit(test, np.arange(len(y_test)), y_test, shape),
        class_names,
    )
