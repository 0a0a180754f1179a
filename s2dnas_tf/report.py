"""The run report of docs/design.md §10: `report.json`, `report.md` and `curve.png`.

Thresholds are always chosen on the validation split and every accuracy is measured on the
test split, so the figures are honest held-out numbers:

- `dynamic`: thresholds calibrated on validation for the FLOPs budget (best validation
  accuracy with average FLOPs <= budget), then evaluated on test;
- `curve`: the validation Pareto front's threshold sets, each evaluated on test (sorted by
  test average FLOPs);
- `oracle`: each test sample exits at the earliest stage that is right (the limit).
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from s2dnas_tf import calibration, fileio


def build_report(
    *,
    dataset: str,
    model: str,
    static_accuracy: float,
    static_flops: int,
    stage_flops: Sequence[int],
    val_probs: np.ndarray,
    val_labels: np.ndarray,
    test_probs: np.ndarray,
    test_labels: np.ndarray,
    flops_budget_ratio: float,
    arch: dict | None = None,
    search: dict | None = None,
    extra: dict | None = None,
    time_cost: dict | None = None,
) -> dict:
    """Calibrates on validation, measures on test, and returns the report dict.

    With `time_cost` the thresholds are calibrated for a time budget instead of a FLOPs
    one, and the report gains a "cost" entry (each exit path's ms, the static model's, the
    expected ms per image on test and on validation); the FLOPs figures are those of the
    thresholds so chosen.

    Args:
        dataset: Dataset name.
        model: Static model name.
        static_accuracy: The static model's test accuracy.
        static_flops: The static model's FLOPs (MACs).
        stage_flops: Cumulative FLOPs of the multi-stage net's stages.
        val_probs: Stage softmax outputs on the validation split, [S, N_val, K].
        val_labels: Validation labels.
        test_probs: Stage softmax outputs on the test split, [S, N_test, K].
        test_labels: Test labels.
        flops_budget_ratio: The budget as a fraction of `static_flops`, in (0, 1].
        arch: The architecture (`Arch.to_dict()`), if any.
        search: The search summary (`evaluated`, `seconds`, `best_reward`), if any.
        extra: More top-level fields (e.g. training wall times).
        time_cost: {"cost": e.g. "tflite", "static_ms": float, "path_ms": S cumulative
            floats (`cost.exit_path_costs`)}; `flops_budget_ratio` is then the budget as a
            fraction of `static_ms`.

    Returns:
        A JSON-serialisable dict with the fields of docs/design.md §10.

    Raises:
        ValueError: For a budget outside (0, 1] or inconsistent shapes.
    """
    if not 0 < flops_budget_ratio <= 1:
        raise ValueError(
            f"flops_budget_ratio must be in (0, 1]. Received: {flops_budget_ratio!r}"
        )
    stage_flops = [int(f) for f in stage_flops]
    # What the budget counts: FLOPs, or each exit path's time.
    budget_costs, static_cost = stage_flops, static_flops
    if time_cost is not None:
        budget_costs = [float(t) for t in time_cost["path_ms"]]
        static_cost = float(time_cost["static_ms"])
        if len(budget_costs) != len(stage_flops):
            raise ValueError(
                f"time_cost needs one path time per stage ({len(stage_flops)}). Received: "
                f"path_ms={budget_costs}"
            )
    budget = flops_budget_ratio * static_cost
    budget_met = True
    try:
        chosen = calibration.calibrate_for_budget(val_probs, val_labels, budget_costs, budget)
    except calibration.BudgetNotMetError:
        # Not reachable: every sample exits at stage 1, the cheapest policy there is.
        budget_met = False
        chosen = calibration.evaluate_policy(
            val_probs, val_labels, budget_costs, [0.0] * (len(stage_flops) - 1)
        )
    dynamic = calibration.evaluate_policy(test_probs, test_labels, stage_flops, chosen.thresholds)
    oracle = calibration.oracle(test_probs, test_labels, stage_flops)
    front = calibration.accuracy_flops_curve(val_probs, val_labels, stage_flops)
    curve = [
        calibration.evaluate_policy(test_probs, test_labels, stage_flops, p.thresholds)
        for p in front
    ]
    curve.sort(key=lambda p: p.avg_flops)
    report = {
        "dataset": dataset,
        "model": model,
        "num_stages": len(stage_flops),
        "static": {"accuracy": float(static_accuracy), "flops": int(static_flops)},
        "dynamic": {
            "accuracy": dynamic.accuracy,
            "avg_flops": dynamic.avg_flops,
            "flops_ratio": dynamic.avg_flops / static_flops,
            "thresholds": list(dynamic.thresholds),
            "exit_fractions": list(dynamic.exit_fractions),
            "stage_flops": stage_flops,
            "flops_budget_ratio": flops_budget_ratio,
            "budget_met_on_validation": budget_met,
            "validation_accuracy": chosen.accuracy,
        },
        "oracle": {"accuracy": oracle.accuracy, "avg_flops": oracle.avg_flops},
        "curve": [
            {
                "threshold_set": list(p.thresholds),
                "accuracy": p.accuracy,
                "avg_flops": p.avg_flops,
                "exit_fractions": list(p.exit_fractions),
            }
            for p in curve
        ],
        "stage_accuracy": [
            float((test_probs[s].argmax(-1) == test_labels).mean())
            for s in range(len(stage_flops))
        ],
        "search": search or {"evaluated": 0, "seconds": 0.0, "best_reward": None},
    }
    if time_cost is not None:
        report["dynamic"]["flops_budget_ratio"] = None  # the budget was in time
        timed = calibration.evaluate_policy(test_probs, test_labels, budget_costs,
                                            chosen.thresholds)
        report["cost"] = {
            "cost": time_cost["cost"],
            "predicted": True,
            "static_ms": static_cost,
            "path_ms": budget_costs,
            "budget_ratio": flops_budget_ratio,
            "expected_ms": timed.avg_flops,
            "ms_ratio": timed.avg_flops / static_cost,
            "validation_expected_ms": chosen.avg_flops,
        }
        for point in report["curve"]:
            point["avg_ms"] = calibration.evaluate_policy(
                test_probs, test_labels, budget_costs, point["threshold_set"]).avg_flops
    if arch is not None:
        report["arch"] = arch
    if extra:
        report.update(extra)
    return report


def write_report(report: dict, output_dir: str) -> list[str]:
    """Writes report.json, report.md and curve.png into `output_dir` (atomically each).

    Returns:
        The paths written.
    """
    os.makedirs(output_dir, exist_ok=True)
    paths = []
    json_path = os.path.join(output_dir, "report.json")
    fileio.write_text(json_path, json.dumps(report, indent=2) + "\n")
    paths.append(json_path)
    md_path = os.path.join(output_dir, "report.md")
    fileio.write_text(md_path, to_markdown(report))
    paths.append(md_path)
    png_path = os.path.join(output_dir, "curve.png")
    plot_curve(report, png_path)
    paths.append(png_path)
    return paths


def to_markdown(report: dict) -> str:
    """The report for people."""
    static, dynamic, oracle = report["static"], report["dynamic"], report["oracle"]
    flops = static["flops"]
    cost = report.get("cost")
    budget = (f"{dynamic['flops_budget_ratio']:.0%} of the static FLOPs" if cost is None else
              f"{cost['budget_ratio']:.0%} of the static model's {cost['cost']} time "
              f"(predicted from op times)")
    lines = [
        f"# S2DNAS report: {report['model']} on {report['dataset']}",
        "",
        f"{report['num_stages']} stages; thresholds calibrated on the validation split for a "
        f"budget of {budget}; all accuracies on the test split.",
        "",
        "| | test accuracy | average FLOPs | FLOPs ratio |",
        "| --- | --- | --- | --- |",
        f"| static | {static['accuracy']:.4f} | {flops:,} | 1.00 |",
        f"| dynamic | {dynamic['accuracy']:.4f} | {dynamic['avg_flops']:,.0f} | "
        f"{dynamic['flops_ratio']:.2f} |",
        f"| oracle | {oracle['accuracy']:.4f} | {oracle['avg_flops']:,.0f} | "
        f"{oracle['avg_flops'] / flops:.2f} |",
        "",
        f"Thresholds: {', '.join(f'{t:.4f}' for t in dynamic['thresholds']) or '(none)'}; "
        f"exit fractions: {', '.join(f'{f:.3f}' for f in dynamic['exit_fractions'])}.",
        "",
    ]
    if cost is not None:
        lines += [f"Time ({cost['cost']}, batch 1, predicted): static {cost['static_ms']:.3f} "
                  f"ms; exit paths {', '.join(f'{t:.3f}' for t in cost['path_ms'])} ms; "
                  f"expected {cost['expected_ms']:.3f} ms per test image "
                  f"({cost['ms_ratio']:.2f} of static).", ""]
        if "measured_ms" in cost:
            paths = ", ".join("-" if t is None else f"{t:.3f}" for t in cost["measured_path_ms"])
            lines += [f"Time ({cost['cost']}, batch 1, measured on the exported models over the "
                      f"first {cost['measured_images']} test images, timed in turns): static "
                      f"{cost['measured_static_ms']:.3f} ms; dynamic "
                      f"{cost['measured_ms']:.3f} ms per image "
                      f"({cost['measured_ms'] / cost['measured_static_ms']:.2f} of static); "
                      f"by exit {paths} ms.", ""]
    if not dynamic.get("budget_met_on_validation", True):
        lines += ["**The budget could not be met on validation**: every sample exits at "
                  "stage 1, the cheapest policy.", ""]
    lines += ["| stage | cumulative FLOPs | ratio | accuracy alone |", "| --- | --- | --- | --- |"]
    for s, (f, acc) in enumerate(zip(dynamic["stage_flops"], report["stage_accuracy"]), 1):
        lines.append(f"| {s} | {f:,} | {f / flops:.2f} | {acc:.4f} |")
    lines += ["", "## Accuracy vs. average FLOPs (validation-calibrated, test-measured)", "",
              "| FLOPs ratio | accuracy | thresholds |", "| --- | --- | --- |"]
    for p in _thin(report["curve"], 25):
        lines.append(
            f"| {p['avg_flops'] / flops:.3f} | {p['accuracy']:.4f} | "
            f"{', '.join(f'{t:.3f}' for t in p['threshold_set'])} |"
        )
    if "arch" in report:
        lines += ["", "## Architecture", "", "```", report["arch"].get("readable", ""), "```"]
    search = report.get("search") or {}
    if search.get("evaluated"):
        lines += ["", f"Search: {search['evaluated']} architectures in "
                  f"{search['seconds']:.0f} s, best reward {search['best_reward']:.4f}."]
    return "\n".join(lines) + "\n"


def plot_curve(report: dict, path: str) -> None:
    """Accuracy vs. average FLOPs with the static point and the oracle, and an exit histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    static, dynamic, oracle = report["static"], report["dynamic"], report["oracle"]
    flops = static["flops"]
    fig, (ax, hist) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [2, 1]})
    curve = report["curve"]
    ax.plot(
        [p["avg_flops"] / flops for p in curve],
        [p["accuracy"] for p in curve],
        "-o", ms=3, label="dynamic (thresholds from validation)",
    )
    ax.plot([1.0], [static["accuracy"]], "s", color="black", label="static")
    cost = report.get("cost")
    budget = (f"budget {dynamic['flops_budget_ratio']:.0%}" if cost is None else
              f"{cost['cost']} time budget {cost['budget_ratio']:.0%}")
    ax.plot([dynamic["flops_ratio"]], [dynamic["accuracy"]], "*", ms=12, color="tab:red",
            label=f"chosen ({budget})")
    if cost is not None:
        ax.plot([p["avg_ms"] / cost["static_ms"] for p in curve],
                [p["accuracy"] for p in curve], "-", lw=1, color="tab:purple",
                label=f"dynamic against {cost['cost']} time / static (predicted)")
    ax.plot([oracle["avg_flops"] / flops], [oracle["accuracy"]], "^", color="tab:green",
            label="oracle")
    ax.set_xlabel("average FLOPs / static FLOPs" + ("" if cost is None else
                                                      " (purple: time / static time)"))
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{report['model']} on {report['dataset']}")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    stages = np.arange(1, len(dynamic["exit_fractions"]) + 1)
    hist.bar(stages, dynamic["exit_fractions"], color="tab:red")
    hist.set_xticks(stages)
    hist.set_xlabel("exit stage")
    hist.set_ylabel("fraction of test images")
    hist.set_title("exits at the chosen thresholds")
    fig.tight_layout()
    with fileio.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def _thin(points: list, count: int) -> list:
    if len(points) <= count:
        return points
    idx = np.unique(np.linspace(0, len(points) - 1, count).round().astype(int))
    return [points[i] for i in idx]

