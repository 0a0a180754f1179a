"""`Split` (one split: labels in memory, images in memory or streamed), `Splits` (a
dataset's train / validation / test), and the rules that split one.

Two kinds of split, one interface (`Split`):
- `ArraySplit`: images held in memory as an array (the built-in sets: digits, CIFAR
  batches). Batches are gathered from the array.
- `StreamSplit`: images read from files batch by batch (image folders, TFRecord files).
  Only the labels and each image's source (a file path, or an index into the records)
  are held; memory does not grow with the number of images.

Every consumer goes through `Split.dataset` (training, evaluation with labels) or
`Split.images` (prediction, in order); `Split.arrays` decodes a split into memory and is
meant for small selections (`head`, `select`) such as BatchNorm samples and latency
images.

Splits: `per_class_limit` keeps the first N training images of each class in file order
(before the validation split; the test set is never limited). The validation set is
`validation_fraction` of each class of the (limited) training set, chosen with
`DataConfig.seed`; train and validation keep their file order.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

from s2dnas_tf.data.pipelines import (
    augment_batches,
    check_batching,
    make_dataset,
    parallel_calls,
    predict_dataset,
)

# Encoded records held by a sequential source's shuffle buffer (a TFRecord file cannot be
# read in a random order): 4,096 JPEGs of 224x224 are about 100 MB.
SHUFFLE_BUFFER = 4096


# Pixels per prediction batch: 32 images of 224x224. Activations grow with the pixels, and a
# 224x224 MobileNetV2 predicting batches of 256 needed 3.3 GB; CIFAR keeps batches of 256.
PREDICT_PIXELS = 32 * 224 * 224
MAX_PREDICT_BATCH = 256


def predict_batch_size(image_shape) -> int:
    """The prediction batch size for images of `image_shape`: 256 for small images, fewer
    for large ones (at most `PREDICT_PIXELS` pixels per batch, at least 1 image)."""
    pixels = max(1, int(image_shape[0]) * int(image_shape[1]))
    return max(1, min(MAX_PREDICT_BATCH, PREDICT_PIXELS // pixels))


class Split:
    """One split of a dataset: `labels` (int32, in memory) and their images.

    Images are raw pixels, float32 in [0, 255], NHWC, `image_shape` each.
    """

    labels: np.ndarray
    image_shape: tuple[int, int, int]
    streamed: bool = False

    def __len__(self) -> int:
        return len(self.labels)

    def dataset(
        self,
        batch_size: int,
        training: bool = False,
        augment: bool = False,
        seed: int = 0,
        drop_remainder: bool = False,
    ) -> tf.data.Dataset:
        """Batches of `(images float32 [B, H, W, C], labels int32 [B])`, prefetched.

        Args:
            batch_size: Images per batch.
            training: Shuffle, with a new order every epoch (iteration) drawn from `seed`.
                Otherwise the split's order is kept.
            augment: Apply the CIFAR augmentation (pad 4, random crop, random flip) per
                image, new every epoch, drawn from `seed`.
            seed: Seed of the shuffle and the augmentation.
            drop_remainder: Drop the last batch when it is smaller than `batch_size`.
        """
        raise NotImplementedError

    def images(self, batch_size: int | None = None) -> tf.data.Dataset:
        """Batches of images only (float32), in the split's order: for `Model.predict`.
        `batch_size` None: `predict_batch_size(image_shape)`."""
        raise NotImplementedError

    def select(self, indices) -> Split:
        """The images at `indices` (positions in this split), in the order given."""
        raise NotImplementedError

    def head(self, count: int | None) -> Split:
        """The first `count` images (all of them for None)."""
        if count is None or count >= len(self):
            return self
        return self.select(np.arange(count))

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """`(images float32 [N, H, W, C], labels int32 [N])` in memory. A streamed split
        decodes every image: call it on a `head` or `select` of bounded size."""
        raise NotImplementedError

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """The per-channel mean and variance of the images, on the raw scale.

        Made for the model's first layer:
        `keras.layers.Normalization(mean=mean, variance=variance)`. The variance is the
        population variance (divided by N), as `Normalization.adapt` computes it.

        Raises:
            ValueError: If the split is empty.
        """
        if len(self) == 0:
            raise ValueError("Cannot compute channel statistics of an empty split.")
        # Per-batch mean and squared deviations, merged in float64 (Chan et al.): one
        # pass, exact enough, and no float64 copy of the set.
        count, mean, m2 = 0, None, None
        for batch in self.images().as_numpy_iterator():
            pixels = batch.reshape(-1, batch.shape[-1]).astype(np.float64)
            n = len(pixels)
            batch_mean = pixels.mean(axis=0)
            batch_m2 = np.einsum("ij,ij->j", pixels - batch_mean, pixels - batch_mean)
            if mean is None:
                count, mean, m2 = n, batch_mean, batch_m2
                continue
            delta = batch_mean - mean
            total = count + n
            mean = mean + delta * n / total
            m2 = m2 + batch_m2 + delta**2 * count * n / total
            count = total
        return [float(m) for m in mean], [float(v) for v in m2 / count]


class ArraySplit(Split):
    """A split held in memory: images `x` (float32) and labels."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4:
            raise ValueError(
                "Expected images of shape (N, height, width, channels). "
                f"Received: x.shape={x.shape}"
            )
        y = np.asarray(y)
        if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(
                f"Expected one integer label per image, shape ({len(x)},). Received: "
                f"y.shape={y.shape}, y.dtype={y.dtype}"
            )
        self.x = x
        self.labels = y.astype(np.int32)
        self.image_shape = tuple(int(d) for d in x.shape[1:])

    def dataset(self, batch_size, training=False, augment=False, seed=0,
                drop_remainder=False):
        return make_dataset(self.x, self.labels, batch_size, training=training,
                            augment=augment, seed=seed, drop_remainder=drop_remainder)

    def images(self, batch_size=None):
        return predict_dataset(self.x, batch_size or predict_batch_size(self.image_shape))

    def select(self, indices):
        return ArraySplit(self.x[np.asarray(indices, np.int64)],
                          self.labels[np.asarray(indices, np.int64)])

    def arrays(self):
        return self.x, self.labels

    def channel_stats(self):
        # In numpy, without TensorFlow: a multi-worker strategy must be made before
        # TensorFlow runs its first op, and the reference models' statistics come first.
        if len(self) == 0:
            raise ValueError("Cannot compute channel statistics of an empty split.")
        channels = self.x.shape[-1]
        pixels = self.x.reshape(-1, channels)
        # Two passes in float64 over chunks: exact enough, and no float64 copy of the set.
        chunk = 1 << 20
        total = np.zeros(channels)
        for start in range(0, len(pixels), chunk):
            total += pixels[start:start + chunk].sum(axis=0, dtype=np.float64)
        mean = total / len(pixels)
        squares = np.zeros(channels)
        for start in range(0, len(pixels), chunk):
            centred = pixels[start:start + chunk].astype(np.float64) - mean
            squares += np.einsum("ij,ij->j", centred, centred)
        return [float(m) for m in mean], [float(v) for v in squares / len(pixels)]


class StreamSource:
    """Where a `StreamSplit`'s images come from: numbered elements (a file path, an
    encoded record) and how to decode one.

    Attributes:
        random_access: Whether `elements` reads any order as cheaply as file order (a list
            of files: a training epoch shuffles all of it). A sequential source (records
            in files) is read in file order and shuffled through a buffer of
            `SHUFFLE_BUFFER` encoded records.
    """

    random_access: bool = True

    def elements(self, indices: np.ndarray) -> tf.data.Dataset:
        """The raw elements at `indices`, in that order (ascending for a sequential
        source)."""
        raise NotImplementedError

    def decode(self, raw: tf.Tensor) -> tf.Tensor:
        """One raw element -> its image, float32 `image_shape`."""
        raise NotImplementedError

    def name(self, index: int) -> str:
        """What error messages call element `index` (a file path, a record of a file)."""
        raise NotImplementedError


class StreamSplit(Split):
    """A split streamed from files: `source` elements `indices`, their `labels`."""

    streamed = True

    def __init__(self, source: StreamSource, indices, labels, image_shape):
        self.source = source
        self.indices = np.asarray(indices, np.int64)
        self.labels = np.asarray(labels, np.int32)
        if self.labels.shape != self.indices.shape:
            raise ValueError(
                f"Expected one label per image: {len(self.indices)} images, "
                f"{len(self.labels)} labels."
            )
        self.image_shape = tuple(int(d) for d in image_shape)

    def _decoded(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        decode = self.source.decode
        return ds.map(lambda raw, label: (decode(raw), label),
                      num_parallel_calls=parallel_calls())

    def _pairs(self) -> tf.data.Dataset:
        return tf.data.Dataset.zip((
            self.source.elements(self.indices),
            tf.data.Dataset.from_tensor_slices(self.labels),
        ))

    def dataset(self, batch_size, training=False, augment=False, seed=0,
                drop_remainder=False):
        check_batching(batch_size, seed)
        ds = self._pairs()
        if training and len(self):
            buffer = len(self) if self.source.random_access else min(len(self), SHUFFLE_BUFFER)
            ds = ds.shuffle(buffer, seed=seed, reshuffle_each_iteration=True)
        ds = self._decoded(ds).batch(batch_size, drop_remainder=drop_remainder)
        if augment:
            ds = augment_batches(ds, *self.image_shape[:2], seed)
        return ds.prefetch(tf.data.AUTOTUNE)

    def images(self, batch_size=None):
        batch_size = batch_size or predict_batch_size(self.image_shape)
        check_batching(batch_size, 0)
        decode = self.source.decode
        ds = self.source.elements(self.indices).map(decode, num_parallel_calls=parallel_calls())
        return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    def select(self, indices):
        indices = np.asarray(indices, np.int64)
        return StreamSplit(self.source, self.indices[indices], self.labels[indices],
                           self.image_shape)

    def arrays(self):
        batches = list(self.images().as_numpy_iterator())
        x = (np.concatenate(batches) if batches
             else np.zeros((0,) + self.image_shape, np.float32))
        return x, self.labels

    def name(self, position: int = 0) -> str:
        """What error messages call image `position` of this split (its file)."""
        return self.source.name(int(self.indices[position]))


@dataclasses.dataclass
class Splits:
    """A dataset: train, validation and test `Split`s and what they share.

    Attributes:
        train, val, test: The splits (`val` is empty when `validation_fraction` is 0).
        num_classes: Number of classes; labels are in `[0, num_classes)`.
        class_names: Name of each label, `class_names[label]`.
        image_shape: `(height, width, channels)` of every image.
        name: The dataset's `DataConfig.name`.
        crop_to_aspect_ratio: How streamed images were resized (`DataConfig`); an export's
            `serving_any_size` signature resizes the same way.

    `x_train`, `y_train`, ... are the splits' arrays (`Split.arrays`) for a dataset held
    in memory; the labels are there for a streamed one too, the images are not (use
    `train.dataset(...)`, `test.images(...)`, or `test.head(n).arrays()`).
    """

    train: Split
    val: Split
    test: Split
    num_classes: int
    class_names: list[str]
    image_shape: tuple[int, int, int]
    name: str
    crop_to_aspect_ratio: bool = True

    @classmethod
    def from_arrays(cls, x_train, y_train, x_val, y_val, x_test, y_test, num_classes,
                    class_names, image_shape, name) -> Splits:
        """Splits held in memory, from arrays (images NHWC raw pixels, int labels)."""
        return cls(ArraySplit(x_train, y_train), ArraySplit(x_val, y_val),
                   ArraySplit(x_test, y_test), num_classes, list(class_names),
                   tuple(image_shape), name)

    @property
    def streamed(self) -> bool:
        return self.train.streamed

    def _images(self, split: Split, which: str) -> np.ndarray:
        if split.streamed:
            raise ValueError(
                f"Dataset {self.name!r} is streamed from files; its {which} images are not "
                f"held in memory. Use splits.{which}.dataset(batch_size) or "
                f"splits.{which}.images(batch_size), or splits.{which}.head(n).arrays() "
                "for a few of them."
            )
        return split.x

    x_train = property(lambda self: self._images(self.train, "train"))
    x_val = property(lambda self: self._images(self.val, "val"))
    x_test = property(lambda self: self._images(self.test, "test"))
    y_train = property(lambda self: self.train.labels)
    y_val = property(lambda self: self.val.labels)
    y_test = property(lambda self: self.test.labels)

    def __repr__(self) -> str:
        how = "streamed" if self.streamed else "in memory"
        return (
            f"Splits(name={self.name!r}, train={len(self.train)}, val={len(self.val)}, "
            f"test={len(self.test)}, image_shape={self.image_shape}, "
            f"num_classes={self.num_classes}, {how})"
        )

    def channel_stats(self) -> tuple[list[float], list[float]]:
        """`train.channel_stats()`: per-channel mean and variance of the training images.

        Raises:
            ValueError: If the training split is empty.
        """
        if len(self.train) == 0:
            raise ValueError(
                f"Cannot compute channel statistics of dataset {self.name!r}: "
                "its training split is empty."
            )
        return self.train.channel_stats()


def image_batches(x: np.ndarray | Split, batch_size: int | None = None) -> tf.data.Dataset:
    """Batches of images for `Model.predict`, in order: of an array, or of a `Split`
    (streamed if it is). `batch_size` None: `predict_batch_size` of the images' shape."""
    if isinstance(x, Split):
        return x.images(batch_size)
    return predict_dataset(x, batch_size or predict_batch_size(np.shape(x)[1:3]))


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


def check_image_shape(splits: Splits, model: keras.Model) -> None:
    """Checks that `model` takes `splits.image_shape` images (its unknown dimensions
    match anything).

    Raises:
        ValueError: If the channels or a fixed height/width differ; the message names both
            shapes and, for a streamed dataset, its first training image.
    """
    inputs = keras.tree.flatten(getattr(model, "inputs", None) or [])
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise ValueError(
            f"Expected model {model.name!r} to take one image input (batch, height, width, "
            f"channels). Received: inputs {[tuple(i.shape) for i in inputs]}"
        )
    expected = tuple(inputs[0].shape[1:])
    if all(e is None or e == d for e, d in zip(expected, splits.image_shape)):
        return
    example = ""
    if splits.streamed and len(splits.train):
        example = f" (e.g. {splits.train.name(0)})"
    if expected[-1] != splits.image_shape[-1]:
        what = (f"images with {expected[-1]} channels but dataset {splits.name!r} has "
                f"{splits.image_shape[-1]}-channel images{example}")
    else:
        what = (f"{expected[0]}x{expected[1]} images but dataset {splits.name!r} has "
                f"{splits.image_shape[0]}x{splits.image_shape[1]} images{example}; an "
                "image folder or TFRecord dataset is resized to the model's input size "
                "unless `image_size` says otherwise")
    raise ValueError(
        f"Model {model.name!r} takes {what}. Received: model input shape {expected}, "
        f"image shape {splits.image_shape}"
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
