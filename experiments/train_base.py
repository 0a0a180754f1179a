"""Trains a reference model (the static network S2DNAS starts from) and saves it as .keras.

    python experiments/train_base.py --flagfile=experiments/configs/base_cifar10_resnet20.flags

Writes into --output_dir: `model.keras` (raw pixels in, logits out; the input normalisation
is the model's first layer), `base_report.json` (test accuracy, FLOPs, wall time, the
resolved flags), and the training state (`checkpoint.keras`, `backup/`, `logs/`,
`history.csv`). Killed and started again with the same command, it resumes from the last
finished epoch. A finished run is not retrained unless --overwrite is given.
"""

import os
import sys
import time

import cli_common  # sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads
from absl import flags

FLAGS = flags.FLAGS
cli_common.define_data_flags()
cli_common.define_train_flags()
flags.DEFINE_string("model", "resnet20", "Reference model name (s2dnas_tf.models).")
flags.DEFINE_float("width_multiplier", 1.0, "Channel width multiplier of the model.")
flags.DEFINE_string("output_dir", None, "Where the model and its report go.")
flags.DEFINE_boolean("overwrite", False, "Retrain even if output_dir holds a finished run.")
flags.mark_flag_as_required("output_dir")


def main(argv):
    del argv
    cli_common.configure_logical_cpus(FLAGS.logical_cpus)
    from s2dnas_tf import count_flops, data, training
    from s2dnas_tf.models import build_model, list_models, with_input_normalization

    if FLAGS.model not in list_models():
        return cli_common.usage_error(
            f"--model must be one of {list_models()}. Received: {FLAGS.model!r}"
        )
    os.makedirs(FLAGS.output_dir, exist_ok=True)
    model_path = os.path.join(FLAGS.output_dir, "model.keras")
    if os.path.exists(model_path) and not FLAGS.overwrite:
        return cli_common.usage_error(
            f"{model_path} exists (a finished run); pass --overwrite to train again."
        )
    try:
        splits = data.load_dataset(cli_common.data_config())
    except (ValueError, FileNotFoundError, ImportError) as e:
        return cli_common.usage_error(str(e))
    print(
        f"data: {splits.name} train {len(splits.x_train)} val {len(splits.x_val)} "
        f"test {len(splits.x_test)} classes {splits.num_classes} image {splits.image_shape}",
        flush=True,
    )
    mean, variance = splits.channel_stats()

    def model_fn():
        core = build_model(
            FLAGS.model,
            num_classes=splits.num_classes,
            input_shape=splits.image_shape,
            width_multiplier=FLAGS.width_multiplier,
        )
        return with_input_normalization(core, mean, variance)

    config = cli_common.train_config(FLAGS.output_dir)
    start = time.time()
    try:
        model, history = training.train(model_fn, splits, config)
    except training.TrainingDivergedError as e:
        print(f"train_base.py: {e}", file=sys.stderr)
        return 1
    seconds = time.time() - start
    probs = training.predict_stage_probabilities(model, splits.x_test)[0]
    accuracy = float((probs.argmax(-1) == splits.y_test).mean())
    flops = count_flops(model)
    print(
        f"test accuracy {accuracy:.4f}  FLOPs {flops:,}  train wall time {seconds:.0f} s",
        flush=True,
    )
    tmp = model_path + ".tmp.keras"
    model.save(tmp)
    os.replace(tmp, model_path)
    cli_common.write_json(
        os.path.join(FLAGS.output_dir, "base_report.json"),
        {
            "dataset": splits.name,
            "model": FLAGS.model,
            "width_multiplier": FLAGS.width_multiplier,
            "test_accuracy": accuracy,
            "flops": flops,
            "train_seconds": seconds,
            "num_train": len(splits.x_train),
            "num_test": len(splits.x_test),
            "history": history,
            "flags": cli_common.resolved_flags(),
        },
    )
    return 0


if __name__ == "__main__":
    cli_common.run(main)
