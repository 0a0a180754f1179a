"""SavedModels in TF Serving's layout (`<export_dir>/<name>/<version>/`), written atomically."""

from __future__ import annotations

import numbers
import os
import pathlib
import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from s2dnas_tf.export.serving import DynamicModule, StaticModule, validate_thresholds


def export_saved_model(
    net: keras.Model | DynamicModule,
    thresholds: Sequence[float] | None,
    export_dir: str | os.PathLike,
    name: str,
    version: int = 1,
    overwrite: bool = False,
    crop_to_aspect_ratio: bool = True,
) -> str:
    """Writes the dynamic-inference SavedModel to `<export_dir>/<name>/<version>/`.

    The SavedModel loads with TensorFlow alone (`tf.saved_model.load`, TF Serving); its
    signatures are described in the module docstring. The version directory is written
    beside its final place under a name TF Serving ignores and renamed into place, so no
    half-written version is ever visible.

    Args:
        net: A network returned by `s2dnas_tf.transform`, or a `DynamicModule`.
        thresholds: S - 1 exit thresholds (e.g. from `calibration.calibrate_for_budget`);
            None keeps a `DynamicModule`'s own.
        export_dir: Parent of the model's base directory.
        name: Model name: the base directory's name, one path component.
        version: TF Serving version number, a non-negative integer.
        overwrite: Replace an existing version directory.
        crop_to_aspect_ratio: How `serving_any_size` resizes images of another size:
            as the training data was (`DataConfig.crop_to_aspect_ratio`). Not for a
            `DynamicModule`, which has its own.

    Returns:
        The version directory's path.

    Raises:
        FileExistsError: If the version directory exists and `overwrite` is False.
        TypeError: If `thresholds` are not numbers.
        ValueError: On invalid `thresholds`, `name` or `version`, or a net that cannot be
            split into stages.
    """
    _check_name_and_version(name, version)
    if isinstance(net, DynamicModule):
        module = net
        if thresholds is not None:
            module.thresholds.assign(validate_thresholds(thresholds, module.num_stages))
    else:
        if thresholds is None:
            raise ValueError(
                "Expected S - 1 exit thresholds for a multi-stage network. Received: "
                "thresholds=None"
            )
        module = DynamicModule(net, thresholds, crop_to_aspect_ratio=crop_to_aspect_ratio)
    return write_saved_model(module, export_dir, name, version, overwrite)


def export_static(
    model: keras.Model | StaticModule,
    export_dir: str | os.PathLike,
    name: str,
    version: int = 1,
    overwrite: bool = False,
    crop_to_aspect_ratio: bool = True,
) -> str:
    """Writes a static model with the dynamic export's interface (see `StaticModule`).

    Signatures `serving_default`, `serving_batch1` and `serving_any_size`: images -> `logits`,
    `probabilities`, `exit_stage` (all 1). Same layout and overwrite rule as
    `export_saved_model`; `convert_to_tflite` converts it too.

    Args:
        model: Keras model from images to class scores [N, K], or a `StaticModule`.
        export_dir: Parent of the model's base directory.
        name: Model name: the base directory's name, one path component.
        version: TF Serving version number, a non-negative integer.
        overwrite: Replace an existing version directory.
        crop_to_aspect_ratio: As in `export_saved_model`.

    Returns:
        The version directory's path.

    Raises:
        FileExistsError: If the version directory exists and `overwrite` is False.
        TypeError, ValueError: On an invalid model, `name` or `version`.
    """
    _check_name_and_version(name, version)
    module = model if isinstance(model, StaticModule) else StaticModule(
        model, crop_to_aspect_ratio=crop_to_aspect_ratio)
    return write_saved_model(module, export_dir, name, version, overwrite)


def _check_name_and_version(name: Any, version: Any) -> None:
    if not isinstance(name, str) or name in ("", ".", "..") or "/" in name or (
        os.sep in name
    ):
        raise ValueError(
            f"Expected the model name as one path component. Received: name={name!r}"
        )
    if isinstance(version, bool) or not isinstance(version, numbers.Integral) or version < 0:
        raise ValueError(
            "Expected the version as a non-negative integer (TF Serving's version "
            f"directories are numbers). Received: version={version!r}"
        )


def write_saved_model(module, export_dir, name: str, version: int, overwrite: bool) -> str:
    base = pathlib.Path(export_dir) / name
    final = base / str(int(version))
    if final.exists() and not overwrite:
        raise FileExistsError(
            f"SavedModel version directory {str(final)!r} already exists. Pass "
            "overwrite=True to replace it, or export a new version."
        )
    base.mkdir(parents=True, exist_ok=True)
    # Staged in the same directory (a rename is atomic there) under a non-numeric name,
    # which TF Serving ignores.
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{int(version)}.incomplete-", dir=base))
    try:
        tf.saved_model.save(module, str(staging), signatures=module.signatures())
        if final.exists():
            old = pathlib.Path(tempfile.mkdtemp(prefix=f".{int(version)}.replaced-", dir=base))
            os.rename(final, old / "saved_model")
            os.rename(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, final)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return str(final)
