"""Dynamic inference and exit-threshold calibration (docs/design.md §4), in plain numpy.

Exit rule: after stage s < S a sample exits if the maximum softmax probability of
stage s is >= tau_s; the last stage always answers. Everything here works on the
stages' softmax outputs on a held-out split, so it is exact and needs no TensorFlow:

- `exit_stages` / `evaluate_policy` (`policy`): where each sample exits under given
  thresholds, and the resulting accuracy, average FLOPs and exit fractions.
- `accuracy_flops_curve` (`pareto`): the Pareto front (accuracy vs. average FLOPs)
  over a grid of candidate thresholds (`candidate_thresholds`).
- `calibrate_for_budget` / `calibrate_for_accuracy` (`calibrate`): the front point with
  the best accuracy under a FLOPs budget, or the least FLOPs reaching a target
  accuracy.
- `oracle` (`policy`): each sample exits at the earliest stage that is right (the
  limit).

Common arguments:
    probs: the S stages' softmax outputs, a sequence of S arrays [N, K] or one
        array [S, N, K]. Hold logits? Pass them through `softmax` first.
    labels: int array [N] (an [N, 1] array, as `keras.datasets` returns, is also
        accepted), values in [0, K).
    stage_flops: S cumulative FLOPs: entry s is the cost of running stages 1..s
        (what `s2dnas_tf.stage_flops(net)` returns); strictly increasing.

A sample that exits at stage s costs stage_flops[s - 1]; avg_flops is the mean over
the split, in the same unit as `stage_flops`.

Modules, each importing only those above it: `checks` (the arguments' checks),
`policy` (`NEVER_EXIT`, `PolicyResult`, `softmax`, the exit rule, the oracle),
`pareto` (the front), `calibrate` (budget and target). The public names are those in
`__all__`; the submodules' other names are internal.
"""

from s2dnas_tf.calibration.policy import (
    NEVER_EXIT,
    PolicyResult,
    evaluate_policy,
    exit_stages,
    oracle,
    softmax,
)
from s2dnas_tf.calibration.pareto import accuracy_flops_curve, candidate_thresholds
from s2dnas_tf.calibration.calibrate import (
    BudgetNotMetError,
    TargetNotMetError,
    calibrate_for_accuracy,
    calibrate_for_budget,
)

__all__ = [
    "BudgetNotMetError",
    "NEVER_EXIT",
    "PolicyResult",
    "TargetNotMetError",
    "accuracy_flops_curve",
    "calibrate_for_accuracy",
    "calibrate_for_budget",
    "candidate_thresholds",
    "evaluate_policy",
    "exit_stages",
    "oracle",
    "softmax",
]
