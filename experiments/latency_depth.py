"""What skipping identity blocks buys in time (issue 17 item 2): exit paths of ResNet-20
(32x32) architectures with and without block skipping, against thin ResNet-20s of the same
FLOPs, on TFLite (batch 1), the SavedModel at batch 1 and the SavedModel at batch 64.

For each architecture (`--tokens_list`, the width and concat tokens of the plain space) and
each skip setting (`--skips_list`: the depth tokens of the block-skipping space, stage 1's
then stage 2's), every exit path (thresholds forcing all images out at stage 1, 2 or 3) is
exported and timed in turns with the static model and thin ResNet-20s
(`--thin_widths`), all in one run (`latency.time_models`, one thread;
`latency.time_saved_model_batches`). Weights are random with randomised BatchNorm
statistics: time does not depend on them. Writes `<results_dir>/latency_depth_resnet20.{json,md}`.

    python experiments/latency_depth.py --work_dir=runs/latency_depth

Exports are kept in --work_dir and reused by a rerun; the timing is redone.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

import export_cache  # noqa: E402

flags.DEFINE_string("work_dir", None, "Where the exported models go (reused by a rerun).")
flags.DEFINE_string("results_dir", "experiments/results", "Where the json/md go.")
flags.DEFINE_multi_string(
    "tokens_list", ["4,1,0,7,6,3,0,0", "2,2,2,4,4,4,0,0"],
    "Width and concat tokens of the plain 3-stage space, one architecture per flag (the "
    "committed benchmark's RL architecture and the space's default).")
flags.DEFINE_multi_string(
    "skips_list", ["0,0,0,0,0,0", "3,2,2,0,0,0", "3,2,2,2,1,1", "3,2,2,3,2,2"],
    "Depth tokens (stage 1's skips per unit group, then stage 2's), one setting per flag.")
flags.DEFINE_list("thin_widths", ["0.25", "0.375", "0.5", "0.75"],
                  "Width multipliers of the thin ResNet-20s.")
flags.DEFINE_integer("num_images", 256, "Random images timed (batch 1; batches of 64).",
                     lower_bound=64)
flags.DEFINE_integer("threads", 1, "TensorFlow and TFLite threads.", lower_bound=1)
flags.DEFINE_integer("chunk", 8, "Images each model runs in a turn before the next model's "
                     "turn (small: a disturbance of a few seconds hits every model alike).",
                     lower_bound=1)
flags.mark_flags_as_required(["work_dir"])
FLAGS = flags.FLAGS

NEVER = 2.0  # a threshold no confidence reaches: no image exits there
KINDS = ("tflite", "saved_model_b1", "saved_model_b64")


def _export(name, build, thresholds=None):
    """(SavedModel dir, .tflite path) of `build()`, exported once into the work dir."""
    return export_cache.exported(FLAGS.work_dir, name, build, thresholds)


def _front(points):
    """The (FLOPs, time) points no other point beats with more FLOPs in less time."""
    front = []
    for flops, ms in sorted(points, reverse=True):
        if not front or ms < front[-1][1]:
            front.append((flops, ms))
    return front[::-1]


def _ints(text):
    try:
        return [int(t) for t in text.split(",")]
    except ValueError:
        return None


def main(argv):
    del argv
    archs = [_ints(t) for t in FLAGS.tokens_list]
    skips = [_ints(t) for t in FLAGS.skips_list]
    if any(a is None or len(a) != 8 for a in archs) or any(
            s is None or len(s) != 6 for s in skips):
        print("latency_depth.py: --tokens_list takes 8 comma-separated ints per "
              "architecture and --skips_list 6; received "
              f"{FLAGS.tokens_list} and {FLAGS.skips_list}", file=sys.stderr)
        return 2
    os.makedirs(FLAGS.work_dir, exist_ok=True)
    import keras
    import numpy as np

    import s2dnas_tf as s2d
    from s2dnas_tf import fileio, latency
    from s2dnas_tf.models import build_model

    latency.set_tf_threads(FLAGS.threads)
    start = time.time()

    def resnet20(width=1.0):
        keras.utils.set_random_seed(0)
        model = build_model("resnet20", num_classes=10, width_multiplier=width)
        rng = np.random.default_rng(1)
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                n = layer.moving_mean.shape[0]
                layer.moving_mean.assign(rng.normal(0, 0.5, n).astype("float32"))
                layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))
        return model

    base = resnet20()
    static_flops = s2d.count_flops(base)
    try:
        space = s2d.SearchSpace.from_model(base, num_stages=3, block_skipping=True)
        chosen = {f"a{i}_s{j}": space.decode(a + s)
                  for i, a in enumerate(archs) for j, s in enumerate(skips)}
    except ValueError as e:
        print(f"latency_depth.py: {e}", file=sys.stderr)
        return 2
    rows, models = [], {"static": _export("static", lambda: base)}
    rows.append({"model": "static", "path": None, "flops_ratio": 1.0})
    for width in FLAGS.thin_widths:
        name = f"thin_{width}"
        models[name] = _export(name, lambda w=float(width): resnet20(w))
        rows.append({"model": name, "path": None,
                     "flops_ratio": s2d.count_flops(resnet20(float(width))) / static_flops})
    for arch_name, arch in chosen.items():
        net = s2d.transform(base, arch)
        flops = s2d.stage_flops(net)
        convs = {}
        for layer in net.layers:
            stage = s2d.rewriter.stage_of_layer(layer.name)
            if stage is not None and isinstance(layer, keras.layers.Conv2D):
                convs[stage] = convs.get(stage, 0) + 1
        for path in (1, 2, 3):
            thresholds = [NEVER if s < path else 0.0 for s in (1, 2)]
            name = f"{arch_name}_exit{path}"
            models[name] = _export(name, lambda n=net: n, thresholds)
            rows.append({"model": arch_name, "path": path, "tokens": list(arch.tokens),
                         "skips": [list(r) for r in arch.skips],
                         "convs": sum(convs.get(s, 0) for s in range(1, path + 1)),
                         "flops_ratio": flops[path - 1] / static_flops})
        print(f"exported {arch_name} ({time.time() - start:.0f} s)", flush=True)

    images = np.random.default_rng(2).uniform(0, 255, (FLAGS.num_images, 32, 32, 3))
    images = images.astype(np.float32)
    names = list(models)
    one = latency.batch1_images(images)
    timed = latency.time_models(
        {**{f"{n}|tflite": (latency.TFLITE, models[n][1]) for n in names},
         **{f"{n}|saved": (latency.SAVED_MODEL, models[n][0]) for n in names}},
        one, warmup=10, threads=FLAGS.threads, chunk=FLAGS.chunk)
    print(f"timed batch 1 ({time.time() - start:.0f} s)", flush=True)
    b64 = latency.time_saved_model_batches(
        {n: models[n][0] for n in names}, images, batch_size=64, warmup=1)
    print(f"timed SavedModel batch 64 ({time.time() - start:.0f} s)", flush=True)
    ms = {"tflite": {n: timed[f"{n}|tflite"]["median_ms"] for n in names},
          "saved_model_b1": {n: timed[f"{n}|saved"]["median_ms"] for n in names},
          "saved_model_b64": {n: b64[n]["median_ms_per_image"] for n in names}}
    for row, name in zip(rows, names):
        for kind in KINDS:
            row[f"{kind}_ms"] = ms[kind][name]
            row[f"{kind}_ratio"] = ms[kind][name] / ms[kind]["static"]
        row["exits_checked"] = bool(
            row["path"] is None
            or (np.all(timed[f"{name}|tflite"]["exit_stages"] == row["path"])
                and np.all(b64[name]["exit_stages"] == row["path"])))
    # An exit path's time over a plain thin network's at the same FLOPs: the thin networks'
    # and the static model's (FLOPs, time) points on their Pareto front (a thin net slower
    # than a wider one, e.g. channel counts off the kernels' blocks, is no reference),
    # interpolated.
    for kind in KINDS:
        plain = _front([(r["flops_ratio"], r[f"{kind}_ratio"])
                        for r in rows if r["path"] is None])
        xs, ys = zip(*plain)
        for row in rows:
            row[f"{kind}_vs_thin"] = row[f"{kind}_ratio"] / float(
                np.interp(row["flops_ratio"], xs, ys))
    if not all(r["exits_checked"] for r in rows):
        print("latency_depth.py: a forced exit path was not taken", file=sys.stderr)
        return 1
    result = {
        "title": "ResNet-20 exit paths with and without block skipping vs thin ResNet-20s "
                 "(issue 17 item 2)",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "setup": (f"ResNet-20 32x32, 10 classes, random weights; 3 stages; "
                  f"{FLAGS.num_images} random images; TFLite and SavedModel serving_batch1 at "
                  "batch 1, SavedModel serving_default at batch 64, "
                  f"{FLAGS.threads} thread(s), medians, all models timed in turns in one run"),
        "architectures": {n: {"tokens": a.tokens, "readable": str(a)} for n, a in chosen.items()},
        "rows": rows,
        "seconds": time.time() - start,
    }
    os.makedirs(FLAGS.results_dir, exist_ok=True)
    stem = os.path.join(FLAGS.results_dir, "latency_depth_resnet20")
    fileio.write_json(stem + ".json", result)
    lines = [f"# {result['title']}", "", result["setup"] + f"; {result['date']}.", "",
             "Ratios to the static model; \"vs thin\": time over a plain thin ResNet-20's at "
             "the same FLOPs (interpolated between the thin networks and the static model on "
             "their Pareto front: a thin net slower than a wider one is left out; below the "
             "thinnest one's FLOPs its time is used, which flatters those paths). Architectures: `aI_sJ` is "
             "--tokens_list I with --skips_list J (stage 1's skips per group, then stage 2's).",
             "", "| model | exit path | skips | convs | FLOPs ratio | TFLite b1 | vs thin "
             "| SavedModel b1 | vs thin | SavedModel b64 | vs thin |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        skip = "-" if r["path"] is None else " / ".join(
            ",".join(str(v) for v in s) for s in r["skips"])
        lines.append(
            f"| {r['model']} | {r['path'] or '-'} | {skip} | {r.get('convs', '-')} | "
            f"{r['flops_ratio']:.3f} | "
            + " | ".join(f"{r[f'{k}_ratio']:.2f} | {r[f'{k}_vs_thin']:.2f}" for k in KINDS)
            + " |")
    fileio.write_text(stem + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    app.run(main)
