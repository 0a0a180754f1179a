"""S2DNAS end to end: base model -> search -> train the best architecture -> calibrate -> report.

    python experiments/search.py --flagfile=experiments/configs/quickstart.flags

Writes into --output_dir (DESIGN §10): config.json, search_log.jsonl (one line per evaluated
architecture, appended as the search goes), arch.json, report.json, report.md, curve.png,
multistage.keras, saved_model/<name>/1/ (the dynamic SavedModel) and model.tflite; plus base/
(when the base model is trained here), controller.json (the RL controller's state) and final/
(the final training's resume state). A candidate's fine-tune writes nothing: a killed one is
evaluated again from the start.

Killed at any moment and started again with the same command, the run continues where it
stopped: the base model and the final training resume from their last epoch, the search
from its log and controller state, and no evaluated architecture is paid for twice. A
directory holding a finished run is refused unless --overwrite is given.
"""

import os
import shutil
import sys
import time

import cli_common  # sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads
from absl import flags

FLAGS = flags.FLAGS
cli_common.define_data_flags()
cli_common.define_train_flags()
flags.DEFINE_string("base_model", None, "A trained static model (.keras); trained here if unset.")
flags.DEFINE_string("model", "resnet20", "Reference model to train when --base_model is unset.")
flags.DEFINE_integer("base_epochs", 30, "Epochs of the base model when trained here.")
flags.DEFINE_integer("num_stages", 3, "Number of stages S.")
cli_common.define_channel_multiple_flag()
flags.DEFINE_enum("searcher", "rl", ["rl", "random"], "REINFORCE controller or random search.")
flags.DEFINE_integer("num_candidates", 20, "Distinct architectures to evaluate.")
flags.DEFINE_integer("search_batch_size", 4, "Architectures per controller update.")
flags.DEFINE_enum("reward", "budget", ["budget", "linear"], "Reward of a candidate (DESIGN §5).")
flags.DEFINE_float("flops_budget", 0.5, "Average-FLOPs budget, a fraction of the static model's.")
flags.DEFINE_float("flops_lambda", 0.5, "lambda of --reward=linear.")
flags.DEFINE_float(
    "max_first_stage_flops", None,
    "Only search architectures whose first stage costs at most this fraction of the static "
    "model's FLOPs (e.g. half of --flops_budget); unset: no cap.",
)
flags.DEFINE_boolean(
    "reject_idle_stages", False,
    "Only search architectures in which every stage adds channels where the classifier "
    "reads (SearchSpace.idle_stages); otherwise a stage can end up repeating an earlier "
    "exit, which a channel multiple makes common.",
)
flags.DEFINE_integer("candidate_epochs", 1, "Fine-tuning epochs per candidate.")
flags.DEFINE_integer("candidate_steps", None, "Cap on fine-tuning steps per candidate epoch.")
flags.DEFINE_float("candidate_learning_rate", 0.01, "Learning rate of the candidates' fine-tune.")
flags.DEFINE_float(
    "candidate_bn_momentum", 0.9,
    "BatchNorm momentum while a candidate is fine-tuned, so its statistics catch up.",
)
flags.DEFINE_float("distill_weight", 1.0, "Distillation from the static model (0: off).")
flags.DEFINE_float("distill_temperature", 4.0, "Distillation temperature.")
flags.DEFINE_boolean("deterministic", True, "TensorFlow op determinism (same seed, same run).")
flags.DEFINE_string("output_dir", None, "Where the run's files go.")
flags.DEFINE_boolean("overwrite", False, "Start afresh in an output_dir holding a finished run.")
flags.DEFINE_string(
    "export_name", None, "Model name of the SavedModel (saved_model/<name>/1/); default: the "
    "base model's name.",
)
flags.DEFINE_boolean(
    "stop_after_search", False,
    "Stop once arch.json is written (compare searchers without training each winner).",
)
flags.mark_flag_as_required("output_dir")
flags.register_validator("num_stages", lambda v: v >= 1, "--num_stages must be >= 1.")
flags.register_validator(
    "flops_budget", lambda v: 0 < v <= 1, "--flops_budget must be in (0, 1]."
)
flags.register_validator("num_candidates", lambda v: v >= 1, "--num_candidates must be >= 1.")
flags.register_validator("search_batch_size", lambda v: v >= 1, "--search_batch_size must be >= 1.")
flags.register_validator("candidate_epochs", lambda v: v >= 1, "--candidate_epochs must be >= 1.")
flags.register_validator("flops_lambda", lambda v: v >= 0, "--flops_lambda must be >= 0.")
flags.register_validator(
    "max_first_stage_flops",
    lambda v: v is None or 0 < v <= 1,
    "--max_first_stage_flops must be in (0, 1] (a fraction of the static model's FLOPs).",
)
flags.register_validator(
    "base_model",
    lambda v: v is None or os.path.isfile(v),
    "--base_model must be an existing .keras file.",
)

_OUTPUTS = ("report.json", "report.md", "curve.png", "arch.json", "search_log.jsonl",
            "controller.json", "multistage.keras", "config.json", "model.tflite")
_OUTPUT_DIRS = ("base", "candidates", "final", "saved_model")


def _say(message: str) -> None:
    print(message, flush=True)


def main(argv):
    del argv
    cli_common.configure_logical_cpus(FLAGS.logical_cpus)
    out = FLAGS.output_dir
    if os.path.exists(os.path.join(out, "report.json")):
        if not FLAGS.overwrite:
            return cli_common.usage_error(
                f"{out} holds a finished run (report.json); pass --overwrite to start afresh."
            )
        for name in _OUTPUTS:
            if os.path.exists(os.path.join(out, name)):
                os.remove(os.path.join(out, name))
        for name in _OUTPUT_DIRS:
            shutil.rmtree(os.path.join(out, name), ignore_errors=True)

    import keras
    import tensorflow as tf

    import s2dnas_tf as s2d
    from s2dnas_tf import data, pipeline, search, training
    from s2dnas_tf.models import build_model, list_models, with_input_normalization

    if FLAGS.base_model is None and FLAGS.model not in list_models():
        return cli_common.usage_error(
            f"--model must be one of {list_models()}. Received: {FLAGS.model!r}"
        )
    if FLAGS.deterministic:
        tf.config.experimental.enable_op_determinism()
    os.makedirs(out, exist_ok=True)
    cli_common.write_json(os.path.join(out, "config.json"), cli_common.resolved_flags())
    run_start = time.time()
    try:
        splits = data.load_dataset(cli_common.data_config())
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as e:
        return cli_common.usage_error(str(e))
    _say(f"data: {splits!r}")

    # 1. The base model: the user's, or a reference model trained here (resumable).
    base_path = FLAGS.base_model or os.path.join(out, "base", "model.keras")
    if not os.path.exists(base_path):
        _say(f"training the base model {FLAGS.model} ({FLAGS.base_epochs} epochs) ...")
        mean, variance = splits.channel_stats()

        def model_fn():
            core = build_model(
                FLAGS.model, num_classes=splits.num_classes, input_shape=splits.image_shape
            )
            return with_input_normalization(core, mean, variance)

        base, _ = training.train(
            model_fn,
            splits,
            cli_common.train_config(os.path.join(out, "base"), epochs=FLAGS.base_epochs),
        )
        tmp = base_path + ".tmp.keras"
        base.save(tmp)
        os.replace(tmp, base_path)
    base = keras.saving.load_model(base_path)
    try:
        data.check_num_classes(splits, base)
        space = s2d.SearchSpace.from_model(
            base, num_stages=FLAGS.num_stages, channel_multiple=FLAGS.channel_multiple
        )
    except (ValueError, TypeError) as e:
        return cli_common.usage_error(str(e))
    _say(space.describe())
    static_flops = s2d.count_flops(base)

    # 2. The search.
    reward_config = search.RewardConfig(
        kind=FLAGS.reward, flops_budget=FLAGS.flops_budget, flops_lambda=FLAGS.flops_lambda
    )

    def evaluate(arch):
        config = cli_common.train_config(
            os.path.join(out, "candidates"),  # unused: an ephemeral run writes nothing
            epochs=FLAGS.candidate_epochs,
            steps_per_epoch=FLAGS.candidate_steps,
            learning_rate=FLAGS.candidate_learning_rate,
            bn_momentum=FLAGS.candidate_bn_momentum,
            distill_weight=FLAGS.distill_weight,
            distill_temperature=FLAGS.distill_temperature,
            verbose=0,
            ephemeral=True,  # used once for its reward: no in-fit validation, no checkpoints
        )
        net, _ = training.train(
            lambda: s2d.transform(base, arch),
            splits,
            config,
            teacher_fn=lambda: keras.saving.load_model(base_path),
        )
        val_probs = training.predict_stage_probabilities(net, splits.x_val)
        result = search.compute_reward(
            val_probs, splits.y_val, s2d.stage_flops(net), static_flops, reward_config
        )
        return result

    admissible = None
    if FLAGS.max_first_stage_flops is not None:
        admissible = search.first_stage_flops_cap(base, FLAGS.max_first_stage_flops)
        if not admissible(space.decode([0] * space.num_tokens)):  # the thinnest stage 1
            return cli_common.usage_error(
                f"--max_first_stage_flops={FLAGS.max_first_stage_flops}: even the space's "
                "thinnest first stage costs more "
                f"({min(admissible.ratios.values()):.3f} of the static FLOPs); raise it."
            )
        _say(f"searching only architectures whose first stage costs <= "
             f"{FLAGS.max_first_stage_flops} of the static FLOPs")
    summary = search.run_search(
        space,
        evaluate,
        search.SearchConfig(
            searcher=FLAGS.searcher,
            num_candidates=FLAGS.num_candidates,
            batch_size=FLAGS.search_batch_size,
            seed=FLAGS.seed,
            reject_idle_stages=FLAGS.reject_idle_stages,
        ),
        out,
        log=_say,
        admissible=admissible,
    )
    best = summary["best"]
    arch = space.decode(best["tokens"])
    _say(
        f"search done: {summary['evaluated']} architectures in {summary['seconds']:.0f} s; "
        f"best reward {best['reward']:.4f}:\n{arch}\n{space.channel_table(arch)}"
    )
    cli_common.write_json(
        os.path.join(out, "arch.json"),
        {**arch.to_dict(), "search": best, "summary": {k: v for k, v in summary.items()
                                                       if k != "best"}},
    )
    if FLAGS.stop_after_search:
        _say(f"--stop_after_search: wrote {out}/arch.json")
        return 0

    # 3.-5. Train the best architecture, calibrate, report.
    try:
        pipeline.train_and_report(
            base=base,
            teacher_fn=lambda: keras.saving.load_model(base_path),
            arch=arch,
            splits=splits,
            train_config=cli_common.train_config(
                os.path.join(out, "final"),
                distill_weight=FLAGS.distill_weight,
                distill_temperature=FLAGS.distill_temperature,
            ),
            flops_budget_ratio=FLAGS.flops_budget,
            output_dir=out,
            search={
                "searcher": FLAGS.searcher,
                "evaluated": summary["evaluated"],
                "samples": summary["samples"],
                "seconds": summary["seconds"],
                "best_reward": best["reward"],
                "max_first_stage_flops": FLAGS.max_first_stage_flops,
                "seconds_per_candidate": summary["seconds"] / max(1, summary["evaluated"]),
            },
            log=_say,
            export_name=FLAGS.export_name or base.name,
        )
    except training.TrainingDivergedError as e:
        print(f"search.py: {e}", file=sys.stderr)
        return 1
    _say(f"total wall time {time.time() - run_start:.0f} s")
    return 0


if __name__ == "__main__":
    cli_common.run(main)
