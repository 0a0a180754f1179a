"""`DataConfig`: which dataset to load and how to split it; the shared integer check."""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any


@dataclasses.dataclass
class DataConfig:
    """Which dataset to load and how to split it.

    Attributes:
        name: One of `DATASET_NAMES`, or `"tfds:NAME"` for a TFDS dataset prepared in
            `data_dir`. Default `"digits"`: it ships with scikit-learn, so a first run
            needs no download.
        data_dir: The CIFAR python-batches folder, the image-folder root (with
            `train/` and `test/`), the folder of TFRecord files, or the TFDS data_dir.
            `None` for `digits`, and for CIFAR to download through `keras.datasets`.
        per_class_limit: Keep the first N training images per class (file order);
            `None` keeps all. The benchmark uses 2,000 per class of CIFAR-10.
        validation_fraction: Fraction of each class of the training data held out
            for validation, in [0, 1). Default 0.1: the usual CIFAR hold-out
            (5,000 of 50,000).
        seed: Seed of the validation split.
        image_size: `(height, width)` every streamed image (image folder, TFRecord,
            TFDS) is resized to; `None` keeps the images' own size, which must then be
            the same for all. The command-line tools default it to the model's input
            size. Not for the in-memory sets.
        crop_to_aspect_ratio: When resizing, crop the largest centred window of the
            target's aspect ratio first, so nothing is stretched (True, the default), or
            stretch the whole image (False, Keras's `image_dataset_from_directory`
            default).
    """

    name: str = "digits"
    data_dir: str | None = None
    per_class_limit: int | None = None
    validation_fraction: float = 0.1
    seed: int = 0
    image_size: tuple[int, int] | None = None
    crop_to_aspect_ratio: bool = True


def is_int(value: Any) -> bool:
    # bool is an int subclass; `True` images per class is always a mistake.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
