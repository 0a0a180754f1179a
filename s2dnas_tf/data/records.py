"""The `"tfrecord"` and `"tfds:NAME"` sources: `tf.train.Example` records of encoded
images and integer labels, streamed from the files.

`tfrecord`: `data_dir` holds the record files; a file belongs to the training set when
its name has the word `train` (`train.tfrecord`, `train-00001-of-00004`,
`cifar10-train.tfrecord-00000-of-00001`) and to the test set when it has `test`.
Each record has the image as encoded bytes (JPEG/PNG) under `image` or `image/encoded`,
and its label as an int64 under `label` or `image/class/label` (the TFDS and TF-slim
conventions; the first record of the first training file decides). Class names come
from a `label.labels.txt` beside the files (one name per line, as TFDS writes it), else
they are the label numbers.

`tfds:NAME`: a dataset already prepared by TensorFlow Datasets (`tfds.builder(NAME,
data_dir=...).download_and_prepare()` or `tfds build`) in `data_dir`:
`data_dir/NAME/[CONFIG/]VERSION/` with `NAME-train.tfrecord-*` and `NAME-test.tfrecord-*`
(its highest version is read). TFDS writes an image classification set as exactly the
records above, so it is read the same way, without the tensorflow-datasets package.

Records are read in file order, so a training epoch shuffles through a buffer of
`SHUFFLE_BUFFER` encoded records; memory does not grow with the number of records. The
labels are read once, when the dataset is loaded, by a scan that also decodes every image
and names the file and record of a bad one.
"""

from __future__ import annotations

import glob
import os
import re

import numpy as np
import tensorflow as tf

from s2dnas_tf.data import decoding
from s2dnas_tf.data.config import DataConfig
from s2dnas_tf.data.image_folder import EncodedImages, fix_shape
from s2dnas_tf.data.splits import StreamSplit, first_per_class

IMAGE_KEYS = ("image", "image/encoded")
LABEL_KEYS = ("label", "image/class/label")
_RECORD_PATTERN = re.compile(r"\.tfrecords?(\b|$)")


def _is_split_file(name: str, split: str) -> bool:
    return re.search(rf"(^|[^a-z]){split}([^a-z]|$)", name.lower()) is not None


class _Records(EncodedImages):
    random_access = False

    def __init__(self, files: list[str], counts: list[int], keys: tuple[str, str]):
        self.files = files
        self.starts = np.cumsum([0] + counts)
        self.image_key, self.label_key = keys

    @property
    def total(self) -> int:
        return int(self.starts[-1])

    def elements(self, indices):
        indices = np.asarray(indices, np.int64)
        records = tf.data.TFRecordDataset(self.files)
        if len(indices) == self.total:
            return records  # every record; indices are ascending and unique
        if np.any(np.diff(indices) <= 0):
            raise ValueError(
                "A TFRecord dataset is read in file order: select its records in "
                "ascending order."
            )
        keep = np.zeros(self.total, bool)
        keep[indices] = True
        keep = tf.constant(keep)
        return records.enumerate().filter(
            lambda i, _: tf.gather(keep, i)).map(lambda _, record: record)

    def encoded(self, raw):
        features = tf.io.parse_single_example(
            raw, {self.image_key: tf.io.FixedLenFeature([], tf.string)})
        return features[self.image_key]

    def name(self, index):
        file_index = int(np.searchsorted(self.starts, index, side="right") - 1)
        return f"record {index - self.starts[file_index]} of {self.files[file_index]}"

    def record(self, index) -> bytes:
        file_index = int(np.searchsorted(self.starts, index, side="right") - 1)
        local = int(index - self.starts[file_index])
        ds = tf.data.TFRecordDataset(self.files[file_index]).skip(local).take(1)
        return next(iter(ds)).numpy()

    def diagnose(self, index):
        example = _parse(self.record(index), self.name(index))
        for key, kind in ((self.image_key, "bytes_list"), (self.label_key, "int64_list")):
            feature = example.features.feature.get(key)
            if feature is None or feature.WhichOneof("kind") != kind or len(
                    getattr(feature, kind).value) != 1:
                raise ValueError(
                    f"{self.name(index)} has no single {kind.split('_')[0]} feature "
                    f"{key!r} (every record needs one, like the first). Its features: "
                    f"{_describe(example)}"
                )
        decoding.decode_error(
            self.name(index), example.features.feature[self.image_key].bytes_list.value[0])


def _parse(record: bytes, what: str) -> tf.train.Example:
    try:
        return tf.train.Example.FromString(record)
    except Exception as err:  # protobuf's DecodeError
        raise ValueError(f"{what} is not a tf.train.Example ({err}).") from err


def _describe(example: tf.train.Example) -> str:
    kinds = {k: f.WhichOneof("kind") for k, f in example.features.feature.items()}
    return ", ".join(f"{k} ({v})" for k, v in sorted(kinds.items())) or "none"


def _count(path: str) -> int:
    try:
        return int(tf.data.TFRecordDataset(path).reduce(np.int64(0), lambda n, _: n + 1))
    except tf.errors.OpError as err:
        raise ValueError(
            f"Cannot read TFRecord file {path}: it is corrupt or truncated "
            f"({err.message})."
        ) from err


def _keys(path: str) -> tuple[str, str]:
    """The image and label feature keys of the first record of `path`."""
    first = next(iter(tf.data.TFRecordDataset(path).take(1)), None)
    if first is None:
        raise ValueError(f"TFRecord file {path} has no records.")
    example = _parse(first.numpy(), f"record 0 of {path}")
    found = example.features.feature
    image = next((k for k in IMAGE_KEYS if k in found), None)
    label = next((k for k in LABEL_KEYS if k in found), None)
    if image is None or label is None:
        missing = [] if image else [f"an image (bytes) under one of {list(IMAGE_KEYS)}"]
        missing += [] if label else [f"a label (int64) under one of {list(LABEL_KEYS)}"]
        raise ValueError(
            f"Record 0 of {path} lacks {' and '.join(missing)}. Its features: "
            f"{_describe(example)}"
        )
    return image, label


def _read(files: list[str], keys: tuple[str, str]):
    """A source over `files` and every record's label, from a scan of every record."""
    source = _Records(files, [_count(f) for f in files], keys)
    image_key, label_key = keys

    def inspect(raw):
        features = tf.io.parse_single_example(raw, {
            image_key: tf.io.FixedLenFeature([], tf.string),
            label_key: tf.io.FixedLenFeature([], tf.int64),
        })
        image = tf.io.decode_image(features[image_key], expand_animations=False)
        return tf.shape(image, out_type=tf.int32), features[label_key]

    shapes, labels = decoding.scan(
        source.elements(np.arange(source.total)), source.total, inspect, source.diagnose,
        source.name)
    negative = np.flatnonzero(labels < 0)
    if len(negative):
        raise ValueError(
            f"{source.name(int(negative[0]))} has label {labels[negative[0]]}; labels are "
            "class indices >= 0.")
    return source, shapes, labels


def _class_names(folder: str, labels: np.ndarray) -> list[str]:
    path = os.path.join(folder, "label.labels.txt")
    count = int(labels.max()) + 1 if len(labels) else 0
    if not os.path.exists(path):
        return [str(i) for i in range(count)]
    with open(path) as f:
        names = [line.strip() for line in f if line.strip()]
    if len(names) < count:
        raise ValueError(
            f"{path} names {len(names)} classes but the records have label {count - 1}.")
    return names


def _load(config: DataConfig, folder: str, files: dict[str, list[str]]):
    keys = _keys(files["train"][0])
    train, train_shapes, y_train = _read(files["train"], keys)
    test, test_shapes, y_test = _read(files["test"], keys)
    class_names = _class_names(folder, np.concatenate([y_train, y_test]))
    keep = np.arange(len(y_train))
    if config.per_class_limit is not None:
        keep = first_per_class(y_train, config.per_class_limit)
    shape = fix_shape(config, [(train, train_shapes[keep]), (test, test_shapes)])
    return (
        StreamSplit(train, keep, y_train[keep], shape),
        StreamSplit(test, np.arange(len(y_test)), y_test, shape),
        class_names,
    )


def _split_files(folder: str, is_split_file, what: str) -> dict[str, list[str]]:
    names = os.listdir(folder)
    files = {}
    for split in ("train", "test"):
        files[split] = sorted(
            os.path.join(folder, n) for n in names
            if _RECORD_PATTERN.search(n) and is_split_file(n, split))
        if not files[split]:
            raise FileNotFoundError(
                f"{what} {folder} has no {split} records: expected files named like "
                f"{split}.tfrecord or NAME-{split}.tfrecord-00000-of-00001. Found: "
                f"{sorted(names)[:10]}"
            )
    return files


def load_tfrecord(config: DataConfig):
    folder = config.data_dir
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"TFRecord folder {folder} does not exist or is not a folder.")
    files = _split_files(folder, _is_split_file, "TFRecord folder")
    return _load(config, folder, files)


def _version_key(name: str):
    return tuple(int(p) for p in name.split("."))


def tfds_folder(data_dir: str, name: str) -> str:
    """`data_dir/NAME[/CONFIG]/VERSION`, the highest prepared version of TFDS `name`."""
    root = os.path.join(data_dir, *name.split("/"))
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"No prepared TFDS dataset {name!r} in {data_dir}: {root} is missing. Prepare "
            f"it with tfds.builder({name!r}, data_dir={data_dir!r}).download_and_prepare() "
            "or `tfds build`, then pass that data_dir."
        )
    versions = [
        v for v in os.listdir(root)
        if re.fullmatch(r"\d+\.\d+\.\d+", v)
        and glob.glob(os.path.join(root, v, "*.tfrecord*"))
    ]
    if not versions:
        raise FileNotFoundError(
            f"{root} holds no prepared version of TFDS dataset {name!r} (a VERSION/ folder "
            "with .tfrecord files); prepare it with download_and_prepare() first."
        )
    return os.path.join(root, max(versions, key=_version_key))


def load_tfds(config: DataConfig):
    name = config.name.split(":", 1)[1]
    folder = tfds_folder(config.data_dir, name)
    base = name.split("/")[0]
    files = _split_files(
        folder, lambda n, split: n.startswith(f"{base}-{split}.tfrecord"),
        f"TFDS dataset {name!r}:")
    return _load(config, folder, files)
