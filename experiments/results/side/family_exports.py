"""Side measurement (issue 19): SavedModel and TFLite exports of every keras.applications
family's 3-stage network, beyond the one family the default test run exports.

For each family of `tests/test_applications.py::FAMILIES` (its smallest input size, random
weights, randomised BatchNorm statistics, the space's default architecture), runs that
file's `check_exports` in a process of its own: the SavedModel answers every stage's Keras
logits when thresholds send all images there, the float TFLite file the last stage's
(within 1e-4 x max(1, |logits|)). Appends one JSON line per family to the output file and
skips families already there (resumable):

    PYTHONPATH=. python experiments/results/side/family_exports.py /tmp/family_exports.jsonl
    PYTHONPATH=. python experiments/results/side/family_exports.py /tmp/family_exports.jsonl ResNet50

(a family name runs that family alone, in this process).
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _one(name: str) -> dict:
    import keras
    import numpy as np

    import s2dnas_tf as s2d
    from tests import helpers
    from tests.test_applications import FAMILIES, check_exports

    size = FAMILIES[name]
    keras.utils.set_random_seed(0)
    model = getattr(keras.applications, name)(
        weights=None, input_shape=(size, size, 3), classes=10, classifier_activation=None)
    helpers.randomize_normalization_stats(model)
    net = s2d.transform(model, s2d.SearchSpace.from_model(model, num_stages=3).default_arch())
    x = helpers.images(model, n=3, scale=255.0)
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        check_exports(net, x, pathlib.Path(tmp))
    logits = max(float(np.abs(np.asarray(o)).max()) for o in net(x))
    return {"family": name, "size": size, "passed": True, "seconds": time.time() - start,
            "max_abs_logit": logits}


def main() -> int:
    out = sys.argv[1]
    if len(sys.argv) > 2:
        name = sys.argv[2]
        try:
            record = _one(name)
        except Exception as e:  # a failing family is a result, recorded with its error
            record = {"family": name, "passed": False, "error": f"{type(e).__name__}: {e}"[:500]}
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")
        return 0
    from tests.test_applications import FAMILIES

    done = set()
    if os.path.exists(out):
        with open(out) as f:
            done = {json.loads(line)["family"] for line in f if line.strip()}
    for name in FAMILIES:
        if name in done:
            continue
        start = time.time()
        subprocess.run([sys.executable, __file__, out, name], check=False)
        print(f"{name}: {time.time() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
