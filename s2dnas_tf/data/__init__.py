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
  `data_dir/test/<class>/...`, every image the same size.

Bad data raises an error that names the file or folder and what is wrong:
`FileNotFoundError` for a missing folder or file, `ValueError` for unreadable or
inconsistent content or an invalid config.

Modules, each importing only those above it:
- `config`: `DataConfig`.
- `splits`: `Splits`, `check_num_classes`, and the per-class limit and the
  validation split.
- `digits`, `cifar`, `image_folder`: the sources, each a
  `load_<name>(config) -> ((x_train, y_train), (x_test, y_test), class_names)`
  returning raw pixels (float32 or uint8, NHWC, 0..255) and int labels.
- `loading`: `load_dataset` and `DATASET_NAMES`, the table of sources.
- `augment`: the CIFAR augmentation.
- `pipelines`: `make_dataset`.

The public names are those in `__all__`; the submodules' other names are internal.
"""

from s2dnas_tf.data.config import DataConfig
from s2dnas_tf.data.splits import Splits, check_num_classes
from s2dnas_tf.data.loading import DATASET_NAMES, DIGITS_DATASETS, load_dataset
from s2dnas_tf.data.pipelines import make_dataset, predict_dataset

__all__ = [
    "DATASET_NAMES",
    "DIGITS_DATASETS",
    "DataConfig",
    "Splits",
    "check_num_classes",
    "load_dataset",
    "make_dataset",
    "predict_dataset",
]
