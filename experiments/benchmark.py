"""The benchmark: S2DNAS against the static model, early exits, a thinner model, random search.

    python experiments/benchmark.py --flagfile=experiments/configs/benchmark_cifar10_resnet20.flags

Every method is trained on the same images and measured on the same test split:
  static         the static model (`--base_model`, e.g. the shipped checkpoint, when it was
                 trained on this run's data; else trained here like train_base.py);
  static_ft      the static model trained --epochs more with the dynamic methods' recipe
                 (learning rate, distillation from itself): train_dynamic.py --num_stages=1.
                 The fair reference for the accuracy goal (the dynamic methods get those
                 epochs); not run unless listed in --methods (about 25 min on CIFAR-10) or
                 --dynamic_from=static_ft (the dynamic methods then start from it and
                 distil from it);
  thin_static    the same architecture at `--thin_width` width, trained from scratch with
                 the static model's recipe (train_base.py --width_multiplier);
  early_exit     exits after each resolution stage, trained with the backbone
                 (train_dynamic.py --early_exit), calibrated like S2DNAS;
  s2dnas_default the S2DNAS space's default architecture without search, trained and
                 calibrated like the searched ones (train_dynamic.py): what the search adds;
  s2dnas_rl      the full pipeline with the REINFORCE search (search.py --searcher=rl);
  s2dnas_random  the same with random search and the same number of candidates.
  s2dnas_rl_flops  with a time --cost: s2dnas_rl's search and thresholds for --flops_budget of
                 the FLOPs instead (what searching for time changes);
  thin_matched   the static architecture at the width (a multiple of 1/16) whose predicted
                 TFLite time is nearest s2dnas_rl's predicted time per image on the test
                 images, trained like thin_static (after s2dnas_rl).
Each step is the run of one of those entry points in `--output_dir/<method>/`: the library's
run (`s2dnas_tf.runs`) with the config that command would build from the flag values shown
in the log (`cli_common.step_flags`), in a fresh process of its own (see `_start`). Then
every method's SavedModel (and TFLite model) is timed at batch 1 over the test images, all of
them in turns so that the machine's drift falls on all alike (`s2dnas_tf.latency.time_models`).
Writes `<results_dir>/<results_name>.{json,md,png}` and prints the table.

Resumable: killed and started again with the same command, finished steps are skipped and a
step that was running resumes from its own last checkpoint (the runs are resumable).
Progress goes to stdout; run it in the background, e.g. with `nohup ... > bench.log &`.
"""

import json
import multiprocessing
import os
import shlex
import signal
import sys
import time

import cli_common  # sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads
from absl import flags

FLAGS = flags.FLAGS
cli_common.define_flags(*cli_common.DATA_FLAGS)
flags.DEFINE_boolean(
    "full_train_set", False, "Train on all training images (overrides --per_class_limit)."
)
flags.DEFINE_list(
    "methods",
    ["static", "thin_static", "early_exit", "s2dnas_rl", "s2dnas_random"],
    "Methods to run (static is always measured: the others are compared with it); "
    "static_ft (the static model trained --epochs more with the dynamic methods' recipe) and "
    "s2dnas_default (the space's default architecture, no search) are not run unless listed.",
)
# The flags the benchmark shares with the runs' entry points (their meaning here in `helps`).
cli_common.define_flags(
    "base_model", "model", "base_epochs", "num_stages", "flops_budget", "channel_multiple",
    "block_skipping", "reject_idle_stages", "num_candidates", "search_batch_size", "candidate_steps",
    "max_first_stage_flops", "candidate_learning_rate", "epochs", "learning_rate",
    "batch_size", "distill_weight", "distill_temperature", "steps_per_epoch", "seed",
    "verbose", "output_dir", "cost", "latency_budget", "evaluator", "supernet_epochs",
    "supernet_learning_rate",
    helps={
        "cost": "What the S2DNAS methods' search reward and thresholds budget: FLOPs, or "
        "each exit path's predicted batch-1 time on tflite or saved_model (with "
        "--latency_budget); the other methods keep --flops_budget.",
        "latency_budget": "With a time --cost: the S2DNAS methods' average time budget, a "
        "fraction of the static model's predicted time.",
        "base_model": "A trained static model (.keras) with its sidecar <name>.json saying "
        "which data it was trained on; used when that matches this run's data, else the "
        "static model is trained here.",
        "model": "The static model to train when --base_model is unusable.",
        "base_epochs": "Epochs of the static (and thin) model trained here.",
        "num_stages": "Stages / exits of the dynamic methods.",
        "flops_budget": "Average-FLOPs budget of the dynamic methods' thresholds.",
        "channel_multiple": "The S2DNAS methods' space (s2dnas_rl, s2dnas_random, "
        "s2dnas_default): every stage's channel count in a unit of C channels is a multiple "
        "of gcd(C, this); 8 suits TFLite's kernels. 1: any count (the committed runs).",
        "block_skipping": "The S2DNAS methods' space gains a depth decision: stages may "
        "skip identity blocks (off in the committed runs).",
        "num_candidates": "Architectures each search evaluates.",
        "evaluator": "How the searches score a candidate: from a weight-sharing supernet "
        "(trained once, in s2dnas_rl's run and copied into s2dnas_random's) or by a short "
        "fine-tune (--candidate_steps).",
        "candidate_steps": "Fine-tuning steps per candidate.",
        "epochs": "Training epochs of the chosen S2DNAS nets and of early_exit.",
        "learning_rate": "Peak learning rate of that training.",
        "batch_size": "Batch size of every training.",
        "steps_per_epoch": "Cap on steps per epoch of every training (tests).",
        "seed": "Seed of the data split, training and search.",
        "output_dir": "Where the methods' runs go.",
    },
)
# The benchmark's recipe (experiments/configs/benchmark_cifar10_resnet20.flags sets them too).
FLAGS.set_default("base_epochs", 15)
FLAGS.set_default("num_candidates", 300)  # scored from the supernet, seconds each
FLAGS.set_default("candidate_steps", 60)
FLAGS.set_default("epochs", 10)
flags.DEFINE_float("base_learning_rate", 0.1, "Learning rate of the static (and thin) model.")
flags.DEFINE_float("thin_width", 0.5, "Width multiplier of thin_static.")
flags.DEFINE_list(
    "thin_checkpoints", [],
    "Trained thin models (.keras, each with its sidecar <name>.json like --base_model's) that "
    "thin_static and thin_matched use instead of training, when one was trained on this "
    "run's data with the static model's recipe at the width wanted (the sidecar's data and "
    "train: model, width_multiplier, epochs, learning_rate, augment, batch_size).")
flags.DEFINE_list(
    "matched_widths", [str(k / 16) for k in range(2, 16)],
    "The widths thin_matched chooses from (e.g. those of --thin_checkpoints).")
flags.DEFINE_boolean(
    "parallel_searches", False,
    "With --evaluator=finetune: run s2dnas_random's search (its run with "
    "stop_after_search) in a second process while s2dnas_rl's step runs. A candidate's fine-tune spends about half its time tracing and "
    "building graphs on one core, so two searches side by side use both cores better; the "
    "candidates and their rewards are the same (each search has its own seed and log).",
)
flags.DEFINE_enum(
    "dynamic_from", "static", ["static", "static_ft"],
    "What the dynamic methods start from and distil from: the static model, or static_ft "
    "(the static model first trained --epochs more with the same recipe; static_ft is then "
    "run whether listed in --methods or not). static_ft costs --epochs more epochs, and "
    "the dynamic nets then compete with the stronger reference on equal terms.",
)
flags.DEFINE_integer("latency_images", None, "Time the first N test images (default: all).")
flags.DEFINE_integer("latency_warmup", 20, "Untimed calls before timing.")
flags.DEFINE_integer(
    "latency_threads", 1,
    "Threads of TensorFlow's op pools (SavedModels) and of the TFLite interpreter while "
    "timing (1: single-stream latency, like a phone core).",
)
flags.DEFINE_boolean("tflite", True, "Also time the float TFLite models (needs ai-edge-litert).")
flags.DEFINE_boolean(
    "int8", True,
    "Also convert every method's SavedModel to an int8 TFLite model (post-training "
    "quantisation calibrated on 512 training images, float32 in and out) and measure its "
    "accuracy and batch-1 time on the timed test images, in turns with the other models "
    "(needs ai-edge-litert). A method whose later stages none of those images reaches "
    "gets no int8 model; its record says why (int8_error).")
flags.DEFINE_boolean(
    "batch64", True,
    "Also time each SavedModel's serving_default on batches of 64 test images, in turns "
    "(saved_model_b64_ms: a server's time per image; skipped with fewer than 64 images).")
flags.DEFINE_string("results_dir", "experiments/results", "Where the results go.")
flags.DEFINE_string("results_name", None, "Results file name (default: <dataset>_<model>).")
flags.mark_flag_as_required("output_dir")
cli_common.register_budget_validator()
flags.register_validator("latency_warmup", lambda v: v >= 0, "--latency_warmup must be >= 0.")
flags.register_validator("latency_threads", lambda v: v >= 1, "--latency_threads must be >= 1.")
flags.register_validator("num_stages", lambda v: v >= 2, "--num_stages must be >= 2.")
flags.register_validator("thin_width", lambda v: 0 < v < 1, "--thin_width must be in (0, 1).")


def _widths_ok(values) -> bool:
    try:
        return bool(values) and all(0 < float(v) <= 1 for v in values)
    except ValueError:
        return False


flags.register_validator("matched_widths", _widths_ok,
                         "--matched_widths must be a comma-separated list of numbers in (0, 1].")
flags.register_validator(
    "thin_checkpoints",
    lambda paths: all(os.path.isfile(p) and os.path.isfile(os.path.splitext(p)[0] + ".json")
                      for p in paths),
    "--thin_checkpoints must be existing .keras files, each with its sidecar <name>.json.")
flags.register_validator(
    "latency_images", lambda v: v is None or v >= 1, "--latency_images must be >= 1."
)


def _say(message: str) -> None:
    print(f"[benchmark {time.strftime('%H:%M:%S')}] {message}", flush=True)


class StepFailed(RuntimeError):
    pass


class SettingsChanged(ValueError):
    pass


# --- The steps ---------------------------------------------------------------------------------
# A step is a run kind of cli_common.RUN_FLAGS ("train_base", "search", "train_dynamic") and
# the flag values of its entry point that the benchmark sets (the others keep the entry
# point's defaults): the command the step stands for, and what its directory records.


def _per_class_limit():
    return None if FLAGS.full_train_set else FLAGS.per_class_limit


def _data_values() -> dict:
    return {"dataset": FLAGS.dataset, "data_dir": FLAGS.data_dir,
            "per_class_limit": _per_class_limit(),
            "validation_fraction": FLAGS.validation_fraction, "seed": FLAGS.seed,
            "batch_size": FLAGS.batch_size, "steps_per_epoch": FLAGS.steps_per_epoch,
            "verbose": FLAGS.verbose}


def _static_step(method: str, recipe: dict, base_path: str | None = None
                 ) -> tuple[str, dict]:
    """static (trained here), thin_static and thin_matched: the static model's recipe, from
    scratch."""
    values = {**_data_values(), "model": recipe["model"], "epochs": recipe["epochs"],
              "learning_rate": recipe["learning_rate"], "augment": recipe["augment"],
              "output_dir": os.path.join(FLAGS.output_dir, method)}
    if method == "thin_static":
        values["width_multiplier"] = FLAGS.thin_width
    if method == "thin_matched":
        values["width_multiplier"] = _matched_width(recipe, base_path)
    return "train_base", values


def _matched_width(recipe: dict, base_path: str) -> float:
    """thin_matched's width: the one whose predicted TFLite time ratio is nearest
    s2dnas_rl's predicted time per image on the test images (its exit fractions), both
    from this machine's per-layer TFLite times (`s2dnas_tf.cost`), computed once and kept
    in <output_dir>/thin_matched/width.json."""
    import keras

    from s2dnas_tf import benchmark, fileio, models

    path = os.path.join(FLAGS.output_dir, "thin_matched", "width.json")
    if os.path.isfile(path):
        with open(path) as f:
            return json.load(f)["width_multiplier"]
    report_path = os.path.join(FLAGS.output_dir, "s2dnas_rl", "report.json")
    if not os.path.isfile(report_path):
        raise StepFailed("thin_matched matches s2dnas_rl's time: run s2dnas_rl first "
                         "(list it in --methods)")
    with open(report_path) as f:
        report = json.load(f)
    static = keras.saving.load_model(base_path)
    net = keras.saving.load_model(os.path.join(FLAGS.output_dir, "s2dnas_rl", "multistage.keras"))
    target = benchmark.expected_time_ratio(net, report["dynamic"]["exit_fractions"], static)
    shape, classes = static.input_shape[1:], static.output_shape[-1]
    width, ratio = benchmark.matched_width(
        target, lambda w: models.build_model(recipe["model"], classes, shape, width_multiplier=w),
        [float(w) for w in FLAGS.matched_widths])
    _say(f"thin_matched: width {width} (predicted TFLite time {ratio:.3f}x the static "
         f"model's; s2dnas_rl's {target:.3f}x)")
    fileio.write_json(path, {"width_multiplier": width, "predicted_ratio": ratio,
                             "s2dnas_rl_predicted_ratio": target})
    return width


def _dynamic_step(method: str, base_path: str, dynamic_base: str) -> tuple[str, dict]:
    """The steps that start from a static model: static_ft, early_exit, s2dnas_*."""
    values = {**_data_values(), "base_model": dynamic_base, "num_stages": FLAGS.num_stages,
              "flops_budget": FLAGS.flops_budget, "epochs": FLAGS.epochs,
              "learning_rate": FLAGS.learning_rate, "distill_weight": FLAGS.distill_weight,
              "distill_temperature": FLAGS.distill_temperature,
              "output_dir": os.path.join(FLAGS.output_dir, method)}
    if method == "static_ft":
        # The dynamic methods' training on the one-stage "network": the static model itself
        # (S = 1 reproduces it), distilled from its original weights.
        return "train_dynamic", {**values, "base_model": base_path, "num_stages": 1,
                                 "flops_budget": 1.0}
    if method == "early_exit":
        return "train_dynamic", {**values, "early_exit": True}
    values["channel_multiple"] = FLAGS.channel_multiple  # the S2DNAS space
    values["block_skipping"] = FLAGS.block_skipping
    if FLAGS.cost != "flops" and method != "s2dnas_rl_flops":
        # The S2DNAS methods' budget in predicted time.
        values.update(cost=FLAGS.cost, latency_budget=FLAGS.latency_budget)
    if method == "s2dnas_default":
        return "train_dynamic", values
    return "search", {
        **values, "searcher": method.split("_")[1], "reward": "budget",
        "num_candidates": FLAGS.num_candidates, "search_batch_size": FLAGS.search_batch_size,
        "max_first_stage_flops": FLAGS.max_first_stage_flops,
        "reject_idle_stages": FLAGS.reject_idle_stages, "evaluator": FLAGS.evaluator,
        **({"supernet_epochs": FLAGS.supernet_epochs,
            "supernet_learning_rate": FLAGS.supernet_learning_rate}
           if FLAGS.evaluator == "supernet" else
           {"candidate_steps": FLAGS.candidate_steps,
            "candidate_learning_rate": FLAGS.candidate_learning_rate}),
    }


def _show(values: dict) -> str:
    return " ".join(f"--{name}={value}" for name, value in values.items() if value is not None)


def _check_step(method: str, kind: str, values: dict) -> None:
    """Records a method's step in <run_dir>/benchmark_step.json, and refuses to skip or
    resume a step that was started with other settings (a resumed run with other epochs,
    budget, ... would mix two experiments). Settings are compared resolved, as the step's
    entry point sees them; a record of an older benchmark holds that command's "args"."""
    run_dir = os.path.join(FLAGS.output_dir, method)
    path = os.path.join(run_dir, "benchmark_step.json")
    now = cli_common.flag_dict(cli_common.step_flags(kind, values))
    if not os.path.isfile(path):
        from s2dnas_tf import fileio

        fileio.write_json(path, {"method": method, "kind": kind, "flags": values})
        return
    with open(path) as f:
        record = json.load(f)
    try:
        before = cli_common.flag_dict(cli_common.step_flags(
            kind, values=record.get("flags"), args=record.get("args")))
    except flags.Error as e:
        before = {"(unreadable record)": str(e)}
    changed = sorted(n for n in set(before) | set(now) if before.get(n) != now.get(n))
    if changed or record.get("kind", kind) != kind:
        raise SettingsChanged(
            f"{run_dir} holds a {method} run made with other settings (recorded: "
            f"{_show({n: before.get(n) for n in changed})}; now: "
            f"{_show({n: now.get(n) for n in changed})}); use another --output_dir, or "
            f"delete {run_dir} to redo it."
        )


def _start(method: str, kind: str, values: dict):
    """Starts a step's run in a fresh process. A process of its own, because TensorFlow's
    state is per process: the thread pools are fixed at its first op (this process times
    with --latency_threads), op determinism is switched on for the whole process (a
    search's), and each training leaves memory behind; and so that s2dnas_random's search
    can run alongside s2dnas_rl's step."""
    step = cli_common.step_flags(kind, values)
    settings = cli_common.flag_dict(step)
    config = cli_common.RUN_CONFIGS[kind](settings)
    process = multiprocessing.get_context("spawn").Process(
        target=cli_common.call_and_exit, args=(kind, config, settings, method), name=method,
        daemon=True,
    )
    process.start()
    return process


def _wait(method: str, process) -> None:
    """Waits for a step's process; a failed step raises StepFailed, and an interrupted
    wait (Ctrl-C, `kill`) stops the process."""
    try:
        process.join()
    except BaseException:
        process.terminate()
        process.join()
        raise
    if process.exitcode != 0:
        raise StepFailed(
            f"step {method} failed (exit code {process.exitcode}); its output is above."
        )


def _run(method: str, kind: str, values: dict) -> float:
    """Runs a step and returns its wall time in seconds."""
    _say(f"{method}: {kind} {_show(values)}")
    start = time.time()
    _wait(method, _start(method, kind, values))
    return time.time() - start


def _data_key() -> dict:
    return {"dataset": FLAGS.dataset, "per_class_limit": _per_class_limit(),
            "validation_fraction": FLAGS.validation_fraction, "seed": FLAGS.seed}


def _usable_base_model() -> tuple[str | None, dict | None, str]:
    """(path, sidecar) of --base_model if it was trained on this run's data, else
    (None, None, why)."""
    path = FLAGS.base_model
    if not path:
        return None, None, "no --base_model given"
    if not os.path.isfile(path):
        return None, None, f"--base_model {path} does not exist"
    sidecar = os.path.splitext(path)[0] + ".json"
    if not os.path.isfile(sidecar):
        return None, None, f"{sidecar} (which data {path} was trained on) does not exist"
    with open(sidecar) as f:
        info = json.load(f)
    if info.get("data") != _data_key():
        return None, None, (f"{path} was trained on {info.get('data')}, this run uses "
                            f"{_data_key()}")
    return path, info, "matches this run's data"


def _timings_path():
    return os.path.join(FLAGS.output_dir, "step_seconds.json")


def _record_seconds(step: str, seconds: float) -> None:
    from s2dnas_tf import fileio

    path = _timings_path()
    timings = json.load(open(path)) if os.path.exists(path) else {}
    timings[step] = timings.get(step, 0.0) + seconds
    fileio.write_json(path, timings)


def _requested_methods() -> list[str]:
    """--methods in the order the steps run (static_ft first: it may be the dynamic
    methods' base), with static_ft added when --dynamic_from needs it."""
    wanted = set(FLAGS.methods) | ({"static_ft"} if FLAGS.dynamic_from == "static_ft" else set())
    return [m for m in _methods() if m in wanted]


def _train_steps(base_path: str, recipe: dict) -> None:
    """Runs the training / search step of every requested method that is not done."""
    out = FLAGS.output_dir
    dynamic_base = base_path  # static_ft's static.keras once it is trained, if asked for
    if FLAGS.dynamic_from == "static_ft":
        dynamic_base = os.path.join(out, "static_ft", "static.keras")
    background = None  # (process, start time) of s2dnas_random's search run alongside
    for method in _requested_methods():
        if method == "static":
            continue
        if method in ("thin_static", "thin_matched"):
            kind, values = _static_step(method, recipe, base_path)
            done, said = "model.keras", "trained already"
        else:
            kind, values = _dynamic_step(method, base_path, dynamic_base)
            done, said = "report.json", "done already"
        _check_step(method, kind, values)
        if method in ("thin_static", "thin_matched"):
            _use_thin_checkpoint(method, values)
        if os.path.isfile(os.path.join(out, method, done)):
            _say(f"{method}: {said}")
            continue
        if method in ("s2dnas_random", "s2dnas_rl_flops"):
            _share_supernet(method)
        if method == "s2dnas_rl" and _search_alongside():
            background = _start_random_search(base_path, dynamic_base)
        try:
            seconds = _run(method, kind, values)
        except BaseException:  # a failed or killed step takes its companion with it
            if background is not None:
                background[0].terminate()
                background[0].join()
            raise
        _record_seconds(method, seconds)
        if background is not None and method == "s2dnas_rl":
            process, started = background
            _say("s2dnas_random: waiting for its search (run alongside s2dnas_rl)")
            _wait("s2dnas_random's search (run alongside s2dnas_rl)", process)
            _record_seconds("s2dnas_random", time.time() - started)
            background = None


def _use_thin_checkpoint(method: str, values: dict) -> None:
    """Puts the --thin_checkpoints model that fits `method`'s step (same data, the static
    model's recipe, the width wanted) into its run as model.keras with its sidecar as
    model.json, unless the run holds a model already: the step is then done without
    training. Each file is copied under a temporary name and renamed into place."""
    import shutil

    run_dir = os.path.join(FLAGS.output_dir, method)
    target = os.path.join(run_dir, "model.keras")
    if os.path.exists(target):
        return
    wanted = {"model": values["model"], "width_multiplier": values["width_multiplier"],
              "epochs": values["epochs"], "learning_rate": values["learning_rate"],
              "augment": values["augment"], "batch_size": values["batch_size"]}
    for path in FLAGS.thin_checkpoints:
        sidecar = os.path.splitext(path)[0] + ".json"
        if not (os.path.isfile(path) and os.path.isfile(sidecar)):
            continue
        with open(sidecar) as f:
            info = json.load(f)
        train = {**info.get("train", {})}
        train.setdefault("width_multiplier", 1.0)
        if info.get("data") != _data_key() or any(
                train.get(k) != v for k, v in wanted.items()):
            continue
        os.makedirs(run_dir, exist_ok=True)
        for source, destination in ((sidecar, os.path.join(run_dir, "model.json")),
                                    (path, target)):  # the model last: it marks the step done
            shutil.copyfile(source, destination + ".partial")
            os.replace(destination + ".partial", destination)
        _say(f"{method}: {path} (trained on this run's data with this recipe at width "
             f"{values['width_multiplier']})")
        return


def _share_supernet(method: str) -> None:
    """With the supernet evaluator, gives `method`'s run (s2dnas_random, s2dnas_rl_flops) a
    copy of the supernet s2dnas_rl's run trained, unless it has one: the steps differ only
    in the searcher or the reward, so that is the supernet its run would train itself (same
    data, recipe and seed), and the benchmark trains it once. Copied, not linked: a run
    owns its directories. Written under a temporary name and renamed, so a killed copy
    leaves nothing half-made."""
    import shutil

    if FLAGS.evaluator != "supernet":
        return
    source = os.path.join(FLAGS.output_dir, "s2dnas_rl", "supernet")
    target = os.path.join(FLAGS.output_dir, method, "supernet")
    if os.path.exists(target) or not os.path.isfile(os.path.join(source, "supernet.keras")):
        return
    partial = target + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    os.replace(partial, target)
    _say(f"{method}: uses s2dnas_rl's supernet (copied from {source})")


def _search_alongside() -> bool:
    """Whether s2dnas_random's search should run alongside s2dnas_rl's step: asked for, both
    methods requested, random's search not finished yet, and candidates fine-tuned (with
    the supernet evaluator the searches take seconds per candidate and share a supernet)."""
    if not (FLAGS.parallel_searches and "s2dnas_random" in FLAGS.methods):
        return False
    if FLAGS.evaluator == "supernet":
        return False
    run_dir = os.path.join(FLAGS.output_dir, "s2dnas_random")
    return not any(os.path.isfile(os.path.join(run_dir, f)) for f in ("arch.json", "report.json"))


def _start_random_search(base_path: str, dynamic_base: str):
    """Starts s2dnas_random's search (its step's run, stopped after the search) in the
    background; its later step finds the search done in its log and only trains."""
    method = "s2dnas_random"
    kind, values = _dynamic_step(method, base_path, dynamic_base)
    _check_step(method, kind, values)
    _say(f"{method} (its search, alongside s2dnas_rl): {kind} {_show(values)} "
         "--stop_after_search=True")
    return _start(method, kind, {**values, "stop_after_search": True}), time.time()


INT8 = "tflite_int8"  # the key of a method's int8 TFLite model among the timed ones
# Training images that calibrate the int8 quantisation (each stage on those that reach it).
INT8_IMAGES = 512


def _measured_file(method: str, base_path: str) -> str:
    """What a method's measurements come from: its model file (static, thin_static) or its
    report.json (the trained dynamic runs; it names their exports)."""
    if method == "static":
        return base_path
    name = "model.keras" if method in ("thin_static", "thin_matched") else "report.json"
    return os.path.join(FLAGS.output_dir, method, name)


def _measure_all(names, base_path, splits, images, labels, static_flops):
    """Every method's record. The exported models are timed together, in turns
    (`latency.time_models`), so that the machine's drift falls on all of them alike; the
    records are cached in <output_dir>/measurements.json for the same methods, images and
    threads and the same trained models (a step redone after its directory was deleted is
    measured again; delete the file to measure again anyway). With --batch64 the
    SavedModels are also timed on batches of 64 (`latency.time_saved_model_batches`); with
    --int8 each SavedModel is also converted to an int8 TFLite model, timed in the same
    turns, and its accuracy taken from its answers (`labels`: the timed images' classes)."""
    import keras
    import numpy as np

    from s2dnas_tf import benchmark, count_flops, export, latency, training

    cache = os.path.join(FLAGS.output_dir, "measurements.json")
    key = benchmark.measurement_key(
        {m: _measured_file(m, base_path) for m in names}, num_images=len(images),
        threads=FLAGS.latency_threads, tflite=FLAGS.tflite, batch64=FLAGS.batch64,
        int8=FLAGS.int8)
    cached = benchmark.cached_records(cache, key)
    if cached is not None:
        _say(f"measurements: {cache} (same methods, images and threads)")
        return cached
    prepared, models = {}, {}
    representative = None  # int8 calibration images, loaded once
    int8_errors = {}  # method -> why it has no int8 model
    for method in names:
        run_dir = os.path.join(FLAGS.output_dir, method)
        os.makedirs(run_dir, exist_ok=True)
        if method in ("static", "thin_static", "thin_matched"):
            path = base_path if method == "static" else os.path.join(run_dir, "model.keras")
            model = keras.saving.load_model(path)
            probs = training.predict_stage_probabilities(model, splits.test)[0]
            saved = export.export_static(
                model, os.path.join(run_dir, "saved_model"), model.name, overwrite=True
            )
            tflite = export.convert_to_tflite(saved, os.path.join(run_dir, "model.tflite")) if (
                FLAGS.tflite) else None
            prepared[method] = {
                "accuracy": float((probs.argmax(-1) == splits.y_test).mean()),
                "flops": count_flops(model), "train_seconds": benchmark.static_train_seconds(path),
            }
        else:
            with open(os.path.join(run_dir, "report.json")) as f:
                report = json.load(f)
            if report["static"]["flops"] != static_flops:
                raise StepFailed(f"{run_dir} was built from another static model")
            saved = report["export"]["saved_model"]
            tflite = report["export"]["tflite"] if FLAGS.tflite else None
            prepared[method] = {"report": report}
        models[(method, latency.SAVED_MODEL)] = (latency.SAVED_MODEL, saved)
        if tflite:
            models[(method, latency.TFLITE)] = (latency.TFLITE, tflite)
        if FLAGS.int8:
            if representative is None:
                representative, _ = splits.train.select(
                    np.arange(min(INT8_IMAGES, len(splits.train)))).arrays()
            _say(f"{method}: converting its SavedModel to int8 TFLite ...")
            try:
                models[(method, INT8)] = (latency.TFLITE, export.convert_to_tflite(
                    saved, os.path.join(run_dir, "model_int8.tflite"), quantize="int8",
                    representative_images=representative))
            except ValueError as e:  # a stage none of the images reaches: no int8 model
                int8_errors[method] = str(e)
                _say(f"{method}: no int8 model: {e}")
    _say(f"measuring: {len(models)} exported models of {', '.join(names)}, batch 1, one "
         f"image at a time over {len(images)} test images, in turns ...")
    timed = latency.time_models(
        models, images, FLAGS.latency_warmup, FLAGS.latency_threads
    )
    batched = {}
    if FLAGS.batch64 and len(images) >= 64:
        _say(f"measuring: the {len(names)} SavedModels on batches of 64 test images, in "
             "turns ...")
        batched = latency.time_saved_model_batches(
            {m: models[(m, latency.SAVED_MODEL)][1] for m in names},
            np.concatenate(images), batch_size=64)
    timings = {}
    if os.path.exists(_timings_path()):
        with open(_timings_path()) as f:
            timings = json.load(f)
    records = {}
    for method in names:
        stats = timed[(method, latency.SAVED_MODEL)]
        exit_stages = stats.pop("exit_stages")
        stats.pop("predictions")
        tflite_stats = timed.get((method, latency.TFLITE))
        if tflite_stats is not None:
            tflite_stats.pop("exit_stages")
            tflite_stats.pop("predictions")
        info = prepared[method]
        if "report" in info:
            record = benchmark.dynamic_record(
                info["report"], latency=stats, exit_stages=exit_stages,
                tflite_latency=tflite_stats,
            )
        else:
            record = benchmark.static_record(
                accuracy=info["accuracy"], flops=info["flops"], latency=stats,
                tflite_latency=tflite_stats, train_seconds=info["train_seconds"],
            )
        int8 = timed.get((method, INT8))
        if int8 is not None:
            record.update(benchmark.int8_record(int8, labels, len(record["exit_fractions"])))
        elif method in int8_errors:
            record["int8_error"] = int8_errors[method]
        record["step_seconds"] = timings.get(method)
        record["saved_model_b64_ms"] = (
            batched[method]["mean_ms_per_image"] if method in batched else None)
        records[method] = record
        _say(f"{method}: accuracy {record['accuracy']:.4f}, "
             f"{record['avg_flops'] / 1e6:.2f} MFLOPs, SavedModel {record['latency_ms']:.3f} "
             f"ms/image" + ("" if record.get("tflite_latency_ms") is None
                            else f", TFLite {record['tflite_latency_ms']:.3f} ms/image")
             + ("" if record.get("int8_accuracy") is None
                else f", int8 TFLite {record['int8_accuracy']:.4f} at "
                     f"{record['int8_latency_ms']:.3f} ms/image"))
    benchmark.write_cached_records(cache, key, records)
    return records


def main(argv):
    del argv
    unknown = sorted(set(FLAGS.methods) - set(_methods()))
    if unknown:
        return cli_common.usage_error(
            f"--methods accepts {', '.join(_methods())}. Received: {', '.join(unknown)}"
        )
    if "s2dnas_rl_flops" in FLAGS.methods and FLAGS.cost == "flops":
        return cli_common.usage_error(
            "s2dnas_rl_flops is s2dnas_rl searched for FLOPs, to compare with the time search "
            "of --cost=tflite or saved_model; with --cost=flops it is s2dnas_rl. Received: "
            "--cost=flops")
    if "thin_matched" in FLAGS.methods and "s2dnas_rl" not in FLAGS.methods:
        return cli_common.usage_error(
            "thin_matched is matched to s2dnas_rl's time: list s2dnas_rl in --methods too. "
            f"Received: --methods={','.join(FLAGS.methods)}")
    # TensorFlow's op pools sized for timing before its first op (latency.set_tf_threads).
    cli_common.start_tensorflow(None, threads=FLAGS.latency_threads)
    out = FLAGS.output_dir
    os.makedirs(out, exist_ok=True)
    start = time.time()
    # `kill` (SIGTERM) unwinds like Ctrl-C, so the running step's process is stopped too
    # (`_wait` terminates it when interrupted) instead of running on orphaned.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    from s2dnas_tf import benchmark, count_flops, data, fileio, latency

    try:
        splits = data.load_dataset(cli_common.data_config(
            {**FLAGS.flag_values_dict(), "per_class_limit": _per_class_limit()}
        ))
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as e:
        return cli_common.usage_error(str(e))
    _say(f"data: {splits!r}")

    # The static model: the given checkpoint if it was trained on these images, else here.
    base_path, info, why = _usable_base_model()
    if base_path:
        _say(f"static: {base_path} ({why})")
        recipe = info["train"]
    else:
        _say(f"static: training {FLAGS.model} here ({why})")
        recipe = {"model": FLAGS.model, "epochs": FLAGS.base_epochs,
                  "learning_rate": FLAGS.base_learning_rate, "augment": FLAGS.dataset not in data.DIGITS_DATASETS}
        base_path = os.path.join(out, "static", "model.keras")
        if not os.path.isfile(base_path):
            try:
                seconds = _run("static", *_static_step("static", recipe))
            except StepFailed as e:
                print(f"benchmark.py: {e}", file=sys.stderr)
                return 1
            _record_seconds("static", seconds)
    import keras

    static_flops = count_flops(keras.saving.load_model(base_path))
    try:
        _train_steps(base_path, recipe)
    except SettingsChanged as e:
        return cli_common.usage_error(str(e))
    except StepFailed as e:
        print(f"benchmark.py: {e}", file=sys.stderr)
        return 1

    # Every model timed the same way, on the same images, all of them in turns.
    x, labels = splits.test.head(FLAGS.latency_images or None).arrays()
    images = latency.batch1_images(x)
    names = ["static"] + [m for m in _requested_methods() if m != "static"]
    try:
        methods = _measure_all(names, base_path, splits, images, labels, static_flops)
    except StepFailed as e:
        print(f"benchmark.py: {e}", file=sys.stderr)
        return 1

    results = {
        "title": f"{recipe['model']} on {splits.name} ({FLAGS.data_dir or FLAGS.dataset})",
        "command": "python experiments/benchmark.py " + " ".join(
            shlex.quote(a) for a in sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": benchmark.machine_description(),
        "data": (f"{len(splits.train)} training + {len(splits.val)} validation images "
                 f"({'all' if not _per_class_limit() else f'first {_per_class_limit()}'} per "
                 f"class, validation held out of them), {len(splits.test)} test images; "
                 f"latency over {len(images)} test images, batch 1, "
                 f"{FLAGS.latency_threads} thread(s)"),
        "setup": (f"static: {recipe['model']} {recipe['epochs']} epochs lr "
                  f"{recipe['learning_rate']}; thin_static: width {FLAGS.thin_width}, same "
                  f"recipe; dynamic methods: {FLAGS.num_stages} stages/exits, {FLAGS.epochs} "
                  f"epochs lr {FLAGS.learning_rate} from the "
                  + ("static" if FLAGS.dynamic_from == "static" else "static_ft")
                  + f" weights, distillation "
                  f"weight {FLAGS.distill_weight} T {FLAGS.distill_temperature}, thresholds "
                  f"for {FLAGS.flops_budget:.0%} FLOPs on validation; searches: "
                  f"{FLAGS.num_candidates} candidates "
                  + (f"scored from a supernet of {FLAGS.supernet_epochs} epochs, "
                     if FLAGS.evaluator == "supernet" else
                     f"of {FLAGS.candidate_steps} fine-tuning steps, ")
                  + f"{FLAGS.search_batch_size} per controller update"
                  + (f", first stage <= {FLAGS.max_first_stage_flops:.0%} of the static FLOPs"
                     if FLAGS.max_first_stage_flops is not None else "")
                  + (f"; S2DNAS channel counts multiples of {FLAGS.channel_multiple}"
                     if FLAGS.channel_multiple != 1 else "")
                  + ("; S2DNAS stages may skip identity blocks" if FLAGS.block_skipping else "")
                  + (f"; S2DNAS search reward and thresholds for {FLAGS.latency_budget:.0%} "
                     f"of the static model's predicted {FLAGS.cost} time"
                     if FLAGS.cost != "flops" else "")),
        "static_flops": static_flops,
        "methods": methods,
    }
    results["goals"] = benchmark.evaluate_goals(methods, flops_ratio=FLAGS.flops_budget)
    timings_path = _timings_path()
    if os.path.exists(timings_path):
        with open(timings_path) as f:
            results["step_seconds"] = json.load(f)
    name = FLAGS.results_name or f"{FLAGS.dataset}_{recipe['model']}"
    os.makedirs(FLAGS.results_dir, exist_ok=True)
    base = os.path.join(FLAGS.results_dir, name)
    fileio.write_json(base + ".json", results)
    markdown = benchmark.to_markdown(results)
    fileio.write_text(base + ".md", markdown)
    benchmark.plot(results, base + ".png")
    print(markdown, flush=True)
    _say(f"wrote {base}.json, .md and .png ({time.time() - start:.0f} s in this invocation)")
    return 0


def _methods():
    from s2dnas_tf.benchmark import METHODS

    return METHODS


if __name__ == "__main__":
    cli_common.run(main)
