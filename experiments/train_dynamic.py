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
"""

import os
import sys

import cli_common  # sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads
from absl import flags

FLAGS = flags.FLAGS
cli_common.define_data_flags()
cli_common.define_train_flags()
flags.DEFINE_string("base_model", None, "The trained static model (.keras).")
flags.DEFINE_integer("num_stages", 3, "Number of stages S.")
cli_common.define_channel_multiple_flag()
flags.DEFINE_list("tokens", None, "Architecture tokens; default: the space's default arch.")
flags.DEFINE_boolean(
    "early_exit", False,
    "The early-exit baseline instead of an S2DNAS architecture: an exit classifier after "
    "each of --num_stages resolution stages of the static model (s2dnas_tf.early_exit), "
    "trained with the backbone; --tokens must then be unset.",
)
flags.DEFINE_float("flops_budget", 0.5, "Average-FLOPs budget, a fraction of the static model's.")
flags.DEFINE_list("stage_weights", None, "Loss weight per stage (default all 1).")
flags.DEFINE_float("distill_weight", 1.0, "Weight of distillation from the static model (0: off).")
flags.DEFINE_float("distill_temperature", 4.0, "Distillation temperature.")
flags.DEFINE_string("output_dir", None, "Where the run's files go.")
flags.DEFINE_boolean("overwrite", False, "Redo a finished run in output_dir.")
flags.mark_flags_as_required(["base_model", "output_dir"])
flags.register_validator("num_stages", lambda v: v >= 1, "--num_stages must be >= 1.")
flags.register_validator(
    "flops_budget", lambda v: 0 < v <= 1, "--flops_budget must be in (0, 1]."
)
flags.register_validator(
    "base_model",
    lambda v: v is None or os.path.isfile(v),
    "--base_model must be an existing .keras file.",
)


def main(argv):
    del argv
    cli_common.configure_logical_cpus(FLAGS.logical_cpus)
    import keras

    import s2dnas_tf as s2d
    from s2dnas_tf import data, early_exit, pipeline, training

    out = FLAGS.output_dir
    if FLAGS.early_exit and FLAGS.channel_multiple != 1:
        return cli_common.usage_error(
            "--channel_multiple applies to S2DNAS architectures; the early-exit baseline "
            "keeps the static model's channels (leave it at 1)."
        )
    if os.path.exists(os.path.join(out, "report.json")) and not FLAGS.overwrite:
        return cli_common.usage_error(
            f"{out} holds a finished run (report.json); pass --overwrite to redo it."
        )
    os.makedirs(out, exist_ok=True)
    cli_common.write_json(os.path.join(out, "config.json"), cli_common.resolved_flags())
    try:
        splits = data.load_dataset(cli_common.data_config())
        base = keras.saving.load_model(FLAGS.base_model)
        data.check_num_classes(splits, base)
        if FLAGS.early_exit:
            if FLAGS.tokens:
                raise ValueError("--tokens and --early_exit exclude each other.")

            space = arch = None
            early_exit.attach_exits(base, FLAGS.num_stages)  # checks the model up front
        else:
            space = s2d.SearchSpace.from_model(
                base, num_stages=FLAGS.num_stages, channel_multiple=FLAGS.channel_multiple
            )
            arch = space.decode([int(t) for t in FLAGS.tokens]) if FLAGS.tokens else (
                space.default_arch()
            )
        weights = [float(w) for w in FLAGS.stage_weights] if FLAGS.stage_weights else None
    except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
        return cli_common.usage_error(str(e))
    if arch is not None:
        print(space.describe(), flush=True)
        print(arch, flush=True)
        print(space.channel_table(arch), flush=True)
        cli_common.write_json(os.path.join(out, "arch.json"), arch.to_dict())
    else:
        print(f"early exits after {FLAGS.num_stages} resolution stages of {base.name}", flush=True)

    config = cli_common.train_config(
        os.path.join(out, "train"),
        stage_weights=weights,
        distill_weight=FLAGS.distill_weight,
        distill_temperature=FLAGS.distill_temperature,
    )
    try:
        pipeline.train_and_report(
            base=base,
            teacher_fn=lambda: keras.saving.load_model(FLAGS.base_model),
            arch=arch,
            splits=splits,
            train_config=config,
            flops_budget_ratio=FLAGS.flops_budget,
            output_dir=out,
            log=lambda m: print(m, flush=True),
            export_name=base.name,
            build_net=(
                (lambda: early_exit.attach_exits(base, FLAGS.num_stages))
                if FLAGS.early_exit else None
            ),
        )
    except training.TrainingDivergedError as e:
        print(f"train_dynamic.py: {e}", file=sys.stderr)
        return 1
    if FLAGS.num_stages == 1 and not FLAGS.early_exit:
        # The static model trained with this recipe, as a static model again: a base for
        # train_dynamic.py / search.py (benchmark.py --dynamic_from=static_ft).
        from s2dnas_tf import rewriter

        net = keras.saving.load_model(os.path.join(out, "multistage.keras"))
        static = rewriter.to_static(net, base)
        tmp = os.path.join(out, "static.tmp.keras")
        static.save(tmp)
        os.replace(tmp, os.path.join(out, "static.keras"))
        print(f"wrote {out}/static.keras (the trained one-stage net as {base.name})", flush=True)
    return 0


if __name__ == "__main__":
    cli_common.run(main)
