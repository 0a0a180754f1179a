"""Exit-path times of S2DNAS networks at deployment resolution against thin networks of the
same FLOPs (issue 17, item 5): keras.applications MobileNetV2 (alpha 1.0, 224x224, 10
classes, random weights with randomised BatchNorm statistics) and its 3-stage space.

For the default architecture and `space.sample(1)`, `space.sample(2)`, each exit path
(thresholds forcing every image to leave at stage 1, 2 or 3) is exported (SavedModel and
float TFLite) and timed with the static model and plain MobileNetV2s of alpha 0.35, 0.5 and
0.75, all in one run, in turns (`latency.time_models`: TFLite batch 1, one thread;
`latency.time_saved_model_batches`: SavedModel `serving_default`, batches of 16). Ratios
are to the static model. Writes `<results_dir>/latency_mobilenetv2_224.{json,md}`.

    python experiments/latency_mobilenetv2_224.py --work_dir=runs/latency_mnv2 \\
        --results_dir=experiments/results

Exports are kept in --work_dir and reused by a rerun (a stopped run resumes there); the
timing is redone. About 20 minutes on 2 cores.
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
flags.DEFINE_integer("num_images", 48, "Random images timed (batch 1; batches of 16).",
                     lower_bound=16)
flags.DEFINE_integer("threads", 1, "TensorFlow and TFLite threads.", lower_bound=1)
flags.mark_flags_as_required(["work_dir"])
FLAGS = flags.FLAGS

ALPHAS = (0.35, 0.5, 0.75)
SAMPLES = (1, 2)
NEVER = 2.0  # a threshold no confidence reaches: no image exits there


def _export(name, build, thresholds=None):
    """(SavedModel dir, .tflite path) of `build()`, exported once into the work dir."""
    return export_cache.exported(FLAGS.work_dir, name, build, thresholds)


def main(argv):
    del argv
    os.makedirs(FLAGS.work_dir, exist_ok=True)
    import keras
    import numpy as np

    import s2dnas_tf as s2d
    from s2dnas_tf import fileio, latency

    latency.set_tf_threads(FLAGS.threads)
    start = time.time()

    def mobilenet(alpha):
        keras.utils.set_random_seed(0)
        model = keras.applications.MobileNetV2(
            input_shape=(224, 224, 3), alpha=alpha, weights=None, classes=10,
            classifier_activation=None)
        _randomize_bn(model, np.random.default_rng(1))
        return model

    base = mobilenet(1.0)
    static_flops = s2d.count_flops(base)
    space = s2d.SearchSpace.from_model(base, num_stages=3)
    rows, models = [], {"static": _export("static", lambda: base)}
    rows.append({"model": "static", "path": None, "flops_ratio": 1.0})
    for alpha in ALPHAS:
        name = f"thin_{alpha}"
        models[name] = _export(name, lambda a=alpha: mobilenet(a))
        rows.append({"model": name, "path": None,
                     "flops_ratio": s2d.count_flops(mobilenet(alpha)) / static_flops})
    archs = {"default": space.default_arch()}
    archs.update({f"sample{k}": space.sample(k) for k in SAMPLES})
    for arch_name, arch in archs.items():
        net = s2d.transform(base, arch)
        flops = s2d.stage_flops(net)
        for path in (1, 2, 3):
            thresholds = [NEVER if s < path else 0.0 for s in (1, 2)]
            name = f"{arch_name}_exit{path}"
            models[name] = _export(name, lambda n=net: n, thresholds)
            rows.append({"model": arch_name, "path": path, "tokens": list(arch.tokens),
                         "flops_ratio": flops[path - 1] / static_flops})
        print(f"exported {arch_name} ({time.time() - start:.0f} s)", flush=True)

    images = np.random.default_rng(2).uniform(0, 255, (FLAGS.num_images, 224, 224, 3))
    images = images.astype(np.float32)
    names = list(models)
    tflite = latency.time_models(
        {n: (latency.TFLITE, models[n][1]) for n in names}, latency.batch1_images(images),
        warmup=5, threads=FLAGS.threads)
    print(f"timed TFLite batch 1 ({time.time() - start:.0f} s)", flush=True)
    saved = latency.time_saved_model_batches(
        {n: models[n][0] for n in names}, images, batch_size=16, warmup=1)
    print(f"timed SavedModel batch 16 ({time.time() - start:.0f} s)", flush=True)
    static_tflite = tflite["static"]["median_ms"]
    static_saved = saved["static"]["median_ms_per_image"]
    for row, name in zip(rows, names):
        row["tflite_ms"] = tflite[name]["median_ms"]
        row["tflite_ratio"] = row["tflite_ms"] / static_tflite
        row["saved_model_b16_ms_per_image"] = saved[name]["median_ms_per_image"]
        row["saved_model_b16_ratio"] = row["saved_model_b16_ms_per_image"] / static_saved
        row["exits_checked"] = bool(
            row["path"] is None or np.all(tflite[name]["exit_stages"] == row["path"]))
    # The goal's measure: an exit path's time over a plain thin network's time at the same
    # FLOPs, the thin networks' (FLOPs, time) points (and the static model's) interpolated.
    for kind in ("tflite", "saved_model_b16"):
        plain = sorted((r["flops_ratio"], r[f"{kind}_ratio"]) for r in rows if r["path"] is None)
        xs, ys = zip(*plain)
        for row in rows:
            row[f"{kind}_vs_thin"] = row[f"{kind}_ratio"] / float(
                np.interp(row["flops_ratio"], xs, ys))
    if not all(r["exits_checked"] for r in rows):
        print("latency_mobilenetv2_224.py: a forced exit path was not taken", file=sys.stderr)
        return 1
    result = {
        "title": "MobileNetV2 224x224 exit paths vs thin MobileNetV2s (issue 17)",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "setup": (f"keras.applications MobileNetV2 alpha 1.0, 224x224, 10 classes, random "
                  f"weights; 3 stages; {FLAGS.num_images} random images; TFLite batch 1 and "
                  f"SavedModel serving_default batches of 16, {FLAGS.threads} thread(s), "
                  "medians, all models timed in turns in one run"),
        "rows": rows,
        "seconds": time.time() - start,
    }
    os.makedirs(FLAGS.results_dir, exist_ok=True)
    stem = os.path.join(FLAGS.results_dir, "latency_mobilenetv2_224")
    fileio.write_json(stem + ".json", result)
    lines = [f"# {result['title']}", "", result["setup"] + f"; {result['date']}.", "",
             "Ratios to the static model; \"vs thin\": time over a plain thin MobileNetV2's "
             "at the same FLOPs (the thin networks' and the static model's (FLOPs, time) "
             "points, interpolated; below the thinnest one's FLOPs its time is used, which flatters "
             "those paths; issue 17's goal is <= 1.15).", "",
             "| model | exit path | FLOPs ratio | TFLite b1 ratio | TFLite vs thin "
             "| SavedModel b16 ratio | SavedModel b16 vs thin |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['model']} | {r['path'] or '-'} | {r['flops_ratio']:.3f} | "
              f"{r['tflite_ratio']:.2f} | {r['tflite_vs_thin']:.2f} | "
              f"{r['saved_model_b16_ratio']:.2f} | {r['saved_model_b16_vs_thin']:.2f} |"
              for r in rows]
    fileio.write_text(stem + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


def _randomize_bn(model, rng):
    """BatchNorm statistics of a trained-looking model (random weights leave mean 0 and
    variance 1, which makes every layer's output nearly the same)."""
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.5, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))


if __name__ == "__main__":
    app.run(main)
