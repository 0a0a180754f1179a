"""Tests of the streamed datasets: image folders of any size, TFRecord files and prepared
TFDS directories, read batch by batch (s2dnas_tf.data StreamSplit), and their bad data."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from s2dnas_tf import data
from s2dnas_tf.data import DataConfig, load_dataset

# ------------------------------------------------------------------------ helpers


def _pixels(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _encode(pixels, fmt="png"):
    encode = tf.io.encode_png if fmt == "png" else tf.io.encode_jpeg
    return encode(pixels).numpy()


def _mixed_folder(root, n=4):
    """root/{train,test}/{a,b}/ of PNG and JPEG images of several sizes, a greyscale one
    among them; returns root."""
    sizes = [(9, 14), (20, 11), (16, 16), (12, 30)]
    for split in ("train", "test"):
        for c, name in enumerate(("a", "b")):
            os.makedirs(root / split / name)
            for i in range(n):
                channels = 1 if (split, c, i) == ("train", 1, 2) else 3
                pixels = _pixels(sizes[i % len(sizes)] + (channels,), seed=10 * c + i)
                fmt = "jpeg" if i % 2 else "png"
                (root / split / name / f"{i:04d}.{'jpg' if i % 2 else 'png'}").write_bytes(
                    _encode(pixels, fmt))
    return root


def _example(features: dict) -> bytes:
    feature = {}
    for key, value in features.items():
        if isinstance(value, bytes):
            feature[key] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        else:
            feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _write_records(path, examples):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for example in examples:
            writer.write(example)


def _indexed_image(index, size=(6, 8)):
    """An image whose every pixel is `index` (PNG, lossless): the pixels name it."""
    return _encode(np.full(size + (3,), index, np.uint8))


def _record_folder(root, n_train=30, n_test=10, keys=("image", "label"), per_file=12):
    """root/train-0000i.tfrecord ... and root/test.tfrecord; image i is all pixels i, its
    label i % 3. Returns root."""
    os.makedirs(root)
    image_key, label_key = keys
    examples = [_example({image_key: _indexed_image(i), label_key: i % 3})
                for i in range(n_train)]
    for f, start in enumerate(range(0, n_train, per_file)):
        _write_records(root / f"train-{f:05d}.tfrecord", examples[start:start + per_file])
    _write_records(root / "test.tfrecord", [
        _example({image_key: _indexed_image(100 + i), label_key: i % 3})
        for i in range(n_test)])
    return root


# ---------------------------------------------------------------- image folders


def test_mixed_size_folder_streams_like_keras_image_dataset_from_directory(tmp_path):
    """Resized (cropped to the aspect ratio, or stretched) exactly as Keras's own loader
    does; greyscale images become RGB; nothing is held but file names and labels."""
    root = _mixed_folder(tmp_path / "imgs")
    for crop in (True, False):
        splits = load_dataset(DataConfig(
            "image_folder", str(root), validation_fraction=0, image_size=(12, 16),
            crop_to_aspect_ratio=crop))
        assert splits.streamed and splits.image_shape == (12, 16, 3)
        assert not hasattr(splits.train, "x")
        with pytest.raises(ValueError, match="streamed.*splits.train.dataset"):
            splits.x_train
        ours, labels = splits.train.arrays()
        reference = keras.utils.image_dataset_from_directory(
            str(root / "train"), image_size=(12, 16), crop_to_aspect_ratio=crop,
            shuffle=False, batch_size=100, color_mode="rgb")
        want_x, want_y = next(iter(reference))
        np.testing.assert_array_equal(labels, np.asarray(want_y))
        np.testing.assert_allclose(ours, np.asarray(want_x), atol=1e-3)
    # Cropping kept the centre: a 12x30 image cropped to 3:4 is its columns 7..22.
    wide = ours[3]  # train/a/0003.jpg, 12x30, stretched in the last round
    assert wide.shape == (12, 16, 3)


def test_mixed_sizes_without_image_size_are_refused_by_name(tmp_path):
    root = _mixed_folder(tmp_path / "imgs")
    with pytest.raises(ValueError, match="image_size") as info:
        load_dataset(DataConfig("image_folder", str(root)))
    assert str(root / "train" / "a" / "0001.jpg") in str(info.value)


def test_stream_split_epochs_shuffle_seeded_and_keep_pairs(tmp_path):
    """Every image once per epoch, paired with its own label, a new order each epoch,
    the same sequence for the same seed; in order when not training."""
    root = _record_folder(tmp_path / "rec", n_train=30)
    splits = load_dataset(DataConfig("tfrecord", str(root), validation_fraction=0))
    ds = splits.train.dataset(batch_size=8, training=True, seed=3)

    def epoch(dataset):
        pairs = [(int(x[0, 0, 0]), int(y)) for xb, yb in dataset for x, y in zip(xb, yb)]
        for index, label in pairs:
            assert label == index % 3
        return [index for index, _ in pairs]

    first, second = epoch(ds), epoch(ds)
    assert sorted(first) == sorted(second) == list(range(30))
    assert first != second and first != list(range(30))
    assert epoch(splits.train.dataset(8, training=True, seed=3)) == first
    assert epoch(splits.train.dataset(8)) == list(range(30))
    assert [int(x[0, 0, 0]) for x in splits.test.arrays()[0]] == list(range(100, 110))
    # The CIFAR augmentation as for arrays: same shapes and labels, padded/shifted pixels.
    plain = list(splits.train.dataset(8))
    shifted = list(splits.train.dataset(8, augment=True, seed=1))
    assert [y.numpy().tolist() for _, y in shifted] == [y.numpy().tolist() for _, y in plain]
    assert all(a.shape == b.shape for (a, _), (b, _) in zip(shifted, plain))
    # Zero padding came into images whose every pixel is their (nonzero) index.
    assert any(((a.numpy() == 0) & (a.numpy().max(axis=(1, 2, 3), keepdims=True) > 0)).any()
               for a, _ in shifted)


# ---------------------------------------------------------------------- TFRecord


def test_tfrecord_folder_loads_splits_and_selects(tmp_path):
    """Labels, per-class limit and the stratified validation split as for arrays; a
    validation split is a filtered read of the same files; TF-slim keys work too."""
    root = _record_folder(tmp_path / "rec", keys=("image/encoded", "image/class/label"))
    (root / "label.labels.txt").write_text("zero\none\ntwo\n")
    splits = load_dataset(DataConfig(
        "tfrecord", str(root), per_class_limit=8, validation_fraction=0.25, seed=1))
    assert splits.class_names == ["zero", "one", "two"] and splits.num_classes == 3
    assert (len(splits.train), len(splits.val), len(splits.test)) == (18, 6, 10)
    np.testing.assert_array_equal(np.bincount(splits.y_val), [2, 2, 2])
    for split in (splits.train, splits.val):
        x, y = split.arrays()
        index = x[:, 0, 0, 0].astype(int)
        assert list(index) == sorted(index) and all(index < 24)  # the first 8 per class
        np.testing.assert_array_equal(y, index % 3)
    assert not set(splits.train.arrays()[0][:, 0, 0, 0]) & set(splits.val.arrays()[0][:, 0, 0, 0])
    mean, variance = splits.train.channel_stats()
    pixels = splits.train.arrays()[0].reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-9)
    np.testing.assert_allclose(variance, pixels.var(0), rtol=1e-9)


def _bad_records(root, case):
    """Breaks a record folder; returns (the file the error must name, a match)."""
    train = root / "train-00001.tfrecord"
    good = [_example({"image": _indexed_image(i), "label": 1}) for i in range(3)]
    if case == "record without image":
        _write_records(train, good[:2] + [_example({"label": 1, "pixels": b"xx"})])
        return train, r"record 2 of .*no single bytes feature 'image'.*pixels \(bytes_list\)"
    if case == "label of the wrong type":
        _write_records(train, good[:1] + [_example({"image": _indexed_image(1),
                                                   "label": b"cat"})])
        return train, r"record 1 of .*int64 feature 'label'"
    if case == "corrupt image":
        _write_records(train, good[:1] + [_example({"image": b"\x89PNG not", "label": 0})])
        return train, r"Cannot decode image record 1 of"
    if case == "first record without features":
        for f in root.glob("train-*"):
            f.unlink()
        _write_records(train, [_example({"img": b"x", "y": 1})])
        return train, r"lacks an image .*'image/encoded'.*and a label.*img \(bytes_list\)"
    if case == "truncated file":
        _write_records(train, good)
        raw = train.read_bytes()
        train.write_bytes(raw[: len(raw) - 7])
        return train, "corrupt or truncated"
    if case == "negative label":
        _write_records(train, good[:1] + [_example({"image": _indexed_image(1), "label": -2})])
        return train, r"record 1 of .*label -2"
    if case == "no test files":
        (root / "test.tfrecord").unlink()
        return root, "no test records"
    raise AssertionError(case)


@pytest.mark.parametrize("case", [
    "record without image", "label of the wrong type", "corrupt image",
    "first record without features", "truncated file", "negative label", "no test files",
])
def test_bad_tfrecords_name_the_file_and_feature(tmp_path, case):
    root = _record_folder(tmp_path / "rec", n_train=6, per_file=6)
    path, match = _bad_records(root, case)
    with pytest.raises((ValueError, FileNotFoundError), match=match) as info:
        load_dataset(DataConfig("tfrecord", str(root)))
    assert str(path) in str(info.value)


# -------------------------------------------------------------------------- TFDS


def _build_tfds(data_dir):
    """A small image classification set built and prepared by TensorFlow Datasets itself
    (no download): images of several sizes, labels 'dark' / 'light'."""
    import tensorflow_datasets as tfds

    class TinyShades(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=["dark", "light"]),
                }),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(20, 0),
                    "test": self._generate_examples(6, 1)}

        def _generate_examples(self, n, seed):
            rng = np.random.default_rng(seed)
            for i in range(n):
                height, width = (int(d) for d in rng.integers(10, 20, size=2))
                shade = 40 + 160 * (i % 2) + i
                yield i, {"image": np.full((height, width, 3), shade, np.uint8),
                          "label": i % 2}

    builder = TinyShades(data_dir=str(data_dir))
    builder.download_and_prepare()
    return builder


def test_tfds_prepared_directory_streams_as_tfds_reads_it(tmp_path):
    builder = _build_tfds(tmp_path / "tfds")
    splits = load_dataset(DataConfig(
        "tfds:tiny_shades", str(tmp_path / "tfds"), validation_fraction=0.2,
        image_size=(8, 8)))
    assert splits.class_names == ["dark", "light"] and splits.image_shape == (8, 8, 3)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (16, 4, 6)
    reference = list(builder.as_dataset(split="test", shuffle_files=False).as_numpy_iterator())
    x, y = splits.test.arrays()
    np.testing.assert_array_equal(y, [r["label"] for r in reference])
    np.testing.assert_array_equal(x[:, 0, 0, 0], [r["image"][0, 0, 0] for r in reference])
    with pytest.raises(FileNotFoundError, match="download_and_prepare"):
        load_dataset(DataConfig("tfds:no_such_set", str(tmp_path / "tfds")))


# ------------------------------------------------------------------ model checks


def test_data_for_a_model_takes_its_input_size_and_refuses_other_channels(tmp_path):
    root = _mixed_folder(tmp_path / "imgs")
    inputs = keras.Input((10, 10, 3))
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(inputs))
    rgb = keras.Model(inputs, outputs, name="rgb")
    splits = data.load_dataset_for(DataConfig("image_folder", str(root)), rgb)
    assert splits.image_shape == (10, 10, 3)
    assert splits.train.dataset(4).element_spec[0].shape.as_list() == [None, 10, 10, 3]

    inputs = keras.Input((10, 10, 1))
    grey = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)),
                       name="grey")
    with pytest.raises(ValueError, match=r"1 channels but .* 3-channel images") as info:
        data.load_dataset_for(DataConfig("image_folder", str(root)), grey)
    assert str(root / "train" / "a" / "0000.png") in str(info.value)
    with pytest.raises(ValueError, match=r"10x10 images but .* 12x16"):
        data.load_dataset_for(
            DataConfig("image_folder", str(root), image_size=(12, 16)), rgb)


@pytest.mark.parametrize("config, match", [
    (DataConfig("digits", image_size=(8, 8)), "held in memory"),
    (DataConfig("image_folder", "/tmp", image_size=(8,)), "two integers"),
    (DataConfig("image_folder", "/tmp", image_size=(0, 8)), "two integers"),
    (DataConfig("tfrecord"), "needs `data_dir`"),
    (DataConfig("tfds:"), "Unknown dataset"),
    (DataConfig("image_folder", "/tmp", crop_to_aspect_ratio="yes"), "True or False"),
])
def test_bad_stream_configs(config, match):
    with pytest.raises(ValueError, match=match):
        load_dataset(config)


def test_prediction_batches_shrink_with_the_image_size():
    """256 small images per prediction batch, 32 of 224x224 (activation memory)."""
    assert data.predict_batch_size((8, 8, 1)) == 256
    assert data.predict_batch_size((32, 32, 3)) == 256
    assert data.predict_batch_size((224, 224, 3)) == 32
    assert data.predict_batch_size((2000, 3000, 3)) == 1
    x = np.zeros((70, 224, 224, 3), np.float32)
    assert [int(b.shape[0]) for b in data.image_batches(x)] == [32, 32, 6]
