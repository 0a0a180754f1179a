"""Datasets as numpy splits, and the tf.data pipelines that feed them to Keras.

Normalisation rule (the one rule): everything here yields RAW pixel values, float32 in
[0, 255], NHWC. Normalisation lives inside the model, as its first layer: a
`keras.layers.Normalization(mean=mean, variance=variance)` built from
`Splits.channel_stats()`, so the trained and the exported model both take raw images
and no pipeline, script or server has to repeat the preprocessing. Nothing in this
package normalises.

Datasets (`DataConfig.name`), one module each:
- `"digits"` (default, `digits`): scikit-learn's bundled handwritten digits, 8x8x1, no
  download.
- `"digits_overlap"` (`digits`): the same digits, each with a fainter digit of another
  class drawn over it (fixed seed): harder, some images more than others, so early exits
  have work to do; the quickstart's dataset.
- `"cifar10"` / `"cifar100"` (`cifar`): the python-batches layout in `data_dir`, or a
  `keras.datasets` download with `data_dir=None`.
- `"image_folder"` (`image_folder`): `data_dir/train/<class>/*.{jpg,jpeg,png}` and
  `data_dir/test/<class>/...`, streamed; any sizes with `image_size`.
- `"tfrecord"` (`records`): `tf.train.Example` files of encoded images and labels in
  `data_dir`, streamed.
- `"tfds:NAME"` (`records`): a TFDS dataset already prepared in `data_dir`, streamed.

The first four are held in memory (`ArraySplit`); the others stream from their files
(`StreamSplit`): only labels and file names are held, whatever the dataset's size.

Bad data raises an error that names the file or folder and what is wrong:
`FileNotFoundError` for a missing folder or file, `ValueError` for unreadable or
inconsistent content or an invalid config.

Modules, each importing only those above it:
- `config`: `DataConfig`.
- `augment`: the CIFAR augmentation.
- `pipelines`: `make_dataset` and `predict_dataset`, the pipelines of arrays.
- `splits`: `Split` (`ArraySplit`, `StreamSplit`), `Splits`, `check_num_classes`,
  `check_image_shape`, and the per-class limit and the validation split.
- `decoding`: image bytes -> pixels of one size, and the scan that checks every file.
- `digits`, `cifar`, `image_folder`, `records`: the sources, each a
  `load_<name>(config) -> (train, test, class_names)` returning two `Split`s, or two
  `(x, y)` pairs of raw pixels (float32 or uint8, NHWC, 0..255) and int labels.
- `loading`: `load_dataset`, `load_dataset_for` (a model's input size and checks) and
  `DATASET_NAMES`, the table of sources.

The public names are those in `__all__`; the submodules' other names are internal.
"""

from s2dnas_tf.data.config import DataConfig
from s2dnas_tf.data.pipelines import make_dataset, predict_dataset
from s2dnas_tf.data.splits import (
    ArraySplit,
    Split,
    Splits,
    StreamSplit,
    check_image_shape,
    check_num_classes,
    image_batches,
    predict_batch_size,
)
from s2dnas_tf.data.loading import (
    DATASET_NAMES,
    DIGITS_DATASETS,
    IN_MEMORY_DATASETS,
    load_dataset,
    load_dataset_for,
)

__all__ = [
    "ArraySplit",
    "DATASET_NAMES",
    "DIGITS_DATASETS",
    "DataConfig",
    "IN_MEMORY_DATASETS",
    "Split",
    "Splits",
    "StreamSplit",
    "check_image_shape",
    "check_num_classes",
    "image_batches",
    "load_dataset",
    "load_dataset_for",
    "make_dataset",
    "predict_batch_size",
    "predict_dataset",
]
