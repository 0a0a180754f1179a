"""S2DNAS end to end: base model -> search -> train the best architecture -> calibrate -> report.

    python experiments/search.py --flagfile=experiments/configs/quickstart.flags

Writes into --output_dir (docs/design.md §10): config.json, search_log.jsonl (one line per evaluated
architecture, appended as the search goes), arch.json, report.json, report.md, curve.png,
multistage.keras, saved_model/<name>/1/ (the dynamic SavedModel) and model.tflite; plus base/
(when the base model is trained here), controller.json (the RL controller's state) and final/
(the final training's resume state). A candidate's fine-tune writes nothing: a killed one is
evaluated again from the start.

Killed at any moment and started again with the same command, the run continues where it
stopped: the base model and the final training resume from their last epoch, the search
from its log and controller state, and no evaluated architecture is paid for twice. A
directory holding a finished run is refused unless --overwrite is given.

The run itself is `s2dnas_tf.runs.run_search`; this script builds its config from the flags.
"""

import cli_common  # sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads
from absl import flags

FLAGS = flags.FLAGS
cli_common.define_run_flags("search", helps={
    "base_model": "A trained static model (.keras); trained here if unset.",
    "model": "Reference model to train when --base_model is unset.",
})
flags.mark_flag_as_required("output_dir")


def main(argv):
    del argv
    cli_common.start_tensorflow(FLAGS.logical_cpus)
    from s2dnas_tf import runs

    try:
        config = cli_common.search_config(FLAGS.flag_values_dict())
    except ValueError as e:
        return cli_common.usage_error(str(e))
    return cli_common.call(runs.run_search, config, settings=cli_common.resolved_flags())


if __name__ == "__main__":
    cli_common.run(main)
