"""What the experiments/ entry points share: their flags, the library configs built from them,
and the command-line contract.

Flags are defined here, once each, every one optional, with the default the entry points
share (absl refuses a second definition of a name). An entry point defines the ones it takes
(`define_flags`; a run's whole set with `define_run_flags`), marks what it needs, and where
it needs another default says so with `FLAGS.set_default` (benchmark.py).

Configs: `data_config`, `train_config` and the runs' `train_base_config`, `search_config`,
`train_dynamic_config` build the library's dataclasses from flag values, here and nowhere
else. The benchmark describes each of its steps as the flag values of the run's entry point
(`step_flags`), so that a step is exactly the run the command would make.

The contract: absl exits with status 1 when a flag or validator rejects a value; ours is
status 2 (a usage error) with one line that says what is accepted, for bad flags and for
input the library refuses (`s2dnas_tf.runs.InputError`).
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags
from absl import logging as absl_logging

USAGE_ERROR = 2

FLAGS = flags.FLAGS


def _parse_flags(argv):
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        prog = os.path.basename(argv[0])
        print(f"{prog}: {e}", file=sys.stderr)
        sys.exit(USAGE_ERROR)


def usage_error(message: str, prog: str | None = None) -> int:
    """Prints one line to stderr and returns the usage-error status for `main` to return."""
    print(f"{prog or os.path.basename(sys.argv[0])}: {message}", file=sys.stderr)
    return USAGE_ERROR


def run(main) -> None:
    app.run(main, flags_parser=_parse_flags)


# --- The flags ---------------------------------------------------------------------------------

_DEFINITIONS = {}  # name -> (absl DEFINE function, default, help, its other arguments)
_VALIDATORS = {}  # name -> (checker, message)


def _flag(define, name, default, help, check=None, message=None, **kwargs):
    _DEFINITIONS[name] = (define, default, help, kwargs)
    if check is not None:
        _VALIDATORS[name] = (check, message)


def _at_least(bound):
    return lambda v: v >= bound


def _none_or_at_least(bound):
    return lambda v: v is None or v >= bound


def _fraction(v):
    return v is None or 0 < v <= 1


def _dataset_name(v):
    return v in _DATASETS or (v.startswith("tfds:") and len(v) > len("tfds:"))


def _image_size(v):
    return v is None or (len(v) == 2 and all(d.isdigit() and int(d) >= 1 for d in v))


# The data.
_DATASETS = ("digits", "digits_overlap", "cifar10", "cifar100", "image_folder", "tfrecord")
_flag(flags.DEFINE_string, "dataset", "digits", "Dataset: digits, digits_overlap (both ship "
      "with scikit-learn, no download), cifar10, cifar100, image_folder (data_dir/train/"
      "<class>/*.jpg ...), tfrecord (train/test .tfrecord files in data_dir), or tfds:NAME (a "
      "TFDS dataset prepared in data_dir). The last three stream from their files.",
      _dataset_name, f"--dataset must be one of {', '.join(_DATASETS)} or tfds:NAME.")
_flag(flags.DEFINE_string, "data_dir", None,
      "Folder of the dataset (cifar batches / image folder / TFRecord files / TFDS data_dir).",
      lambda v: v is None or os.path.isdir(v), "--data_dir must be an existing folder.")
_flag(flags.DEFINE_list, "image_size", None,
      "HEIGHT,WIDTH every streamed image (image_folder, tfrecord, tfds) is resized to. "
      "Default: the model's input size, else the images' own (one size for all).",
      _image_size, "--image_size must be two integers >= 1: HEIGHT,WIDTH.")
_flag(flags.DEFINE_boolean, "crop_to_aspect_ratio", True,
      "When resizing, crop the centred window of the target aspect ratio first (no "
      "stretching); --nocrop_to_aspect_ratio stretches the whole image.")
_flag(flags.DEFINE_integer, "per_class_limit", None,
      "Use the first N training images per class.",
      _none_or_at_least(1), "--per_class_limit must be >= 1.")
_flag(flags.DEFINE_float, "validation_fraction", 0.1, "Held out of the training data.",
      lambda v: 0 <= v < 1, "--validation_fraction must be in [0, 1).")
# How to train.
_flag(flags.DEFINE_integer, "epochs", 30, "Training epochs.",
      _at_least(1), "--epochs must be >= 1.")
_flag(flags.DEFINE_integer, "batch_size", 128, "Global batch size.",
      _at_least(1), "--batch_size must be >= 1.")
_flag(flags.DEFINE_float, "learning_rate", 0.05, "Peak SGD learning rate (cosine decay).",
      lambda v: v > 0, "--learning_rate must be > 0.")
_flag(flags.DEFINE_boolean, "augment", True, "CIFAR augmentation (pad+crop, flip).")
_flag(flags.DEFINE_enum, "strategy", "default",
      "tf.distribute strategy; multi_worker reads TF_CONFIG.",
      enum_values=["default", "mirrored", "multi_worker"])
_flag(flags.DEFINE_integer, "logical_cpus", None,
      "Split the CPU into this many logical devices (to run mirrored on one machine).")
_flag(flags.DEFINE_integer, "steps_per_epoch", None, "Cap on steps per epoch (quick runs).",
      _none_or_at_least(1), "--steps_per_epoch must be >= 1.")
_flag(flags.DEFINE_integer, "seed", 0, "Seed for data split, shuffling and initialisation.")
_flag(flags.DEFINE_integer, "verbose", 2,
      "Keras progress output: 0 silent, 1 bar, 2 a line/epoch.")
_flag(flags.DEFINE_float, "distill_weight", 1.0, "Distillation from the static model (0: off).")
_flag(flags.DEFINE_float, "distill_temperature", 4.0, "Distillation temperature.")
# The runs.
_flag(flags.DEFINE_string, "output_dir", None, "Where the run's files go.")
_flag(flags.DEFINE_boolean, "overwrite", False,
      "Start afresh in an output_dir holding a finished run.")
_flag(flags.DEFINE_string, "model", "resnet20", "Reference model name (s2dnas_tf.models).")
_flag(flags.DEFINE_float, "width_multiplier", 1.0, "Channel width multiplier of the model.")
_flag(flags.DEFINE_string, "base_model", None, "A trained static model (.keras).")
_flag(flags.DEFINE_enum, "preprocessing", "none",
      "The keras.applications preprocess_input mode --base_model expects (tf: MobileNet*, "
      "Xception, Inception*; torch: DenseNet; caffe: VGG, ResNet50/101/152), put in front of "
      "it as its first layer so it takes raw pixels; none: it takes raw pixels already.",
      enum_values=["none", "tf", "torch", "caffe"])
_flag(flags.DEFINE_integer, "base_epochs", 30, "Epochs of the base model when trained here.",
      _at_least(1), "--base_epochs must be >= 1.")
_flag(flags.DEFINE_integer, "num_stages", 3, "Number of stages S.",
      _at_least(1), "--num_stages must be >= 1.")
_flag(flags.DEFINE_integer, "channel_multiple", 1,
      "Every stage's channel count in a unit of C channels is a multiple of gcd(C, this) "
      "(s2dnas_tf.SearchSpace); 8 keeps the stages on the whole channel blocks of TFLite's "
      "kernels; 1: any count.",
      _at_least(1), "--channel_multiple must be an int >= 1.")
_flag(flags.DEFINE_boolean, "block_skipping", False,
      "Add a depth decision to the space (s2dnas_tf.SearchSpace): each stage but the last "
      "may skip the last identity blocks (residual blocks with an identity shortcut) of "
      "each unit group, up to as many as the stage before; --tokens then end with the "
      "skips. Fewer layers per stage: what TensorFlow's per-op cost at batch 1 pays for.")
_flag(flags.DEFINE_float, "flops_budget", 0.5,
      "Average-FLOPs budget, a fraction of the static model's.",
      _fraction, "--flops_budget must be in (0, 1].")
_flag(flags.DEFINE_enum, "cost", "flops",
      "What the budget counts: FLOPs, or each exit path's batch-1 time on a runtime, TFLite "
      "(LiteRT, one thread) or saved_model (TensorFlow, as TF Serving runs the SavedModel), "
      "predicted from op times measured once on this machine (s2dnas_tf.cost; with "
      "--latency_budget).",
      enum_values=["flops", "tflite", "saved_model"])
_flag(flags.DEFINE_float, "latency_budget", None,
      "With --cost=tflite or saved_model: the average time budget, a fraction of the static "
      "model's (replaces --flops_budget).",
      _fraction, "--latency_budget must be in (0, 1].")
# The search.
_flag(flags.DEFINE_enum, "searcher", "rl", "REINFORCE controller or random search.",
      enum_values=["rl", "random"])
_flag(flags.DEFINE_integer, "num_candidates", 100,
      "Distinct architectures to evaluate (seconds each from the supernet; with "
      "--evaluator=finetune about a minute each on CIFAR-10 ResNet-20).",
      _at_least(1), "--num_candidates must be >= 1.")
_flag(flags.DEFINE_integer, "search_batch_size", 4, "Architectures per controller update.",
      _at_least(1), "--search_batch_size must be >= 1.")
_flag(flags.DEFINE_enum, "reward", "budget", "Reward of a candidate (docs/design.md §5).",
      enum_values=["budget", "linear"])
_flag(flags.DEFINE_float, "flops_lambda", 0.5, "lambda of --reward=linear.",
      _at_least(0), "--flops_lambda must be >= 0.")
_flag(flags.DEFINE_float, "max_first_stage_flops", None,
      "Only search architectures whose first stage costs at most this fraction of the "
      "static model's FLOPs (e.g. half of --flops_budget); unset: no cap.",
      _fraction,
      "--max_first_stage_flops must be in (0, 1] (a fraction of the static model's FLOPs).")
_flag(flags.DEFINE_boolean, "reject_idle_stages", False,
      "Only search architectures in which every stage adds channels where the classifier "
      "reads (SearchSpace.idle_stages); otherwise a stage can end up repeating an earlier "
      "exit, which a channel multiple makes common.")
_flag(flags.DEFINE_integer, "candidate_epochs", 1, "Fine-tuning epochs per candidate.",
      _at_least(1), "--candidate_epochs must be >= 1.")
_flag(flags.DEFINE_integer, "candidate_steps", None,
      "Cap on fine-tuning steps per candidate epoch.",
      _none_or_at_least(1), "--candidate_steps must be >= 1.")
_flag(flags.DEFINE_float, "candidate_learning_rate", 0.01,
      "Learning rate of the candidates' fine-tune.")
_flag(flags.DEFINE_float, "candidate_bn_momentum", 0.9,
      "BatchNorm momentum while a candidate is fine-tuned, so its statistics catch up.")
_flag(flags.DEFINE_enum, "evaluator", "supernet",
      "How a candidate is scored: 'supernet' (a weight-sharing supernet trained once, "
      "--supernet_epochs, kept in <output_dir>/supernet; seconds per candidate, and the "
      "chosen net starts from its weights) or 'finetune' (a short fine-tune of each "
      "candidate from the static model's weights, --candidate_*; about a minute each on "
      "CIFAR-10 ResNet-20, for a search of tens of candidates).",
      enum_values=["finetune", "supernet"])
_flag(flags.DEFINE_integer, "supernet_epochs", 5, "Training epochs of the supernet.",
      _at_least(1), "--supernet_epochs must be >= 1.")
_flag(flags.DEFINE_float, "supernet_learning_rate", 0.02,
      "Peak learning rate of the supernet's training.")
_flag(flags.DEFINE_boolean, "deterministic", True,
      "TensorFlow op determinism (same seed, same run).")
_flag(flags.DEFINE_string, "export_name", None,
      "Model name of the SavedModel (saved_model/<name>/1/); default: the base model's name.")
_flag(flags.DEFINE_boolean, "stop_after_search", False,
      "Stop once arch.json is written (compare searchers without training each winner).")
# One architecture without search.
_flag(flags.DEFINE_list, "tokens", None,
      "Architecture tokens (comma-separated ints); default: the space's default arch.")
_flag(flags.DEFINE_boolean, "early_exit", False,
      "The early-exit baseline instead of an S2DNAS architecture: an exit classifier after "
      "each of --num_stages resolution stages of the static model (s2dnas_tf.early_exit), "
      "trained with the backbone; --tokens must then be unset.")
_flag(flags.DEFINE_list, "stage_weights", None, "Loss weight per stage (default all 1).")
# Reading a finished run.
_flag(flags.DEFINE_string, "run_dir", None,
      "A finished search.py / train_dynamic.py output directory.",
      lambda v: v is None or os.path.isfile(os.path.join(v, "report.json")),
      "--run_dir must be a finished run directory (holding report.json).")
_flag(flags.DEFINE_integer, "num_images", None, "Use the first N test images (default: all).",
      _none_or_at_least(1), "--num_images must be >= 1.")


def define_flags(*names: str, flag_values=FLAGS, helps=None) -> None:
    """Defines the named flags (with their validators) on `flag_values`.

    Args:
        *names: Names of the flags above.
        flag_values: Where to define them (a fresh `flags.FlagValues` for a benchmark step).
        helps: Help texts of this entry point for some of them, by name (the meaning
            stays: same type, default and validator).
    """
    for name in names:
        define, default, help_text, kwargs = _DEFINITIONS[name]
        help_text = (helps or {}).get(name, help_text)
        define(name, default, help=help_text, flag_values=flag_values, **kwargs)
        if name in _VALIDATORS:
            check, message = _VALIDATORS[name]
            flags.register_validator(name, check, message, flag_values=flag_values)


DATA_FLAGS = ("dataset", "data_dir", "per_class_limit", "validation_fraction", "image_size",
              "crop_to_aspect_ratio")
TRAIN_FLAGS = ("epochs", "batch_size", "learning_rate", "augment", "strategy", "logical_cpus",
               "steps_per_epoch", "seed", "verbose")
# Each run's entry point takes exactly these.
RUN_FLAGS = {
    "train_base": DATA_FLAGS + TRAIN_FLAGS + ("model", "width_multiplier", "output_dir",
                                              "overwrite"),
    "search": DATA_FLAGS + TRAIN_FLAGS + (
        "base_model", "preprocessing", "model", "base_epochs", "num_stages",
        "channel_multiple", "block_skipping", "searcher",
        "num_candidates", "search_batch_size", "reward", "flops_budget", "cost",
        "latency_budget", "flops_lambda", "max_first_stage_flops", "reject_idle_stages", "evaluator", "supernet_epochs",
        "supernet_learning_rate", "candidate_epochs", "candidate_steps",
        "candidate_learning_rate", "candidate_bn_momentum", "distill_weight",
        "distill_temperature", "deterministic", "output_dir", "overwrite", "export_name",
        "stop_after_search",
    ),
    "train_dynamic": DATA_FLAGS + TRAIN_FLAGS + (
        "base_model", "preprocessing", "num_stages", "channel_multiple", "block_skipping",
        "tokens", "early_exit",
        "flops_budget", "cost", "latency_budget", "stage_weights", "distill_weight", "distill_temperature",
        "output_dir", "overwrite",
    ),
}


def define_run_flags(kind: str, flag_values=FLAGS, helps=None) -> None:
    """Defines the flags of a run's entry point (`RUN_FLAGS[kind]`, with `define_flags`'s
    `helps`); a given --base_model must exist."""
    define_flags(*RUN_FLAGS[kind], flag_values=flag_values, helps=helps)
    if "base_model" in RUN_FLAGS[kind]:
        flags.register_validator(
            "base_model", lambda v: v is None or os.path.isfile(v),
            "--base_model must be an existing .keras file.", flag_values=flag_values,
        )
    if "cost" in RUN_FLAGS[kind]:
        register_budget_validator(flag_values)


def register_budget_validator(flag_values=FLAGS) -> None:
    """--cost, --latency_budget and --flops_budget must agree (`budget`): refused at
    parsing, before TensorFlow loads."""
    flags.register_multi_flags_validator(
        ["cost", "latency_budget", "flops_budget"], _budget_flags_agree,
        flag_values=flag_values,
    )


def _budget_flags_agree(values: dict) -> bool:
    try:
        budget(values)
    except ValueError as e:
        raise flags.ValidationError(str(e)) from None
    return True


def step_flags(kind: str, values=None, args=None) -> "flags.FlagValues":
    """The flags of run `kind`'s entry point, apart from the process's own: the defaults
    with `values` (a dict, name -> value) set, or parsed from command-line `args`.

    Raises:
        flags.Error: If `args` do not parse, or a value is refused by a validator.
    """
    flag_values = flags.FlagValues()
    define_run_flags(kind, flag_values)
    if args is not None:
        flag_values([kind, *args])
    else:
        flag_values.mark_as_parsed()
        for name, value in (values or {}).items():
            if name not in flag_values:
                raise flags.UnrecognizedFlagError(name, str(value))
            # Set together, then checked together: a multi-flag validator (the budget
            # flags') must not see one flag set and its partner not yet.
            flag_values[name].value = value
        flag_values.validate_all_flags()
    return flag_values


def flag_dict(flag_values) -> dict:
    """Every flag of `flag_values` (a `step_flags` result), name -> value."""
    return {name: flag_values[name].value for name in sorted(flag_values)}


def resolved_flags() -> dict:
    """Every flag of the running script (its own module's and cli_common's), resolved."""
    names = set()
    for module in (sys.argv[0], __name__):
        names.update(f.name for f in FLAGS.get_flags_for_module(module))
    return {name: FLAGS[name].value for name in sorted(names)}


def _no_retracing_notice(record) -> bool:
    """Drops TensorFlow's "N out of the last M calls ... triggered tf.function retracing"
    warning. It is meant for a loop that creates tf.functions by mistake; the tools predict
    with a new Keras model per candidate and per stage by design, each with its own predict
    function, and the notice would only alarm users."""
    return "triggered tf.function retracing" not in record.getMessage()


def start_tensorflow(count, threads: int | None = None) -> None:
    """Starts TensorFlow, its CPU split into `count` logical devices (none: as it is) and,
    with `threads`, its op pools that size (`latency.set_tf_threads`' setting).

    Call it first in a `main`, before anything imports TensorFlow. The native start-up lines
    (oneDNN, CUDA probing, absl's "before InitializeLog" notice) are written by C++ code
    before TF_CPP_MIN_LOG_LEVEL applies; file descriptor 2 goes to /dev/null while TensorFlow
    loads and its runtime starts, so a default run's terminal shows the run's own output.
    Python exceptions are not lost: they propagate once the descriptor is restored. A
    multi-worker process (TF_CONFIG set) must create its strategy before the runtime starts,
    so there only the import is quiet.
    """
    saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    sys.stderr.flush()
    os.dup2(null, 2)
    try:
        import tensorflow as tf

        if count:
            cpus = tf.config.list_physical_devices("CPU")
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration()] * count
            )
        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        if not os.environ.get("TF_CONFIG"):
            tf.config.list_logical_devices()  # starts the runtime (and its CUDA probe) now
        # TensorFlow's Python INFO lines (SavedModel writing, signature renames) too; some of
        # its modules log through absl directly.
        tf.get_logger().setLevel("WARNING")
        tf.get_logger().addFilter(_no_retracing_notice)
        absl_logging.set_verbosity(absl_logging.WARNING)
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


# --- Configs from flag values (a dict, name -> value: FLAGS.flag_values_dict(), a
# `flag_dict`, or a run's config.json) ------------------------------------------------------


def data_config(values):
    """The DataConfig of the data flags."""
    from s2dnas_tf import data

    size = values.get("image_size")
    return data.DataConfig(
        name=values["dataset"],
        data_dir=values.get("data_dir"),
        per_class_limit=values.get("per_class_limit"),
        validation_fraction=values.get("validation_fraction", 0.1),
        seed=values.get("seed", 0),
        image_size=tuple(int(d) for d in size) if size else None,
        crop_to_aspect_ratio=values.get("crop_to_aspect_ratio", True),
    )


def run_data_config(config: dict):
    """The DataConfig a finished run used, from its config.json: the resolved flags of the
    command that made it, or (a run made from Python) the run's config."""
    if isinstance(config.get("data"), dict):
        from s2dnas_tf import data

        return data.DataConfig(**config["data"])
    return data_config(config)


def train_config(values, **overrides):
    """The TrainConfig of the training flags, with `overrides` (its output_dir is the
    run's to set)."""
    from s2dnas_tf import data, training

    fields = dict(
        epochs=values["epochs"],
        batch_size=values["batch_size"],
        learning_rate=values["learning_rate"],
        augment=values["augment"] and values["dataset"] not in data.DIGITS_DATASETS,
        strategy=values["strategy"],
        steps_per_epoch=values["steps_per_epoch"],
        seed=values["seed"],
        verbose=values["verbose"],
    )
    fields.update(overrides)
    return training.TrainConfig(**fields)


def train_base_config(values):
    from s2dnas_tf import runs

    return runs.TrainBaseConfig(
        output_dir=values["output_dir"],
        data=data_config(values),
        train=train_config(values),
        model=values["model"],
        width_multiplier=values["width_multiplier"],
        overwrite=values["overwrite"],
    )


def budget(values) -> tuple[str, float]:
    """(cost, budget ratio) of the --cost, --flops_budget and --latency_budget flags.

    Raises:
        ValueError: For a time --cost without --latency_budget, or --latency_budget without
            a time cost.
    """
    cost, latency = values.get("cost", "flops"), values.get("latency_budget")
    if cost == "flops":
        if latency is not None:
            raise ValueError("--latency_budget applies with --cost=tflite or saved_model; with "
                             "--cost=flops "
                             f"the budget is --flops_budget. Received: --latency_budget={latency}")
        return cost, values["flops_budget"]
    if latency is None:
        raise ValueError(f"--cost={cost} needs --latency_budget (a fraction of the static "
                         "model's time, e.g. 0.6).")
    return cost, latency


def search_config(values):
    """Raises ValueError for inconsistent budget flags (`budget`)."""
    from s2dnas_tf import runs, search

    cost, budget_ratio = budget(values)

    distill = dict(distill_weight=values["distill_weight"],
                   distill_temperature=values["distill_temperature"])
    return runs.SearchRunConfig(
        output_dir=values["output_dir"],
        data=data_config(values),
        base_model=values["base_model"],
        preprocessing=values.get("preprocessing", "none"),
        model=values["model"],
        base_train=train_config(values, epochs=values["base_epochs"]),
        num_stages=values["num_stages"],
        channel_multiple=values["channel_multiple"],
        block_skipping=values["block_skipping"],
        search=search.SearchConfig(
            searcher=values["searcher"],
            num_candidates=values["num_candidates"],
            batch_size=values["search_batch_size"],
            seed=values["seed"],
            reject_idle_stages=values["reject_idle_stages"],
        ),
        reward=search.RewardConfig(
            kind=values["reward"],
            flops_budget=budget_ratio,
            flops_lambda=values["flops_lambda"],
            cost=cost,
        ),
        max_first_stage_flops=values["max_first_stage_flops"],
        candidate_train=train_config(
            values,
            epochs=values["candidate_epochs"],
            steps_per_epoch=values["candidate_steps"],
            learning_rate=values["candidate_learning_rate"],
            bn_momentum=values["candidate_bn_momentum"],
            verbose=0,
            ephemeral=True,  # used once for its reward: no in-fit validation, no checkpoints
            **distill,
        ),
        evaluator=values["evaluator"],
        supernet_train=train_config(
            values,
            epochs=values["supernet_epochs"],
            learning_rate=values["supernet_learning_rate"],
            **distill,
        ),
        final_train=train_config(values, **distill),
        deterministic=values["deterministic"],
        overwrite=values["overwrite"],
        export_name=values["export_name"],
        stop_after_search=values["stop_after_search"],
    )


def train_dynamic_config(values):
    """Raises ValueError if --tokens or --stage_weights are not numbers, or for
    inconsistent budget flags (`budget`)."""
    from s2dnas_tf import runs

    cost, budget_ratio = budget(values)
    tokens, weights = values["tokens"], values["stage_weights"]
    try:
        tokens = [int(t) for t in tokens] if tokens else None
        weights = [float(w) for w in weights] if weights else None
    except ValueError as e:
        raise ValueError(
            f"--tokens must be ints and --stage_weights numbers ({e}). Received: "
            f"--tokens={values['tokens']}, --stage_weights={values['stage_weights']}"
        ) from None
    return runs.TrainDynamicConfig(
        output_dir=values["output_dir"],
        base_model=values["base_model"],
        preprocessing=values.get("preprocessing", "none"),
        data=data_config(values),
        num_stages=values["num_stages"],
        channel_multiple=values["channel_multiple"],
        block_skipping=values["block_skipping"],
        tokens=tokens,
        early_exit=values["early_exit"],
        flops_budget=budget_ratio,
        cost=cost,
        train=train_config(
            values,
            stage_weights=weights,
            distill_weight=values["distill_weight"],
            distill_temperature=values["distill_temperature"],
        ),
        overwrite=values["overwrite"],
    )


RUN_CONFIGS = {"train_base": train_base_config, "search": search_config,
               "train_dynamic": train_dynamic_config}


def run_step(kind: str):
    """The library function of run `kind` (s2dnas_tf.runs)."""
    from s2dnas_tf import runs

    return {"train_base": runs.train_base, "search": runs.run_search,
            "train_dynamic": runs.train_dynamic}[kind]


# --- Calling the library -------------------------------------------------------------------


def call(step, config, *, settings=None, prog=None, **kwargs) -> int:
    """Runs a library step (`s2dnas_tf.runs`, with `kwargs`) for an entry point and returns
    its exit status: 0 when done; 2 with one line when the library refuses the input; 1 with
    one line when a training diverges. Other errors keep their traceback."""
    from s2dnas_tf import runs, training

    try:
        step(config, settings=settings, **kwargs)
    except runs.FinishedRunError as e:
        return usage_error(f"{e}; pass --overwrite to start afresh.", prog)
    except runs.InputError as e:
        return usage_error(str(e), prog)
    except training.TrainingDivergedError as e:
        print(f"{prog or os.path.basename(sys.argv[0])}: {e}", file=sys.stderr)
        return 1
    return 0


def call_and_exit(kind: str, config, settings, prog: str) -> None:
    """A child process's whole work (benchmark.py's steps): run step `kind`, exit with its
    status."""
    start_tensorflow(None)  # TensorFlow starts quietly here too
    sys.exit(call(run_step(kind), config, settings=settings, prog=prog))
