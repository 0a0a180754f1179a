"""Tests of s2dnas_tf.data: the three loaders, the splits, the pipelines, bad data."""

from __future__ import annotations

import os
import pickle
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from s2dnas_tf import data
from s2dnas_tf.data import DataConfig, check_num_classes, load_dataset, make_dataset

CIFAR10_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip


# ------------------------------------------------------------------------ helpers


def _batches(ds):
    return [(np.asarray(x), np.asarray(y)) for x, y in ds]


def _write_pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=4)


def _cifar_batch(n, seed, num_classes=10, label_key="labels"):
    rng = np.random.default_rng(seed)
    return {
        "batch_label": f"synthetic {seed}",
        label_key: [int(i % num_classes) for i in range(n)],
        "data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
    }


def _write_cifar10(folder, n_per_file=20):
    """A tiny CIFAR-10 in the python-batches layout; returns the folder."""
    os.makedirs(folder, exist_ok=True)
    for i in range(1, 6):
        _write_pickle(folder / f"data_batch_{i}", _cifar_batch(n_per_file, seed=i))
    _write_pickle(folder / "test_batch", _cifar_batch(n_per_file, seed=0))
    _write_pickle(folder / "batches.meta", {"label_names": CIFAR10_NAMES})
    return folder


def _write_image(path, shape=(8, 8, 3), seed=0, fmt="png"):
    pixels = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    encode = tf.io.encode_png if fmt == "png" else tf.io.encode_jpeg
    tf.io.write_file(str(path), encode(pixels))


def _write_image_folder(root, classes=("a", "b"), n=3, shape=(8, 8, 3)):
    """A tiny image folder: root/{train,test}/<class>/000i.png; returns root."""
    for split in ("train", "test"):
        for c, name in enumerate(classes):
            os.makedirs(root / split / name, exist_ok=True)
            for i in range(n):
                _write_image(
                    root / split / name / f"{i:04d}.png", shape, seed=100 * c + i
                )
    return root


def _rows(x, y):
    """Each (image, label) as hashable bytes, for set comparisons."""
    return {img.tobytes() + bytes([int(label)]) for img, label in zip(x, y)}


# ------------------------------------------------------------------------ digits


def test_digits_shapes_classes_and_scale():
    pytest.importorskip("sklearn")
    splits = load_dataset(DataConfig())
    assert splits.name == "digits"
    assert splits.image_shape == (8, 8, 1)
    assert splits.num_classes == 10
    assert splits.class_names == [str(d) for d in range(10)]
    total = len(splits.x_train) + len(splits.x_val) + len(splits.x_test)
    assert total == 1797
    assert abs(len(splits.x_test) - 0.2 * 1797) <= 10
    for x, y in [
        (splits.x_train, splits.y_train),
        (splits.x_val, splits.y_val),
        (splits.x_test, splits.y_test),
    ]:
        assert x.dtype == np.float32 and y.dtype == np.int32
        assert x.shape[1:] == (8, 8, 1) and len(x) == len(y)
        assert set(np.unique(y)) == set(range(10))
    assert splits.x_train.min() == 0 and splits.x_train.max() == 255


def test_digits_split_is_deterministic_and_test_set_fixed():
    pytest.importorskip("sklearn")
    a = load_dataset(DataConfig())
    b = load_dataset(DataConfig())
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    # Another seed draws another validation set but tests on the same images.
    c = load_dataset(DataConfig(seed=1))
    np.testing.assert_array_equal(a.x_test, c.x_test)
    assert not np.array_equal(a.y_val, c.y_val) or not np.array_equal(a.x_val, c.x_val)
    assert _rows(a.x_train, a.y_train) | _rows(a.x_val, a.y_val) == _rows(
        c.x_train, c.y_train
    ) | _rows(c.x_val, c.y_val)


def test_digits_overlap_is_each_digit_plus_a_fainter_one_of_another_class():
    """Same split and labels as digits; each image is its digit plus between 0 and 0.8 of a
    digit of another class from the same split (test images only from test digits); the
    same images every run, whatever the seed."""
    pytest.importorskip("sklearn")
    from s2dnas_tf.data import digits as digits_lib

    config = DataConfig(name="digits_overlap")
    (plain_tr, y_tr), (plain_te, y_te), _ = digits_lib.load_digits(config)
    (over_tr, y_tr2), (over_te, y_te2), _ = digits_lib.load_digits_overlap(config)
    np.testing.assert_array_equal(y_tr, y_tr2)
    np.testing.assert_array_equal(y_te, y_te2)
    for plain, over, labels in ((plain_tr, over_tr, y_tr), (plain_te, over_te, y_te)):
        assert over.shape == plain.shape and over.max() <= 255 and np.all(over >= plain)
        flat_plain = plain.reshape(len(plain), -1)
        for i in range(0, len(over), 97):  # the overlay is some other-class image of the split
            added = (over[i] - plain[i]).reshape(-1)
            if not added.any():
                continue
            unclipped = over[i].reshape(-1) < 255
            found = False
            for j in np.flatnonzero(labels != labels[i]):
                partner = flat_plain[j]
                k = np.flatnonzero(unclipped & (partner > 0))
                if len(k) == 0:
                    continue
                alpha = added[k[0]] / partner[k[0]]
                if 0 < alpha <= 0.8 and np.allclose(added[unclipped], alpha * partner[unclipped],
                                                     atol=1e-3):
                    found = True
                    break
            assert found, i
    strengths = (over_te - plain_te).sum(axis=(1, 2, 3))
    assert np.mean(strengths > 0) > 0.95  # nearly every image has a visible overlay
    splits = load_dataset(config)
    again = load_dataset(DataConfig(name="digits_overlap", seed=3))
    assert splits.name == "digits_overlap" and splits.image_shape == (8, 8, 1)
    np.testing.assert_array_equal(splits.x_test, again.x_test)
    np.testing.assert_allclose(splits.x_test, over_te, rtol=1e-6)  # as float32
    with pytest.raises(ValueError, match="digits_overlap dataset ships with scikit-learn"):
        load_dataset(DataConfig(name="digits_overlap", data_dir="/tmp"))


def test_digits_without_scikit_learn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        load_dataset(DataConfig())


# ------------------------------------------------------------------------- CIFAR


@pytest.fixture(scope="module")
def cifar_batches(shared_data):
    return str(shared_data / "cifar-10-batches-py")


def test_cifar10_batches_counts_and_stratified_validation(cifar_batches):
    splits = load_dataset(DataConfig("cifar10", cifar_batches))
    assert len(splits.x_train) + len(splits.x_val) == 5085
    assert len(splits.x_test) == 1017
    assert splits.image_shape == (32, 32, 3)
    assert splits.class_names == CIFAR10_NAMES
    assert splits.x_train.dtype == np.float32 and splits.y_train.dtype == np.int32
    assert 0 <= splits.x_train.min() and splits.x_train.max() <= 255

    full = load_dataset(DataConfig("cifar10", cifar_batches, validation_fraction=0))
    assert len(full.x_train) == 5085 and len(full.x_val) == 0
    assert full.x_val.shape == (0, 32, 32, 3)
    # Validation is ~10% of every class, and train + val is exactly the training set.
    counts = np.bincount(full.y_train, minlength=10)
    val_counts = np.bincount(splits.y_val, minlength=10)
    np.testing.assert_array_equal(val_counts, np.floor(0.1 * counts + 0.5))
    assert _rows(splits.x_train, splits.y_train) | _rows(
        splits.x_val, splits.y_val
    ) == _rows(full.x_train, full.y_train)
    assert not _rows(splits.x_train, splits.y_train) & _rows(splits.x_val, splits.y_val)

    other_seed = load_dataset(DataConfig("cifar10", cifar_batches, seed=1))
    assert not np.array_equal(other_seed.x_val, splits.x_val)


def test_cifar10_batches_pixel_layout(cifar_batches):
    """Channel-major rows become NHWC: row[0], row[1024], row[2048] is pixel (0, 0)."""
    with open(os.path.join(cifar_batches, "data_batch_1"), "rb") as f:
        raw = pickle.load(f, encoding="latin1")
    splits = load_dataset(
        DataConfig("cifar10", cifar_batches, validation_fraction=0, per_class_limit=1)
    )
    first = raw["data"][0]
    label = raw["labels"][0]
    image = splits.x_train[splits.y_train == label][0]
    np.testing.assert_array_equal(image[0, 0], first[[0, 1024, 2048]])
    np.testing.assert_array_equal(image[31, 31], first[[1023, 2047, 3071]])


def test_per_class_limit_takes_first_images_in_file_order(cifar_batches):
    full = load_dataset(DataConfig("cifar10", cifar_batches, validation_fraction=0))
    limited = load_dataset(
        DataConfig("cifar10", cifar_batches, validation_fraction=0, per_class_limit=7)
    )
    np.testing.assert_array_equal(np.bincount(limited.y_train), [7] * 10)
    for c in range(10):
        np.testing.assert_array_equal(
            limited.x_train[limited.y_train == c], full.x_train[full.y_train == c][:7]
        )
    assert len(limited.x_test) == 1017  # the test set is never limited


def test_cifar100_layout(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _write_pickle(
        folder / "train",
        _cifar_batch(300, seed=1, num_classes=100, label_key="fine_labels"),
    )
    _write_pickle(
        folder / "test",
        _cifar_batch(100, seed=2, num_classes=100, label_key="fine_labels"),
    )
    names = [f"class_{i:03d}" for i in range(100)]
    _write_pickle(folder / "meta", {"fine_label_names": names})
    splits = load_dataset(DataConfig("cifar100", str(folder), validation_fraction=0.3))
    assert splits.num_classes == 100 and splits.class_names == names
    assert len(splits.x_train) + len(splits.x_val) == 300 and len(splits.x_test) == 100
    np.testing.assert_array_equal(np.bincount(splits.y_val, minlength=100), [1] * 100)


def test_cifar_download_failure_suggests_data_dir(monkeypatch):
    def offline():
        raise Exception("URL fetch failure on https://www.cs.toronto.edu/")

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", offline)
    with pytest.raises(RuntimeError, match="data_dir"):
        load_dataset(DataConfig("cifar10"))


# -------------------------------------------------------------------- image folder


@pytest.fixture(scope="module")
def jpeg_splits(shared_data):
    config = DataConfig(
        "image_folder",
        str(shared_data / "cifar10-jpeg"),
        per_class_limit=20,
        validation_fraction=0,
    )
    return load_dataset(config)


def test_image_folder_counts(shared_data, jpeg_splits):
    assert jpeg_splits.streamed
    assert len(jpeg_splits.train) == 200
    assert len(jpeg_splits.test) == 10_000
    assert jpeg_splits.class_names == CIFAR10_NAMES
    assert jpeg_splits.image_shape == (32, 32, 3)
    np.testing.assert_array_equal(np.bincount(jpeg_splits.y_train), [20] * 10)
    np.testing.assert_array_equal(np.bincount(jpeg_splits.y_test), [1000] * 10)
    x_test, y_test = jpeg_splits.test.head(3).arrays()
    assert x_test.dtype == np.float32 and x_test.shape == (3, 32, 32, 3)
    assert y_test.dtype == np.int32

    with_val = load_dataset(
        DataConfig(
            "image_folder", str(shared_data / "cifar10-jpeg"), per_class_limit=20
        )
    )
    assert len(with_val.train) == 180 and len(with_val.val) == 20
    np.testing.assert_array_equal(np.bincount(with_val.y_val), [2] * 10)


def test_jpeg_copy_matches_lossless_batches(cifar_batches, jpeg_splits):
    """train/<c>/NNNN.jpg is the NNNN-th image of class c in batch order (README).

    The lossless subset keeps the first 1,017 images of each batch, so the first 20
    images of a class all come from data_batch_1 (>= 86 per class there) and are
    the first 20 of the full order too. JPEG error: about 6 levels on average over
    data_batch_1, up to 13 for a busy image; two different images differ by > 25.
    """
    lossless = load_dataset(
        DataConfig("cifar10", cifar_batches, validation_fraction=0, per_class_limit=20)
    )
    jpeg_train, _ = jpeg_splits.train.arrays()
    jpeg_test, _ = jpeg_splits.test.arrays()
    for c in range(10):
        jpeg = jpeg_train[jpeg_splits.y_train == c]
        exact = lossless.x_train[lossless.y_train == c]
        per_image = np.abs(jpeg - exact).mean(axis=(1, 2, 3))
        assert per_image.mean() < 10 and per_image.max() < 15, (c, per_image)
        # And not by accident: the neighbouring image of the class is far off.
        assert np.abs(jpeg[1:] - exact[:-1]).mean(axis=(1, 2, 3)).min() > 20
    for c in (0, 9):
        jpeg = jpeg_test[jpeg_splits.y_test == c][:20]
        exact = lossless.x_test[lossless.y_test == c][:20]
        per_image = np.abs(jpeg - exact).mean(axis=(1, 2, 3))
        assert per_image.mean() < 10 and per_image.max() < 15, (c, per_image)


# ------------------------------------------------------------------------- splits


def test_channel_stats_match_numpy_and_feed_normalization():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(50, 4, 4, 3)).astype(np.float32)
    x[..., 2] *= 0.5
    empty = np.zeros((0, 4, 4, 3), np.float32)
    labels = np.zeros(50, np.int32)
    splits = data.Splits.from_arrays(
        x, labels, empty, labels[:0], x, labels, 1, ["a"], (4, 4, 3), "toy"
    )
    mean, variance = splits.channel_stats()
    pixels = x.reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(mean, pixels.mean(0), rtol=1e-6)
    np.testing.assert_allclose(variance, pixels.var(0), rtol=1e-6)
    normalize = keras.layers.Normalization(mean=mean, variance=variance)
    out = np.asarray(normalize(x)).reshape(-1, 3)
    np.testing.assert_allclose(out.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(out.std(0), 1, atol=1e-3)
    assert "toy" in repr(splits) and "train=50" in repr(splits)


# --------------------------------------------------------------------- pipelines


def test_make_dataset_batches_in_order_when_not_training():
    x = np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1) * np.ones((1, 2, 2, 3))
    y = np.arange(10)
    batches = _batches(make_dataset(x, y, batch_size=4, training=False))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    assert batches[0][0].dtype == np.float32 and batches[0][1].dtype == np.int32
    assert batches[0][0].shape == (4, 2, 2, 3)
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in batches]), x)
    dropped = _batches(make_dataset(x, y, 4, training=False, drop_remainder=True))
    assert [len(b[0]) for b in dropped] == [4, 4]
    as_uint8 = _batches(make_dataset(x.astype(np.uint8), y, 4, training=False))
    assert as_uint8[0][0].dtype == np.float32
    np.testing.assert_array_equal(np.concatenate([b[0] for b in as_uint8]), x)


def test_make_dataset_shuffles_seeded_and_keeps_pairs():
    n = 100
    x = np.arange(n, dtype=np.float32).reshape(n, 1, 1, 1) * np.ones((1, 2, 2, 1))
    y = np.arange(n)
    ds = make_dataset(x, y, batch_size=16, training=True, seed=3)
    epoch1 = _batches(ds)
    epoch2 = _batches(ds)
    order1 = np.concatenate([b[1] for b in epoch1])
    order2 = np.concatenate([b[1] for b in epoch2])
    assert sorted(order1) == list(range(n))
    assert not np.array_equal(order1, y)  # shuffled
    assert not np.array_equal(order1, order2)  # a new order every epoch
    for images, labels in epoch1:  # each image stays with its label
        np.testing.assert_array_equal(images[:, 0, 0, 0], labels)
    again = _batches(make_dataset(x, y, batch_size=16, training=True, seed=3))
    np.testing.assert_array_equal(np.concatenate([b[1] for b in again]), order1)
    other = _batches(make_dataset(x, y, batch_size=16, training=True, seed=4))
    assert not np.array_equal(np.concatenate([b[1] for b in other]), order1)


def _is_shifted_crop(out, source, pad=4):
    padded = np.pad(source, [(pad, pad), (pad, pad), (0, 0)])
    h, w = source.shape[:2]
    for dy in range(2 * pad + 1):
        for dx in range(2 * pad + 1):
            window = padded[dy : dy + h, dx : dx + w]
            if np.array_equal(out, window) or np.array_equal(out, window[:, ::-1]):
                return True
    return False


def test_augmentation_is_a_seeded_pad_crop_flip():
    rng = np.random.default_rng(0)
    x = rng.integers(1, 256, size=(24, 32, 32, 3)).astype(np.float32)
    y = np.arange(24)
    ds = make_dataset(x, y, batch_size=8, training=False, augment=True, seed=7)
    batches = _batches(ds)
    out = np.concatenate([b[0] for b in batches])
    assert out.shape == x.shape and out.dtype == np.float32
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), y)
    assert sum(not np.array_equal(a, b) for a, b in zip(out, x)) >= 20
    assert (out == 0).any()  # some zero padding shows
    for a, b in zip(out, x):
        assert _is_shifted_crop(a, b)
    # Same seed, same images; another epoch or another seed, other images.
    again = make_dataset(x, y, batch_size=8, training=False, augment=True, seed=7)
    np.testing.assert_array_equal(np.concatenate([b[0] for b in _batches(again)]), out)
    assert not np.array_equal(np.concatenate([b[0] for b in _batches(ds)]), out)
    other = make_dataset(x, y, batch_size=8, training=False, augment=True, seed=8)
    assert not np.array_equal(np.concatenate([b[0] for b in _batches(other)]), out)


def test_make_dataset_rejects_bad_arguments():
    x = np.zeros((4, 2, 2, 1), np.float32)
    with pytest.raises(ValueError, match="one integer label per image"):
        make_dataset(x, np.zeros(3, np.int32), batch_size=2, training=False)
    with pytest.raises(ValueError, match="float"):
        make_dataset(x, np.zeros(4), batch_size=2, training=False)
    with pytest.raises(ValueError, match="batch_size"):
        make_dataset(x, np.zeros(4, np.int32), batch_size=0, training=False)
    with pytest.raises(ValueError, match="x.shape"):
        make_dataset(x[..., 0], np.zeros(4, np.int32), batch_size=2, training=False)


# -------------------------------------------------------------- check_num_classes


def _toy_splits(num_classes):
    x = np.zeros((1, 4, 4, 1), np.float32)
    y = np.zeros(1, np.int32)
    names = [str(i) for i in range(num_classes)]
    return data.Splits.from_arrays(x, y, x, y, x, y, num_classes, names, (4, 4, 1), "toy")


def test_check_num_classes():
    inputs = keras.Input((4, 4, 1))
    features = keras.layers.Flatten()(inputs)
    static = keras.Model(inputs, keras.layers.Dense(10)(features), name="static")
    check_num_classes(_toy_splits(10), static)
    with pytest.raises(ValueError, match=r"outputs 10 classes.*'toy' has 5 classes"):
        check_num_classes(_toy_splits(5), static)
    staged = keras.Model(
        inputs, [keras.layers.Dense(10)(features), keras.layers.Dense(5)(features)]
    )
    with pytest.raises(ValueError, match=r"outputs 5 classes \(output 1 of 2\)"):
        check_num_classes(_toy_splits(10), staged)


# ------------------------------------------------------------------ bad configs


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5, "0.1"])
def test_validation_fraction_outside_unit_interval(fraction):
    with pytest.raises(ValueError, match="validation_fraction"):
        load_dataset(DataConfig(validation_fraction=fraction))


@pytest.mark.parametrize("limit", [0, -3, 2.5])
def test_per_class_limit_below_one(limit):
    with pytest.raises(ValueError, match="per_class_limit"):
        load_dataset(DataConfig(per_class_limit=limit))


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ValueError, match="mnist") as info:
        load_dataset(DataConfig(name="mnist"))
    for name in data.DATASET_NAMES:
        assert name in str(info.value)


def test_image_folder_needs_data_dir():
    with pytest.raises(ValueError, match="data_dir"):
        load_dataset(DataConfig("image_folder"))


# ----------------------------------------------------------------- bad CIFAR data


def _corrupt_cifar(folder, case):
    """Breaks the tiny CIFAR-10 in `folder`; returns the name of the broken file."""
    if case == "missing batch":
        os.remove(folder / "data_batch_3")
        return "data_batch_3"
    if case == "missing meta":
        os.remove(folder / "batches.meta")
        return "batches.meta"
    if case == "truncated":
        raw = (folder / "data_batch_2").read_bytes()
        (folder / "data_batch_2").write_bytes(raw[: len(raw) // 2])
        return "data_batch_2"
    if case == "garbage":
        (folder / "test_batch").write_bytes(b"this is not a pickle\x00\xff" * 10)
        return "test_batch"
    if case == "label count":
        batch = _cifar_batch(20, seed=4)
        batch["labels"] = batch["labels"][:-1]
        _write_pickle(folder / "data_batch_4", batch)
        return "data_batch_4"
    if case == "image size":
        batch = _cifar_batch(20, seed=5)
        batch["data"] = batch["data"][:, :3000]
        _write_pickle(folder / "data_batch_5", batch)
        return "data_batch_5"
    if case == "label range":
        batch = _cifar_batch(20, seed=1)
        batch["labels"][0] = 10
        _write_pickle(folder / "data_batch_1", batch)
        return "data_batch_1"
    if case == "missing key":
        batch = _cifar_batch(20, seed=1)
        del batch["labels"]
        _write_pickle(folder / "data_batch_1", batch)
        return "data_batch_1"
    if case == "not a dict":
        _write_pickle(folder / "data_batch_1", [1, 2, 3])
        return "data_batch_1"
    if case == "code in pickle":
        # A pickle that would call os.getcwd() when loaded (harmless, but code).
        (folder / "data_batch_1").write_bytes(b"cos\ngetcwd\n(tR.")
        return "data_batch_1"
    raise AssertionError(case)


CIFAR_CASES = {
    "missing batch": (FileNotFoundError, "missing"),
    "missing meta": (FileNotFoundError, "missing"),
    "truncated": (ValueError, "truncated"),
    "garbage": (ValueError, "not a valid pickle"),
    "label count": (ValueError, "19 labels .* for 20 images"),
    "image size": (ValueError, "wrong size.*3072"),
    "label range": (ValueError, r"outside \[0, 10\)"),
    "missing key": (ValueError, "no key 'labels'"),
    "not a dict": (ValueError, "should hold a dict"),
    "code in pickle": (ValueError, "Refusing to load the global os.getcwd"),
}


def test_tiny_cifar10_folder_loads(tmp_path):
    splits = load_dataset(DataConfig("cifar10", str(_write_cifar10(tmp_path / "c"))))
    assert len(splits.x_train) + len(splits.x_val) == 100 and len(splits.x_test) == 20


@pytest.mark.parametrize("case", sorted(CIFAR_CASES))
def test_bad_cifar_data_names_the_file(tmp_path, case):
    folder = _write_cifar10(tmp_path / "cifar")
    broken = _corrupt_cifar(folder, case)
    error, message = CIFAR_CASES[case]
    with pytest.raises(error, match=message) as info:
        load_dataset(DataConfig("cifar10", str(folder)))
    assert str(folder / broken) in str(info.value)


def test_missing_cifar_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        load_dataset(DataConfig("cifar10", str(missing)))
    assert str(missing) in str(info.value)


# ---------------------------------------------------------- bad image-folder data


def test_tiny_image_folder_loads_png_and_jpeg(tmp_path):
    root = _write_image_folder(tmp_path / "imgs", classes=("b", "a"), n=4)
    _write_image(root / "train" / "a" / "0004.JPG", fmt="jpeg")
    (root / "train" / "a" / "notes.txt").write_text("ignored")
    splits = load_dataset(DataConfig("image_folder", str(root), validation_fraction=0))
    assert splits.class_names == ["a", "b"]
    np.testing.assert_array_equal(np.bincount(splits.y_train), [5, 4])
    assert splits.image_shape == (8, 8, 3) and len(splits.test) == 8
    # Files are sorted per class and labels follow the sorted class names.
    first = tf.io.decode_png(tf.io.read_file(str(root / "train" / "a" / "0000.png")))
    np.testing.assert_array_equal(splits.train.head(1).arrays()[0][0], np.asarray(first))


def _corrupt_image_folder(root, case):
    """Breaks the tiny image folder in `root`; returns the path to name, and a match."""
    train_a = root / "train" / "a"
    if case == "missing test folder":
        os.rename(root / "test", root / "tests")
        return root / "test", FileNotFoundError, "missing"
    if case == "empty class folder":
        for f in (root / "train" / "b").iterdir():
            f.unlink()
        return root / "train" / "b", ValueError, "empty"
    if case == "corrupt jpeg":
        (train_a / "0001.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        return train_a / "0001.jpg", ValueError, "Cannot decode"
    if case == "truncated jpeg":
        _write_image(root / "test" / "b" / "0009.jpg", fmt="jpeg")
        raw = (root / "test" / "b" / "0009.jpg").read_bytes()
        (root / "test" / "b" / "0009.jpg").write_bytes(raw[: len(raw) // 2])
        return root / "test" / "b" / "0009.jpg", ValueError, "Cannot decode"
    if case == "corrupt first image":
        (train_a / "0000.png").write_bytes(b"garbage")
        return train_a / "0000.png", ValueError, "Cannot decode"
    if case == "wrong size":
        _write_image(root / "train" / "b" / "0001.png", shape=(16, 16, 3))
        match = r"16x16 but the first training image .* is 8x8.*image_size"
        return root / "train" / "b" / "0001.png", ValueError, match
    if case == "class folders differ":
        os.makedirs(root / "test" / "c")
        _write_image(root / "test" / "c" / "0000.png")
        return root / "test", ValueError, r"only in test: \['c'\]"
    raise AssertionError(case)


IMAGE_FOLDER_CASES = [
    "missing test folder",
    "empty class folder",
    "corrupt jpeg",
    "truncated jpeg",
    "corrupt first image",
    "wrong size",
    "class folders differ",
]


@pytest.mark.parametrize("case", IMAGE_FOLDER_CASES)
def test_bad_image_folder_names_the_file(tmp_path, case):
    root = _write_image_folder(tmp_path / "imgs")
    path, error, message = _corrupt_image_folder(root, case)
    with pytest.raises(error, match=message) as info:
        load_dataset(DataConfig("image_folder", str(root)))
    assert str(path) in str(info.value)


def test_missing_image_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as info:
        load_dataset(DataConfig("image_folder", str(missing)))
    assert str(missing) in str(info.value)


# numpy 2 writes numpy._core; the original CIFAR files (python 2, numpy 1) name
# numpy.core, in protocol 0-2 text opcodes, where the name can be swapped in place.
@pytest.mark.parametrize(
    "numpy_module, protocol",
    [("numpy._core", p) for p in range(6)] + [("numpy.core", p) for p in range(4)],
)
def test_cifar_batches_of_every_pickle_protocol_load(tmp_path, numpy_module, protocol):
    """The safe unpickler reads numpy 1 and numpy 2 pickles of every protocol."""
    folder = _write_cifar10(tmp_path / "cifar", n_per_file=10)
    batch = _cifar_batch(10, seed=1)
    raw = pickle.dumps(batch, protocol=protocol)
    if numpy_module == "numpy.core":
        raw = raw.replace(b"numpy._core.", b"numpy.core.")
        assert b"numpy.core.multiarray" in raw
    (folder / "data_batch_1").write_bytes(raw)
    splits = load_dataset(DataConfig("cifar10", str(folder), validation_fraction=0))
    first = batch["data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    np.testing.assert_array_equal(splits.x_train[0], first)
