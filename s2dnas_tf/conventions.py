"""The package's naming rule for the layers it creates, and what counts as a softmax head.

Every rebuilt network (`transform`, `early_exit.attach_exits`, the exports) names its layers
by this rule, and every reader (`stage_flops`, `export.split_stages`, the TFLite checks,
`rewriter.to_static`) parses names with it, so the rule is written once, here:

- `stage{s}_<name>`: a layer computed for stage s (1-based) only;
- `shared_<name>`: a layer computed once on the image, before any channel-mixing layer,
  which every stage reads (it belongs to stage 1, the first to run).

`<name>` is the original layer's name in the flat graph (`graph.OpNode.name`); a nested
model's layers are named `outer/inner` there, and since Keras refuses "/" in a layer name,
the rebuilt layer is `stage1_outer_inner`.

This module imports nothing from the package: every other module may use it.
"""

from __future__ import annotations

import re

import keras

__all__ = [
    "ends_in_softmax",
    "has_softmax_activation",
    "is_softmax_layer",
    "layer_name",
    "shared_layer_name",
    "stage_layer_name",
    "stage_of_layer",
    "stages_in_tensor_name",
]

SHARED_PREFIX = "shared_"
_STAGE_LAYER = re.compile(r"^stage(\d+)_")
# The stage of a rebuilt layer inside a TF/TFLite tensor name: ".../stage2_conv1_1/..." (an
# original layer may itself be called "stage2_block1", so only a name segment's start counts).
_STAGE_IN_TENSOR = re.compile(r"(?:^|[/;])stage(\d+)_")


def layer_name(name: str) -> str:
    """A graph node's name as a Keras layer name ("/" is not allowed there)."""
    return name.replace("/", "_")


def stage_layer_name(stage: int, name: str, suffix: str = "") -> str:
    """The name of stage `stage`'s layer rebuilt from the graph layer `name`."""
    return f"stage{stage}_{layer_name(name)}{suffix}"


def shared_layer_name(name: str, suffix: str = "") -> str:
    """The name of the shared (image-only, computed once) layer rebuilt from `name`."""
    return f"{SHARED_PREFIX}{layer_name(name)}{suffix}"


def stage_of_layer(name: str) -> int | None:
    """Stage (1-based) of a rebuilt layer from its name; `shared_` layers belong to stage 1;
    None for a name of neither kind (the input, a `keras.ops` call)."""
    if name.startswith(SHARED_PREFIX):
        return 1
    match = _STAGE_LAYER.match(name)
    return int(match.group(1)) if match else None


def stages_in_tensor_name(name: str) -> set[int]:
    """The stages whose rebuilt layers a TF or TFLite tensor/op name mentions (TFLite joins
    fused ops' names with ";")."""
    return {int(s) for s in _STAGE_IN_TENSOR.findall(name)}


def is_softmax_layer(layer) -> bool:
    """A `Softmax` layer, or an `Activation("softmax")`."""
    if isinstance(layer, keras.layers.Softmax):
        return True
    if isinstance(layer, keras.layers.Activation):
        return getattr(layer.activation, "__name__", "") == "softmax"
    return False


def has_softmax_activation(layer) -> bool:
    """A layer whose own `activation` is softmax (e.g. `Dense(10, activation="softmax")`)."""
    return getattr(getattr(layer, "activation", None), "__name__", "") == "softmax"


def ends_in_softmax(model: keras.Model) -> bool:
    """Whether `model`'s output is class probabilities: its last layer is a softmax layer or
    has a softmax activation (keras.applications' default `classifier_activation`)."""
    last = model.layers[-1]
    return is_softmax_layer(last) or has_softmax_activation(last)


def leaf_layers(model: keras.Model):
    """The layers of `model`, nested models' layers in place of the nested models."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from leaf_layers(layer)
        else:
            yield layer
