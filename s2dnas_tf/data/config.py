"""`DataConfig`: which dataset to load and how to split it; the shared integer check."""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any


@dataclasses.dataclass
class DataConfig:
    """Which dataset to load and how to split it.

    Attributes:
        name: One of `DATASET_NAMES`. Default `"digits"`: it ships with
            scikit-learn, so a first run needs no download.
        data_dir: The CIFAR python-batches folder, or the image-folder root (with
            `train/` and `test/`). `None` for `digits`, and for CIFAR to download
            through `keras.datasets`.
        per_class_limit: Keep the first N training images per class (file order);
            `None` keeps all. The benchmark uses 2,000 per class of CIFAR-10.
        validation_fraction: Fraction of each class of the training data held out
            for validation, in [0, 1). Default 0.1: the usual CIFAR hold-out
            (5,000 of 50,000).
        seed: Seed of the validation split.
    """

    name: str = "digits"
    data_dir: str | None = None
    per_class_limit: int | None = None
    validation_fraction: float = 0.1
    seed: int = 0


def is_int(value: Any) -> bool:
    # bool is an int subclass; `True` images per class is always a mistake.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
