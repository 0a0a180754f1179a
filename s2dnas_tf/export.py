"""Deployment (DESIGN §7): a dynamic-inference SavedModel for TF Serving, and TFLite.

The multi-stage network `transform` returns computes every stage for every sample. Here it is
cut into one Keras model per stage (`split_stages`) and wrapped in a `tf.Module` whose serving
functions apply the exit rule in TensorFlow control flow (`DynamicModule`):

1. stage 1 runs on the whole batch; a sample exits after stage s < S if its maximum softmax
   probability is >= tau_s (the rule of `calibration.exit_stages`); the last stage always
   answers;
2. for s >= 2, a `tf.cond` on "is any sample left" runs nothing once every sample has
   exited; otherwise it `tf.gather`s the remaining samples' inputs of stage s (images,
   feature maps of stages < s), runs stage s on them alone, and
   `tf.tensor_scatter_nd_update`s its answers back. The conds are nested: stage s + 1's
   cond is inside the branch that ran stage s, on the rows stage s ran on, so a branch not
   taken produces no placeholder feature maps (it answers with what it has).

`export_saved_model` writes it at `<export_dir>/<name>/<version>/` (TF Serving's layout). The
SavedModel loads with TensorFlow alone and has three signatures, all returning `logits`
[N, K] and `probabilities` [N, K] of the stage where each sample exited and `exit_stage`
int32 [N] (1-based):

- `serving_default(images)`: thresholds are the model's variable `thresholds` (S - 1 floats);
- `serving_with_thresholds(images, thresholds)`: thresholds given with each call;
- `serving_batch1(images)`: one image [1, H, W, C], a plain `tf.cond` per stage and no
  gather/scatter; the function `convert_to_tflite` converts (TFLite `IF` ops).

Images are raw pixels (the models carry their own normalisation), float32 [N, H, W, C];
an empty batch gets empty answers. A signature's declared shape is not enforced by
TensorFlow when the signature is called (TF Serving, `loaded.signatures[...]`), so
`serving_default` and `serving_with_thresholds` check the image shape and the number of
thresholds in the graph and fail with a readable InvalidArgumentError; a wrong dtype is
refused by TensorFlow itself. (`serving_batch1`'s fully static shape lets TensorFlow drop
its check; it is there for conversion.)

`convert_to_tflite` converts `serving_batch1`: stages >= 2 become TFLite `IF` ops whose
branches run only for an image that has not exited, with every variable (weights and
thresholds) frozen into constants; float32, or int8 with a float32 interface. The TFLite
model takes [1, H, W, C] float32; LiteRT rejects another dtype, but its signature runner
resizes the input to whatever shape it is given (the in-graph check does not survive
conversion), so a client should send exactly [1, H, W, C].

`export_static` writes a static model with the same interface (`exit_stage` always 1), so
static and dynamic models can be served and timed the same way.
"""

from __future__ import annotations

import collections
import dataclasses
import numbers
import os
import pathlib
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from s2dnas_tf import graph as graph_lib
from s2dnas_tf import rewriter

__all__ = [
    "DynamicModule",
    "IMAGES_KEY",
    "OUTPUT_NAMES",
    "SERVING_BATCH1",
    "SERVING_DEFAULT",
    "SERVING_WITH_THRESHOLDS",
    "SplitNet",
    "StageModel",
    "StaticModule",
    "convert_to_tflite",
    "export_saved_model",
    "export_static",
    "fold_batchnorm",
    "split_stages",
    "tflite_op_names",
    "tflite_subgraphs",
]

SERVING_DEFAULT = "serving_default"
SERVING_WITH_THRESHOLDS = "serving_with_thresholds"
SERVING_BATCH1 = "serving_batch1"
OUTPUT_NAMES = ("logits", "probabilities", "exit_stage")

# `StageModel.input_keys` entry of the raw images (graph tensor keys are >= 0).
IMAGES_KEY = -1

# TFLite ops that show the dynamic control flow survived conversion.
_CONTROL_FLOW_OPS = frozenset({"IF", "WHILE"})
# TFLite ops that mean a variable was kept as a variable instead of frozen into a constant
# (the runtime then fails to read it inside IF branches).
_VARIABLE_OPS = frozenset({"VAR_HANDLE", "READ_VARIABLE", "ASSIGN_VARIABLE", "CALL_ONCE"})
# TFLite ops that do the arithmetic; in an int8 model their inputs must be int8.
_COMPUTE_OPS = frozenset(
    {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "BATCH_MATMUL", "TRANSPOSE_CONV"}
)
# The stage of a transformed layer in a TF/TFLite tensor name: ".../stage2_conv1_1/..."
# (an original layer may itself be called "stage2_block1": only a name's start counts).
_STAGE_IN_NAME = re.compile(r"(?:^|[/;])stage(\d+)_")


# --------------------------------------------------------------------------------------
# Splitting the multi-stage network into one model per stage.


@dataclasses.dataclass(frozen=True)
class StageModel:
    """One stage of a split multi-stage network.

    Attributes:
        stage: 1-based stage number.
        model: Keras model: inputs (see `input_keys`) -> [stage logits, *boundary tensors].
        input_keys: What each model input is: `IMAGES_KEY` for the raw images, else the key
            (in `graph.trace(net)`) of a tensor computed by an earlier stage.
        output_keys: Keys of the model's outputs; the first is the stage's logits, the rest
            are tensors this stage computes that later stages read.
    """

    stage: int
    model: keras.Model
    input_keys: tuple[int, ...]
    output_keys: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class SplitNet:
    """A multi-stage network cut into per-stage models (see `split_stages`).

    Attributes:
        stages: The S stage models, stage 1 first.
        image_shape: (H, W, C) of the images.
        num_classes: K, the width of every stage's logits.
        name: The multi-stage network's name.
    """

    stages: tuple[StageModel, ...]
    image_shape: tuple[int, int, int]
    num_classes: int
    name: str

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def run_all(self, images: Any) -> list[tf.Tensor]:
        """Every stage's logits for every image, as `net(images)` computes them."""
        values = {IMAGES_KEY: tf.convert_to_tensor(images, tf.float32)}
        logits = []
        for stage in self.stages:
            outputs = _call_stage(stage, [values[k] for k in stage.input_keys])
            values.update(zip(stage.output_keys, outputs))
            logits.append(outputs[0])
        return logits


def split_stages(net: keras.Model) -> SplitNet:
    """Cuts a multi-stage network into one Keras model per stage.

    Each layer belongs to the stage its name carries (`stage{s}_...`; the `shared_...`
    layers computed once on the image belong to stage 1; a `keras.ops` call, which has no
    such name, to the latest stage it reads). Stage s's model reads the images
    (if a stage-s layer reads them) and the *boundary* tensors: those computed by layers of
    stages < s that stage-s layers read. It returns stage s's logits followed by the tensors
    it computes that later stages read. The stage models share the net's layers and weights.

    Args:
        net: A network returned by `s2dnas_tf.transform` (or saved and loaded back): one
            image input [N, H, W, C], S logits outputs.

    Returns:
        The `SplitNet`; `split.run_all(x)` computes what `net(x)` does.

    Raises:
        TypeError: If `net` is not a functional/Sequential keras.Model.
        ValueError: If its input is not an image batch with known H, W, C, no layer name
            carries a stage, a layer reads a later stage's tensor, or output s is not
            computed by stage s.
    """
    graph = graph_lib.trace(net, single_output=False)
    (images_key,) = graph.inputs
    input_shape = tuple(graph.tensors[images_key].shape)
    if len(input_shape) != 4 or any(d is None for d in input_shape[1:]):
        raise ValueError(
            "Expected a network on images [N, H, W, C] with known H, W and C. Received: "
            f"network {net.name!r} with input shape {input_shape!r}"
        )
    num_stages = len(graph.outputs)

    stage_of_tensor = {images_key: 0}  # the images are there before any stage
    stage_of_node = {}
    named = 0
    for node in graph.nodes:
        stage = rewriter.stage_of_layer(node.name)
        if stage is None:
            # A keras.ops call carries no layer name of ours (transform replays it per
            # stage): it belongs to the latest stage it reads, at least stage 1.
            stage = max([1] + [stage_of_tensor[k] for k in node.inputs])
        elif not 1 <= stage <= num_stages:
            raise ValueError(
                f"Expected layer names 'stage<s>_...' with 1 <= s <= {num_stages} in a network "
                f"with {num_stages} outputs. Received: layer {node.name!r} in {net.name!r}"
            )
        else:
            named += 1
        for k in node.inputs:
            if stage_of_tensor[k] > stage:
                raise ValueError(
                    f"Expected every layer to read only its own or earlier stages. Received: "
                    f"layer {node.name!r} of stage {stage} reads a tensor of stage "
                    f"{stage_of_tensor[k]}"
                )
        stage_of_node[node.index] = stage
        for k in node.outputs:
            stage_of_tensor[k] = stage
    if not named:
        raise ValueError(
            "Expected a network returned by s2dnas_tf.transform, whose layers are named "
            f"'stage<s>_...' or 'shared_...'. Received: {net.name!r} with no such layer "
            f"(e.g. {graph.nodes[0].name!r})"
        )

    inputs_of: dict[int, list[int]] = collections.defaultdict(list)  # stage -> keys read
    read_later: dict[int, set[int]] = collections.defaultdict(set)  # stage -> keys exported
    for node in graph.nodes:
        stage = stage_of_node[node.index]
        for k in node.inputs:
            producer = stage_of_tensor[k]
            if producer < stage:
                if k not in inputs_of[stage]:
                    inputs_of[stage].append(k)
                if producer >= 1:
                    read_later[producer].add(k)

    stages = []
    for s in range(1, num_stages + 1):
        logits_key = graph.outputs[s - 1]
        if stage_of_tensor[logits_key] != s:
            raise ValueError(
                f"Expected output {s} of {net.name!r} to be computed by stage {s}'s layers. "
                f"Received: it is computed by stage {stage_of_tensor[logits_key]}"
            )
        output_keys = [logits_key] + sorted(read_later[s] - {logits_key})
        model = keras.Model(
            inputs=[graph.keras_tensors[k] for k in inputs_of[s]],
            outputs=[graph.keras_tensors[k] for k in output_keys],
            name=f"{net.name}_stage{s}",
        )
        input_keys = tuple(IMAGES_KEY if k == images_key else k for k in inputs_of[s])
        stages.append(StageModel(s, model, input_keys, tuple(output_keys)))
    num_classes = int(graph.tensors[graph.outputs[0]].shape[-1])
    image_shape = tuple(int(d) for d in input_shape[1:])
    return SplitNet(tuple(stages), image_shape, num_classes, net.name)


def _call_stage(stage: StageModel, inputs: Sequence[tf.Tensor]) -> list[tf.Tensor]:
    """Runs one stage model in inference mode; always returns the list of its outputs."""
    outputs = stage.model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    return [tf.convert_to_tensor(o) for o in outputs]


# --------------------------------------------------------------------------------------
# Batch-norm folding (inference graphs only).

_FOLDABLE_CONVS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


def fold_batchnorm(model: keras.Model) -> keras.Model:
    """A copy of `model` with every BatchNormalization that directly follows a convolution
    folded into that convolution's kernel and bias (inference only).

    Keras 3 computes an inference BatchNormalization as ~5 elementwise TensorFlow ops; in a
    batch-1 SavedModel they cost about a quarter of a small CNN's latency (ResNet-20 on
    32x32: 2.4 -> 1.8 ms measured). A pair folds when the Conv2D / DepthwiseConv2D has a
    linear activation, its output is read by that BatchNormalization alone (channels
    last) and is not a model output. Other layers are copied unchanged, with their names,
    so `split_stages` still finds the stages. TFLite's converter folds these pairs itself.

    Args:
        model: A functional/Sequential keras.Model (not modified).

    Returns:
        The folded copy (a functional keras.Model with the same inputs and outputs; the
        same outputs up to float rounding).

    Raises:
        TypeError: If `model` is not a functional/Sequential keras.Model.
    """
    graph = graph_lib.trace(model, single_output=False)
    folds = _batchnorm_folds(graph)
    folded_bns = {bn.index for bn in folds.values()}
    values = {}
    inputs = []
    for key in graph.inputs:
        tensor = graph.keras_tensors[key]
        values[key] = keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype,
                                  name=tensor.name)
        inputs.append(values[key])
    copies = []
    for node in graph.nodes:
        node_inputs = [values[k] for k in node.inputs]
        if node.index in folded_bns:
            values[node.outputs[0]] = node_inputs[0]
            continue
        layer = node.layer
        clone = None  # a keras.ops call is replayed as is (no weights)
        if isinstance(layer, keras.layers.Layer):
            if node.index in folds:
                clone = graph_lib.clone_layer(layer, node.name, use_bias=True)
                copies.append((clone, _folded_weights(layer, folds[node.index].layer)))
            else:
                clone = graph_lib.clone_layer(layer, node.name)
                copies.append((clone, layer.get_weights()))
        values.update(zip(node.outputs, graph_lib.replay(node, node_inputs, clone)))
    for clone, weights in copies:
        clone.set_weights(weights)
    outputs = [values[k] for k in graph.outputs]
    return keras.Model(
        inputs[0] if len(inputs) == 1 else inputs,
        outputs[0] if len(outputs) == 1 else outputs,
        name=model.name,
    )


def _batchnorm_folds(graph: graph_lib.Graph) -> dict[int, graph_lib.OpNode]:
    """Index of each foldable convolution node -> the BatchNormalization node after it."""
    folds = {}
    model_outputs = set(graph.outputs)
    for node in graph.nodes:
        if type(node.layer) not in _FOLDABLE_CONVS or len(node.outputs) != 1:
            continue
        if node.layer.get_config().get("activation") not in (None, "linear"):
            continue
        (key,) = node.outputs
        consumers = graph.consumers(key)
        if key in model_outputs or len(consumers) != 1:
            continue
        (bn,) = consumers
        if type(bn.layer) is not keras.layers.BatchNormalization or len(bn.inputs) != 1:
            continue
        if bn.layer.axis not in (-1, 3) or bn.call_kwargs.get("training"):
            continue
        folds[node.index] = bn
    return folds


def _folded_weights(conv, bn) -> list[np.ndarray]:
    """[kernel, bias] of `conv` followed by `bn` in inference mode."""
    depthwise = isinstance(conv, keras.layers.DepthwiseConv2D)
    kernel = np.asarray(conv.kernel, np.float64)  # depthwise: [kh, kw, in, multiplier]
    bias = np.asarray(conv.bias, np.float64) if conv.use_bias else 0.0
    gamma = np.asarray(bn.gamma, np.float64) if bn.scale else 1.0
    beta = np.asarray(bn.beta, np.float64) if bn.center else 0.0
    scale = gamma / np.sqrt(np.asarray(bn.moving_variance, np.float64) + bn.epsilon)
    shift = beta - np.asarray(bn.moving_mean, np.float64) * scale
    if depthwise:  # output channel c * multiplier + m
        kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
    else:
        kernel = kernel * scale
    dtype = conv.kernel.dtype
    return [kernel.astype(dtype), (bias * scale + shift).astype(dtype)]


# --------------------------------------------------------------------------------------
# The serving modules.


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
        stage_models: The per-stage Keras models (tracked, so their weights are saved).
    """

    def __init__(
        self,
        net: keras.Model | SplitNet,
        thresholds: Sequence[float],
        name: str | None = None,
        fold_bn: bool = True,
    ):
        """Builds the module.

        Args:
            net: A network returned by `s2dnas_tf.transform`, or its `split_stages`.
            thresholds: S - 1 exit thresholds (see `calibration.exit_stages`): 0.0 lets
                every sample exit after stage 1, a value > 1 lets none exit early.
            name: Module name; defaults to the network's.
            fold_bn: Fold conv + BatchNormalization pairs of a keras.Model `net`
                first (`fold_batchnorm`): the same outputs, fewer ops per stage.

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
        taus = _validate_thresholds(thresholds, split.num_stages)
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
        outputs = _call_stage(first, [images])
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
            outputs = _call_stage(stage, [rows[k] for k in stage.input_keys])
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
            outputs = _call_stage(stage, [cache[k] for k in stage.input_keys])
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

    def __init__(self, model: keras.Model, name: str | None = None, fold_bn: bool = True):
        """Builds the module.

        Args:
            model: A Keras model from images [N, H, W, C] to class scores [N, K]: logits,
                or probabilities if it ends in a softmax (`logits` are then their logs,
                which have the same softmax).
            name: Module name; defaults to the model's.
            fold_bn: Serve `fold_batchnorm(model)` (functional/Sequential models;
                others are served as they are), as `DynamicModule` does.

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
        self._ends_in_softmax = _ends_in_softmax(model)
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

    @property
    def num_stages(self) -> int:
        return 1

    def signatures(self) -> dict[str, Any]:
        """The concrete functions `export_static` saves, by signature key."""
        return {
            SERVING_DEFAULT: self.serve.get_concrete_function(),
            SERVING_BATCH1: self.serve_batch1.get_concrete_function(),
        }

    def _serve(self, images):
        images = _check_images(images, self._image_shape)
        scores = tf.cast(self.model(images, training=False), tf.float32)
        if self._ends_in_softmax:
            scores = tf.math.log(tf.maximum(scores, tf.float32.tiny))
        return _named_outputs(scores, tf.ones(tf.shape(images)[:1], tf.int32))


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


def _ends_in_softmax(model: keras.Model) -> bool:
    last = model.layers[-1]
    activation = getattr(getattr(last, "activation", None), "__name__", "")
    return isinstance(last, keras.layers.Softmax) or activation == "softmax"


def _module_name(name: str) -> str:
    # tf.Module names must be Python identifiers.
    cleaned = re.sub(r"\W", "_", name)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"m_{cleaned}"


def _validate_thresholds(thresholds: Any, num_stages: int) -> list[float]:
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


# --------------------------------------------------------------------------------------
# SavedModel.


def export_saved_model(
    net: keras.Model | DynamicModule,
    thresholds: Sequence[float] | None,
    export_dir: str | os.PathLike,
    name: str,
    version: int = 1,
    overwrite: bool = False,
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
            module.thresholds.assign(_validate_thresholds(thresholds, module.num_stages))
    else:
        if thresholds is None:
            raise ValueError(
                "Expected S - 1 exit thresholds for a multi-stage network. Received: "
                "thresholds=None"
            )
        module = DynamicModule(net, thresholds)
    return _write_saved_model(module, export_dir, name, version, overwrite)


def export_static(
    model: keras.Model | StaticModule,
    export_dir: str | os.PathLike,
    name: str,
    version: int = 1,
    overwrite: bool = False,
) -> str:
    """Writes a static model with the dynamic export's interface (see `StaticModule`).

    Signatures `serving_default` and `serving_batch1`: images -> `logits`,
    `probabilities`, `exit_stage` (all 1). Same layout and overwrite rule as
    `export_saved_model`; `convert_to_tflite` converts it too.

    Args:
        model: Keras model from images to class scores [N, K], or a `StaticModule`.
        export_dir: Parent of the model's base directory.
        name: Model name: the base directory's name, one path component.
        version: TF Serving version number, a non-negative integer.
        overwrite: Replace an existing version directory.

    Returns:
        The version directory's path.

    Raises:
        FileExistsError: If the version directory exists and `overwrite` is False.
        TypeError, ValueError: On an invalid model, `name` or `version`.
    """
    _check_name_and_version(name, version)
    module = model if isinstance(model, StaticModule) else StaticModule(model)
    return _write_saved_model(module, export_dir, name, version, overwrite)


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


def _write_saved_model(module, export_dir, name: str, version: int, overwrite: bool) -> str:
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


# --------------------------------------------------------------------------------------
# TFLite.


def convert_to_tflite(
    source: str | os.PathLike | DynamicModule | StaticModule,
    path: str | os.PathLike,
    quantize: str | None = None,
    representative_images: np.ndarray | Iterable[np.ndarray] | None = None,
) -> str:
    """Converts the batch-1 signature to a TFLite model with built-in ops only.

    The model takes one raw image float32 [1, H, W, C] (signature `serving_default`,
    input `images`) and returns `logits`, `probabilities` and `exit_stage` like the
    SavedModel. Each stage s >= 2 is an `IF` op whose branch runs only if the image has not
    exited; the thresholds are frozen into the model as constants, like every weight.
    Checked after conversion (RuntimeError otherwise): the `IF` ops are there for S > 1, no
    variable ops are left, and the output names survived.

    With `quantize="int8"`, weights and activations are int8 (post-training quantisation,
    `TFLITE_BUILTINS_INT8` only), calibrated on `representative_images`; the interface
    stays float32 (a QUANTIZE op after the input, DEQUANTIZE before the outputs). Stage s is
    calibrated on the images that reach it under the model's thresholds, the inputs it sees
    in deployment; a stage that no representative image reaches cannot be calibrated and
    is refused before converting (ValueError naming the stage).

    Args:
        source: A SavedModel directory written by `export_saved_model` / `export_static`,
            or a `DynamicModule` / `StaticModule`.
        path: Where to write the `.tflite` file (replaced if it exists; written to a
            temporary file first).
        quantize: None (float32) or "int8".
        representative_images: Raw images [M, H, W, C] (or an iterable of [H, W, C]
            images) for int8 calibration; a few hundred real images are plenty.

    Returns:
        `path` as a string.

    Raises:
        ValueError: On a bad `quantize` value, missing or misshapen representative images,
            representative images that do not reach every stage, or a SavedModel without
            `serving_batch1`.
        TypeError: If `source` is neither a path nor a module.
        RuntimeError: If the conversion lost the control flow, left variables, renamed the
            outputs or (int8) left float arithmetic.
    """
    if quantize not in (None, "int8"):
        raise ValueError(f"Expected quantize=None or 'int8'. Received: quantize={quantize!r}")
    if quantize is None and representative_images is not None:
        raise ValueError(
            "representative_images calibrate int8 quantisation; pass quantize='int8' with "
            "them. Received: quantize=None with representative_images"
        )
    if isinstance(source, (DynamicModule, StaticModule)):
        # Converted from a SavedModel signature, the variables become constants; converted
        # from the module's own function, those read inside IF branches stay variables that
        # the TFLite runtime cannot read there ("READ_VARIABLE failed to invoke", TF 2.21).
        with tempfile.TemporaryDirectory() as tmp:
            saved = _write_saved_model(source, tmp, "model", 1, overwrite=False)
            return convert_to_tflite(saved, path, quantize, representative_images)
    batch1, batched, trackable, num_stages, image_shape = _conversion_source(source)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([batch1], trackable)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    reached = None
    if quantize == "int8":
        images = _representative_array(representative_images, image_shape)
        exit_stage = np.concatenate(
            [batched(images=tf.constant(images[i : i + 256]))["exit_stage"].numpy()
             for i in range(0, len(images), 256)]
        )
        reached = [int(np.sum(exit_stage >= s)) for s in range(1, num_stages + 1)]
        if min(reached) == 0:
            raise ValueError(_unquantised_message(
                [s for s, n in enumerate(reached, 1) if n == 0], len(images), reached
            ))
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None]] for image in images)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    content = converter.convert()
    _check_tflite(content, num_stages, reached)

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return str(path)


def _conversion_source(source):
    """(batch-1 fn, batched fn, loaded SavedModel, S, (H, W, C)) of a SavedModel dir."""
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(
            "Expected a SavedModel directory or a DynamicModule/StaticModule. Received: "
            f"source of type {type(source).__name__}"
        )
    loaded = tf.saved_model.load(os.fspath(source))
    if SERVING_BATCH1 not in loaded.signatures:
        raise ValueError(
            f"Expected a SavedModel written by export_saved_model or export_static, with a "
            f"{SERVING_BATCH1!r} signature. Received: {os.fspath(source)!r} with signatures "
            f"{sorted(loaded.signatures)}"
        )
    batch1 = loaded.signatures[SERVING_BATCH1]
    batched = loaded.signatures[SERVING_DEFAULT]
    thresholds = getattr(loaded, "thresholds", None)
    num_stages = 1 if thresholds is None else int(thresholds.shape[0]) + 1
    args, kwargs = batch1.structured_input_signature
    spec = kwargs["images"] if kwargs else args[0]
    image_shape = tuple(int(d) for d in spec.shape[1:])
    return batch1, batched, loaded, num_stages, image_shape


def _representative_array(images: Any, image_shape: tuple[int, ...]) -> np.ndarray:
    if images is None:
        raise ValueError(
            "Expected representative_images (raw images [M, "
            f"{', '.join(map(str, image_shape))}]) to calibrate int8 quantisation. "
            "Received: representative_images=None"
        )
    array = np.asarray(images if isinstance(images, np.ndarray) else list(images))
    if array.ndim != 4 or tuple(array.shape[1:]) != image_shape or len(array) == 0:
        raise ValueError(
            f"Expected representative_images of shape [M, {', '.join(map(str, image_shape))}]"
            f" with M >= 1. Received: shape {array.shape!r}"
        )
    if not np.issubdtype(array.dtype, np.number):
        raise ValueError(
            f"Expected numeric representative_images. Received: dtype {array.dtype!r}"
        )
    return array.astype(np.float32)


def _check_tflite(content: bytes, num_stages: int, reached: list[int] | None) -> None:
    model = _read_tflite(content)
    ops = {op for subgraph in model["subgraphs"] for op, _, _ in subgraph["ops"]}
    variables = sorted(ops & _VARIABLE_OPS)
    if variables:
        raise RuntimeError(
            f"The TFLite model still holds variable ops {variables}: the variables were not "
            "frozen into constants."
        )
    if num_stages > 1 and not ops & _CONTROL_FLOW_OPS:
        raise RuntimeError(
            "The TFLite converter removed the control flow (no IF/WHILE op): the model would "
            f"run every stage for every image. Ops: {sorted(ops)}"
        )
    for key, outputs in model["signatures"].items():
        if sorted(outputs) != sorted(OUTPUT_NAMES):
            raise RuntimeError(
                f"Expected the TFLite signature outputs {sorted(OUTPUT_NAMES)}. Received: "
                f"signature {key!r} with outputs {sorted(outputs)}"
            )
    if reached is None:
        return
    float_ops = collections.Counter()
    for subgraph in model["subgraphs"]:
        for op, input_type, names in subgraph["ops"]:
            if op in _COMPUTE_OPS and input_type != "INT8":
                stages = {int(m) for n in names for m in _STAGE_IN_NAME.findall(n)}
                float_ops[(max(stages) if stages else "?", op, input_type)] += 1
    if float_ops:
        raise RuntimeError(
            "Expected every stage quantised to int8. Received: (stage, op, input type) -> "
            f"count {dict(float_ops)} left unquantised; representative images reaching "
            f"stages 1..{num_stages}: {reached}."
        )


def _unquantised_message(stages: list[int], num_images: int, reached: list[int]) -> str:
    return (
        f"Expected every stage quantised to int8. Received: stage(s) {stages} cannot be "
        f"calibrated: of {num_images} representative images, {reached} reach stages "
        f"1..{len(reached)} under the model's thresholds. Stage s is calibrated on the "
        "images that reach it (the inputs it sees in deployment): pass more, or more "
        "varied, representative images."
    )


def tflite_op_names(model_content: bytes) -> list[str]:
    """The distinct operator names (e.g. "CONV_2D", "IF") of all subgraphs of a model."""
    return sorted({op for subgraph in tflite_subgraphs(model_content) for op in subgraph["ops"]})


def tflite_subgraphs(model_content: bytes) -> list[dict[str, list]]:
    """What each subgraph of a TFLite model holds (subgraph 0 is the main graph).

    Returns:
        One dict per subgraph: "ops", its distinct operator names, and "stages", the
        stages whose convolutions / dense layers it computes (read from tensor names). In a
        converted `DynamicModule`, stages >= 2 appear only in `IF` branch subgraphs.
    """
    result = []
    for subgraph in _read_tflite(model_content)["subgraphs"]:
        stages = set()
        for op, _, names in subgraph["ops"]:
            if op in _COMPUTE_OPS:
                stages |= {int(m) for n in names for m in _STAGE_IN_NAME.findall(n)}
        result.append({
            "ops": sorted({op for op, _, _ in subgraph["ops"]}),
            "stages": sorted(stages),
        })
    return result


def _read_tflite(content: bytes) -> dict[str, Any]:
    """Operators (name, type of first input, tensor names) per subgraph, and signatures."""
    # TFLite's flatbuffer schema as generated Python classes: TensorFlow's own converter
    # reads models with this module, and TensorFlow has no public model reader.
    from tensorflow.lite.python import schema_py_generated as schema_fb

    op_names = {v: k for k, v in vars(schema_fb.BuiltinOperator).items() if k.isupper()}
    type_names = {v: k for k, v in vars(schema_fb.TensorType).items() if k.isupper()}
    model = schema_fb.Model.GetRootAsModel(bytearray(content), 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        # Codes < 127 live in the deprecated field, newer ones in the int32 field.
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == schema_fb.BuiltinOperator.CUSTOM:
            custom = code.CustomCode()
            codes.append(f"CUSTOM:{custom.decode() if custom else '?'}")
        else:
            codes.append(op_names.get(builtin, str(builtin)))
    subgraphs = []
    for s in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(s)
        ops = []
        for i in range(subgraph.OperatorsLength()):
            op = subgraph.Operators(i)
            tensors = [
                subgraph.Tensors(int(t))
                for t in list(op.InputsAsNumpy()) + list(op.OutputsAsNumpy())
                if t >= 0
            ]
            first = type_names.get(tensors[0].Type()) if tensors else None
            names = [t.Name().decode() for t in tensors if t.Name()]
            ops.append((codes[op.OpcodeIndex()], first, names))
        subgraphs.append({"ops": ops})
    signatures = {}
    for i in range(model.SignatureDefsLength()):
        signature = model.SignatureDefs(i)
        key = signature.SignatureKey().decode()
        signatures[key] = [
            signature.Outputs(j).Name().decode() for j in range(signature.OutputsLength())
        ]
    return {"subgraphs": subgraphs, "signatures": signatures}
