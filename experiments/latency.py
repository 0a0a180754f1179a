"""Batch-1 latency of a run's exported models, static vs. dynamic, SavedModel and TFLite.

    python experiments/latency.py --run_dir=runs/quickstart_search

Reads the run's `config.json` (its data flags), `saved_model/<name>/<version>/`,
`model.tflite` and the static base model; exports the static model the same way
(`static/saved_model/...`, `static/model.tflite`) so both are timed through the same
interface; then times one image at a time over the test split (after a warm-up; the four
models in turns, so that the machine's drift falls on all alike: `latency.time_models`) and
writes, into the run's report.json under "latency" (and prints):
`{"savedmodel" | "tflite": {"static" | "dynamic": {"median_ms", "mean_ms", "p90_ms",
"mean_ms_by_exit", "median_ms_by_exit"}}, "num_images", "exit_fractions": measured from the
dynamic SavedModel's own exit_stage outputs, "threads"}`; with 64 images or more also
`"savedmodel_b64": {"static" | "dynamic": {"mean_ms_per_image", "median_ms_per_image"}}`,
both SavedModels' `serving_default` on batches of 64, in turns (a server's time per image;
`latency.time_saved_model_batches`).
A benchmark: it measures and reports, it asserts nothing about speed.
"""

import glob
import json
import os

import cli_common  # sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads
from absl import flags

FLAGS = flags.FLAGS
cli_common.define_flags("run_dir", "num_images", helps={
    "num_images": "Time the first N test images (default: all).",
})
flags.DEFINE_integer("warmup", 20, "Untimed calls first.")
flags.DEFINE_integer(
    "threads", 1,
    "Threads of both runtimes: TensorFlow's op pools for the SavedModels, the TFLite "
    "interpreter's (1: a phone-like single core).",
)
flags.mark_flag_as_required("run_dir")
flags.register_validator("threads", lambda v: v >= 1, "--threads must be >= 1.")


def main(argv):
    del argv
    cli_common.start_tensorflow(None, threads=FLAGS.threads)  # quiet start, op pools sized
    import keras

    from s2dnas_tf import data, export, fileio, latency

    run = FLAGS.run_dir
    with open(os.path.join(run, "config.json")) as f:
        config = json.load(f)
    saved = sorted(glob.glob(os.path.join(run, "saved_model", "*", "*", "saved_model.pb")))
    tflite_path = os.path.join(run, "model.tflite")
    if not saved or not os.path.isfile(tflite_path):
        return cli_common.usage_error(
            f"{run} has no exported model (saved_model/<name>/<version>/ and model.tflite); "
            "runs of search.py export them."
        )
    # The run's own copy when it has one (trained there, or the user's with preprocessing).
    base_path = os.path.join(run, "base", "model.keras")
    if not os.path.isfile(base_path):
        base_path = config.get("base_model") or base_path
    if not os.path.isfile(base_path):
        return cli_common.usage_error(f"the run's static model {base_path!r} does not exist.")
    base = keras.saving.load_model(base_path)
    splits = data.load_dataset_for(cli_common.run_data_config(config), base)
    images, _ = splits.test.head(FLAGS.num_images or None).arrays()
    batch1 = latency.batch1_images(images)

    static_dir = os.path.join(run, "static")
    static_saved = export.export_static(
        base, os.path.join(static_dir, "saved_model"), base.name, overwrite=True
    )
    static_tflite = export.convert_to_tflite(
        static_saved, os.path.join(static_dir, "model.tflite")
    )

    result = {"num_images": len(batch1), "threads": FLAGS.threads, "savedmodel": {}, "tflite": {}}
    print(f"timing {len(batch1)} test images one at a time, the four models in turns ...",
          flush=True)
    timed = latency.time_models(
        {
            ("savedmodel", "static"): (latency.SAVED_MODEL, static_saved),
            ("savedmodel", "dynamic"): (latency.SAVED_MODEL, os.path.dirname(saved[-1])),
            ("tflite", "static"): (latency.TFLITE, static_tflite),
            ("tflite", "dynamic"): (latency.TFLITE, tflite_path),
        },
        batch1, FLAGS.warmup, FLAGS.threads,
    )
    for (runtime, kind), stats in timed.items():
        stages = stats.pop("exit_stages")
        stats.pop("predictions")
        result[runtime][kind] = stats
        if (runtime, kind) == ("savedmodel", "dynamic"):
            exit_stages = stages
    if len(images) >= 64:
        print("timing both SavedModels on batches of 64, in turns ...", flush=True)
        batched = latency.time_saved_model_batches(
            {"static": static_saved, "dynamic": os.path.dirname(saved[-1])}, images, 64)
        result["savedmodel_b64"] = {
            kind: {k: stats[k] for k in ("mean_ms_per_image", "median_ms_per_image")}
            for kind, stats in batched.items()
        }
    num_stages = int(exit_stages.max()) if len(exit_stages) else 1
    with open(os.path.join(run, "report.json")) as f:
        report = json.load(f)
    num_stages = max(num_stages, report.get("num_stages", num_stages))
    result["exit_fractions"] = [
        float((exit_stages == s).mean()) for s in range(1, num_stages + 1)
    ]
    report["latency"] = result
    fileio.write_json(os.path.join(run, "report.json"), report)
    for runtime in ("savedmodel", "tflite"):
        s, d = result[runtime]["static"], result[runtime]["dynamic"]
        print(
            f"{runtime:10s} static median {s['median_ms']:.3f} ms (mean {s['mean_ms']:.3f})  "
            f"dynamic median {d['median_ms']:.3f} ms (mean {d['mean_ms']:.3f})  "
            f"ratio of means {d['mean_ms'] / s['mean_ms']:.2f}",
            flush=True,
        )
    if "savedmodel_b64" in result:
        s, d = result["savedmodel_b64"]["static"], result["savedmodel_b64"]["dynamic"]
        print(f"savedmodel batch 64: static {s['mean_ms_per_image']:.4f} ms/image  dynamic "
              f"{d['mean_ms_per_image']:.4f} ms/image  ratio "
              f"{d['mean_ms_per_image'] / s['mean_ms_per_image']:.2f}", flush=True)
    for runtime in ("savedmodel", "tflite"):
        by_exit = result[runtime]["dynamic"]["median_ms_by_exit"]
        print(f"{runtime:10s} dynamic median by exit stage: " + ", ".join(
            f"{s}: {'-' if m is None else f'{m:.3f} ms'}" for s, m in enumerate(by_exit, 1)
        ), flush=True)
    print(
        f"exit fractions {', '.join(f'{f:.3f}' for f in result['exit_fractions'])}; "
        f"written to {run}/report.json",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    cli_common.run(main)
