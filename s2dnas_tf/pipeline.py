"""The steps after choosing an architecture, shared by train_dynamic.py and search.py:
train the multi-stage network from the inherited weights, calibrate, report (docs/design.md §6, §4,
§10). Library code: takes arguments, never flags."""

from __future__ import annotations

import os
import time
from typing import Callable

import keras
import numpy as np

from s2dnas_tf import cost as cost_lib
from s2dnas_tf import data as data_lib
from s2dnas_tf import export as export_lib
from s2dnas_tf import report as report_lib
from s2dnas_tf import fileio, rewriter, training
from s2dnas_tf.flops import count_flops
from s2dnas_tf.space import Arch


def static_accuracy(model: keras.Model, x: np.ndarray | data_lib.Split, y: np.ndarray) -> float:
    probs = training.predict_stage_probabilities(model, x)[0]
    return float((probs.argmax(-1) == y).mean())


def export_run(net: keras.Model, result: dict, output_dir: str, name: str, log=print,
               crop_to_aspect_ratio: bool = True) -> dict:
    """Exports a reported run for deployment (docs/design.md §7, §10): the dynamic SavedModel at
    `<output_dir>/saved_model/<name>/1/` with the report's thresholds, and `model.tflite`
    (float, batch 1) converted from it. `crop_to_aspect_ratio`: how its `serving_any_size`
    resizes (as the training data was).

    Returns:
        {"saved_model": path, "tflite": path}.
    """
    thresholds = result["dynamic"]["thresholds"]
    saved = export_lib.export_saved_model(
        net, thresholds, os.path.join(output_dir, "saved_model"), name, overwrite=True,
        crop_to_aspect_ratio=crop_to_aspect_ratio,
    )
    tflite = export_lib.convert_to_tflite(saved, os.path.join(output_dir, "model.tflite"))
    log(f"exported {saved} and {tflite}")
    return {"saved_model": saved, "tflite": tflite}


def train_and_report(
    *,
    base: keras.Model,
    teacher_fn: Callable[[], keras.Model],
    arch: Arch | None,
    splits: data_lib.Splits,
    train_config: training.TrainConfig,
    flops_budget_ratio: float,
    output_dir: str,
    search: dict | None = None,
    log: Callable[[str], None] = print,
    export_name: str | None = None,
    build_net: Callable[[], keras.Model] | None = None,
    start_from: keras.Model | None = None,
    cost: str = "flops",
) -> dict:
    """Trains `arch`'s multi-stage net from `base`, calibrates on validation, reports on test.

    With `build_net` (and `arch=None`) the multi-stage net is another builder's, e.g.
    `early_exit.attach_exits(base)`: any net with `transform`'s interface.

    Writes `multistage.keras`, `report.json`, `report.md` and `curve.png` into `output_dir`,
    and with `export_name` also `saved_model/<export_name>/1/` and `model.tflite`.

    Args:
        base: The trained static model (not modified).
        teacher_fn: Builds the distillation teacher (called inside the strategy's scope).
        arch: The architecture (None with `build_net`).
        splits: The data.
        train_config: How to train the multi-stage net (its output_dir holds the resume state).
        flops_budget_ratio: The budget, a fraction of the static model's cost (`cost`).
        output_dir: Where the files go.
        search: The search summary for the report, if a search chose `arch`.
        log: Progress output.
        export_name: Export the SavedModel / TFLite under this model name (None: don't).
        build_net: Builds the multi-stage net instead of `transform(base, arch)`; called
            inside the training strategy's scope.
        start_from: A static model of `base`'s architecture whose weights the net inherits
            instead of `base`'s (e.g. a trained supernet's); the report's static figures
            stay `base`'s.
        cost: What the budget counts (`cost.COSTS`): "flops", or "tflite" / "saved_model"
            (each exit path's predicted batch-1 time on that runtime; the report gains its
            "cost" entry).

    Returns:
        The report dict.

    Raises:
        training.TrainingDivergedError: If training diverges.
    """
    if (arch is None) == (build_net is None):
        raise ValueError("Expected exactly one of arch and build_net.")
    if build_net is None:
        source = base if start_from is None else start_from
        build_net = lambda: rewriter.transform(source, arch)  # noqa: E731
    static_flops = count_flops(base)
    static_acc = static_accuracy(base, splits.test, splits.y_test)
    log(f"static: test accuracy {static_acc:.4f}, FLOPs {static_flops:,}")
    start = time.time()
    net, history = training.train(
        build_net, splits, train_config, teacher_fn=teacher_fn
    )
    train_seconds = time.time() - start
    multistage_path = os.path.join(output_dir, "multistage.keras")
    with fileio.atomic_path(multistage_path, suffix=".keras") as tmp:
        net.save(tmp)
    time_cost = None
    if cost != "flops":
        table = cost_lib.OpTimeTable(runtime=cost)
        time_cost = {"cost": cost, "static_ms": cost_lib.static_cost(base, cost, table),
                     "path_ms": cost_lib.exit_path_costs(net, cost, table)}
        table.save()
    log("calibrating on the validation split ...")
    result = report_lib.build_report(
        dataset=splits.name,
        model=base.name,
        static_accuracy=static_acc,
        static_flops=static_flops,
        stage_flops=rewriter.stage_flops(net),
        val_probs=training.predict_stage_probabilities(net, splits.val),
        val_labels=splits.y_val,
        test_probs=training.predict_stage_probabilities(net, splits.test),
        test_labels=splits.y_test,
        flops_budget_ratio=flops_budget_ratio,
        arch=arch.to_dict() if arch is not None else None,
        search=search,
        extra={"train_seconds": train_seconds, "history": history},
        time_cost=time_cost,
    )
    if export_name:
        result["export"] = export_run(net, result, output_dir, export_name, log=log,
                                      crop_to_aspect_ratio=splits.crop_to_aspect_ratio)
        if time_cost is not None:
            result["cost"].update(measure_exported(
                base, result["export"], cost, splits.test, len(net.outputs)))
    report_lib.write_report(result, output_dir)
    dyn, oracle = result["dynamic"], result["oracle"]
    log(
        f"dynamic: test accuracy {dyn['accuracy']:.4f} at {dyn['flops_ratio']:.1%} of the "
        f"static FLOPs (exits {', '.join(f'{f:.2f}' for f in dyn['exit_fractions'])}); "
        f"oracle {oracle['accuracy']:.4f} at {oracle['avg_flops'] / static_flops:.1%}; "
        f"wrote {output_dir}/report.md"
    )
    if time_cost is not None:
        timed = result["cost"]
        log(f"{cost} time (predicted): {timed['expected_ms']:.3f} ms per image, "
            f"{timed['ms_ratio']:.1%} of the static model's {timed['static_ms']:.3f} ms")
        if "measured_ms" in timed:
            log(f"{cost} time (measured on {timed['measured_images']} test images, batch 1): "
                f"{timed['measured_ms']:.3f} ms per image, "
                f"{timed['measured_ms'] / timed['measured_static_ms']:.1%} of the static "
                f"model's {timed['measured_static_ms']:.3f} ms")
    return result


MEASURED_IMAGES = 200  # test images timed per model by `measure_exported`


def measure_exported(base: keras.Model, exported: dict, runtime: str, test: data_lib.Split,
                     num_stages: int, num_images: int = MEASURED_IMAGES) -> dict:
    """The exported dynamic model and the static model timed on `runtime` ("tflite": the
    float TFLite files, one interpreter thread; "saved_model": the SavedModels' batch-1
    signatures, this process's op pools), one test image at a time, in turns
    (`latency.time_models`) over the first `num_images` test images.

    Returns:
        {"measured_ms", "measured_static_ms" (means per image), "measured_path_ms" (the mean
        time of the images that left at each of the `num_stages` stages; None where none
        did), "measured_images"}.
    """
    import tempfile

    from s2dnas_tf import latency

    images, _ = test.head(num_images).arrays()
    kind = latency.TFLITE if runtime == "tflite" else latency.SAVED_MODEL
    with tempfile.TemporaryDirectory() as tmp:
        static = export_lib.export_static(base, tmp, "static")
        if kind == latency.TFLITE:
            static = export_lib.convert_to_tflite(static, os.path.join(tmp, "static.tflite"))
        models = {"static": (kind, static), "dynamic": (kind, exported[runtime])}
        timed = latency.time_models(models, latency.batch1_images(images))
    by_exit = list(timed["dynamic"]["mean_ms_by_exit"])
    return {
        "measured_ms": timed["dynamic"]["mean_ms"],
        "measured_static_ms": timed["static"]["mean_ms"],
        "measured_path_ms": by_exit + [None] * (num_stages - len(by_exit)),
        "measured_images": len(images),
    }
