"""The `"cifar10"` / `"cifar100"` sources: CIFAR python batches, or keras.datasets.

The standard python-batches layout in `data_dir` (cifar-10: `data_batch_1` ...
`data_batch_5`, `test_batch`, `batches.meta`; cifar-100: `train`, `test`, `meta`, fine
labels), read directly with pickle (no checksum, any number of images per file). With
`data_dir=None` they come from `keras.datasets` (downloads; only works online).

Security: CIFAR batches are pickles. They are read with an unpickler that only
accepts plain containers and numpy arrays, so a crafted `data_batch_1` cannot run code.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np

from s2dnas_tf.data.config import DataConfig

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


def load_cifar10(config: DataConfig):
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


def load_cifar100(config: DataConfig):
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
