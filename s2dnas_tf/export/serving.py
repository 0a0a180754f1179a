"""The `tf.Module`s a SavedModel serves: `DynamicModule` (the exits in TF control flow) and
`StaticModule` (a static classifier with the same interface). See the package docstring."""

from __future__ import annotations

import numbers
import re
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from s2dnas_tf import conventions
from s2dnas_tf.data.decoding import resize_images
from s2dnas_tf.export.folding import fold_batchnorm
from s2dnas_tf.export.stages import IMAGES_KEY, SplitNet, call_stage, split_stages

SERVING_DEFAULT = "serving_default"
SERVING_WITH_THRESHOLDS = "serving_with_thresholds"
SERVING_BATCH1 = "serving_batch1"
SERVING_ANY_SIZE = "serving_any_size"
OUTPUT_NAMES = ("logits", "probabilities", "exit_stage")


class DynamicModule(tf.Module):
    """Dynamic inference of a multi-stage network in TensorFlow control flow.

    Attributes:
        thresholds: tf.Variable [S - 1] float32, the tau_s `serve` and `serve_batch1` use;
            assign to it to change them (before exporting).
        serve: tf.function images float32 [N, H, W, C] -> {"logits", "probabilities",
            "exit_stage"}.
        serve_with_thresholds: tf.function (images, thresholds float32 [S - 1]) -> the same.
        serve_batch1: tf.function images float32 [1, H, W, C] -> the same: one `tf.cond` per
            stage s >= 2 and no gather/scatter (the function TFLite converts).
        serve_any_size: tf.function images float32 [N, h, w, C] of any h, w -> `serve` of
            them resized to H x W in the graph (`resize_images`, as the training data was).
        stage_models: The per-stage Keras models (tracked, so their weights are saved).
    """

    def __init__(
        self,
        net: keras.Model | SplitNet,
        thresholds: Sequence[float],
        name: str | None = None,
        fold_bn: bool = True,
        crop_to_aspect_ratio: bool = True,
    ):
        """Builds the module.

        Args:
            net: A network returned by `s2dnas_tf.transform`, or its `split_stages`.
            thresholds: S - 1 exit thresholds (see `calibration.exit_stages`): 0.0 lets
                every sample exit after stage 1, a value > 1 lets none exit early.
            name: Module name; defaults to the network's.
            fold_bn: Fold conv + BatchNormalization pairs of a keras.Model `net`
                first (`fold_batchnorm`): the same outputs, fewer ops per stage.
            crop_to_aspect_ratio: How `serve_any_size` resizes (`DataConfig`'s option of
                the same name): crop the centred window of the model's aspect ratio
                first, or stretch.

        Raises:
            TypeError: If `thresholds` is not a sequence of real numbers.
            ValueError: If it does not hold S - 1 of them, or `net` cannot be split.
        """
        if isinstance(net, SplitNet):
            split = net
        else:
            split = split_stages(fold_batchnorm(net) if fold_bn else net)
        super().__init__(name=name or _module_name(split.name))
        self._split = split
        taus = validate_thresholds(thresholds, split.num_stages)
        self.thresholds = tf.Variable(
            np.asarray(taus, np.float32).reshape([split.num_stages - 1]),
            trainable=False,
            name="thresholds",
        )
        self.stage_models = [stage.model for stage in split.stages]
        images_spec = tf.TensorSpec((None,) + split.image_shape, tf.float32, name="images")
        batch1_spec = tf.TensorSpec((1,) + split.image_shape, tf.float32, name="images")
        # [None], not [S - 1]: TensorFlow would take a static length as given and optimise
        # the in-graph check of the number of thresholds away (see `_check_thresholds`).
        thresholds_spec = tf.TensorSpec([None], tf.float32, name="thresholds")
        # autograph=False: the Python loops over stages unroll at trace time, by design.
        self.serve = tf.function(
            self._serve, input_signature=[images_spec], autograph=False
        )
        self.serve_with_thresholds = tf.function(
            self._serve_with_thresholds,
            input_signature=[images_spec, thresholds_spec],
            autograph=False,
        )
        self.serve_batch1 = tf.function(
            self._serve_batch1, input_signature=[batch1_spec], autograph=False
        )
        self.serve_any_size = _any_size_function(
            self._serve, split.image_shape, crop_to_aspect_ratio)

    @property
    def num_stages(self) -> int:
        return self._split.num_stages

    @property
    def split(self) -> SplitNet:
        return self._split

    def signatures(self) -> dict[str, Any]:
        """The concrete functions `export_saved_model` saves, by signature key."""
        return {
            SERVING_DEFAULT: self.serve.get_concrete_function(),
            SERVING_WITH_THRESHOLDS: self.serve_with_thresholds.get_concrete_function(),
            SERVING_BATCH1: self.serve_batch1.get_concrete_function(),
            SERVING_ANY_SIZE: self.serve_any_size.get_concrete_function(),
        }

    def _serve(self, images):
        return self._batched(images, self.thresholds)

    def _serve_with_thresholds(self, images, thresholds):
        return self._batched(images, thresholds)

    def _serve_batch1(self, images):
        images = _check_images(images, self._split.image_shape)
        thresholds = _check_thresholds(tf.convert_to_tensor(self.thresholds), self.num_stages)
        return self._dynamic(images, thresholds, self._later_one)

    def _batched(self, images, thresholds):
        images = _check_images(images, self._split.image_shape)
        thresholds = _check_thresholds(tf.convert_to_tensor(thresholds), self.num_stages)

        def empty():
            # Stage 1 of some nets fails on an empty batch; answer it without running.
            return _named_outputs(
                tf.zeros([0, self._split.num_classes], tf.float32), tf.zeros([0], tf.int32)
            )

        return tf.cond(
            tf.shape(images)[0] > 0,
            lambda: self._dynamic(images, thresholds, self._later_remaining),
            empty,
        )

    def _dynamic(self, images, thresholds, later) -> dict[str, tf.Tensor]:
        """Stage 1 on every image, then `later` (nested tf.conds) for stages 2..S."""
        first, *rest = self._split.stages
        outputs = call_stage(first, [images])
        cache = dict(zip(first.output_keys[1:], outputs[1:]))
        cache[IMAGES_KEY] = images
        logits = tf.cast(outputs[0], tf.float32)
        exit_stage = tf.ones(tf.shape(images)[:1], tf.int32)
        done = _exits(logits, thresholds, 1, self.num_stages)
        logits, exit_stage = later(tuple(rest), cache, logits, exit_stage, done, thresholds)
        return _named_outputs(logits, exit_stage)

    # Stages 2..S are nested: stage s + 1's tf.cond sits inside the branch that ran stage s
    # (a sample that exited before s never reaches s + 1). A branch that does not run
    # returns the answers so far and nothing else: no zero-filled feature maps for stages
    # that will not run, and no feature map is routed through a cond it does not need.

    def _later_remaining(self, stages, cache, logits, exit_stage, done, thresholds):
        """Stages `stages` on the rows not done yet; no work at all when none is left.

        `cache` holds, for the current rows, the images and earlier stages' feature maps
        the stages read. Returns (logits, exit_stage) of the current rows.
        """
        if not stages:
            return logits, exit_stage
        stage, rest = stages[0], stages[1:]
        remaining = tf.where(tf.logical_not(done))  # [M, 1] row indices
        needed = {k for later in stages for k in later.input_keys}

        def run():
            rows = {k: tf.gather_nd(v, remaining) for k, v in cache.items() if k in needed}
            outputs = call_stage(stage, [rows[k] for k in stage.input_keys])
            rows.update(zip(stage.output_keys[1:], outputs[1:]))
            new_logits = tf.cast(outputs[0], tf.float32)
            new_logits, new_exits = self._later_remaining(
                rest, rows, new_logits, tf.fill(tf.shape(remaining)[:1], stage.stage),
                _exits(new_logits, thresholds, stage.stage, self.num_stages), thresholds,
            )
            return [
                tf.tensor_scatter_nd_update(logits, remaining, new_logits),
                tf.tensor_scatter_nd_update(exit_stage, remaining, new_exits),
            ]

        return tf.cond(tf.size(remaining) > 0, run, lambda: [logits, exit_stage])

    def _later_one(self, stages, cache, logits, exit_stage, done, thresholds):
        """Stages `stages` on a batch of one image, unless that image has exited."""
        if not stages:
            return logits, exit_stage
        stage, rest = stages[0], stages[1:]

        def run():
            outputs = call_stage(stage, [cache[k] for k in stage.input_keys])
            new_cache = dict(cache)
            new_cache.update(zip(stage.output_keys[1:], outputs[1:]))
            new_logits = tf.cast(outputs[0], tf.float32)
            return list(self._later_one(
                rest, new_cache, new_logits, tf.fill(tf.shape(exit_stage), stage.stage),
                _exits(new_logits, thresholds, stage.stage, self.num_stages), thresholds,
            ))

        return tf.cond(
            tf.reshape(tf.logical_not(done), []), run, lambda: [logits, exit_stage]
        )


class StaticModule(tf.Module):
    """A static (single-exit) classifier with `DynamicModule`'s serving interface.

    `serve` / `serve_batch1` return `logits`, `probabilities` and `exit_stage` (always 1),
    so a static and a dynamic export are served and timed the same way.
    """

    def __init__(self, model: keras.Model, name: str | None = None, fold_bn: bool = True,
                 crop_to_aspect_ratio: bool = True):
        """Builds the module.

        Args:
            model: A Keras model from images [N, H, W, C] to class scores [N, K]: logits,
                or probabilities if it ends in a softmax (`logits` are then their logs,
                which have the same softmax).
            name: Module name; defaults to the model's.
            fold_bn: Serve `fold_batchnorm(model)` (functional/Sequential models;
                others are served as they are), as `DynamicModule` does.
            crop_to_aspect_ratio: How `serve_any_size` resizes, as in `DynamicModule`.

        Raises:
            TypeError: If `model` is not a keras.Model.
            ValueError: If it does not map one image input to one [N, K] output.
        """
        if not isinstance(model, keras.Model):
            raise TypeError(
                f"Expected a keras.Model. Received: model of type {type(model).__name__}"
            )
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise ValueError(
                "Expected a static model with one input (images) and one output (class "
                "scores); export a multi-stage network with export_saved_model. Received: "
                f"model {model.name!r} with {len(model.inputs)} inputs and "
                f"{len(model.outputs)} outputs"
            )
        input_shape = tuple(model.inputs[0].shape)
        output_shape = tuple(model.outputs[0].shape)
        if len(input_shape) != 4 or any(d is None for d in input_shape[1:]) or len(
            output_shape
        ) != 2:
            raise ValueError(
                "Expected a model from images [N, H, W, C] (known H, W, C) to scores [N, K]. "
                f"Received: model {model.name!r} from {input_shape!r} to {output_shape!r}"
            )
        super().__init__(name=name or _module_name(model.name))
        self._ends_in_softmax = conventions.ends_in_softmax(model)
        if fold_bn:
            try:
                model = fold_batchnorm(model)
            except TypeError:  # a subclassed model has no graph to fold
                pass
        self.model = model
        self._image_shape = tuple(int(d) for d in input_shape[1:])
        images_spec = tf.TensorSpec((None,) + self._image_shape, tf.float32, name="images")
        batch1_spec = tf.TensorSpec((1,) + self._image_shape, tf.float32, name="images")
        self.serve = tf.function(self._serve, input_signature=[images_spec], autograph=False)
        self.serve_batch1 = tf.function(
            self._serve, input_signature=[batch1_spec], autograph=False
        )
        self.serve_any_size = _any_size_function(
            self._serve, self._image_shape, crop_to_aspect_ratio)

    @property
    def num_stages(self) -> int:
        return 1

    def signatures(self) -> dict[str, Any]:
        """The concrete functions `export_static` saves, by signature key."""
        return {
            SERVING_DEFAULT: self.serve.get_concrete_function(),
            SERVING_BATCH1: self.serve_batch1.get_concrete_function(),
            SERVING_ANY_SIZE: self.serve_any_size.get_concrete_function(),
        }

    def _serve(self, images):
        images = _check_images(images, self._image_shape)
        scores = tf.cast(self.model(images, training=False), tf.float32)
        if self._ends_in_softmax:
            scores = tf.math.log(tf.maximum(scores, np.finfo(np.float32).tiny))
        return _named_outputs(scores, tf.ones(tf.shape(images)[:1], tf.int32))


def _any_size_function(serve, image_shape: tuple[int, int, int], crop_to_aspect_ratio: bool):
    """`serve` behind an in-graph resize: raw images [N, h, w, C] of any h, w (one size per
    call) are resized to `image_shape` the way the training images were
    (`data.decoding.resize_images`; an image of the model's size passes unchanged)."""
    if not isinstance(crop_to_aspect_ratio, bool):
        raise TypeError(
            "Expected crop_to_aspect_ratio to be True or False. Received: "
            f"crop_to_aspect_ratio={crop_to_aspect_ratio!r}")
    spec = tf.TensorSpec((None, None, None, image_shape[-1]), tf.float32, name="images")

    def serve_any_size(images):
        return serve(resize_images(images, image_shape[:2], crop_to_aspect_ratio))

    return tf.function(serve_any_size, input_signature=[spec], autograph=False)


def _check_images(images: tf.Tensor, image_shape: tuple[int, ...]) -> tf.Tensor:
    """`images` after an in-graph check that they are [N, H, W, C].

    A signature's TensorSpec does not make a called SavedModel signature (TF Serving,
    `loaded.signatures[...]`) reject a wrong shape: a convolutional net with global pooling
    would answer silently for images of the wrong size. This fails the call instead.
    """
    expected = tf.constant([-1, *image_shape], tf.int32)
    shape = tf.shape(images)
    # Padded/cut to 4 entries, so that the comparison itself works for any rank.
    padded = tf.concat([shape, tf.fill([4], -2)], 0)[:4]
    ok = tf.logical_and(
        tf.equal(tf.size(shape), 4),
        tf.reduce_all(tf.logical_or(tf.equal(padded, expected), tf.equal(expected, -1))),
    )
    readable = ", ".join(str(d) for d in image_shape)
    check = tf.debugging.Assert(
        ok,
        [f"Expected raw images, float32 of shape [N, {readable}]. Received: images of shape",
         shape],
        summarize=8,
        name="check_images",
    )
    with tf.control_dependencies([check]):
        return tf.identity(images)


def _check_thresholds(thresholds: tf.Tensor, num_stages: int) -> tf.Tensor:
    """`thresholds` after an in-graph check of their number (see `_check_images`)."""
    check = tf.debugging.Assert(
        tf.equal(tf.size(thresholds), num_stages - 1),
        [f"Expected {num_stages - 1} thresholds (one per stage but the last), float32 of "
         f"shape [{num_stages - 1}]. Received: thresholds of shape", tf.shape(thresholds)],
        summarize=8,
        name="check_thresholds",
    )
    # No reshape to [S - 1] after the check: TensorFlow's graph optimiser would take the
    # static shape as a fact and drop the check (seen with TF 2.21).
    with tf.control_dependencies([check]):
        return tf.identity(thresholds)


def _exits(logits: tf.Tensor, thresholds: tf.Tensor, stage: int, num_stages: int):
    """Whether each sample exits after `stage`: confident enough, or the last stage."""
    if stage >= num_stages:
        return tf.ones(tf.shape(logits)[:1], tf.bool)
    confidence = tf.reduce_max(tf.nn.softmax(logits, axis=-1), axis=-1)
    return confidence >= thresholds[stage - 1]


def _named_outputs(logits: tf.Tensor, exit_stage: tf.Tensor) -> dict[str, tf.Tensor]:
    return {
        "logits": tf.identity(logits, name="logits"),
        "probabilities": tf.nn.softmax(logits, axis=-1, name="probabilities"),
        "exit_stage": tf.identity(exit_stage, name="exit_stage"),
    }


def _module_name(name: str) -> str:
    # tf.Module names must be Python identifiers.
    cleaned = re.sub(r"\W", "_", name)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"m_{cleaned}"


def validate_thresholds(thresholds: Any, num_stages: int) -> list[float]:
    """Validates S - 1 exit thresholds and returns them as floats.

    Args:
        thresholds: A sequence (or 1-D array) of `num_stages - 1` real, non-NaN numbers.
        num_stages: S.

    Returns:
        The thresholds as a list of floats.

    Raises:
        TypeError: If `thresholds` is not a sequence of real numbers.
        ValueError: If it has the wrong length or a NaN.
    """
    if isinstance(thresholds, np.ndarray):
        if thresholds.ndim != 1:
            raise ValueError(
                f"Expected `thresholds` as a flat sequence of {num_stages - 1} numbers. "
                f"Received: thresholds={thresholds!r}"
            )
        thresholds = thresholds.tolist()
    if isinstance(thresholds, (str, bytes)) or not isinstance(thresholds, Sequence):
        raise TypeError(
            f"Expected `thresholds` as a sequence of {num_stages - 1} numbers (one per stage "
            f"but the last). Received: thresholds={thresholds!r}"
        )
    for t in thresholds:
        if isinstance(t, bool) or not isinstance(t, numbers.Real):
            raise TypeError(
                f"Expected `thresholds` as {num_stages - 1} real numbers. Received: "
                f"thresholds={thresholds!r}"
            )
    values = [float(t) for t in thresholds]
    if len(values) != num_stages - 1 or any(np.isnan(v) for v in values):
        raise ValueError(
            f"Expected {num_stages - 1} non-NaN thresholds for {num_stages} stages (the last "
            f"stage always answers). Received: thresholds={thresholds!r}"
        )
    return values
