"""Layer rules: how each Keras layer type is split into per-stage slices (docs/design.md §2).

A rule answers three questions for one layer type:

- `check`: is this particular layer's configuration supported? (raise
  `UnsupportedLayerError` naming the layer and what is accepted);
- `analyse`: which of its tensors share a channel partition (`Analysis.union`), which start a
  new free unit (`mark_free`), which are derived from their inputs (`mark_derived`); a
  mixing output joined to a derived tensor follows the derived layout (`Analysis.follows`);
- `build`: given the per-stage slices of its inputs, build the per-stage layers with
  inherited (sliced) weights and return the per-stage slices of its output.

A *slice* (`Piece`) is a Keras tensor plus `idx`, the original channel indices it holds, in
order. A stage that computes nothing at some tensor has `None` there (it behaves as zeros).

Rules are looked up by exact layer class in a registry; `register_rule(SomeLayer)(MyRule())`
adds a type without touching the rewriter (see WORKSPACE.md).

Modules: `base` (the interface, the registry, shared helpers), `channelwise`, `mixing`,
`merges`; each registers its own rules when imported.
"""

from s2dnas_tf.rules.base import (
    BuildContext,
    LayerRule,
    Piece,
    Shared,
    UnsupportedLayerError,
    is_classifier_layer,
    register_rule,
    rule_for,
    supported_layer_names,
)
from s2dnas_tf.rules.channelwise import (
    ActivationRule,
    AxisChannelwiseRule,
    ChannelwiseRule,
    FlattenRule,
    GroupedConvRule,
    ProjectionDimRule,
    ReshapeRule,
)
from s2dnas_tf.rules.merges import (
    ConcatenateRule,
    ElementwiseOpRule,
    MergeRule,
    ScaledResidualRule,
)
from s2dnas_tf.rules.mixing import Conv2DRule, MixingRule, SeparableConvRule

__all__ = [
    "ActivationRule",
    "AxisChannelwiseRule",
    "BuildContext",
    "ChannelwiseRule",
    "ConcatenateRule",
    "Conv2DRule",
    "ElementwiseOpRule",
    "FlattenRule",
    "GroupedConvRule",
    "LayerRule",
    "MergeRule",
    "MixingRule",
    "Piece",
    "ProjectionDimRule",
    "ReshapeRule",
    "ScaledResidualRule",
    "SeparableConvRule",
    "Shared",
    "UnsupportedLayerError",
    "is_classifier_layer",
    "register_rule",
    "rule_for",
    "supported_layer_names",
]
