"""Tests for `s2dnas_tf.calibration`: hand-computed policies, exhaustive cross-checks."""

from __future__ import annotations

import dataclasses
import itertools
import json

import numpy as np
import pytest

from s2dnas_tf.calibration import (
    NEVER_EXIT,
    BudgetNotMetError,
    PolicyResult,
    TargetNotMetError,
    accuracy_flops_curve,
    calibrate_for_accuracy,
    calibrate_for_budget,
    candidate_thresholds,
    evaluate_policy,
    exit_stages,
    oracle,
    softmax,
)

# --------------------------------------------------------------------------------------
# Helpers.


def _row(confidence: float, right: bool, label: int, num_classes: int) -> list[float]:
    """A softmax row with max probability `confidence` on `label` (or on a wrong class)."""
    row = [(1.0 - confidence) / (num_classes - 1)] * num_classes
    row[label if right else (label + 1) % num_classes] = confidence
    return row


def _stage(rows: list[tuple[float, bool]], labels: np.ndarray, num_classes: int) -> np.ndarray:
    return np.array(
        [_row(c, r, int(y), num_classes) for (c, r), y in zip(rows, labels)], dtype=np.float64
    )


def _two_stage_data():
    """4 samples, 2 classes; stage 2 is always right, stage 1 twice.

    Stage 1 confidences 0.9 (right), 0.6 (wrong), 0.8 (right), 0.7 (wrong).
    """
    labels = np.array([0, 1, 1, 1])
    stage1 = _stage([(0.9, True), (0.6, False), (0.8, True), (0.7, False)], labels, 2)
    stage2 = _stage([(0.95, True), (0.9, True), (0.7, True), (0.8, True)], labels, 2)
    return [stage1, stage2], labels, [10, 30]


def _three_stage_data():
    """6 samples, 3 classes, all labelled 0; (confidence, right) per stage.

    With thresholds (0.8, 0.9): a, d exit at 1; b, e at 2; c, f at 3.
    Right at some stage: a (1), b (2), c (3), d (2), f (1); e never.
    """
    rows = {
        "a": [(0.9, True), (0.5, True), (0.5, True)],
        "b": [(0.5, False), (0.95, True), (0.5, True)],
        "c": [(0.5, False), (0.6, False), (0.7, True)],
        "d": [(0.85, False), (0.6, True), (0.5, True)],
        "e": [(0.4, False), (0.92, False), (0.6, False)],
        "f": [(0.4, True), (0.5, True), (0.6, False)],
    }
    labels = np.zeros(len(rows), dtype=np.int64)
    probs = [_stage([r[s] for r in rows.values()], labels, 3) for s in range(3)]
    return probs, labels, [1, 2, 4]


def _random_data(num_samples: int, num_stages: int, num_classes: int = 10, seed: int = 0):
    """Stages that get more accurate and more confident as s grows."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, num_samples)
    probs = []
    for s in range(num_stages):
        logits = rng.normal(size=(num_samples, num_classes)) * (1 + s)
        logits[np.arange(num_samples), labels] += rng.normal(1 + s, 1.5, size=num_samples)
        probs.append(softmax(logits).astype(np.float32))
    stage_flops = [100 * (s + 1) ** 2 for s in range(num_stages)]
    return probs, labels, stage_flops


def _exhaustive(probs, labels, stage_flops, num_candidates: int) -> list[PolicyResult]:
    """`evaluate_policy` on every point of the candidate grid."""
    grid = itertools.product(*candidate_thresholds(probs, num_candidates))
    return [evaluate_policy(probs, labels, stage_flops, t) for t in grid]


def _exhaustive_front(points: list[PolicyResult]) -> list[tuple[float, float]]:
    front, best = [], -1.0
    for p in sorted(points, key=lambda p: (p.avg_flops, -p.accuracy)):
        if p.accuracy > best:
            front.append((p.avg_flops, p.accuracy))
            best = p.accuracy
    return front


def _assert_valid_front(front, probs, labels, stage_flops):
    flops = [p.avg_flops for p in front]
    accuracy = [p.accuracy for p in front]
    assert all(a < b for a, b in zip(flops, flops[1:])), flops
    assert all(a < b for a, b in zip(accuracy, accuracy[1:])), accuracy
    for point in front:
        # Every point is exactly what its thresholds give.
        assert evaluate_policy(probs, labels, stage_flops, point.thresholds) == point
        assert sum(point.exit_fractions) == pytest.approx(1.0)


# --------------------------------------------------------------------------------------
# softmax.


def test_softmax_is_stable_and_keeps_float_dtype():
    logits = np.array([[1000.0, 1000.0, -1000.0], [0.0, np.log(3.0), -np.inf]], np.float32)
    probs = softmax(logits)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, [[0.5, 0.5, 0.0], [0.25, 0.75, 0.0]], atol=1e-6)
    assert softmax(np.array([[1, 2, 3]])).dtype == np.float64
    np.testing.assert_allclose(softmax(np.zeros((2, 4, 5)), axis=1).sum(axis=1), 1.0)


def test_softmax_rejects_non_numeric():
    with pytest.raises(TypeError, match="Received"):
        softmax(np.array([["a", "b"]]))


# --------------------------------------------------------------------------------------
# exit_stages and evaluate_policy on hand-made outputs.


def test_two_stage_policy_by_hand():
    probs, labels, stage_flops = _two_stage_data()
    np.testing.assert_array_equal(exit_stages(probs, [0.75]), [1, 2, 1, 2])
    assert exit_stages(probs, [0.75]).dtype == np.int32

    result = evaluate_policy(probs, labels, stage_flops, [0.75])
    assert result == PolicyResult((0.75,), 1.0, 20.0, (0.5, 0.5))

    # 0.7 is reached exactly: ">=" lets that (wrong) sample exit too.
    result = evaluate_policy(probs, labels, stage_flops, [0.7])
    assert result == PolicyResult((0.7,), 0.75, 15.0, (0.75, 0.25))


def test_three_stage_policy_by_hand():
    probs, labels, stage_flops = _three_stage_data()
    np.testing.assert_array_equal(exit_stages(probs, (0.8, 0.9)), [1, 2, 3, 1, 2, 3])
    result = evaluate_policy(probs, labels, stage_flops, (0.8, 0.9))
    assert result.accuracy == 0.5  # a, b, c right; d, e, f wrong.
    assert result.avg_flops == pytest.approx(14 / 6)
    assert result.exit_fractions == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    # Only the second threshold set to "never": b, e go on to stage 3.
    np.testing.assert_array_equal(exit_stages(probs, (0.8, NEVER_EXIT)), [1, 3, 3, 1, 3, 3])


@pytest.mark.parametrize("data", [_two_stage_data, _three_stage_data])
def test_threshold_zero_exits_everyone_at_stage_one(data):
    probs, labels, stage_flops = data()
    num_stages = len(probs)
    result = evaluate_policy(probs, labels, stage_flops, [0.0] * (num_stages - 1))
    assert result.exit_fractions == (1.0,) + (0.0,) * (num_stages - 1)
    assert result.avg_flops == stage_flops[0]
    correct = np.argmax(probs[0], axis=1) == labels
    assert result.accuracy == correct.mean()


@pytest.mark.parametrize("data", [_two_stage_data, _three_stage_data])
@pytest.mark.parametrize("never", [NEVER_EXIT, 1.0 + 1e-9, float("inf")])
def test_threshold_above_one_sends_everyone_to_the_last_stage(data, never):
    probs, labels, stage_flops = data()
    num_stages = len(probs)
    np.testing.assert_array_equal(exit_stages(probs, [never] * (num_stages - 1)), num_stages)
    result = evaluate_policy(probs, labels, stage_flops, [never] * (num_stages - 1))
    assert result.exit_fractions == (0.0,) * (num_stages - 1) + (1.0,)
    assert result.avg_flops == stage_flops[-1]
    assert result.accuracy == (np.argmax(probs[-1], axis=1) == labels).mean()


def test_stacked_array_and_list_agree():
    probs, labels, stage_flops = _three_stage_data()
    stacked = np.stack(probs)
    np.testing.assert_array_equal(
        exit_stages(stacked, (0.8, 0.9)), exit_stages(probs, (0.8, 0.9))
    )
    assert evaluate_policy(stacked, labels, stage_flops, (0.8, 0.9)) == evaluate_policy(
        probs, labels, stage_flops, (0.8, 0.9)
    )


def test_keras_style_column_labels_are_accepted():
    probs, labels, stage_flops = _two_stage_data()
    assert evaluate_policy(probs, labels[:, None], stage_flops, [0.75]) == evaluate_policy(
        probs, labels, stage_flops, [0.75]
    )


def test_single_stage():
    probs, labels, _ = _two_stage_data()
    np.testing.assert_array_equal(exit_stages(probs[:1], ()), [1, 1, 1, 1])
    result = evaluate_policy(probs[:1], labels, [7], ())
    assert result == PolicyResult((), 0.5, 7.0, (1.0,))
    assert accuracy_flops_curve(probs[:1], labels, [7]) == [result]
    assert calibrate_for_budget(probs[:1], labels, [7], 7) == result
    assert calibrate_for_accuracy(probs[:1], labels, [7], 0.5) == result
    with pytest.raises(BudgetNotMetError):
        calibrate_for_budget(probs[:1], labels, [7], 6.9)


def test_policy_result_is_frozen_and_serialises():
    probs, labels, stage_flops = _three_stage_data()
    result = evaluate_policy(probs, labels, stage_flops, (0.8, 0.9))
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.accuracy = 1.0
    as_dict = json.loads(json.dumps(result.to_dict()))
    assert as_dict == {
        "thresholds": [0.8, 0.9],
        "accuracy": result.accuracy,
        "avg_flops": result.avg_flops,
        "exit_fractions": list(result.exit_fractions),
    }


# --------------------------------------------------------------------------------------
# The curve and the two calibrations on hand-made outputs.


def test_two_stage_curve_by_hand():
    probs, labels, stage_flops = _two_stage_data()
    front = accuracy_flops_curve(probs, labels, stage_flops)
    # All exit at 1: (10, 0.5); tau in (0.6, 0.7]: 3 exit (15, 0.75); tau in (0.7, 0.8]:
    # the two right ones exit (20, 1.0). Everything else is dominated, e.g. all at
    # stage 2 (30, 1.0) or tau in (0.8, 0.9] (25, 1.0).
    assert [(p.avg_flops, p.accuracy) for p in front] == [(10, 0.5), (15, 0.75), (20, 1.0)]
    assert front[0].exit_fractions == (1.0, 0.0)
    assert 0.6 < front[1].thresholds[0] <= 0.7
    assert 0.7 < front[2].thresholds[0] <= 0.8
    _assert_valid_front(front, probs, labels, stage_flops)


def test_budget_calibration_by_hand():
    probs, labels, stage_flops = _two_stage_data()
    assert calibrate_for_budget(probs, labels, stage_flops, 10).accuracy == 0.5
    assert calibrate_for_budget(probs, labels, stage_flops, 17.5).accuracy == 0.75
    best = calibrate_for_budget(probs, labels, stage_flops, 20)
    assert (best.accuracy, best.avg_flops) == (1.0, 20.0)
    # A larger budget buys nothing more: the cheapest of the best is kept.
    assert calibrate_for_budget(probs, labels, stage_flops, 1e9) == best


def test_budget_not_met_reports_the_cheapest_flops():
    probs, labels, stage_flops = _two_stage_data()
    with pytest.raises(BudgetNotMetError, match=r"flops_budget=9\.5") as info:
        calibrate_for_budget(probs, labels, stage_flops, 9.5)
    assert info.value.cheapest_flops == 10.0
    assert info.value.flops_budget == 9.5
    assert isinstance(info.value, ValueError)


def test_accuracy_calibration_by_hand():
    probs, labels, stage_flops = _two_stage_data()
    assert calibrate_for_accuracy(probs, labels, stage_flops, 0.0).avg_flops == 10.0
    assert calibrate_for_accuracy(probs, labels, stage_flops, 0.75).avg_flops == 15.0
    result = calibrate_for_accuracy(probs, labels, stage_flops, 0.76)
    assert (result.accuracy, result.avg_flops) == (1.0, 20.0)


def test_accuracy_target_not_met_reports_the_best_accuracy():
    probs, labels, stage_flops = _three_stage_data()
    best = max(p.accuracy for p in _exhaustive(probs, labels, stage_flops, 50))
    with pytest.raises(TargetNotMetError, match="target_accuracy=0.99") as info:
        calibrate_for_accuracy(probs, labels, stage_flops, 0.99)
    assert info.value.best_accuracy == best
    assert isinstance(info.value, ValueError)


# --------------------------------------------------------------------------------------
# The oracle.


def test_oracle_by_hand():
    probs, labels, stage_flops = _three_stage_data()
    result = oracle(probs, labels, stage_flops)
    # Exit stages a..f: 1, 2, 3, 2, 3 (never right: last stage), 1.
    assert result.thresholds == ()
    assert result.accuracy == 5 / 6
    assert result.avg_flops == pytest.approx((1 + 2 + 4 + 2 + 4 + 1) / 6)
    assert result.exit_fractions == pytest.approx((2 / 6, 2 / 6, 2 / 6))


def test_oracle_bounds_every_policy():
    probs, labels, stage_flops = _random_data(200, 3, seed=3)
    limit = oracle(probs, labels, stage_flops)
    front = accuracy_flops_curve(probs, labels, stage_flops)
    assert all(p.accuracy <= limit.accuracy for p in front)
    # No policy is both as cheap and as accurate as the oracle, unless it is the oracle.
    assert not any(
        p.avg_flops < limit.avg_flops and p.accuracy >= limit.accuracy for p in front
    )


# --------------------------------------------------------------------------------------
# The curve on random outputs, against an exhaustive search.


@pytest.mark.parametrize("num_stages", [2, 3])
@pytest.mark.parametrize("seed", [0, 1])
def test_curve_equals_the_exhaustive_front(num_stages, seed):
    probs, labels, stage_flops = _random_data(200, num_stages, seed=seed)
    front = accuracy_flops_curve(probs, labels, stage_flops, num_candidates=20)
    _assert_valid_front(front, probs, labels, stage_flops)
    points = _exhaustive(probs, labels, stage_flops, num_candidates=20)
    assert [(p.avg_flops, p.accuracy) for p in front] == _exhaustive_front(points)
    # Non-domination against every point of the grid.
    for p in front:
        assert not any(
            q.avg_flops <= p.avg_flops
            and q.accuracy >= p.accuracy
            and (q.avg_flops < p.avg_flops or q.accuracy > p.accuracy)
            for q in points
        )


def test_curve_ends_at_the_last_stage_accuracy_when_it_is_the_best():
    probs, labels, stage_flops = _random_data(300, 3, seed=2)
    # Make the last stage always right (so nothing beats "all reach the last stage").
    probs[-1] = np.eye(10, dtype=np.float32)[labels] * 0.9 + 0.01
    front = accuracy_flops_curve(probs, labels, stage_flops)
    all_last = evaluate_policy(probs, labels, stage_flops, (NEVER_EXIT, NEVER_EXIT))
    assert all_last.accuracy == 1.0
    assert front[-1].accuracy == all_last.accuracy
    assert front[-1].avg_flops <= all_last.avg_flops
    assert front[0].avg_flops == stage_flops[0]


def test_calibrations_equal_the_exhaustive_search():
    """Brute force over the same candidate grid, N = 200, S = 3."""
    probs, labels, stage_flops = _random_data(200, 3, seed=5)
    points = _exhaustive(probs, labels, stage_flops, num_candidates=50)
    flops = sorted({p.avg_flops for p in points})
    budgets = [flops[0], *np.quantile(flops, [0.1, 0.3, 0.5, 0.8]), flops[-1]]
    for budget in budgets:
        best = max(
            (p for p in points if p.avg_flops <= budget),
            key=lambda p: (p.accuracy, -p.avg_flops),
        )
        got = calibrate_for_budget(probs, labels, stage_flops, budget)
        assert (got.accuracy, got.avg_flops) == (best.accuracy, best.avg_flops)
        assert got.avg_flops <= budget
    accuracies = sorted({p.accuracy for p in points})
    for target in accuracies[:: max(1, len(accuracies) // 6)] + [accuracies[-1]]:
        cheapest = min(
            (p for p in points if p.accuracy >= target),
            key=lambda p: (p.avg_flops, -p.accuracy),
        )
        got = calibrate_for_accuracy(probs, labels, stage_flops, target)
        assert (got.avg_flops, got.accuracy) == (cheapest.avg_flops, cheapest.accuracy)
    with pytest.raises(BudgetNotMetError) as info:
        calibrate_for_budget(probs, labels, stage_flops, flops[0] - 1)
    assert info.value.cheapest_flops == flops[0] == stage_flops[0]


def test_candidates_include_always_and_never():
    probs, _, _ = _random_data(100, 3)
    candidates = candidate_thresholds(probs, num_candidates=7)
    assert len(candidates) == 2
    for values in candidates:
        assert values[0] == 0.0 and values[-1] == NEVER_EXIT > 1.0
        assert np.all(np.diff(values) > 0)
        assert len(values) == 9


# --------------------------------------------------------------------------------------
# More than three stages: the local search.


def test_four_stage_curve_is_a_valid_front():
    probs, labels, stage_flops = _random_data(300, 4, seed=0)
    front = accuracy_flops_curve(probs, labels, stage_flops, num_candidates=8)
    _assert_valid_front(front, probs, labels, stage_flops)
    assert front[0].avg_flops == stage_flops[0]
    points = _exhaustive(probs, labels, stage_flops, num_candidates=8)
    # Whatever the local search misses, nothing on its seeds (the same quantile level
    # at every stage) beats it; and on this data it finds the exhaustive front.
    candidates = candidate_thresholds(probs, num_candidates=8)
    assert len({len(c) for c in candidates}) == 1
    for level in range(len(candidates[0])):
        seed = evaluate_policy(probs, labels, stage_flops, [c[level] for c in candidates])
        assert any(p.avg_flops <= seed.avg_flops and p.accuracy >= seed.accuracy for p in front)
    assert [(p.avg_flops, p.accuracy) for p in front] == _exhaustive_front(points)


def test_five_stage_calibration_runs():
    probs, labels, stage_flops = _random_data(2000, 5, seed=1)
    front = accuracy_flops_curve(probs, labels, stage_flops, num_candidates=20)
    _assert_valid_front(front, probs, labels, stage_flops)
    budget = (stage_flops[0] + stage_flops[-1]) / 2
    result = calibrate_for_budget(probs, labels, stage_flops, budget, num_candidates=20)
    assert result.avg_flops <= budget and len(result.thresholds) == 4


# --------------------------------------------------------------------------------------
# Ten thousand samples: the vectorised grid count against a plain loop.


def _brute_force_front(probs, labels, stage_flops, num_candidates: int):
    """The front of the full candidate grid for S = 3, by a plain loop over grid points.

    Independent of the library's counting: each point's exit stages come from the exit
    rule written out with `np.where`. Grid points are visited in lexicographic order and
    sorted stably, so among equal (avg_flops, accuracy) the smallest thresholds win, the
    tie rule `accuracy_flops_curve` documents.
    """
    stacked = np.asarray(probs, dtype=np.float64)
    confidence = stacked.max(-1)
    correct = stacked.argmax(-1) == labels[None, :]
    n = labels.size
    points = []
    for tau1, tau2 in itertools.product(*candidate_thresholds(probs, num_candidates)):
        stage = np.where(confidence[0] >= tau1, 0, np.where(confidence[1] >= tau2, 1, 2))
        counts = np.bincount(stage, minlength=3)
        # Summed in stage order from integers: bit-identical to the library's FLOPs.
        total = counts[0] * stage_flops[0] + counts[1] * stage_flops[1]
        total = total + counts[2] * stage_flops[2]
        points.append(
            ((float(tau1), float(tau2)), total / n, int(correct[stage, np.arange(n)].sum()) / n)
        )
    front, best = [], -1.0
    for taus, flops, accuracy in sorted(points, key=lambda p: (p[1], -p[2])):
        if accuracy > best:
            front.append((taus, flops, accuracy))
            best = accuracy
    return front


def test_curve_on_ten_thousand_samples_equals_a_brute_force_loop():
    """What the fast path must compute: on 10,000 samples with many ties (confidences
    rounded to 2 decimals, so many samples sit exactly on a candidate threshold, where
    `>=` decides) the histogram count gives exactly the front of a per-point loop,
    thresholds included. (It replaces a wall-time assertion: a unit test checks results,
    not speed.)"""
    probs, labels, stage_flops = _random_data(10_000, 3, seed=0)
    rounded = []
    for p in probs:
        top = p.argmax(-1)
        confidence = np.round(p.max(-1), 2)
        # Keep a valid softmax row: the rest of the mass spread over the other classes.
        row = np.repeat(((1.0 - confidence) / (p.shape[-1] - 1))[:, None], p.shape[-1], 1)
        row[np.arange(len(p)), top] = confidence
        rounded.append(row)
    assert len(np.unique(rounded[0].max(-1))) < 100  # ties: at most 100 distinct values
    front = accuracy_flops_curve(rounded, labels, stage_flops, num_candidates=50)
    expected = _brute_force_front(rounded, labels, stage_flops, num_candidates=50)
    assert len(front) > 10
    assert [(p.thresholds, p.avg_flops, p.accuracy) for p in front] == expected


# --------------------------------------------------------------------------------------
# Validation.


def _bad_call(name: str):
    probs, labels, stage_flops = _two_stage_data()
    calls = {
        "ragged_samples": lambda: evaluate_policy(
            [probs[0], probs[1][:3]], labels, stage_flops, [0.5]
        ),
        "labels_length": lambda: evaluate_policy(probs, labels[:3], stage_flops, [0.5]),
        "labels_range": lambda: evaluate_policy(probs, labels + 1, stage_flops, [0.5]),
        "thresholds_length": lambda: evaluate_policy(probs, labels, stage_flops, [0.5, 0.5]),
        "no_thresholds": lambda: exit_stages(probs, []),
        "nan_threshold": lambda: exit_stages(probs, [float("nan")]),
        "flops_length": lambda: evaluate_policy(probs, labels, [10], [0.5]),
        "flops_not_increasing": lambda: evaluate_policy(probs, labels, [30, 30], [0.5]),
        "flops_decreasing": lambda: oracle(probs, labels, [30, 10]),
        "logits": lambda: exit_stages([p * 10 - 5 for p in probs], [0.5]),
        "no_stages": lambda: exit_stages([], []),
        "two_dim_array": lambda: exit_stages(probs[0], []),
        "negative_budget": lambda: calibrate_for_budget(probs, labels, stage_flops, -1.0),
        "target_above_one": lambda: calibrate_for_accuracy(probs, labels, stage_flops, 1.5),
        "zero_candidates": lambda: accuracy_flops_curve(probs, labels, stage_flops, 0),
    }
    return calls[name]


@pytest.mark.parametrize(
    "name",
    [
        "ragged_samples",
        "labels_length",
        "labels_range",
        "thresholds_length",
        "no_thresholds",
        "nan_threshold",
        "flops_length",
        "flops_not_increasing",
        "flops_decreasing",
        "logits",
        "no_stages",
        "two_dim_array",
        "negative_budget",
        "target_above_one",
        "zero_candidates",
    ],
)
def test_invalid_values_raise_value_error(name):
    with pytest.raises(ValueError, match="Received"):
        _bad_call(name)()


def test_invalid_types_raise_type_error():
    probs, labels, stage_flops = _two_stage_data()
    with pytest.raises(TypeError, match="labels"):
        evaluate_policy(probs, labels.astype(np.float32), stage_flops, [0.5])
    with pytest.raises(TypeError, match="labels"):
        evaluate_policy(probs, np.eye(2, dtype=np.float32)[labels], stage_flops, [0.5])
    with pytest.raises(TypeError, match="Received: thresholds="):
        exit_stages(probs, "0.5")
    with pytest.raises(TypeError, match="Received: thresholds="):
        exit_stages(probs, 0.5)
    with pytest.raises(TypeError, match="Received: stage_flops="):
        evaluate_policy(probs, labels, ["10", "30"], [0.5])
    with pytest.raises(TypeError, match="Received: num_candidates="):
        accuracy_flops_curve(probs, labels, stage_flops, num_candidates=2.5)
    with pytest.raises(TypeError, match="Received: flops_budget="):
        calibrate_for_budget(probs, labels, stage_flops, "20")
    with pytest.raises(TypeError, match="probs"):
        exit_stages(42, [])


def test_error_messages_echo_what_was_received():
    probs, labels, stage_flops = _two_stage_data()
    expected = r"Expected 1 thresholds .* Received: thresholds=\[0.5, 0.6\]"
    with pytest.raises(ValueError, match=expected):
        exit_stages(probs, [0.5, 0.6])
    with pytest.raises(ValueError, match=r"Received: stage_flops=\[30, 10\]"):
        evaluate_policy(probs, labels, [30, 10], [0.5])
    with pytest.raises(ValueError, match=r"labels in \[0, 2\).*Received: labels in \[1, 2\]"):
        evaluate_policy(probs, labels + 1, stage_flops, [0.5])
