"""Writes a large image folder of mixed sizes from an image folder of small images: the
photo-like set the streaming test of issue 21 runs on.

Each source image (e.g. CIFAR-10's 32x32 JPEGs) is upscaled to a random height and width in
[--min_size, --max_size] (bilinear; the aspect ratio changes too) and written as a JPEG to
the same class folder layout (`train/<class>/NNNN.jpg`, `test/<class>/...`), the layout
`keras.utils.image_dataset_from_directory` and `--dataset=image_folder` read.

    python experiments/make_image_folder.py --source=../shared/data/cifar10-jpeg \
        --output_dir=runs/photos50k --per_class_train=5000 --per_class_test=100

Resumable: files already written are kept (the sizes are drawn from --seed per file, so a
rerun writes the same images). Progress every 5,000 files.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402

flags.DEFINE_string("source", None, "An image folder: train/<class>/*.jpg, test/<class>/...")
flags.DEFINE_string("output_dir", None, "Where the new image folder goes.")
flags.DEFINE_integer("per_class_train", 5000, "Training images per class (the first N).",
                     lower_bound=1)
flags.DEFINE_integer("per_class_test", 100, "Test images per class (the first N).",
                     lower_bound=1)
flags.DEFINE_integer("min_size", 160, "Smallest height/width.", lower_bound=1)
flags.DEFINE_integer("max_size", 256, "Largest height/width.", lower_bound=1)
flags.DEFINE_integer("quality", 90, "JPEG quality.", lower_bound=1, upper_bound=100)
flags.DEFINE_integer("seed", 0, "Seed of the sizes.")
flags.mark_flags_as_required(["source", "output_dir"])
FLAGS = flags.FLAGS


def _jobs():
    """(source path, output path) of every file to write, in class and file order."""
    jobs = []
    for split, limit in (("train", FLAGS.per_class_train), ("test", FLAGS.per_class_test)):
        split_dir = os.path.join(FLAGS.source, split)
        if not os.path.isdir(split_dir):
            raise ValueError(f"--source {FLAGS.source} has no {split}/ folder.")
        for name in sorted(os.listdir(split_dir)):
            class_dir = os.path.join(split_dir, name)
            if not os.path.isdir(class_dir):
                continue
            files = sorted(f for f in os.listdir(class_dir)
                           if f.lower().endswith((".jpg", ".jpeg", ".png")))[:limit]
            out_dir = os.path.join(FLAGS.output_dir, split, name)
            os.makedirs(out_dir, exist_ok=True)
            jobs += [(os.path.join(class_dir, f), os.path.join(out_dir, os.path.splitext(f)[0]
                                                               + ".jpg")) for f in files]
    return jobs


def main(argv):
    del argv
    if FLAGS.min_size > FLAGS.max_size:
        print("make_image_folder.py: --min_size must be <= --max_size.", file=sys.stderr)
        return 2
    try:
        jobs = _jobs()
    except ValueError as e:
        print(f"make_image_folder.py: {e}", file=sys.stderr)
        return 2
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(FLAGS.seed)
    sizes = rng.integers(FLAGS.min_size, FLAGS.max_size + 1, size=(len(jobs), 2))
    todo = [i for i, (_, out) in enumerate(jobs) if not os.path.exists(out)]
    print(f"{len(jobs)} files, {len(jobs) - len(todo)} already written", flush=True)
    if not todo:
        return 0

    def write(source, out, size):
        image = tf.io.decode_image(tf.io.read_file(source), channels=3,
                                   expand_animations=False)
        image = tf.image.resize(image, size, method="bilinear")
        encoded = tf.io.encode_jpeg(tf.cast(tf.round(tf.clip_by_value(image, 0, 255)),
                                            tf.uint8), quality=FLAGS.quality)
        # Written under a temporary name, then renamed: a stopped run leaves no half file.
        tf.io.write_file(out + ".part", encoded)
        return out

    ds = tf.data.Dataset.from_tensor_slices((
        [jobs[i][0] for i in todo], [jobs[i][1] for i in todo], sizes[todo].astype(np.int32),
    )).map(write, num_parallel_calls=tf.data.AUTOTUNE)
    start = time.time()
    for count, out in enumerate(ds.as_numpy_iterator(), 1):
        out = out.decode()
        os.replace(out + ".part", out)
        if count % 5000 == 0 or count == len(todo):
            print(f"{count}/{len(todo)} written, {time.time() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    app.run(main)
