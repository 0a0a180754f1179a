"""Side measurement (experiments/results/README.md, "Channel multiple"): the benchmark's
chosen S2DNAS architectures (and the space's default) built with --channel_multiple 1 and 8
from the shipped static checkpoint (inherited weights, not trained further: time and FLOPs do
not depend on training), exported, converted to float TFLite and timed in turns, batch 1,
one thread, per exit path. Run from the repository root:
    PYTHONPATH=. python experiments/results/side/channel_multiple_tflite.py 2000"""
import os
import sys

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import keras
import numpy as np

import s2dnas_tf as s2d
from s2dnas_tf import export, latency

archs = {
    "rl": [4, 1, 0, 7, 6, 3, 0, 0],  # the committed run's choices (cifar10_resnet20.json)
    "random": [5, 1, 0, 5, 2, 3, 0, 1],
    "default": None,
}
out = "/tmp/channel_multiple"
base = keras.saving.load_model("experiments/checkpoints/cifar10_resnet20.keras")
static = s2d.count_flops(base)
models, info = {}, {}
for multiple in (1, 8):
    space = s2d.SearchSpace.from_model(base, num_stages=3, channel_multiple=multiple)
    for name, tokens in archs.items():
        arch = space.decode(tokens) if tokens else space.default_arch()
        net = s2d.transform(base, arch)
        bounds = space.unit_bounds(arch)
        widths = [
            [b[s + 1] - b[s] for s in range(3)]
            for b in (bounds[0], bounds[4], bounds[8])  # first unit of each group
        ]
        flops = [f / static for f in s2d.stage_flops(net)]  # cumulative: each exit path
        # One model per exit path: thresholds 0 send every image out of stage 1, thresholds
        # above 1 keep every image going (the inherited weights are not calibrated).
        for stop, thresholds in ((1, [0.0, 0.0]), (2, [2.0, 0.0]), (3, [2.0, 2.0])):
            where = f"{out}/{name}_m{multiple}_exit{stop}"
            saved = export.export_saved_model(net, thresholds, where, "net", overwrite=True)
            tfl = export.convert_to_tflite(saved, f"{where}/model.tflite")
            models[(name, multiple, stop)] = (latency.TFLITE, tfl)
        info[(name, multiple)] = (arch.tokens, widths, flops)
n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
from s2dnas_tf import data  # noqa: E402

splits = data.load_dataset(data.DataConfig(
    "image_folder", "../shared/data/cifar10-jpeg", per_class_limit=50, validation_fraction=0
))
x, _ = splits.test.head(n).arrays()  # the image folder streams
timed = latency.time_models(models, latency.batch1_images(x), 20, 1)
print("arch, channel multiple: tokens; stage channels per group (32x32 16x16 8x8); FLOPs of "
      "each exit path (x static); TFLite mean ms of each exit path")
for (name, multiple), (tokens, widths, flops) in info.items():
    ms = [timed[(name, multiple, stop)]["mean_ms"] for stop in (1, 2, 3)]
    for stop in (1, 2, 3):
        exits = timed[(name, multiple, stop)]["exit_stages"]
        assert (exits == stop).all(), (name, multiple, stop, np.unique(exits))
    print(f"{name} m={multiple}: tokens {tokens}; channels {widths}; FLOPs "
          f"{' / '.join(f'{f:.3f}' for f in flops)}; TFLite "
          f"{' / '.join(f'{m:.3f}' for m in ms)} ms; ms per static-FLOP "
          f"{' / '.join(f'{m / f:.2f}' for m, f in zip(ms, flops))}")
