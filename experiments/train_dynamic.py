"""Multi-stage training of one architecture (no search), calibration and the run report.

    python experiments/train_dynamic.py --flagfile=experiments/configs/dynamic_cifar10_resnet20.flags

Starts from a trained static model (`--base_model=model.keras`, e.g. from train_base.py),
builds the S-stage network of `--tokens` (or the space's default architecture; or with
`--early_exit` the early-exit baseline: exit classifiers on the static backbone), trains it
from the inherited weights with sum_s w_s CE_s (+ distillation from the static model),
calibrates exit thresholds on the validation split for `--flops_budget` and writes into
--output_dir: config.json, arch.json, multistage.keras, report.json, report.md, curve.png,
saved_model/<name>/1/ and model.tflite; with --num_stages=1 also static.keras, the static
model with the trained weights (`s2dnas_tf.rewriter.to_static`).
Killed and started again with the same command, training resumes from its last epoch.

The run itself is `s2dnas_tf.runs.train_dynamic`; this script builds its config from the
flags.
"""

import cli_common  # sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads
from absl import flags

FLAGS = flags.FLAGS
cli_common.define_run_flags("train_dynamic", helps={
    "base_model": "The trained static model (.keras).",
    "overwrite": "Redo a finished run in output_dir.",
})
flags.mark_flags_as_required(["base_model", "output_dir"])


def main(argv):
    del argv
    cli_common.start_tensorflow(FLAGS.logical_cpus)
    from s2dnas_tf import runs

    try:
        config = cli_common.train_dynamic_config(FLAGS.flag_values_dict())
    except ValueError as e:
        return cli_common.usage_error(str(e))
    return cli_common.call(runs.train_dynamic, config, settings=cli_common.resolved_flags())


if __name__ == "__main__":
    cli_common.run(main)
