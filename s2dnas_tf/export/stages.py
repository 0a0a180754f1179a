"""Cuts a multi-stage network into one Keras model per stage (what the serving modules run)."""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from s2dnas_tf import conventions
from s2dnas_tf import graph as graph_lib

# `StageModel.input_keys` entry of the raw images (graph tensor keys are >= 0).
IMAGES_KEY = -1


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
            outputs = call_stage(stage, [values[k] for k in stage.input_keys])
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
        stage = conventions.stage_of_layer(node.name)
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


def call_stage(stage: StageModel, inputs: Sequence[tf.Tensor]) -> list[tf.Tensor]:
    """Runs one stage model in inference mode; always returns the list of its outputs."""
    outputs = stage.model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)
    if not isinstance(outputs, (list, tuple)):
        outputs = [outputs]
    return [tf.convert_to_tensor(o) for o in outputs]
