"""The `"digits"` source: scikit-learn's bundled handwritten digits (no download).

`sklearn.datasets.load_digits`: 1,797 images, 10 classes. Images are kept at their
native 8x8x1, the 0..16 grey levels scaled to 0..255. Why not upsample to 16x16:
interpolation adds no information, and a CIFAR ResNet-20 costs 2.5 MMACs per image at
8x8 against 10.1 MMACs at 16x16, so the quickstart trains 4x faster on 2 CPU cores;
every zoo model accepts 8x8 except `vgg16_bn`, which pools 5 times and needs 32x32
(16x16 would not help it either). The set has no official split, so the test set is a
fixed stratified 20% (seed `_DIGITS_TEST_SEED`, independent of `DataConfig.seed`, so
every run tests on the same 359 images). Do not `augment` digits: the CIFAR crop shifts
by up to 4 pixels (half an 8x8 image) and a mirrored digit is another glyph.

The `"digits_overlap"` source is the same images, split the same way, each with a second
digit of another class drawn over it at a random strength (0 to `_OVERLAP_MAX` of its ink,
added, clipped at 255); the label stays the first digit's. Plain digits are too easy to show
dynamic inference: a first stage at a tenth of a ResNet-8's FLOPs already classifies 98 %,
so every image leaves there. With overlays some images are clean and some are nearly
ambiguous, so a cheap first stage is sure of the clean ones and later stages earn their
cost on the rest: the quickstart's dataset. Partners and strengths are drawn with a fixed
seed within each split (no test digit appears in a training image): every run sees the
same images.
"""

from __future__ import annotations

import numpy as np

from s2dnas_tf.data.config import DataConfig
from s2dnas_tf.data.splits import stratified_split

# Fixed so the digits test set is the same whatever `DataConfig.seed` is.
_DIGITS_TEST_SEED = 0
_DIGITS_TEST_FRACTION = 0.2
# sklearn's load_digits stores grey levels 0..16 (4x4 blocks of 32x32 bitmaps, counted).
_DIGITS_MAX_LEVEL = 16.0
# digits_overlap: the overlaid digit's strength is uniform in [0, _OVERLAP_MAX].
_OVERLAP_SEED = 1
_OVERLAP_MAX = 0.8


def load_digits(config: DataConfig):
    try:
        from sklearn.datasets import load_digits as sklearn_load_digits
    except ImportError as err:
        raise ImportError(
            "The default dataset 'digits' is scikit-learn's bundled handwritten "
            "digits; install it with `pip install scikit-learn`, or choose another "
            "dataset (cifar10, cifar100, image_folder) with data_dir."
        ) from err
    digits = sklearn_load_digits()
    images = digits.images[..., np.newaxis] * (255.0 / _DIGITS_MAX_LEVEL)
    labels = digits.target.astype(np.int32)
    train_idx, test_idx = stratified_split(
        labels, _DIGITS_TEST_FRACTION, _DIGITS_TEST_SEED
    )
    class_names = [str(name) for name in digits.target_names]
    return (
        (images[train_idx], labels[train_idx]),
        (images[test_idx], labels[test_idx]),
        class_names,
    )


def _overlay(images: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each image plus another class's image of the same array at a random strength."""
    partners = np.empty(len(labels), dtype=np.int64)
    for i, label in enumerate(labels):
        others = np.flatnonzero(labels != label)
        partners[i] = others[rng.integers(len(others))]
    strength = rng.uniform(0.0, _OVERLAP_MAX, size=(len(labels), 1, 1, 1))
    return np.minimum(images + strength * images[partners], 255.0)


def load_digits_overlap(config: DataConfig):
    (x_train, y_train), (x_test, y_test), class_names = load_digits(config)
    rng = np.random.default_rng(_OVERLAP_SEED)
    return (
        (_overlay(x_train, y_train, rng), y_train),
        (_overlay(x_test, y_test, rng), y_test),
        class_names,
    )
