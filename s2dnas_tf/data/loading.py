"""`load_dataset`: the table of sources, the config checks, the limit and the split.

`load_dataset` checks the `DataConfig`, calls the source named by `DataConfig.name`
(`_LOADERS`), then applies the per-class limit and the validation split (see
`s2dnas_tf.data.splits`) the same way for every source.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import numpy as np

from s2dnas_tf.data.cifar import load_cifar10, load_cifar100
from s2dnas_tf.data.config import DataConfig, is_int
from s2dnas_tf.data.digits import load_digits, load_digits_overlap
from s2dnas_tf.data.image_folder import load_image_folder
from s2dnas_tf.data.splits import Splits, first_per_class, stratified_split

DATASET_NAMES = ("digits", "digits_overlap", "cifar10", "cifar100", "image_folder")
# The built-in 8x8 glyph sets: no folder to read, and never augmented (the CIFAR crop would
# shift a digit by half its size, a flip would make another glyph).
DIGITS_DATASETS = ("digits", "digits_overlap")
# Each source returns ((x_train, y_train), (x_test, y_test), class_names): raw pixels
# (float32 or uint8, NHWC, 0..255) and int labels; `load_dataset` does the rest.
_LOADERS: dict[str, Callable[[DataConfig], Any]] = {
    "digits": load_digits,
    "digits_overlap": load_digits_overlap,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "image_folder": load_image_folder,
}


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
    (x_train, y_train), (x_test, y_test), class_names = _LOADERS[config.name](config)
    if config.per_class_limit is not None:
        keep = first_per_class(y_train, config.per_class_limit)
        x_train, y_train = x_train[keep], y_train[keep]
    train_idx, val_idx = stratified_split(
        y_train, config.validation_fraction, config.seed
    )
    return Splits(
        x_train=_as_images(x_train[train_idx]),
        y_train=y_train[train_idx].astype(np.int32),
        x_val=_as_images(x_train[val_idx]),
        y_val=y_train[val_idx].astype(np.int32),
        x_test=_as_images(x_test),
        y_test=y_test.astype(np.int32),
        num_classes=len(class_names),
        class_names=list(class_names),
        image_shape=tuple(int(d) for d in x_train.shape[1:]),
        name=config.name,
    )


def _check_config(config: DataConfig) -> None:
    if config.name not in _LOADERS:
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
    if config.name == "image_folder" and config.data_dir is None:
        raise ValueError(
            "The image_folder dataset needs `data_dir`, a folder with train/ and "
            "test/ sub-folders. Received: data_dir=None"
        )


def _as_images(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)

