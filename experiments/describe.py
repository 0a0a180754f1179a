"""Builds the multi-stage network of a model and prints its space, architecture and FLOPs.

    python experiments/describe.py --model=resnet20 --num_stages=3
    python experiments/describe.py --model=path/to/model.keras --tokens=2,2,2,4,4,4,0,0

`--model` is a name from the reference zoo or a `.keras` file. Without `--tokens` or `--seed`
the space's default architecture is used. Also checks that the 1-stage transform reproduces
the original logits on random images.
"""

import os

import cli_common  # sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads
from absl import flags

FLAGS = flags.FLAGS
cli_common.define_flags("model", "num_stages", "channel_multiple", "block_skipping", "tokens",
                        "seed", helps={
    "model": "Reference model name, or a path to a .keras file.",
    "tokens": "Architecture tokens (comma-separated ints).",
    "seed": "Sample an architecture with this seed instead.",
})
FLAGS.set_default("seed", None)  # unset: the default architecture, not a sample
flags.DEFINE_integer("num_classes", 10, "Classes, for reference models.")


def main(argv):
    del argv
    cli_common.start_tensorflow(None)
    import keras
    import numpy as np

    import s2dnas_tf as s2d
    from s2dnas_tf.models import build_model, list_models

    if FLAGS.model.endswith(".keras"):
        if not os.path.isfile(FLAGS.model):
            return cli_common.usage_error(f"--model file {FLAGS.model!r} does not exist.")
        model = keras.saving.load_model(FLAGS.model)
    elif FLAGS.model in list_models():
        model = build_model(FLAGS.model, num_classes=FLAGS.num_classes)
    else:
        return cli_common.usage_error(
            f"--model must be one of {list_models()} or a .keras file. Received: {FLAGS.model!r}"
        )
    try:
        space = s2d.SearchSpace.from_model(
            model, num_stages=FLAGS.num_stages, channel_multiple=FLAGS.channel_multiple,
            block_skipping=FLAGS.block_skipping,
        )
        if FLAGS.tokens:
            arch = space.decode([int(t) for t in FLAGS.tokens])
        elif FLAGS.seed is not None:
            arch = space.sample(FLAGS.seed)
        else:
            arch = space.default_arch()
    except (TypeError, ValueError) as e:
        return cli_common.usage_error(str(e))
    print(space.describe())
    print(f"tokens: {arch.tokens}")
    print(arch)
    print(space.channel_table(arch))
    net = s2d.transform(model, arch)
    static = s2d.count_flops(model)
    print(f"static FLOPs (MACs): {static:,}")
    for stage, flops in enumerate(s2d.stage_flops(net), start=1):
        print(f"  stage {stage}: cumulative {flops:,} ({flops / static:.1%} of static)")
    x = np.random.default_rng(0).random((2,) + tuple(model.inputs[0].shape[1:]), "float32")
    one = s2d.transform(model, s2d.SearchSpace.from_model(model, num_stages=1).default_arch())
    err = float(np.abs(np.asarray(one(x)[0]) - np.asarray(model(x))).max())
    print(f"S=1 reproduces the original: max abs logit difference {err:.2e}")
    return 0


if __name__ == "__main__":
    cli_common.run(main)
