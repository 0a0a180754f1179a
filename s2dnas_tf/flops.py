"""FLOPs of a static Keras model, counted per layer from its functional graph.

Convention: one multiply-accumulate (MAC) = one FLOP. This is the convention of the
ResNet and S2DNAS papers (CIFAR ResNet-20 ~ 41 MFLOPs, ResNet-56 ~ 125 MFLOPs);
TensorFlow's profiler counts a MAC as 2 FLOPs, so its figures are twice these.
All counts are for one sample (the batch dimension is ignored).

Counted (H_out, W_out: output spatial size; kh, kw: kernel size; 1D and 3D alike):
- `Conv1D` / `Conv2D` / `Conv3D` (any strides, dilation, padding, `groups`):
  `H_out * W_out * C_out * kh * kw * C_in / groups`.
- `DepthwiseConv1D` / `DepthwiseConv2D`:
  `H_out * W_out * C_in * depth_multiplier * kh * kw`.
- `SeparableConv1D` / `SeparableConv2D`: the depthwise part as above plus the
  pointwise part `H_out * W_out * C_in * depth_multiplier * C_out`.
- `Dense` on an input of any rank: `prod(leading non-batch dims) * C_in * C_out`.

Not counted: bias adds, `BatchNormalization` and other normalization layers,
activations, pooling, `Add` / `Multiply` and other merge layers, reshapes, padding,
dropout, and every layer class not listed above (transposed convolutions,
`EinsumDense`, `Embedding`, custom layers, raw `keras.ops` calls in a functional
graph). Nothing is dropped silently: `uncounted_layers(model)` names every layer
that has weights or is of an unknown class and was not counted, so a user sees what
the convention leaves out. Weightless layers of the known kinds above (activations,
pooling, merges, reshapes, ...) are not listed there: their omission is the
convention itself.

The model's structure comes from `graph.trace` (the package's one graph walk): a nested
`keras.Model` used as a layer is expanded into its own layers, with keys
`"<nested model name>/<layer name>"`; a layer or nested model called several times in the
graph is counted once per call.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Sequence
from typing import Any

import keras
from keras import layers

from s2dnas_tf import graph as graph_lib

__all__ = [
    "COUNTED_LAYERS",
    "count_flops",
    "flops_by_layer",
    "layer_flops",
    "uncounted_layers",
]

Shape = Sequence[int | None]

_CONV_LAYERS = (layers.Conv1D, layers.Conv2D, layers.Conv3D)
_DEPTHWISE_LAYERS = (layers.DepthwiseConv1D, layers.DepthwiseConv2D)
_SEPARABLE_LAYERS = (layers.SeparableConv1D, layers.SeparableConv2D)
COUNTED_LAYERS = _CONV_LAYERS + _DEPTHWISE_LAYERS + _SEPARABLE_LAYERS + (layers.Dense,)

# Weightless layers whose arithmetic the convention leaves out on purpose. Looked up
# by name so that a class missing from an older Keras 3 release is simply skipped.
_UNCOUNTED_BY_CONVENTION_NAMES = (
    # Graph plumbing, shape and inference no-ops.
    "InputLayer", "Identity", "Flatten", "Reshape", "Permute", "RepeatVector",
    "Masking", "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
    "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D",
    "Cropping1D", "Cropping2D", "Cropping3D",
    "UpSampling1D", "UpSampling2D", "UpSampling3D", "Rescaling",
    # Activations.
    "Activation", "ReLU", "LeakyReLU", "ELU", "Softmax",
    # Merges.
    "Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate",
    # Pooling.
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D",
    "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "AdaptiveMaxPooling1D", "AdaptiveMaxPooling2D", "AdaptiveMaxPooling3D",
    "AdaptiveAveragePooling1D", "AdaptiveAveragePooling2D", "AdaptiveAveragePooling3D",
)  # fmt: skip
_UNCOUNTED_BY_CONVENTION = tuple(
    getattr(layers, name)
    for name in _UNCOUNTED_BY_CONVENTION_NAMES
    if hasattr(layers, name)
)


def layer_flops(
    layer: keras.Operation,
    input_shape: Shape | Sequence[Shape],
    output_shape: Shape | Sequence[Shape],
) -> int:
    """Returns the MACs of one call of `layer` (see the module docstring).

    Args:
        layer: A Keras layer (or any Keras operation).
        input_shape: The shape of the call's input, batch dimension first (its value
            is ignored and may be `None`). A list of shapes for a multi-input call.
        output_shape: The shape of the call's output, batch dimension first.

    Returns:
        The number of multiply-accumulates of one sample, or 0 if the convention does
        not count `layer`'s class (including classes this module does not know).

    Raises:
        ValueError: If `layer` is counted but a dimension its cost depends on is
            unknown (`None`) or the shapes do not fit the layer.
    """
    if not isinstance(layer, COUNTED_LAYERS):
        return 0
    input_shape = _single_shape(layer, input_shape, "input_shape")
    output_shape = _single_shape(layer, output_shape, "output_shape")
    if isinstance(layer, layers.Dense):
        # Dense contracts the last axis; every other non-batch axis is a "position".
        positions = _known_product(layer, output_shape[1:-1], output_shape)
        in_channels = _known_product(layer, input_shape[-1:], input_shape)
        return positions * in_channels * layer.units

    # The conv families share `data_format` and `kernel_size`.
    if layer.data_format == "channels_first":
        in_channels_dims, spatial_dims = input_shape[1:2], output_shape[2:]
    else:
        in_channels_dims, spatial_dims = input_shape[-1:], output_shape[1:-1]
    positions = _known_product(layer, spatial_dims, output_shape)
    in_channels = _known_product(layer, in_channels_dims, input_shape)
    kernel_taps = math.prod(layer.kernel_size)
    if isinstance(layer, _CONV_LAYERS):
        return positions * layer.filters * kernel_taps * in_channels // layer.groups
    depthwise_channels = in_channels * layer.depth_multiplier
    depthwise = positions * depthwise_channels * kernel_taps
    if isinstance(layer, _DEPTHWISE_LAYERS):
        return depthwise
    return depthwise + positions * depthwise_channels * layer.filters  # Separable.


def flops_by_layer(model: keras.Model) -> dict[str, int]:
    """Returns the MACs of every layer call of a built functional or Sequential model.

    Shapes are read from the model's graph, so the model must have a static input
    shape wherever a counted layer's cost depends on it.

    Args:
        model: A built functional or Sequential `keras.Model`.

    Returns:
        A dict from layer name to the layer's MACs for one sample, summed over the
        layer's calls in the graph, in topological order. Every layer call in the
        graph has a key (0 if not counted); input layers have none. A nested model
        is expanded into keys `"<nested model name>/<layer name>"`.

    Raises:
        TypeError: If `model` is not a `keras.Model`, is not built, or has no graph
            (a subclassed model).
        ValueError: If a counted layer's cost depends on an unknown dimension.
    """
    _check_model(model)
    flops: dict[str, int] = {}
    for name, layer, input_shape, output_shape in _leaf_calls(model):
        flops[name] = flops.get(name, 0) + layer_flops(layer, input_shape, output_shape)
    return flops


def uncounted_layers(model: keras.Model) -> list[str]:
    """Returns the names of the layers whose cost the convention leaves out.

    These are the layers that are not counted and either hold weights (e.g.
    `BatchNormalization`, `Conv2DTranspose`, `EinsumDense`, `Embedding`) or are of a
    class this module does not know (custom layers, subclassed models used as
    layers, `keras.ops` calls in a functional graph). Weightless layers of the kinds
    the convention leaves out on purpose (activations, pooling, merges, reshapes) are
    not listed.

    Args:
        model: A built functional or Sequential `keras.Model`.

    Returns:
        Names in the same form as the keys of `flops_by_layer(model)`, in graph
        order, each once.

    Raises:
        TypeError: If `model` is not a `keras.Model`, is not built, or has no graph
            (a subclassed model).
    """
    _check_model(model)
    names: dict[str, None] = {}  # An ordered set.
    for name, layer, _, _ in _leaf_calls(model):
        if isinstance(layer, COUNTED_LAYERS):
            continue
        has_weights = bool(getattr(layer, "weights", None))
        if has_weights or not isinstance(layer, _UNCOUNTED_BY_CONVENTION):
            names[name] = None
    return list(names)


def count_flops(model: keras.Model) -> int:
    """Returns the MACs of one sample through a static model (sum of `flops_by_layer`).

    Args:
        model: A built functional or Sequential `keras.Model`.

    Returns:
        The total number of multiply-accumulates for one sample.

    Raises:
        TypeError: If `model` is not a `keras.Model`, is not built, or has no graph
            (a subclassed model).
        ValueError: If a counted layer's cost depends on an unknown dimension.
    """
    return sum(flops_by_layer(model).values())


def _check_model(model: Any) -> None:
    if not isinstance(model, keras.Model):
        raise TypeError(
            "Expected a Keras 3 `keras.Model` (functional or Sequential). "
            f"Received: model={model!r} of type {type(model).__name__}"
        )
    if not model.built:
        raise TypeError(
            "Expected a built model; build it first, e.g. by giving a Sequential "
            "model a `keras.Input` or calling `model.build(input_shape)`. "
            f"Received: model={model.name!r} (not built)"
        )
    if not graph_lib.is_graph_model(model):
        raise TypeError(
            "Expected a functional or Sequential model, whose graph can be walked; "
            "a subclassed model (or a Sequential model whose layers could not be "
            "traced symbolically) has none. "
            f"Received: model={model.name!r} of type {type(model).__name__}"
        )


def _leaf_calls(model: keras.Model) -> Iterator[tuple[str, Any, Any, Any]]:
    """Yields `(name, layer, input_shape, output_shape)` per leaf layer call."""
    graph = graph_lib.trace(
        model, single_input=False, single_output=False, allow_shared=True
    )
    for node in graph.nodes:
        yield (
            node.name,
            node.layer,
            _shapes([graph.tensors[k] for k in node.inputs]),
            _shapes([graph.tensors[k] for k in node.outputs]),
        )


def _shapes(tensors: list[Any]) -> Any:
    shapes = [tuple(tensor.shape) for tensor in tensors]
    return shapes[0] if len(shapes) == 1 else shapes


def _single_shape(layer: Any, shape: Any, arg_name: str) -> tuple[int | None, ...]:
    shape = tuple(shape)
    if len(shape) < 2 or not all(
        d is None or isinstance(d, numbers.Integral) for d in shape
    ):
        raise ValueError(
            f"Expected `{arg_name}` to be one shape with a batch dimension for layer "
            f"{layer.name!r} ({type(layer).__name__}). Received: {arg_name}={shape!r}"
        )
    return tuple(None if d is None else int(d) for d in shape)


def _known_product(layer: Any, dims: Sequence[int | None], shape: Shape) -> int:
    if any(dim is None for dim in dims):
        raise ValueError(
            f"Cannot count the FLOPs of layer {layer.name!r} "
            f"({type(layer).__name__}): its cost depends on a dimension that is "
            "unknown. Build the model with a static input shape. "
            f"Received: shape={tuple(shape)!r}"
        )
    return math.prod(dims)
