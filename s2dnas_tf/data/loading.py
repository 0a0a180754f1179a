"""`load_dataset`: the table of sources, the config checks, the limit and the split.

`load_dataset` checks the `DataConfig`, calls the source named by `DataConfig.name`
(`_LOADERS`), then applies the per-class limit and the validation split (see
`s2dnas_tf.data.splits`) the same way for every source.
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Callable
from typing import Any

import keras

from s2dnas_tf.data.cifar import load_cifar10, load_cifar100
from s2dnas_tf.data.config import DataConfig, is_int
from s2dnas_tf.data.digits import load_digits, load_digits_overlap
from s2dnas_tf.data.image_folder import load_image_folder
from s2dnas_tf.data.records import load_tfds, load_tfrecord
from s2dnas_tf.data.splits import (
    ArraySplit,
    Split,
    Splits,
    check_image_shape,
    check_num_classes,
    first_per_class,
    stratified_split,
)

DATASET_NAMES = (
    "digits", "digits_overlap", "cifar10", "cifar100", "image_folder", "tfrecord", "tfds:NAME")
# Held in memory whole (small, fixed-size images); the others stream from files.
IN_MEMORY_DATASETS = ("digits", "digits_overlap", "cifar10", "cifar100")
# The built-in 8x8 glyph sets: no folder to read, and never augmented (the CIFAR crop would
# shift a digit by half its size, a flip would make another glyph).
DIGITS_DATASETS = ("digits", "digits_overlap")
# Each source returns (train, test, class_names): two `Split`s, or two (x, y) pairs of
# arrays (raw pixels, float32 or uint8, NHWC, 0..255, and int labels) held in memory;
# `load_dataset` does the rest.
_LOADERS: dict[str, Callable[[DataConfig], Any]] = {
    "digits": load_digits,
    "digits_overlap": load_digits_overlap,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "image_folder": load_image_folder,
    "tfrecord": load_tfrecord,
}


def _loader(name: str):
    return load_tfds if name.startswith("tfds:") else _LOADERS[name]


def load_dataset(config: DataConfig) -> Splits:
    """Loads a dataset and splits it into train / validation / test.

    Args:
        config: Which dataset, where, and how to split it.

    Returns:
        The splits, images float32 raw pixels in [0, 255].

    Raises:
        ValueError: If the config is invalid (unknown name, fraction outside
            [0, 1), limit < 1, ...) or the data is unreadable or inconsistent; the
            message names the file.
        FileNotFoundError: If a folder or file of the layout is missing.
        ImportError: For `digits` / `digits_overlap` without scikit-learn installed.
        RuntimeError: If a `keras.datasets` download fails.
    """
    _check_config(config)
    train, test, class_names = _loader(config.name)(config)
    if not isinstance(train, Split):
        train, test = ArraySplit(*train), ArraySplit(*test)
    if config.per_class_limit is not None:
        train = train.select(first_per_class(train.labels, config.per_class_limit))
    train_idx, val_idx = stratified_split(
        train.labels, config.validation_fraction, config.seed
    )
    return Splits(
        train=train.select(train_idx),
        val=train.select(val_idx),
        test=test,
        num_classes=len(class_names),
        class_names=list(class_names),
        image_shape=train.image_shape,
        name=config.name,
        crop_to_aspect_ratio=config.crop_to_aspect_ratio,
    )


def load_dataset_for(config: DataConfig, model: keras.Model) -> Splits:
    """Loads `config`'s data for `model`: a streamed dataset without `image_size` is
    resized to the model's input size (when fixed), then the images' shape and the class
    count are checked against the model.

    Raises:
        ValueError: As `load_dataset`, and as `check_image_shape` / `check_num_classes`.
    """
    if config.image_size is None and config.name not in IN_MEMORY_DATASETS:
        inputs = keras.tree.flatten(getattr(model, "inputs", None) or [])
        size = tuple(inputs[0].shape[1:3]) if len(inputs) == 1 else (None,)
        if len(size) == 2 and None not in size:
            config = dataclasses.replace(config, image_size=(int(size[0]), int(size[1])))
    splits = load_dataset(config)
    check_image_shape(splits, model)
    check_num_classes(splits, model)
    return splits


def _check_config(config: DataConfig) -> None:
    if not isinstance(config.name, str) or (
        config.name not in _LOADERS
        and not (config.name.startswith("tfds:") and len(config.name) > len("tfds:"))
    ):
        raise ValueError(
            f"Unknown dataset name {config.name!r}. Available: {list(DATASET_NAMES)}. "
            f"Received: name={config.name!r}"
        )
    fraction = config.validation_fraction
    if (
        not isinstance(fraction, numbers.Real)
        or isinstance(fraction, bool)
        or not 0 <= fraction < 1
    ):
        raise ValueError(
            "Expected `validation_fraction` to be a number in [0, 1). "
            f"Received: validation_fraction={fraction!r}"
        )
    limit = config.per_class_limit
    if limit is not None and (not is_int(limit) or limit < 1):
        raise ValueError(
            "Expected `per_class_limit` to be None or an integer >= 1. "
            f"Received: per_class_limit={limit!r}"
        )
    if not is_int(config.seed) or config.seed < 0:
        raise ValueError(
            f"Expected `seed` to be an integer >= 0. Received: seed={config.seed!r}"
        )
    if config.name in DIGITS_DATASETS and config.data_dir is not None:
        raise ValueError(
            f"The {config.name} dataset ships with scikit-learn and reads no folder; pass "
            f"data_dir=None. Received: data_dir={config.data_dir!r}"
        )
    needs = {
        "image_folder": "a folder with train/ and test/ sub-folders",
        "tfrecord": "the folder of train and test .tfrecord files",
    }.get(config.name, "the TFDS data_dir it was prepared in")
    if config.name not in IN_MEMORY_DATASETS and config.data_dir is None:
        raise ValueError(
            f"The {config.name} dataset needs `data_dir`, {needs}. Received: data_dir=None"
        )
    size = config.image_size
    if size is not None:
        if config.name in IN_MEMORY_DATASETS:
            raise ValueError(
                f"image_size resizes streamed images (image_folder, tfrecord, tfds:NAME); "
                f"the {config.name} dataset is held in memory at its own size. Received: "
                f"image_size={size!r}"
            )
        if (not isinstance(size, (tuple, list)) or len(size) != 2
                or not all(is_int(d) and d >= 1 for d in size)):
            raise ValueError(
                "Expected `image_size` to be None or (height, width), two integers >= 1. "
                f"Received: image_size={size!r}"
            )
    if not isinstance(config.crop_to_aspect_ratio, bool):
        raise ValueError(
            "Expected `crop_to_aspect_ratio` to be True or False. Received: "
            f"crop_to_aspect_ratio={config.crop_to_aspect_ratio!r}"
        )

