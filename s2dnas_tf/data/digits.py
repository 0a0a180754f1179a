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
