"""s2dnas_tf: turn a trained static Keras CNN into a multi-stage network for dynamic inference.

Public API (docs/design.md §9):

    import s2dnas_tf as s2d
    space = s2d.SearchSpace.from_model(model, num_stages=3)
    arch = space.default_arch()            # also space.sample(seed), space.decode(tokens)
    net = s2d.transform(model, arch)       # keras.Model: images -> list of S logits
    s2d.count_flops(model)                 # MACs of a static model
    s2d.stage_flops(net)                   # cumulative MACs per stage
"""

from s2dnas_tf.flops import count_flops
from s2dnas_tf.rules import register_rule
from s2dnas_tf.space import Arch, SearchSpace
from s2dnas_tf.rewriter import stage_flops, transform

__all__ = [
    "Arch",
    "SearchSpace",
    "count_flops",
    "register_rule",
    "stage_flops",
    "transform",
]
__version__ = "0.1.0"
