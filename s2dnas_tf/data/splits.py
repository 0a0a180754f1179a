"""`Splits`, a dataset held in memory, and the rules that split one.

Splits: `per_class_limit` keeps the first N training images of each class in file order
(before the validation split; the test set is never limited). The validation set is
`validation_fraction` of each class of the (limited) training set, chosen with
`DataConfig.seed`; train and validation keep their file order.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np


@dataclasses.dataclass
class Splits:
    """A dataset in memory: images float32 raw pixels in [0, 255], NHWC; labels int32.

    Attributes:
        x_train, y_train: Training images and labels.
        x_val, y_val: Validation images and labels (empty when
            `validation_fraction` is 0).
        x_test, y_test: Test images and labels.
        num_classes: Number of classes; labels are in `[0, num_classes)`.
        class_names: Name of each label, `class_names[label]`.
        image_shape: `(height, width, channels)` of every image.
        name: The dataset's `DataConfig.name`.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: list[str]
    image_shape: tuple[int, int, int]
    name: str

    def __repr__(self) -> str:
        # The dataclass default would print the arrays.
        return (
            f"Splits(name={self.name!r}, train={len(self.x_train)}, "
            f"val={len(self.x_val)}, test={len(self.x_test)}, "
            f"image_shape={self.image_shape}, num_classes={self.num_classes})"
        )

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """Returns the per-channel mean and variance of `x_train`, on the raw scale.

        Made for the model's first layer:
        `keras.layers.Normalization(mean=mean, variance=variance)`.

        Returns:
            `(mean, variance)`, two lists with one float per channel. The variance
            is the population variance (divided by N), as `Normalization.adapt`
            computes it.

        Raises:
            ValueError: If `x_train` is empty.
        """
        if len(self.x_train) == 0:
            raise ValueError(
                f"Cannot compute channel statistics of dataset {self.name!r}: "
                "x_train is empty."
            )
        channels = self.x_train.shape[-1]
        pixels = self.x_train.reshape(-1, channels)
        # Two passes in float64 over chunks: exact enough, and no float64 copy of the
        # whole set (50,000 CIFAR images would take 1.2 GB).
        chunk = 1 << 20
        total = np.zeros(channels)
        for start in range(0, len(pixels), chunk):
            total += pixels[start : start + chunk].sum(axis=0, dtype=np.float64)
        mean = total / len(pixels)
        squares = np.zeros(channels)
        for start in range(0, len(pixels), chunk):
            centred = pixels[start : start + chunk].astype(np.float64) - mean
            squares += np.einsum("ij,ij->j", centred, centred)
        variance = squares / len(pixels)
        return [float(m) for m in mean], [float(v) for v in variance]


def check_num_classes(splits: Splits, model: keras.Model) -> None:
    """Checks that every output of `model` has `splits.num_classes` logits.

    Works for a static model (one output) and a multi-stage network (one output
    per stage).

    Args:
        splits: The dataset.
        model: A built Keras model whose outputs end in the class dimension.

    Raises:
        ValueError: If an output's last dimension differs from
            `splits.num_classes` (the message names both), or the model has no
            known outputs (e.g. an unbuilt subclassed model).
    """
    outputs = keras.tree.flatten(getattr(model, "outputs", None) or [])
    if not outputs:
        raise ValueError(
            f"Cannot read the number of classes of model {model.name!r}: it has no "
            "symbolic outputs. Pass a functional or built Sequential model."
        )
    for index, output in enumerate(outputs):
        model_classes = output.shape[-1]
        if model_classes != splits.num_classes:
            where = f" (output {index} of {len(outputs)})" if len(outputs) > 1 else ""
            raise ValueError(
                f"Model {model.name!r} outputs {model_classes} classes{where} but "
                f"dataset {splits.name!r} has {splits.num_classes} classes. Build "
                f"the model with num_classes={splits.num_classes}. Received: output "
                f"shape {tuple(output.shape)}"
            )


def first_per_class(labels: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the first `limit` images of each class, in their original order."""
    keep = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        keep[np.flatnonzero(labels == label)[:limit]] = True
    return np.flatnonzero(keep)


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Returns `(kept, held_out)` indices, both sorted; `fraction` of each class held.

    Each class holds out `round(fraction * count)` images, but never its last one,
    so every class stays in the kept part.
    """
    rng = np.random.default_rng(seed)
    held = []
    for label in np.unique(labels):  # sorted, so the draws are reproducible
        members = np.flatnonzero(labels == label)
        count = min(int(np.floor(fraction * len(members) + 0.5)), len(members) - 1)
        if count > 0:
            held.append(rng.choice(members, size=count, replace=False))
    held_out = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    kept = np.setdiff1d(np.arange(len(labels)), held_out)
    return kept, held_out
