"""Folds each convolution + BatchNormalization pair of an inference graph into the convolution.

One more use of `graph.rebuild`: every node is copied, except that a foldable convolution gets
the folded kernel and bias and its BatchNormalization is dropped.
"""

from __future__ import annotations

import keras
import numpy as np

from s2dnas_tf import graph as graph_lib

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
    folds = batchnorm_folds(graph)
    folded_bns = {bn.index for bn in folds.values()}

    def step(node, inputs):
        if node.index in folded_bns:
            return inputs  # the convolution before it already computes its output
        if node.index in folds:
            weights = _folded_weights(node.layer, folds[node.index].layer)
            return graph_lib.copy_call(node, inputs, weights=weights, use_bias=True)
        return graph_lib.copy_call(node, inputs)

    inputs = graph_lib.new_inputs(graph)
    values = graph_lib.rebuild(graph, step, inputs)
    inputs = [inputs[k] for k in graph.inputs]
    outputs = [values[k] for k in graph.outputs]
    return keras.Model(
        inputs[0] if len(inputs) == 1 else inputs,
        outputs[0] if len(outputs) == 1 else outputs,
        name=model.name,
    )


def batchnorm_folds(graph: graph_lib.Graph) -> dict[int, graph_lib.OpNode]:
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
