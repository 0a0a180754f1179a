"""Export a finished run for deployment: a SavedModel in TF Serving's layout and TFLite files.

    python export/export_run.py --run_dir=runs/quickstart_search --export_dir=/srv/models \
        --name=digits --version=2 --int8

Reads the run's `multistage.keras` and the thresholds its report calibrated (report.json,
"dynamic"), and writes:
- `<export_dir>/<name>/<version>/` — the dynamic SavedModel (`serving_default`,
  `serving_with_thresholds`, `serving_batch1`); an existing version is kept unless
  --overwrite;
- `<export_dir>/<name>.tflite` — the batch-1 float model (IF ops for the later stages);
- with --int8, `<export_dir>/<name>.int8.tflite` — full-int8 post-training quantisation,
  calibrated on the run's validation images; its test accuracy is printed next to the float
  model's (TFLite runtime, one image at a time) so the cost of int8 is stated.
--thresholds overrides the report's. Exit code 2 with one line on bad input.
"""

import json
import os
import sys

EXPERIMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments")
sys.path.insert(0, os.path.abspath(EXPERIMENTS))

import cli_common  # noqa: E402  (sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads)
from absl import flags  # noqa: E402

FLAGS = flags.FLAGS
# int8 calibration images, the first of the validation split: "a few hundred real images
# are plenty" (convert_to_tflite), and 1,000 224x224 images are 600 MB.
_REPRESENTATIVE_IMAGES = 1000
cli_common.define_flags("run_dir", "num_images", "overwrite", helps={
    "num_images": "Evaluate the TFLite models on the first N test images.",
    "overwrite": "Replace an existing version directory.",
})
flags.DEFINE_string("export_dir", None, "Parent of <name>/<version>/ (default: <run_dir>/export).")
flags.DEFINE_string("name", None, "Model name (default: the run's model name).")
flags.DEFINE_integer("version", 1, "TF Serving version number.")
flags.DEFINE_list("thresholds", None, "Exit thresholds (S-1 floats); default: the report's.")
flags.DEFINE_boolean("int8", False, "Also write a full-int8 TFLite model and its accuracy.")
flags.mark_flag_as_required("run_dir")
flags.register_validator(
    "run_dir",
    lambda v: v is None or os.path.isfile(os.path.join(v, "multistage.keras")),
    "--run_dir must be a finished run directory (report.json and multistage.keras).",
)
flags.register_validator("version", lambda v: v >= 0, "--version must be >= 0.")


def _tflite_accuracy(path, images, labels):
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=path).get_signature_runner("serving_default")
    predictions, exits = [], []
    for image in images:
        out = runner(images=image[None].astype("float32"))
        predictions.append(int(np.argmax(out["logits"][0])))
        exits.append(int(out["exit_stage"][0]))
    return float((np.array(predictions) == labels).mean()), np.array(exits)


def _exists_message(export_dir: str, name: str) -> str:
    return (f"{os.path.join(export_dir, name, str(FLAGS.version))} exists; pass --overwrite to "
            "replace it, or --version for a new version.")


def main(argv):
    del argv
    run = FLAGS.run_dir
    with open(os.path.join(run, "report.json")) as f:
        report = json.load(f)
    with open(os.path.join(run, "config.json")) as f:
        config = json.load(f)
    name = FLAGS.name or report["model"]
    export_dir = FLAGS.export_dir or os.path.join(run, "export")
    if not FLAGS.overwrite and os.path.exists(
            os.path.join(export_dir, name, str(FLAGS.version))):
        return cli_common.usage_error(_exists_message(export_dir, name))  # before TF loads
    import keras

    from s2dnas_tf import data, export, fileio

    net = keras.saving.load_model(os.path.join(run, "multistage.keras"))
    try:
        thresholds = (
            [float(t) for t in FLAGS.thresholds]
            if FLAGS.thresholds is not None
            else report["dynamic"]["thresholds"]
        )
        saved = export.export_saved_model(
            net, thresholds, export_dir, name, version=FLAGS.version, overwrite=FLAGS.overwrite,
            crop_to_aspect_ratio=cli_common.run_data_config(config).crop_to_aspect_ratio,
        )
    except FileExistsError:
        return cli_common.usage_error(_exists_message(export_dir, name))
    except (ValueError, TypeError) as e:
        return cli_common.usage_error(str(e))
    print(f"SavedModel: {saved} (thresholds {thresholds})", flush=True)
    float_path = export.convert_to_tflite(saved, os.path.join(export_dir, f"{name}.tflite"))
    print(f"TFLite float: {float_path}", flush=True)
    if not FLAGS.int8:
        return 0
    splits = data.load_dataset_for(cli_common.run_data_config(config), net)
    try:
        int8_path = export.convert_to_tflite(
            saved,
            os.path.join(export_dir, f"{name}.int8.tflite"),
            quantize="int8",
            representative_images=splits.val.head(_REPRESENTATIVE_IMAGES).arrays()[0],
        )
    except ValueError as e:
        return cli_common.usage_error(str(e))
    n = min(FLAGS.num_images or len(splits.test), len(splits.test))
    x, y = splits.test.head(n).arrays()
    float_acc, float_exits = _tflite_accuracy(float_path, x, y)
    int8_acc, int8_exits = _tflite_accuracy(int8_path, x, y)
    summary = {
        "num_images": int(n),
        "float_accuracy": float_acc,
        "int8_accuracy": int8_acc,
        "int8_cost_points": 100.0 * (float_acc - int8_acc),
        "same_exit_stage": float((float_exits == int8_exits).mean()),
        "float_tflite_bytes": os.path.getsize(float_path),
        "int8_tflite_bytes": os.path.getsize(int8_path),
    }
    fileio.write_json(os.path.join(export_dir, f"{name}.int8.json"), summary)
    print(
        f"TFLite int8: {int8_path}; test accuracy float {float_acc:.4f} vs int8 "
        f"{int8_acc:.4f} ({summary['int8_cost_points']:+.2f} points lost), same exit stage "
        f"for {summary['same_exit_stage']:.1%} of {n} images; sizes "
        f"{summary['float_tflite_bytes']:,} -> {summary['int8_tflite_bytes']:,} bytes",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    cli_common.run(main)
