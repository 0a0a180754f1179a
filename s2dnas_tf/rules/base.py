"""The layer-rule interface, the registry and the helpers every rule uses (see the package
docstring)."""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol

import keras
import numpy as np

from s2dnas_tf import conventions


class UnsupportedLayerError(ValueError):
    """A layer (or its configuration) that s2dnas_tf cannot split."""


@dataclasses.dataclass
class Piece:
    """One stage's slice of a tensor: `tensor[..., k]` is original channel `idx[k]`."""

    tensor: keras.KerasTensor
    idx: np.ndarray


# A tensor's value while rebuilding: a list of S optional pieces (partitioned) or one full
# tensor (shared: computed from the image alone, visible to every stage).
@dataclasses.dataclass
class Shared:
    tensor: keras.KerasTensor


Value = "Shared | list[Piece | None]"


class BuildContext(Protocol):
    """What a rule may ask the rewriter (implemented in rewriter.py)."""

    num_stages: int
    graph: object  # graph.Graph of the original model

    def visible_stages(self, node, stage: int) -> list[int]:
        """Stages (1-based) whose slices stage `stage` reads in channel-mixing `node`."""

    def allocated(self, key: int, stage: int) -> np.ndarray:
        """Original channel indices of tensor `key` allocated to `stage`: its slice of a
        free unit, or, for a mixing output that follows a derived layout
        (`Analysis.follows`), the channels stage `stage` holds in that derived tensor."""

    def clone(self, layer, name: str, **config) -> keras.layers.Layer:
        """A new layer of `layer`'s class and config, renamed, with `config` overrides.
        Its initializers are zeros: the rule sets every weight it has once it is built."""

    def name(self, node, stage: int, suffix: str = "") -> str:
        """The new layer's name for `stage`."""


class LayerRule:
    """Base rule. `kind` is "mixing" for channel-mixing layers, "channelwise" otherwise."""

    kind = "channelwise"

    def check(self, node, graph) -> None:
        layer = node.layer
        if len(node.outputs) != 1:
            raise UnsupportedLayerError(
                f"{node.name!r} ({type(layer).__name__}) has {len(node.outputs)} outputs; "
                "only single-output layers are supported"
            )
        fmt = getattr(layer, "data_format", "channels_last")
        if fmt not in (None, "channels_last"):
            raise UnsupportedLayerError(
                f"{node.name!r} ({type(layer).__name__}) uses data_format={fmt!r}; only "
                "'channels_last' is supported"
            )

    def resolve(self, layer) -> "LayerRule":
        """The rule that applies to this layer instance (a class may need several)."""
        return self

    def analyse(self, node, ana) -> None:
        raise NotImplementedError

    def build(self, node, inputs: list, ctx: BuildContext) -> list:
        raise NotImplementedError

    def plan(self, node, inputs: list, ctx: BuildContext) -> list:
        """What `build` would hold, without building anything: for each output, S entries,
        each the original channel indices stage s holds there (`Piece.idx`) or None where it
        computes nothing. `inputs` are the same for the node's inputs (or `Shared` values).
        The supernet (`s2dnas_tf.supernet`) masks one full-width network with it; the tests
        check that it agrees with `build` on every rule.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no `plan`; the weight-sharing supernet needs one "
            "(see WORKSPACE.md, Adding a layer rule)."
        )

    def build_shared(self, node, tensors: list, ctx: BuildContext):
        """The layer once on full tensors computed from the image alone (e.g. the input
        Normalization): a copy of the layer with the same weights."""
        new = ctx.clone(node.layer, conventions.shared_layer_name(node.name))
        y = new(*tensors, **node.call_kwargs)
        for src, dst in zip(node.layer.weights, new.weights):
            dst.assign(src)
        if hasattr(new, "finalize_state") and new.weights:
            new.finalize_state()
        return y


_RULES: dict[type, LayerRule] = {}


def register_rule(*layer_classes: type) -> Callable[[LayerRule], LayerRule]:
    """Registers a rule instance for exact layer classes; refuses duplicates.

    Usage: `register_rule(MyLayer)(MyRule())`.
    """

    def deco(rule: LayerRule) -> LayerRule:
        if not isinstance(rule, LayerRule):
            raise TypeError(
                f"register_rule expects a LayerRule instance. Received: {type(rule).__name__}"
            )
        for cls in layer_classes:
            if cls in _RULES:
                raise ValueError(
                    f"A rule for {cls.__name__} is already registered "
                    f"({type(_RULES[cls]).__name__}). Received a second one: "
                    f"{type(rule).__name__}"
                )
            _RULES[cls] = rule
        return rule

    return deco


def rule_for(layer) -> LayerRule:
    """The registered rule for `layer`'s exact class.

    Raises:
        UnsupportedLayerError: If none is registered.
    """
    rule = _RULES.get(type(layer))
    if rule is None:
        what = type(layer).__module__ + "." + type(layer).__name__
        hint = ""
        if isinstance(layer, keras.layers.Lambda):
            hint = " (a Lambda's channel semantics are unknown)"
        elif not isinstance(layer, keras.layers.Layer):
            hint = " (a keras.ops call in the functional graph; use the keras.layers equivalent)"
        raise UnsupportedLayerError(f"{layer.name!r} of class {what} has no rule{hint}")
    return rule.resolve(layer)


def supported_layer_names() -> list[str]:
    return sorted({cls.__name__ for cls in _RULES})


def is_classifier_layer(layer) -> bool:
    if type(layer) is keras.layers.Dense:
        return True
    return type(layer) is keras.layers.Conv2D and layer.groups == 1


# --- helpers --------------------------------------------------------------------------------


def slice_last(array: np.ndarray, full: int, idx: np.ndarray) -> np.ndarray:
    return array[..., idx] if array.ndim and array.shape[-1] == full else array


def assign(variable, value) -> None:
    if tuple(variable.shape) != tuple(np.shape(value)):
        raise AssertionError(
            f"internal: cannot assign {np.shape(value)} to {variable.path} {variable.shape}"
        )
    variable.assign(np.asarray(value, dtype=variable.dtype))


def concat_pieces(pieces: list[Piece], name: str) -> Piece:
    if len(pieces) == 1:
        return pieces[0]
    tensor = keras.layers.Concatenate(axis=-1, name=name)([p.tensor for p in pieces])
    return Piece(tensor, np.concatenate([p.idx for p in pieces]))


def check_same_channels(node, stage: int, pieces: list) -> None:
    """Elementwise-joined slices of one stage must hold the same channels, in order."""
    for p in pieces[1:]:
        if not np.array_equal(p.idx, pieces[0].idx):
            raise ValueError(
                f"{node.name!r}: stage {stage}'s inputs hold different channels; this "
                "architecture cannot be built."
            )


def channels_in(node, graph) -> int:
    return graph.tensors[node.inputs[0]].channels
