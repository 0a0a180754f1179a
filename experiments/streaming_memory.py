"""Peak memory of a whole search.py run on a streamed image folder, at two dataset sizes
(issue 21): memory must stay bounded, so the large set should need about what the small one
does.

Each size is one `experiments/search.py` run (a separate process) on an image folder of
mixed-size JPEGs (`experiments/make_image_folder.py`), with a 224x224 MobileNetV2
(alpha 0.35, random weights, 10 classes) as `--base_model` and `--preprocessing=tf`:
the scan of every file, a short search (fine-tuned candidates), one epoch of training of the
chosen network, calibration on the streamed validation outputs, the test report and the
SavedModel/TFLite export. The run logs its peak resident memory (`ru_maxrss`); this script
collects it with the wall time and writes `<output_dir>/streaming_memory.{json,md}`.

    python experiments/streaming_memory.py --data_dir=runs/photos50k \\
        --output_dir=runs/streaming_memory --per_class=500,5000

Resumable: a size whose run finished (report.json) is read back, not rerun.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("data_dir", None, "The image folder (train/<class>/..., test/<class>/...).")
flags.DEFINE_string("output_dir", None, "Where the runs and the results go.")
flags.DEFINE_list("per_class", ["500", "5000"], "Training images per class of each run.")
flags.DEFINE_integer("batch_size", 64, "Batch size of every training.", lower_bound=1)
flags.DEFINE_integer("num_candidates", 2, "Architectures the search evaluates.", lower_bound=1)
flags.DEFINE_integer("candidate_steps", 10, "Fine-tuning steps per candidate.", lower_bound=1)
flags.DEFINE_integer("steps_per_epoch", None,
                     "Cap on the final training's steps (its one epoch); default: all images.",
                     lower_bound=1)
flags.mark_flags_as_required(["data_dir", "output_dir"])
FLAGS = flags.FLAGS

_PEAK = re.compile(r"total wall time (\d+) s, peak resident memory ([0-9.]+) GB")


def _rss_gb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e9
    return 0.0


def _watch(process: subprocess.Popen, log_path: str) -> tuple[float, str]:
    """Polls the run's resident memory every 0.5 s until it ends; returns the largest and
    the log's last line at that moment (the phase that needed it)."""
    peak, phase = 0.0, ""
    while process.poll() is None:
        try:
            rss = _rss_gb(process.pid)
        except OSError:
            break
        if rss > peak:
            with open(log_path, errors="replace") as f:
                lines = [line.strip() for line in f if line.strip()]
            peak, phase = rss, (lines[-1][:160] if lines else "start")
        time.sleep(0.5)
    process.wait()
    return peak, phase


def _base_model(path: str) -> None:
    if os.path.exists(path):
        return
    import keras

    model = keras.applications.MobileNetV2(
        input_shape=(224, 224, 3), alpha=0.35, weights=None, classes=10,
        classifier_activation=None)
    model.save(path)


def _run(per_class: int, base: str) -> dict:
    from s2dnas_tf import fileio
    run_dir = os.path.join(FLAGS.output_dir, f"per_class_{per_class}")
    log_path = run_dir + ".log"
    if not os.path.exists(os.path.join(run_dir, "report.json")):
        command = [
            sys.executable, "experiments/search.py", "--dataset=image_folder",
            f"--data_dir={FLAGS.data_dir}", f"--per_class_limit={per_class}",
            f"--base_model={base}", "--preprocessing=tf", f"--output_dir={run_dir}",
            "--num_stages=3", "--flops_budget=0.5", f"--num_candidates={FLAGS.num_candidates}",
            "--search_batch_size=2", "--candidate_epochs=1",
            f"--candidate_steps={FLAGS.candidate_steps}", "--epochs=1",
            f"--batch_size={FLAGS.batch_size}", "--learning_rate=0.01", "--noaugment",
            "--verbose=2", "--overwrite",
        ] + ([f"--steps_per_epoch={FLAGS.steps_per_epoch}"] if FLAGS.steps_per_epoch else [])
        print(f"per class {per_class}: {' '.join(command)}", flush=True)
        with open(log_path, "w") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
            peak, phase = _watch(process, log_path)
        if process.returncode:
            raise RuntimeError(f"search.py failed (exit {process.returncode}); see {log_path}")
        fileio.write_json(run_dir + ".peak.json", {"peak_rss_gb": peak, "phase": phase})
    with open(log_path) as f:
        found = _PEAK.findall(f.read())
    if not found:
        raise RuntimeError(f"{log_path} has no 'peak resident memory' line")
    seconds, peak = found[-1]
    with open(os.path.join(run_dir, "report.json")) as f:
        report = json.load(f)
    phase = None
    if os.path.exists(run_dir + ".peak.json"):
        with open(run_dir + ".peak.json") as f:
            phase = json.load(f)["phase"]
    with open(os.path.join(run_dir, "config.json")) as f:
        steps = json.load(f).get("steps_per_epoch")
    return {
        "per_class": per_class,
        "train_images": report.get("num_train"),
        "final_training_steps": steps or "one epoch",
        "peak_rss_gb": float(peak),
        "wall_seconds": int(seconds),
        "test_accuracy": report["dynamic"]["accuracy"],
        "flops_ratio": report["dynamic"]["flops_ratio"],
        "peak_during": phase,
    }


def main(argv):
    del argv
    try:
        sizes = [int(v) for v in FLAGS.per_class]
    except ValueError:
        print("streaming_memory.py: --per_class takes integers.", file=sys.stderr)
        return 2
    if not os.path.isdir(os.path.join(FLAGS.data_dir, "train")):
        print(f"streaming_memory.py: {FLAGS.data_dir} has no train/ folder.", file=sys.stderr)
        return 2
    from s2dnas_tf import fileio

    os.makedirs(FLAGS.output_dir, exist_ok=True)
    base = os.path.join(FLAGS.output_dir, "mobilenetv2_035_224.keras")
    _base_model(base)
    rows = []
    for per_class in sizes:
        start = time.time()
        rows.append(_run(per_class, base))
        print(f"per class {per_class}: {rows[-1]} ({time.time() - start:.0f} s)", flush=True)
    fileio.write_json(os.path.join(FLAGS.output_dir, "streaming_memory.json"), rows)
    lines = ["| training images / class | final training | peak resident memory | peak during "
             "| wall time | test accuracy | FLOPs ratio |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['per_class']} | {r['final_training_steps']} | {r['peak_rss_gb']:.2f} GB | "
              f"{r['peak_during']} | {r['wall_seconds']} s | {r['test_accuracy']:.4f} | "
              f"{r['flops_ratio']:.3f} |" for r in rows]
    fileio.write_text(os.path.join(FLAGS.output_dir, "streaming_memory.md"),
                      "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    app.run(main)
