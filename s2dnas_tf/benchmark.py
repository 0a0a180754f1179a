"""Benchmark results: one record per method, the issue's goals checked, Markdown and a plot.

experiments/benchmark.py runs the methods; this module turns their measurements into
`{"methods": {name: {"accuracy", "avg_flops", "latency_ms", "curve": [{"accuracy",
"avg_flops"}], ...}}, ...}` and says plainly which goals are met. Library code: no flags.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from typing import Any, Sequence

import numpy as np

from s2dnas_tf import fileio
from s2dnas_tf import latency as latency_lib

# In the order they run: thin_matched needs s2dnas_rl's network, the searches after the
# first reuse its supernet.
METHODS = (
    "static", "static_ft", "thin_static", "early_exit", "s2dnas_default", "s2dnas_rl",
    "s2dnas_random", "s2dnas_rl_flops", "thin_matched",
)
DYNAMIC_METHODS = ("early_exit", "s2dnas_default", "s2dnas_rl", "s2dnas_random",
                   "s2dnas_rl_flops")
THIN_METHODS = ("thin_static", "thin_matched")  # static architectures trained from scratch
SEARCH_METHODS = ("s2dnas_rl", "s2dnas_random", "s2dnas_rl_flops")
LABELS = {
    "static": "static ResNet (original)",
    "static_ft": "static ResNet, fine-tuned like the dynamic methods",
    "thin_static": "thin static (half width, from scratch)",
    "early_exit": "early exits, no search",
    "s2dnas_default": "S2DNAS space's default architecture, no search",
    "s2dnas_rl": "S2DNAS, REINFORCE search",
    "s2dnas_random": "S2DNAS, random search",
    "s2dnas_rl_flops": "S2DNAS, REINFORCE search for FLOPs (not time)",
    "thin_matched": "thin static at s2dnas_rl's predicted TFLite time, from scratch",
}


def expected_time_ratio(net, exit_fractions: Sequence[float], static_model,
                        cost: str = "tflite", table=None) -> float:
    """A multi-stage net's predicted time per image, its images leaving at its stages in
    `exit_fractions`, as a fraction of the static model's predicted time
    (`cost.exit_path_costs`: per-layer times measured once on this machine and cached)."""
    from s2dnas_tf import cost as cost_lib

    paths = cost_lib.exit_path_costs(net, cost, table)
    if len(exit_fractions) != len(paths):
        raise ValueError(f"Expected one exit fraction per stage ({len(paths)}). Received: "
                         f"{list(exit_fractions)}")
    expected = float(np.dot(exit_fractions, paths))
    return expected / cost_lib.static_cost(static_model, cost, table)


def matched_width(target_ratio: float, build, widths: Sequence[float],
                  cost: str = "tflite", table=None) -> tuple[float, float]:
    """The width multiplier whose thin model is predicted to take the nearest fraction of the
    full-width model's time to `target_ratio`.

    Args:
        target_ratio: The time to match, a fraction of the full model's (> 0).
        build: width multiplier -> a freshly built model (1.0: the full one).
        widths: The widths to try, each in (0, 1].
        cost: A time cost of `cost.COSTS`.

    Returns:
        (width, its predicted time ratio).

    Raises:
        ValueError: For no widths, a width outside (0, 1] or a target <= 0.
    """
    from s2dnas_tf import cost as cost_lib

    widths = [float(w) for w in widths]
    if not widths or any(not 0 < w <= 1 for w in widths):
        raise ValueError(f"widths must be a non-empty list of numbers in (0, 1]. Received: "
                         f"{widths}")
    if not target_ratio > 0:
        raise ValueError(f"target_ratio must be > 0. Received: {target_ratio!r}")
    full = cost_lib.static_cost(build(1.0), cost, table)
    ratios = {w: cost_lib.static_cost(build(w), cost, table) / full for w in widths}
    width = min(widths, key=lambda w: (abs(ratios[w] - target_ratio), w))
    return width, ratios[width]


def static_record(
    *, accuracy: float, flops: float, latency: dict, tflite_latency: dict | None,
    train_seconds: float | None = None,
) -> dict[str, Any]:
    """The record of a single-exit model: its curve is its one point."""
    return {
        "accuracy": float(accuracy),
        "avg_flops": float(flops),
        "latency_ms": float(latency["mean_ms"]),
        "latency_median_ms": float(latency["median_ms"]),
        "tflite_latency_ms": None if tflite_latency is None else float(tflite_latency["mean_ms"]),
        "tflite_latency_median_ms": (
            None if tflite_latency is None else float(tflite_latency["median_ms"])
        ),
        "curve": [{"accuracy": float(accuracy), "avg_flops": float(flops)}],
        "latency_curve": [{
            "accuracy": float(accuracy), "latency_ms": float(latency["mean_ms"]),
            "tflite_latency_ms": (
                None if tflite_latency is None else float(tflite_latency["mean_ms"])
            ),
        }],
        "exit_fractions": [1.0],
        "oracle": None,
        "search_seconds": None,
        "train_seconds": train_seconds,
    }


def dynamic_record(
    report: dict, *, latency: dict, exit_stages: np.ndarray, tflite_latency: dict | None
) -> dict[str, Any]:
    """The record of a multi-exit model from its run report (`report.build_report`) and
    its SavedModel's timing; `exit_stages` are the SavedModel's own exits on the timed
    images (they must match the report's calibrated policy)."""
    dyn = report["dynamic"]
    search = report.get("search") or {}
    num_stages = len(dyn["exit_fractions"])
    exit_stages = np.asarray(exit_stages)
    saved_by_exit = latency.get("mean_ms_by_exit")
    tflite_by_exit = None if tflite_latency is None else tflite_latency.get("mean_ms_by_exit")
    return {
        "accuracy": float(dyn["accuracy"]),
        "avg_flops": float(dyn["avg_flops"]),
        "latency_ms": float(latency["mean_ms"]),
        "latency_median_ms": float(latency["median_ms"]),
        "tflite_latency_ms": None if tflite_latency is None else float(tflite_latency["mean_ms"]),
        "tflite_latency_median_ms": (
            None if tflite_latency is None else float(tflite_latency["median_ms"])
        ),
        # Mean ms of the images that stopped at stage 1, 2, ...: the cost of each exit path.
        "latency_by_exit_ms": saved_by_exit,
        "tflite_latency_by_exit_ms": tflite_by_exit,
        # The test curve's policies with their time per image estimated from those costs.
        "latency_curve": [
            {
                "accuracy": float(p["accuracy"]),
                "latency_ms": latency_lib.estimated_ms(p["exit_fractions"], saved_by_exit),
                "tflite_latency_ms": latency_lib.estimated_ms(p["exit_fractions"], tflite_by_exit),
            }
            for p in report["curve"]
            if saved_by_exit and "exit_fractions" in p
        ],
        "curve": [
            {"accuracy": float(p["accuracy"]), "avg_flops": float(p["avg_flops"])}
            for p in report["curve"]
        ],
        "exit_fractions": [float(f) for f in dyn["exit_fractions"]],
        "exit_fractions_saved_model": [
            float((exit_stages == s).mean()) for s in range(1, num_stages + 1)
        ],
        "thresholds": [float(t) for t in dyn["thresholds"]],
        "stage_flops": [int(f) for f in dyn["stage_flops"]],
        "stage_accuracy": [float(a) for a in report["stage_accuracy"]],
        # One stage (static_ft): every image "exits" at its only stage; no oracle to report.
        "oracle": None if num_stages == 1 else {
            "accuracy": float(report["oracle"]["accuracy"]),
            "avg_flops": float(report["oracle"]["avg_flops"]),
        },
        "search_seconds": float(search["seconds"]) if search.get("evaluated") else None,
        "search_evaluated": int(search.get("evaluated") or 0),
        "search_best_reward": search.get("best_reward"),
        "train_seconds": report.get("train_seconds"),
        "arch": (report.get("arch") or {}).get("readable"),
    }


def file_sha256(path: str) -> str:
    """SHA-256 of a file's bytes (what a method's cached measurements were made from)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def int8_record(stats: dict, labels: np.ndarray, num_stages: int) -> dict[str, Any]:
    """The int8 TFLite model's part of a method's record, from its `latency.time_models`
    stats on the timed images (`labels`: their classes): its accuracy from its own answers
    (post-training quantisation moves some confidences across the thresholds, so its exits
    can differ from the float model's), its mean and median batch-1 time, its exits."""
    predictions = np.asarray(stats["predictions"])
    labels = np.asarray(labels).reshape([-1])
    if predictions.shape != labels.shape:
        raise ValueError(f"Expected one prediction per label. Received: {predictions.shape[0]} "
                         f"predictions, {labels.shape[0]} labels")
    exit_stages = np.asarray(stats["exit_stages"])
    return {
        "int8_accuracy": float((predictions == labels).mean()),
        "int8_latency_ms": float(stats["mean_ms"]),
        "int8_latency_median_ms": float(stats["median_ms"]),
        "int8_exit_fractions": [float((exit_stages == s).mean())
                                for s in range(1, num_stages + 1)],
    }


def measurement_key(model_files: dict[str, str], **settings) -> dict:
    """What a benchmark's measurements depend on: the methods in order, each method's file
    (its model, or the report.json that names its exports) by SHA-256, and `settings`
    (images, threads, ...). Records cached under one key are valid for an equal key only:
    a step redone after its directory was deleted has another report.json, so it is
    measured again."""
    return {"methods": list(model_files), **settings,
            "models": {m: file_sha256(path) for m, path in model_files.items()}}


def cached_records(path: str, key: dict) -> dict | None:
    """The records cached at `path` (`write_cached_records`) if they were made under `key`,
    else None (no file, an unreadable one, or another key)."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            cached = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return cached["records"] if cached.get("key") == key else None


def write_cached_records(path: str, key: dict, records: dict) -> None:
    fileio.write_json(path, {"key": key, "records": records})


def static_train_seconds(model_path: str) -> float | None:
    """Training wall time of a static model, from train_base's base_report.json beside it
    or a checkpoint's sidecar `<name>.json` (None when neither says)."""
    for candidate in (os.path.join(os.path.dirname(model_path), "base_report.json"),
                      os.path.splitext(model_path)[0] + ".json"):
        if os.path.isfile(candidate):
            with open(candidate) as f:
                seconds = json.load(f).get("train_seconds")
            if seconds is not None:
                return float(seconds)
    return None


def machine_description() -> str:
    """The CPU, Python and TensorFlow a benchmark ran on, in one line."""
    import tensorflow as tf

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return (f"{os.cpu_count()} CPU cores ({cpu}), no GPU used, Python "
            f"{platform.python_version()}, TensorFlow {tf.__version__}, {platform.system()}")


def best_accuracy_within(
    curve: Sequence[dict], budget: float, key: str = "avg_flops"
) -> float | None:
    """The best accuracy among curve points whose cost `key` is known and at most `budget`
    (None if none is): what the method offers at that cost. `key`: "avg_flops" for a
    method's `curve`; "latency_ms" (SavedModel) or "tflite_latency_ms" for its
    `latency_curve`."""
    within = [p["accuracy"] for p in curve
              if p.get(key) is not None and p[key] <= budget * (1 + 1e-9)]
    return max(within) if within else None


def evaluate_goals(
    methods: dict[str, dict],
    *,
    accuracy_tolerance: float = 0.005,
    flops_ratio: float = 0.5,
    latency_ratio: float = 0.6,
    method: str = "s2dnas_rl",
) -> list[dict[str, Any]]:
    """The issue's goals, each {"goal", "met" (bool or None when a method is missing),
    "detail"}. Compares `method` (the operating point its thresholds were calibrated for,
    and its test curve) with the others. The last goal is ours, not the issue's: the
    accuracy goal again against `static_ft`, the static model given the same extra epochs
    and distillation as the dynamic methods (a fairer reference than the shipped one)."""
    goals = []
    s, m = methods.get("static"), methods.get(method)

    def add(goal, met, detail):
        goals.append({"goal": goal, "met": met, "detail": detail})

    if s is None or m is None:
        add(f"{method} vs static", None, "static or the method was not run")
        return goals
    d_acc = m["accuracy"] - s["accuracy"]
    f_ratio = m["avg_flops"] / s["avg_flops"]
    add(
        f"accuracy within {accuracy_tolerance * 100:.1f} point of static at <= "
        f"{flops_ratio:.2f}x FLOPs",
        bool(d_acc >= -accuracy_tolerance and f_ratio <= flops_ratio),
        f"{m['accuracy']:.4f} vs {s['accuracy']:.4f} ({d_acc * 100:+.2f} points) at "
        f"{f_ratio:.3f}x FLOPs",
    )
    l_ratio = m["latency_ms"] / s["latency_ms"]
    detail = f"{m['latency_ms']:.3f} ms vs {s['latency_ms']:.3f} ms ({l_ratio:.2f}x)"
    if m.get("latency_curve"):
        cells = []
        for key, what in (("latency_ms", "SavedModel"), ("tflite_latency_ms", "TFLite")):
            if s.get(key) is None:
                continue
            acc = best_accuracy_within(m["latency_curve"], latency_ratio * s[key], key)
            cells.append(f"{what} {_fmt(acc)}")
        detail += (f"; best accuracy at <= {latency_ratio:.2f}x static latency (the test "
                   f"curve's exit fractions x each exit path's mean time): "
                   + ", ".join(cells) + f" (static {s['accuracy']:.4f})")
    add(f"SavedModel batch-1 latency <= {latency_ratio:.2f}x static",
        bool(l_ratio <= latency_ratio), detail)
    for other in ("early_exit", "thin_static"):
        o = methods.get(other)
        if o is None:
            add(f"more accurate than {other} at equal FLOPs", None, f"{other} was not run")
            continue
        mine = best_accuracy_within(m["curve"], o["avg_flops"])
        met = mine is not None and mine > o["accuracy"]
        add(
            f"more accurate than {other} at equal FLOPs",
            bool(met),
            f"at {other}'s {o['avg_flops'] / s['avg_flops']:.3f}x FLOPs: {method} "
            + ("has no point" if mine is None else f"{mine:.4f}")
            + f" vs {other} {o['accuracy']:.4f}",
        )
    for other, goal in (("s2dnas_random", "REINFORCE at least as good as random search"),
                        ("s2dnas_default", "the search at least as good as no search "
                                           "(the space's default architecture)")):
        r = methods.get(other)
        if r is None or method == other:
            add(goal, None, f"{other} was not run")
            continue
        mine = best_accuracy_within(m["curve"], r["avg_flops"])
        met = mine is not None and mine >= r["accuracy"]
        detail = (f"at {other}'s {r['avg_flops'] / s['avg_flops']:.3f}x FLOPs: {method} "
                  + ("has no point" if mine is None else f"{mine:.4f}")
                  + f" vs {other} {r['accuracy']:.4f}")
        if other == "s2dnas_random":
            detail += (f"; best search reward RL {_fmt(m.get('search_best_reward'))} vs random "
                       f"{_fmt(r.get('search_best_reward'))}")
        add(goal, bool(met), detail)
    ft = methods.get("static_ft")
    goal = (f"accuracy within {accuracy_tolerance * 100:.1f} point of static_ft (the static "
            f"model trained the same extra epochs with the same distillation) at <= "
            f"{flops_ratio:.2f}x FLOPs")
    if ft is None:
        add(goal, None, "static_ft was not run")
    else:
        d_ft = m["accuracy"] - ft["accuracy"]
        add(goal, bool(d_ft >= -accuracy_tolerance and f_ratio <= flops_ratio),
            f"{m['accuracy']:.4f} vs {ft['accuracy']:.4f} ({d_ft * 100:+.2f} points) at "
            f"{f_ratio:.3f}x FLOPs")
    goals += time_goals(methods, accuracy_tolerance=accuracy_tolerance, method=method)
    return goals


def time_goals(
    methods: dict[str, dict],
    *,
    accuracy_tolerance: float = 0.005,
    tflite_ratio: float = 0.5,
    batch64_ratio: float = 0.6,
    method: str = "s2dnas_rl",
) -> list[dict[str, Any]]:
    """The goals in measured time (benchmark round 2), after `evaluate_goals`' FLOPs ones:
    `method` within `accuracy_tolerance` of the static model at <= `tflite_ratio` of its
    TFLite batch-1 time, its SavedModel per image at batch 64 <= `batch64_ratio` of the
    static model's and at batch 1 no slower; more accurate than early_exit, thin_static
    and thin_matched at their measured TFLite time (the best point of its test curve whose
    time, its exit fractions x each exit path's measured mean, is within theirs). A goal
    whose times were not measured (no TFLite, no batch 64) or whose method was not run is
    None, not a pass."""
    goals = []
    s, m = methods.get("static"), methods.get(method)

    def add(goal, met, detail):
        goals.append({"goal": goal, "met": met, "detail": detail})

    def ratio(key):
        if s is None or m is None or s.get(key) is None or m.get(key) is None:
            return None
        return m[key] / s[key]

    goal = (f"accuracy within {accuracy_tolerance * 100:.1f} point of static at <= "
            f"{tflite_ratio:.2f}x its TFLite batch-1 time")
    r = ratio("tflite_latency_ms")
    if r is None:
        add(goal, None, "TFLite times not measured, or a method not run")
    else:
        d_acc = m["accuracy"] - s["accuracy"]
        add(goal, bool(d_acc >= -accuracy_tolerance and r <= tflite_ratio),
            f"{m['accuracy']:.4f} vs {s['accuracy']:.4f} ({d_acc * 100:+.2f} points) at "
            f"{r:.2f}x TFLite time ({m['tflite_latency_ms']:.3f} vs "
            f"{s['tflite_latency_ms']:.3f} ms)")
    for key, goal, limit in (
        ("saved_model_b64_ms", f"SavedModel per image at batch 64 <= {batch64_ratio:.2f}x "
         "static", batch64_ratio),
        ("latency_ms", "SavedModel batch-1 latency no slower than static", 1.0),
    ):
        r = ratio(key)
        add(goal, None if r is None else bool(r <= limit),
            "not measured, or a method not run" if r is None else
            f"{m[key]:.3f} vs {s[key]:.3f} ms ({r:.2f}x)")
    for other in ("early_exit", "thin_static", "thin_matched"):
        goal = f"more accurate than {other} at equal measured TFLite time"
        o = methods.get(other)
        if m is None or o is None or o.get("tflite_latency_ms") is None:
            add(goal, None, f"{other} was not run or not timed in TFLite")
            continue
        mine = best_accuracy_within(m.get("latency_curve") or [], o["tflite_latency_ms"],
                                    "tflite_latency_ms")
        add(goal, bool(mine is not None and mine > o["accuracy"]),
            f"within {other}'s {o['tflite_latency_ms']:.3f} ms: {method} "
            + ("has no point" if mine is None else f"{mine:.4f}")
            + f" vs {other} {o['accuracy']:.4f}")
    return goals


def _secs(value) -> str:
    return "-" if value is None else f"{value:,.0f}"


def _ms(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def to_markdown(results: dict) -> str:
    """The benchmark for people: set-up, table, goals, notes."""
    methods = results["methods"]
    static = methods.get("static")
    base_flops = static["avg_flops"] if static else None
    base_lat = static["latency_ms"] if static else None
    lines = [f"# Benchmark: {results.get('title', '')}", ""]
    for key in ("command", "date", "machine", "data", "setup"):
        if results.get(key):
            lines.append(f"- {key}: {results[key]}")
    lines += [
        "",
        "Accuracy on the test split; thresholds of the dynamic methods calibrated on the "
        "validation split for the FLOPs budget; FLOPs are multiply-accumulates per image "
        "(average over the test split for the dynamic methods); latency = the exported "
        "SavedModel's batch-1 signature, one test image at a time, mean over the timed images "
        "(TFLite: float model, LiteRT interpreter, 1 thread).",
        "",
        "Times in ms per image, with their ratio to the static model's in parentheses; int8: "
        "the SavedModel converted to an int8 TFLite model (post-training quantisation), its "
        "own accuracy and batch-1 time.",
        "",
        "| method | accuracy | vs static | avg MFLOPs | FLOPs ratio | SavedModel ms | "
        "latency ratio | TFLite ms | SavedModel b64 ms/image | int8 accuracy | int8 TFLite ms "
        "| exit fractions | oracle acc @ FLOPs ratio | search s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def timed(m: dict, key: str) -> str:
        value, base = m.get(key), (static or {}).get(key)
        if value is None:
            return "-"
        return f"{value:.3f}" + (f" ({value / base:.2f}x)" if base else "")

    for name in METHODS:
        m = methods.get(name)
        if m is None:
            continue
        oracle = m.get("oracle")
        lines.append(
            "| "
            + " | ".join(
                [
                    name,
                    f"{m['accuracy']:.4f}",
                    f"{(m['accuracy'] - static['accuracy']) * 100:+.2f} pt" if static else "-",
                    f"{m['avg_flops'] / 1e6:.2f}",
                    f"{m['avg_flops'] / base_flops:.3f}" if base_flops else "-",
                    f"{m['latency_ms']:.3f}",
                    f"{m['latency_ms'] / base_lat:.2f}" if base_lat else "-",
                    timed(m, "tflite_latency_ms"),
                    timed(m, "saved_model_b64_ms"),
                    "-" if m.get("int8_accuracy") is None else f"{m['int8_accuracy']:.4f}",
                    timed(m, "int8_latency_ms"),
                    ", ".join(f"{f:.3f}" for f in m["exit_fractions"]),
                    "-" if not oracle else (
                        f"{oracle['accuracy']:.4f} @ {oracle['avg_flops'] / base_flops:.3f}"
                        if base_flops else f"{oracle['accuracy']:.4f}"
                    ),
                    "-" if m.get("search_seconds") is None else f"{m['search_seconds']:.0f}",
                ]
            )
            + " |"
        )
    lines += ["", "## Goals", ""]
    for g in results.get("goals", []):
        mark = {True: "met", False: "**not met**", None: "not measured"}[g["met"]]
        lines.append(f"- {g['goal']}: {mark} — {g['detail']}")
    if base_flops and any(n in methods for n in DYNAMIC_METHODS):
        lines += ["", "## Accuracy at equal average FLOPs (best test-curve point within the "
                  "cost)", "", "| FLOPs ratio | " + " | ".join(
                      n for n in DYNAMIC_METHODS if n in methods) + " |",
                  "| --- |" + " --- |" * sum(n in methods for n in DYNAMIC_METHODS)]
        for ratio in (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7):
            cells = []
            for n in DYNAMIC_METHODS:
                if n in methods:
                    acc = best_accuracy_within(methods[n]["curve"], ratio * base_flops)
                    cells.append("-" if acc is None else f"{acc:.4f}")
            lines.append(f"| {ratio:.2f} | " + " | ".join(cells) + " |")
    by_exit = [n for n in DYNAMIC_METHODS if (methods.get(n) or {}).get("latency_by_exit_ms")]
    if by_exit:
        width = max(len(methods[n]["latency_by_exit_ms"]) for n in by_exit)
        static_cell = "-" if not static else (
            f"{_ms(static.get('latency_ms'))} / {_ms(static.get('tflite_latency_ms'))}"
        )
        lines += ["", "## Batch-1 latency by exit stage (mean ms of the images that stopped "
                  "there: SavedModel / TFLite)", "",
                  "| method | " + " | ".join(f"exit {i}" for i in range(1, width + 1))
                  + " | static |",
                  "| --- |" + " --- |" * (width + 1)]
        for n in by_exit:
            saved = list(methods[n]["latency_by_exit_ms"]) + [None] * width
            tflite = list(methods[n].get("tflite_latency_by_exit_ms") or []) + [None] * width
            cells = [f"{_ms(saved[i])} / {_ms(tflite[i])}" for i in range(width)]
            lines.append(f"| {n} | " + " | ".join(cells) + f" | {static_cell} |")
    if static:
        rows = []
        for n in METHODS:
            m = methods.get(n)
            if m is None or not m.get("latency_curve"):
                continue
            cells = []
            for key in ("latency_ms", "tflite_latency_ms"):
                budget = None if static.get(key) is None else 0.6 * static[key]
                acc = None if budget is None else best_accuracy_within(
                    m["latency_curve"], budget, key)
                cells.append(_fmt(acc))
            rows.append(f"| {n} | " + " | ".join(cells) + " |")
        if rows:
            lines += ["", "## Accuracy at <= 0.6x the static model's latency (best test-curve "
                      "point; its time = exit fractions x each exit path's mean time)", "",
                      "| method | SavedModel | TFLite |", "| --- | --- | --- |"] + rows
    lines += ["", "## Wall time (seconds, 2-core CPU unless the machine line says otherwise)", "",
              "| method | training | search | step total |", "| --- | --- | --- | --- |"]
    for name in METHODS:
        m = methods.get(name)
        if m is not None:
            lines.append(
                f"| {name} | {_secs(m.get('train_seconds'))} | {_secs(m.get('search_seconds'))} "
                f"| {_secs(m.get('step_seconds'))} |"
            )
    for name in DYNAMIC_METHODS:
        m = methods.get(name)
        if m and m.get("arch"):
            lines += ["", f"### {name}: architecture", "", "```", m["arch"], "```"]
    if results.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in results["notes"]]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: str) -> None:
    """Accuracy vs. FLOPs ratio (curves and points) and accuracy vs. SavedModel latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = results["methods"]
    static = methods["static"]
    flops = static["avg_flops"]
    colors = {"static": "black", "static_ft": "tab:brown", "thin_static": "tab:gray",
              "early_exit": "tab:orange", "s2dnas_default": "tab:green",
              "s2dnas_rl": "tab:red", "s2dnas_random": "tab:blue",
              "s2dnas_rl_flops": "tab:purple", "thin_matched": "tab:olive"}
    fig, (ax, lat) = plt.subplots(1, 2, figsize=(12, 4.5))
    for name in METHODS:
        m = methods.get(name)
        if m is None:
            continue
        c = colors[name]
        if name in DYNAMIC_METHODS:
            pts = sorted(m["curve"], key=lambda p: p["avg_flops"])
            ax.plot([p["avg_flops"] / flops for p in pts], [p["accuracy"] for p in pts],
                    "-", color=c, lw=1.2, label=f"{LABELS[name]} (curve)")
            ax.plot([m["avg_flops"] / flops], [m["accuracy"]], "*", ms=12, color=c)
        else:
            ax.plot([m["avg_flops"] / flops], [m["accuracy"]], "s", ms=8, color=c,
                    label=LABELS[name])
        marker = "*" if name in DYNAMIC_METHODS else "s"
        lat.plot([m["latency_ms"]], [m["accuracy"]], marker, ms=11, color=c, label=LABELS[name])
        if m.get("tflite_latency_ms"):
            lat.plot([m["tflite_latency_ms"]], [m["accuracy"]], marker, ms=11, color=c,
                     mfc="none")
    ax.axhline(static["accuracy"] - 0.005, color="black", ls=":", lw=0.8,
               label="static - 0.5 point")
    ax.axvline(0.5, color="black", ls="--", lw=0.8)
    ax.set_xlabel("average FLOPs / static FLOPs")
    ax.set_ylabel("test accuracy")
    ax.set_title("accuracy vs. average FLOPs (stars: calibrated operating points)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    lat.axvline(0.6 * static["latency_ms"], color="black", ls="--", lw=0.8,
                label="0.6x static (SavedModel)")
    if static.get("tflite_latency_ms"):
        lat.axvline(0.6 * static["tflite_latency_ms"], color="black", ls=":", lw=0.8,
                    label="0.6x static (TFLite)")
    lat.set_xlim(left=0)  # so the 0.6x lines never sit on the axis edge
    lat.set_xlabel("batch-1 latency, mean ms per image (filled: SavedModel, open: TFLite)")
    lat.set_ylabel("test accuracy")
    lat.set_title("accuracy vs. measured latency")
    lat.grid(alpha=0.3)
    lat.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with fileio.atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
