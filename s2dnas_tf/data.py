"""Datasets as numpy splits, and the tf.data pipelines that feed them to Keras.

Normalisation rule (the one rule): everything here yields RAW pixel values, float32 in
[0, 255], NHWC. Normalisation lives inside the model, as its first layer: a
`keras.layers.Normalization(mean=mean, variance=variance)` built from
`Splits.channel_stats()`, so the trained and the exported model both take raw images
and no pipeline, script or server has to repeat the preprocessing. Nothing in this
module normalises.

Datasets (`DataConfig.name`):
- `"digits"` (default): scikit-learn's bundled handwritten digits
  (`sklearn.datasets.load_digits`, 1,797 images, 10 classes), so the quickstart runs
  with no download. Images are kept at their native 8x8x1, the 0..16 grey levels
  scaled to 0..255. Why not upsample to 16x16: interpolation adds no information, and
  a CIFAR ResNet-20 costs 2.5 MMACs per image at 8x8 against 10.1 MMACs at 16x16, so
  the quickstart trains 4x faster on 2 CPU cores; every zoo model accepts 8x8 except
  `vgg16_bn`, which pools 5 times and needs 32x32 (16x16 would not help it either).
  The set has no official split, so the test set is a fixed stratified 20% (seed
  `_DIGITS_TEST_SEED`, independent of `DataConfig.seed`, so every run tests on the
  same 359 images). Do not `augment` digits: the CIFAR crop shifts by up to 4 pixels
  (half an 8x8 image) and a mirrored digit is another glyph.
- `"cifar10"` / `"cifar100"`: the standard python-batches layout in `data_dir`
  (cifar-10: `data_batch_1` ... `data_batch_5`, `test_batch`, `batches.meta`;
  cifar-100: `train`, `test`, `meta`, fine labels), read directly with pickle (no
  checksum, any number of images per file). With `data_dir=None` they come from
  `keras.datasets` (downloads; only works online).
- `"image_folder"`: `data_dir/train/<class>/*.{jpg,jpeg,png}` and
  `data_dir/test/<class>/...` (the layout of `keras.utils.image_dataset_from_directory`,
  not recursive). Class names and files are sorted; labels are class indices in
  sorted order. Every image of both sets must share the HxWxC of the first training
  image (no resizing, no colour conversion).

Splits: `per_class_limit` keeps the first N training images of each class in file order
(before the validation split; the test set is never limited). The validation set is
`validation_fraction` of each class of the (limited) training set, chosen with
`DataConfig.seed`; train and validation keep their file order.

Bad data raises an error that names the file or folder and what is wrong:
`FileNotFoundError` for a missing folder or file, `ValueError` for unreadable or
inconsistent content or an invalid config.

Security: CIFAR batches are pickles. They are read with an unpickler that only
accepts plain containers and numpy arrays, so a crafted `data_batch_1` cannot run code.
"""

from __future__ import annotations

import dataclasses
import numbers
import os
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

__all__ = [
    "DATASET_NAMES",
    "DataConfig",
    "Splits",
    "check_num_classes",
    "load_dataset",
    "make_dataset",
]

DATASET_NAMES = ("digits", "cifar10", "cifar100", "image_folder")

# Fixed so the digits test set is the same whatever `DataConfig.seed` is.
_DIGITS_TEST_SEED = 0
_DIGITS_TEST_FRACTION = 0.2
# load_digits stores grey levels 0..16 (4x4 blocks of 32x32 bitmaps, counted).
_DIGITS_MAX_LEVEL = 16.0

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# Images per decoding batch: large enough that Python's per-batch cost is negligible.
_DECODE_BATCH_SIZE = 1024
# The CIFAR recipe of He et al. 2016: zero-pad 4 pixels, random crop back, random flip.
_AUGMENT_PAD_PIXELS = 4

_CIFAR_ROW_SIZE = 32 * 32 * 3
_CIFAR10_CLASS_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
# Fine label names of CIFAR-100 in label order (alphabetical), as in its `meta` file;
# needed only for the keras.datasets path, which returns no names.
_CIFAR100_CLASS_NAMES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle",
    "bicycle", "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can",
    "castle", "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud",
    "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur", "dolphin",
    "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo",
    "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange",
    "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain",
    "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail",
    "snake", "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table",
    "tank", "telephone", "television", "tiger", "tractor", "train", "trout", "tulip",
    "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)  # fmt: skip


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
        ImportError: For `digits` without scikit-learn installed.
        RuntimeError: If a `keras.datasets` download fails.
    """
    _check_config(config)
    (x_train, y_train), (x_test, y_test), class_names = _LOADERS[config.name](config)
    if config.per_class_limit is not None:
        keep = _first_per_class(y_train, config.per_class_limit)
        x_train, y_train = x_train[keep], y_train[keep]
    train_idx, val_idx = _stratified_split(
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


def make_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    training: bool,
    augment: bool = False,
    seed: int = 0,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """Returns a batched, prefetched `tf.data.Dataset` of `(images, labels)`.

    Images stay raw (float32, the scale of `x`); see the module's normalisation rule.
    Like Keras's own array adapter, the arrays are held once as tensors and each
    batch is gathered from a (shuffled) index stream, so shuffling costs no copy of
    the images. The arrays become constants of the dataset's graph, so whatever
    serialises that graph (tf.data service, some multi-worker sharding) is bound by
    the 2 GB protobuf limit: about 170,000 32x32x3 float32 images, 4x more as uint8.

    Args:
        x: Images, NHWC. uint8 is kept as uint8 in memory; any other dtype is
            converted to float32.
        y: Integer labels, one per image.
        batch_size: Images per batch.
        training: Shuffle, with a new order every epoch (iteration) drawn from `seed`.
            Otherwise the order of `x` is kept.
        augment: Apply the CIFAR augmentation to every image: zero-pad 4 pixels
            on each side, crop a random window of the original size (32x32 for
            CIFAR), flip horizontally with probability 1/2. Random per image, new
            every epoch, drawn from `seed`. Meant for natural images, not digits.
        seed: Seed of the shuffle and the augmentation; the same seed gives the
            same sequence of batches.
        drop_remainder: Drop the last batch when it is smaller than `batch_size`.

    Returns:
        A dataset of `(images float32 [B, H, W, C], labels int32 [B])`.

    Raises:
        ValueError: If `x` is not 4-D, `y` does not hold one integer per image, or
            `batch_size` is not a positive integer.
    """
    x = np.asarray(x)
    # uint8 images are held as uint8 (4x less memory) and cast per batch.
    if x.dtype != np.uint8:
        x = x.astype(np.float32, copy=False)
    y = np.asarray(y)
    if x.ndim != 4:
        raise ValueError(
            "Expected `x` to be images of shape (N, height, width, channels). "
            f"Received: x.shape={x.shape}"
        )
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            "Expected `y` to hold one integer label per image, shape "
            f"({len(x)},). Received: y.shape={y.shape}, y.dtype={y.dtype}"
        )
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(
            "Expected `batch_size` to be an integer >= 1. "
            f"Received: batch_size={batch_size!r}"
        )
    if not _is_int(seed):
        raise ValueError(f"Expected `seed` to be an integer. Received: seed={seed!r}")
    images = tf.constant(x)
    labels = tf.constant(y.astype(np.int32))
    order = tf.data.Dataset.range(len(x))
    if training:
        order = order.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    ds = order.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(
        lambda idx: (
            tf.cast(tf.gather(images, idx), tf.float32),
            tf.gather(labels, idx),
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    if augment:
        # One seed pair per batch, a different stream every epoch (iteration).
        batch_seeds = tf.data.Dataset.random(
            seed=seed, rerandomize_each_iteration=True
        ).batch(2)
        augment_batch = _cifar_augmenter(height=x.shape[1], width=x.shape[2])
        ds = tf.data.Dataset.zip((ds, batch_seeds)).map(
            lambda batch, batch_seed: (augment_batch(batch[0], batch_seed), batch[1]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return ds.prefetch(tf.data.AUTOTUNE)


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


# --------------------------------------------------------------------------- checks


def _is_int(value: Any) -> bool:
    # bool is an int subclass; `True` images per class is always a mistake.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


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
    if limit is not None and (not _is_int(limit) or limit < 1):
        raise ValueError(
            "Expected `per_class_limit` to be None or an integer >= 1. "
            f"Received: per_class_limit={limit!r}"
        )
    if not _is_int(config.seed) or config.seed < 0:
        raise ValueError(
            f"Expected `seed` to be an integer >= 0. Received: seed={config.seed!r}"
        )
    if config.name == "digits" and config.data_dir is not None:
        raise ValueError(
            "The digits dataset ships with scikit-learn and reads no folder; pass "
            f"data_dir=None. Received: data_dir={config.data_dir!r}"
        )
    if config.name == "image_folder" and config.data_dir is None:
        raise ValueError(
            "The image_folder dataset needs `data_dir`, a folder with train/ and "
            "test/ sub-folders. Received: data_dir=None"
        )


# ------------------------------------------------------------------------- splitting


def _as_images(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float32)


def _first_per_class(labels: np.ndarray, limit: int) -> np.ndarray:
    """Indices of the first `limit` images of each class, in their original order."""
    keep = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        keep[np.flatnonzero(labels == label)[:limit]] = True
    return np.flatnonzero(keep)


def _stratified_split(
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


# --------------------------------------------------------------------------- digits


def _load_digits(config: DataConfig):
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError(
            "The default dataset 'digits' is scikit-learn's bundled handwritten "
            "digits; install it with `pip install scikit-learn`, or choose another "
            "dataset (cifar10, cifar100, image_folder) with data_dir."
        ) from err
    digits = load_digits()
    images = digits.images[..., np.newaxis] * (255.0 / _DIGITS_MAX_LEVEL)
    labels = digits.target.astype(np.int32)
    train_idx, test_idx = _stratified_split(
        labels, _DIGITS_TEST_FRACTION, _DIGITS_TEST_SEED
    )
    class_names = [str(name) for name in digits.target_names]
    return (
        (images[train_idx], labels[train_idx]),
        (images[test_idx], labels[test_idx]),
        class_names,
    )


# ---------------------------------------------------------------------------- CIFAR


class _ForbiddenGlobalError(pickle.UnpicklingError):
    """A pickle referenced a global outside `_ArrayUnpickler._ALLOWED`."""


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only (no code execution)."""

    # Globals a CIFAR batch (python 2 or 3, numpy 1 or 2) references.
    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol 5
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # bytes in protocols 0-2
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise _ForbiddenGlobalError(f"{module}.{name}")
        return super().find_class(module, name)


def _read_pickle(path: str, what: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        hint = ""
        nested = os.path.join(os.path.dirname(path), "cifar-10-batches-py")
        if os.path.isdir(nested):
            hint = f" (did you mean data_dir={nested!r}?)"
        raise FileNotFoundError(f"{what} file {path} is missing{hint}.")
    try:
        with open(path, "rb") as f:
            content = _ArrayUnpickler(f, encoding="latin1").load()
    except _ForbiddenGlobalError as err:
        raise ValueError(
            f"Refusing to load the global {err} from {what} file {path}: a CIFAR "
            "batch holds only dicts, lists, strings and numpy arrays, and loading "
            "other globals could run code."
        ) from err
    except Exception as err:  # pickle raises many types on truncated / corrupt data
        raise ValueError(
            f"Cannot read {what} file {path}: it is truncated or not a valid pickle "
            f"({type(err).__name__}: {err})."
        ) from err
    if not isinstance(content, dict):
        raise ValueError(
            f"{what} file {path} should hold a dict; it holds a "
            f"{type(content).__name__}."
        )
    # Python-2 pickles read with encoding="bytes" elsewhere may have bytes keys.
    return {
        (k.decode("latin1") if isinstance(k, bytes) else k): v
        for k, v in content.items()
    }


def _get_key(content: dict[str, Any], key: str, path: str) -> Any:
    if key not in content:
        raise ValueError(
            f"File {path} has no key {key!r}. Found keys: {sorted(map(str, content))}."
        )
    return content[key]


def _read_cifar_batch(
    path: str, label_key: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Reads one batch file into `(images uint8 [N, 32, 32, 3], labels int64 [N])`."""
    content = _read_pickle(path, "CIFAR batch")
    data = np.asarray(_get_key(content, "data", path))
    labels = np.asarray(_get_key(content, label_key, path))
    if data.ndim != 2 or data.shape[1] != _CIFAR_ROW_SIZE:
        raise ValueError(
            f"CIFAR batch {path} has images of the wrong size: expected `data` of "
            f"shape (N, {_CIFAR_ROW_SIZE}) (32x32x3, channel-major rows). "
            f"Received: data.shape={data.shape}"
        )
    if labels.shape != (len(data),):
        raise ValueError(
            f"CIFAR batch {path} has {labels.size} labels ({label_key!r}) for "
            f"{len(data)} images; expected one label per image."
        )
    if not np.issubdtype(labels.dtype, np.integer) and labels.size:
        raise ValueError(
            f"CIFAR batch {path} has non-integer labels ({label_key!r}, dtype "
            f"{labels.dtype})."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"CIFAR batch {path} has labels outside [0, {num_classes}): "
            f"min {labels.min()}, max {labels.max()}."
        )
    if data.dtype != np.uint8:
        if data.size and (data.min() < 0 or data.max() > 255):
            raise ValueError(
                f"CIFAR batch {path} has pixel values outside [0, 255]."
            )
        data = data.astype(np.uint8)
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels.astype(np.int64)


def _load_cifar_folder(
    data_dir: str,
    train_files: Sequence[str],
    test_file: str,
    meta_file: str,
    names_key: str,
    label_key: str,
    num_classes: int,
):
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(
            f"CIFAR folder {data_dir} does not exist or is not a folder; expected "
            f"the python-batches layout ({', '.join(train_files)}, {test_file}, "
            f"{meta_file})."
        )
    meta_path = os.path.join(data_dir, meta_file)
    class_names = _get_key(_read_pickle(meta_path, "CIFAR meta"), names_key, meta_path)
    if len(class_names) != num_classes:
        raise ValueError(
            f"CIFAR meta file {meta_path} lists {len(class_names)} class names in "
            f"{names_key!r}; expected {num_classes}."
        )
    train = [
        _read_cifar_batch(os.path.join(data_dir, f), label_key, num_classes)
        for f in train_files
    ]
    test = _read_cifar_batch(os.path.join(data_dir, test_file), label_key, num_classes)
    x_train = np.concatenate([images for images, _ in train])
    y_train = np.concatenate([labels for _, labels in train])
    return (x_train, y_train), test, [str(name) for name in class_names]


def _download_cifar(name: str, load_data: Callable[[], Any], class_names):
    try:
        (x_train, y_train), (x_test, y_test) = load_data()
    except Exception as err:  # keras raises a bare Exception on a failed fetch
        raise RuntimeError(
            f"Could not download {name} through keras.datasets ({err}). Pass "
            f"data_dir (--data_dir) pointing at a local {name} folder in the "
            "python-batches layout."
        ) from err
    return (
        (x_train, y_train.reshape(-1)),
        (x_test, y_test.reshape(-1)),
        list(class_names),
    )


def _load_cifar10(config: DataConfig):
    if config.data_dir is None:
        return _download_cifar(
            "CIFAR-10", keras.datasets.cifar10.load_data, _CIFAR10_CLASS_NAMES
        )
    return _load_cifar_folder(
        config.data_dir,
        train_files=[f"data_batch_{i}" for i in range(1, 6)],
        test_file="test_batch",
        meta_file="batches.meta",
        names_key="label_names",
        label_key="labels",
        num_classes=10,
    )


def _load_cifar100(config: DataConfig):
    if config.data_dir is None:
        return _download_cifar(
            "CIFAR-100",
            lambda: keras.datasets.cifar100.load_data(label_mode="fine"),
            _CIFAR100_CLASS_NAMES,
        )
    return _load_cifar_folder(
        config.data_dir,
        train_files=["train"],
        test_file="test",
        meta_file="meta",
        names_key="fine_label_names",
        label_key="fine_labels",
        num_classes=100,
    )


# --------------------------------------------------------------------- image folder


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


def _load_image_folder(config: DataConfig):
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


_LOADERS: dict[str, Callable[[DataConfig], Any]] = {
    "digits": _load_digits,
    "cifar10": _load_cifar10,
    "cifar100": _load_cifar100,
    "image_folder": _load_image_folder,
}


# --------------------------------------------------------------------- augmentation


def _cifar_augmenter(height: int, width: int):
    """Returns `augment(images [B, H, W, C], seed [2]) -> images`, per image random."""
    pad = _AUGMENT_PAD_PIXELS

    def augment(images: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        batch = tf.shape(images)[0]
        crop_seed, flip_seed = tf.unstack(tf.random.split(seed, 2))
        padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        # Top-left corner of each image's window in the padded image, 0..2*pad.
        corners = tf.random.stateless_uniform(
            [batch, 2], seed=crop_seed, minval=0, maxval=2 * pad + 1, dtype=tf.int32
        )
        rows = corners[:, :1] + tf.range(height)[tf.newaxis]  # [B, H]
        cols = corners[:, 1:] + tf.range(width)[tf.newaxis]  # [B, W]
        cropped = tf.gather(padded, rows, axis=1, batch_dims=1)
        cropped = tf.gather(cropped, cols, axis=2, batch_dims=1)
        flip = tf.random.stateless_uniform([batch], seed=flip_seed) < 0.5
        return tf.where(
            flip[:, tf.newaxis, tf.newaxis, tf.newaxis],
            tf.reverse(cropped, axis=[2]),
            cropped,
        )

    return augment
