"""The early-exit baseline: classifiers attached to a static backbone, no search.

The usual recipe of BranchyNet (Teerapittayanon et al., 2016) and Shallow-Deep Networks
(Kaya et al., 2019): an internal classifier after each resolution stage of the backbone,
trained together with it. `attach_exits` returns a network with the same interface as
`s2dnas_tf.transform`'s (one image input, S logits outputs, layers named `stage{s}_...`), so
training, `stage_flops`, calibration, the report and the export all apply unchanged.

Stage s runs the backbone up to the end of its s-th exit position and the s-th exit head;
a sample that goes on pays for the heads it passed (`stage_flops` counts them).
"""

from __future__ import annotations

import math

import keras

from s2dnas_tf import conventions
from s2dnas_tf import graph as graph_lib
from s2dnas_tf.rewriter import MultiStageNet

# SDN's internal classifiers pool a feature map to a small grid before a linear layer;
# 4x4 keeps some spatial information at a cost of a few thousand MACs.
EXIT_GRID = 4


def _resolution_groups(graph: graph_lib.Graph) -> dict[tuple, int]:
    """Spatial size (H, W) -> index, in order of first appearance (1x1 maps excluded)."""
    groups: dict[tuple, int] = {}
    for key in [*graph.inputs, *[k for n in graph.nodes for k in n.outputs]]:
        spatial = graph.tensors[key].spatial
        if spatial is not None and spatial != (1, 1) and spatial not in groups:
            groups[spatial] = len(groups)
    return groups


def attach_exits(model: keras.Model, num_stages: int | None = None) -> keras.Model:
    """Attaches an early-exit classifier after resolution stages of `model`.

    The backbone's resolution stages are the runs of layers at one spatial size (32x32,
    16x16, 8x8 in a CIFAR ResNet). With G of them and S = `num_stages` exits, exit s < S sits
    at the end of resolution stage round(s * G / S) (after each one when S = G); exit S is
    the model's own classifier (a final softmax is dropped: every exit outputs logits). An exit head is average pooling to a 4x4 grid (or less),
    BatchNormalization, Flatten and a Dense layer, Shallow-Deep-Network style. The backbone's weights are
    copied; `model` is not modified.

    Args:
        model: A static Keras functional/Sequential CNN on images [N, H, W, C] that ends in
            class scores [N, K].
        num_stages: Number of exits S, 2 <= S <= G; default G.

    Returns:
        A keras.Model: images -> [logits of exit 1, ..., logits of exit S].

    Raises:
        TypeError: If `model` is not a functional/Sequential keras.Model.
        ValueError: If it has fewer than 2 resolution stages, `num_stages` is out of range,
            or its output is not [N, K].
    """
    graph = graph_lib.trace(model)
    (in_key,) = graph.inputs
    (out_key,) = graph.outputs
    out_shape = graph.tensors[out_key].shape
    if len(out_shape) != 2:
        raise ValueError(
            "Expected a model that ends in class scores [N, K]. Received: model "
            f"{model.name!r} with output shape {out_shape!r}"
        )
    groups = _resolution_groups(graph)
    num_groups = len(groups)
    if num_groups < 2:
        raise ValueError(
            "Expected a model with at least 2 resolution stages (spatial sizes) to attach "
            f"early exits to. Received: model {model.name!r} with {num_groups}"
        )
    num_stages = num_groups if num_stages is None else num_stages
    if isinstance(num_stages, bool) or not isinstance(num_stages, int):
        raise TypeError(f"Expected num_stages to be an int. Received: {num_stages!r}")
    if not 2 <= num_stages <= num_groups:
        raise ValueError(
            f"Expected 2 <= num_stages <= {num_groups} (the resolution stages of "
            f"{model.name!r}). Received: num_stages={num_stages}"
        )
    # Resolution group g (0-based) belongs to stage first_stage[g].
    ends = [round(s * num_groups / num_stages) for s in range(1, num_stages)]
    stage_of_group = [1 + sum(g >= e for e in ends) for g in range(num_groups)]

    stage_of_tensor = {in_key: 1}
    stage_of_node = {}
    for node in graph.nodes:
        stage = max([1] + [stage_of_tensor[k] for k in node.inputs])
        for k in node.outputs:
            spatial = graph.tensors[k].spatial
            if spatial in groups:
                stage = max(stage, stage_of_group[groups[spatial]])
        stage_of_node[node.index] = stage
        for k in node.outputs:
            stage_of_tensor[k] = stage
    # Exit s reads the last tensor of stage s that a later stage reads.
    exit_keys = {}
    for node in graph.nodes:
        for k in node.inputs:
            if stage_of_tensor[k] < stage_of_node[node.index] and graph.tensors[k].rank == 4:
                exit_keys[stage_of_tensor[k]] = k
    missing = [s for s in range(1, num_stages) if s not in exit_keys]
    if missing:
        raise ValueError(
            f"Model {model.name!r}: no feature map leaves stage(s) {missing} for the next "
            "one; cannot place an exit there."
        )

    def step(node, inputs):
        if out_key in node.outputs and conventions.is_softmax_layer(node.layer):
            return inputs  # stages output logits: the softmax is dropped
        overrides = {}
        if out_key in node.outputs and conventions.has_softmax_activation(node.layer):
            overrides["activation"] = "linear"
        stage = stage_of_node[node.index]
        name = conventions.stage_layer_name(stage, node.name)
        return graph_lib.copy_call(node, inputs, name=name, **overrides)

    num_classes = int(out_shape[-1])
    images = keras.Input(shape=graph.tensors[in_key].shape[1:], name="images")
    values = graph_lib.rebuild(graph, step, {in_key: images})

    heads = []
    for s in range(1, num_stages):
        feature = values[exit_keys[s]]
        height, width = (int(d) for d in feature.shape[1:3])
        pool = (max(1, math.ceil(height / EXIT_GRID)), max(1, math.ceil(width / EXIT_GRID)))
        x = keras.layers.AveragePooling2D(
            pool, padding="same", name=conventions.stage_layer_name(s, "exit_pool")
        )(feature)
        # The backbone's features are not normalised where they leave a resolution stage;
        # without this BatchNormalization the fresh heads' gradients wreck the pretrained
        # backbone at the learning rates S2DNAS trains with (measured: 77% -> 10% in 20 steps).
        x = keras.layers.BatchNormalization(name=conventions.stage_layer_name(s, "exit_bn"))(x)
        x = keras.layers.Flatten(name=conventions.stage_layer_name(s, "exit_flatten"))(x)
        logits = keras.layers.Dense(num_classes, name=conventions.stage_layer_name(s, "exit_logits"))
        heads.append(logits(x))
    heads.append(values[out_key])
    return MultiStageNet(images, heads, name=f"{graph.model_name}_early_exit{num_stages}")
