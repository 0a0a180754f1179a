"""Trains a reference model (the static network S2DNAS starts from) and saves it as .keras.

    python experiments/train_base.py --flagfile=experiments/configs/base_cifar10_resnet20.flags

Writes into --output_dir: `model.keras` (raw pixels in, logits out; the input normalisation
is the model's first layer), `base_report.json` (test accuracy, FLOPs, wall time, the
resolved flags), and the training state (`checkpoint.keras`, `backup/`, `logs/`,
`history.csv`). Killed and started again with the same command, it resumes from the last
finished epoch. A finished run is not retrained unless --overwrite is given.

The run itself is `s2dnas_tf.runs.train_base`; this script builds its config from the flags.
"""

import cli_common  # sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads
from absl import flags

FLAGS = flags.FLAGS
cli_common.define_run_flags("train_base", helps={
    "output_dir": "Where the model and its report go.",
    "overwrite": "Retrain even if output_dir holds a finished run.",
})
flags.mark_flag_as_required("output_dir")


def main(argv):
    del argv
    cli_common.start_tensorflow(FLAGS.logical_cpus)
    from s2dnas_tf import runs

    config = cli_common.train_base_config(FLAGS.flag_values_dict())
    return cli_common.call(runs.train_base, config, settings=cli_common.resolved_flags())


if __name__ == "__main__":
    cli_common.run(main)
