"""What every experiments/ entry point shares: absl start-up with exit code 2 on bad flags.

absl exits with status 1 when a flag or validator rejects a value; our command-line contract
is status 2 (a usage error) with one line that says what is accepted.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags

USAGE_ERROR = 2


def _parse_flags(argv):
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        prog = os.path.basename(argv[0])
        print(f"{prog}: {e}", file=sys.stderr)
        sys.exit(USAGE_ERROR)


def usage_error(message: str) -> int:
    """Prints one line to stderr and returns the usage-error status for `main` to return."""
    print(f"{os.path.basename(sys.argv[0])}: {message}", file=sys.stderr)
    return USAGE_ERROR


def run(main) -> None:
    app.run(main, flags_parser=_parse_flags)


# --- Flags: defined in one place, every one optional here; entry scripts mark what they need.

FLAGS = flags.FLAGS


def define_channel_multiple_flag() -> None:
    flags.DEFINE_integer(
        "channel_multiple", 1,
        "Every stage's channel count in a unit of C channels is a multiple of gcd(C, this) "
        "(s2dnas_tf.SearchSpace); 8 keeps the stages on the whole channel blocks of TFLite's "
        "kernels; 1: any count.",
    )
    flags.register_validator(
        "channel_multiple", lambda v: v >= 1, "--channel_multiple must be an int >= 1."
    )


def define_data_flags() -> None:
    flags.DEFINE_enum(
        "dataset", "digits", ["digits", "cifar10", "cifar100", "image_folder"],
        "Dataset. digits ships with scikit-learn (no download).",
    )
    flags.DEFINE_string("data_dir", None, "Folder of the dataset (cifar batches / image folder).")
    flags.DEFINE_integer("per_class_limit", None, "Use the first N training images per class.")
    flags.DEFINE_float("validation_fraction", 0.1, "Held out of the training data.")
    flags.register_validator(
        "validation_fraction", lambda v: 0 <= v < 1, "--validation_fraction must be in [0, 1)."
    )
    flags.register_validator(
        "per_class_limit", lambda v: v is None or v >= 1, "--per_class_limit must be >= 1."
    )
    flags.register_validator(
        "data_dir",
        lambda v: v is None or os.path.isdir(v),
        "--data_dir must be an existing folder.",
    )


def define_train_flags() -> None:
    flags.DEFINE_integer("epochs", 30, "Training epochs.")
    flags.DEFINE_integer("batch_size", 128, "Global batch size.")
    flags.DEFINE_float("learning_rate", 0.05, "Peak SGD learning rate (cosine decay).")
    flags.DEFINE_boolean("augment", True, "CIFAR augmentation (pad+crop, flip).")
    flags.DEFINE_enum(
        "strategy", "default", ["default", "mirrored", "multi_worker"],
        "tf.distribute strategy; multi_worker reads TF_CONFIG.",
    )
    flags.DEFINE_integer(
        "logical_cpus", None,
        "Split the CPU into this many logical devices (to run mirrored on one machine).",
    )
    flags.DEFINE_integer("steps_per_epoch", None, "Cap on steps per epoch (quick runs).")
    flags.DEFINE_integer("seed", 0, "Seed for data split, shuffling and initialisation.")
    flags.DEFINE_integer("verbose", 2, "Keras progress output: 0 silent, 1 bar, 2 a line/epoch.")
    for name in ("epochs", "batch_size"):
        flags.register_validator(name, lambda v: v >= 1, f"--{name} must be >= 1.")
    flags.register_validator("learning_rate", lambda v: v > 0, "--learning_rate must be > 0.")


def configure_logical_cpus(count) -> None:
    """Splits the physical CPU into `count` logical devices; must run before TF starts."""
    if not count:
        return
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * count
    )


def data_config():
    from s2dnas_tf import data

    return data.DataConfig(
        name=FLAGS.dataset,
        data_dir=FLAGS.data_dir,
        per_class_limit=FLAGS.per_class_limit,
        validation_fraction=FLAGS.validation_fraction,
        seed=FLAGS.seed,
    )


def run_data_config(config: dict):
    """The DataConfig a finished run used, from its config.json (the resolved flags)."""
    from s2dnas_tf import data

    return data.DataConfig(
        name=config["dataset"],
        data_dir=config.get("data_dir"),
        per_class_limit=config.get("per_class_limit"),
        validation_fraction=config.get("validation_fraction", 0.1),
        seed=config.get("seed", 0),
    )


def train_config(output_dir: str, **overrides):
    from s2dnas_tf import training

    values = dict(
        output_dir=output_dir,
        epochs=FLAGS.epochs,
        batch_size=FLAGS.batch_size,
        learning_rate=FLAGS.learning_rate,
        # The CIFAR crop/flip would shift an 8x8 digit by half its size and mirror glyphs.
        augment=FLAGS.augment and FLAGS.dataset != "digits",
        strategy=FLAGS.strategy,
        steps_per_epoch=FLAGS.steps_per_epoch,
        seed=FLAGS.seed,
        verbose=FLAGS.verbose,
    )
    values.update(overrides)
    return training.TrainConfig(**values)


def write_json(path: str, payload) -> None:
    """Writes JSON atomically (temporary file + rename): never half a file."""
    import json

    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def resolved_flags() -> dict:
    """Every flag of the running script (its own module's and cli_common's), resolved."""
    names = set()
    for module in (sys.argv[0], __name__):
        names.update(f.name for f in FLAGS.get_flags_for_module(module))
    return {name: FLAGS[name].value for name in sorted(names)}
