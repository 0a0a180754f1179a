"""Side measurement (experiments/results/README.md, "Channel counts and TFLite time"):
float TFLite time of ResNet-20 at six widths, random weights, XNNPACK, one thread, timed in
turns. Run: PYTHONPATH=. python experiments/results/side/channel_widths_tflite.py 3000"""
import os
import sys

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import numpy as np
from s2dnas_tf import count_flops, export, latency
from s2dnas_tf.models.resnet_cifar import resnet_cifar

widths = [0.25, 0.375, 0.5, 0.625, 0.75, 1.0]  # 4/8/16, 6/12/24, 8/16/32, 10/20/40, 12/24/48, 16/32/64
out = "/tmp/channel_widths"
models = {}
flops = {}
for w in widths:
    m = resnet_cifar(20, 10, (32, 32, 3), w)
    flops[w] = count_flops(m)
    saved = export.export_static(m, f"{out}/w{w}/saved_model", f"w{int(w*1000)}", overwrite=True)
    tfl = export.convert_to_tflite(saved, f"{out}/w{w}/model.tflite")
    models[(w, latency.TFLITE)] = (latency.TFLITE, tfl)
rng = np.random.default_rng(0)
images = latency.batch1_images(rng.random((int(sys.argv[1]) if len(sys.argv) > 1 else 2000, 32, 32, 3), dtype=np.float32))
timed = latency.time_models(models, images, 20, 1)
base = timed[(1.0, latency.TFLITE)]["mean_ms"]
for w in widths:
    t = timed[(w, latency.TFLITE)]
    print(f"width {w:5.3f}: FLOPs {flops[w]/flops[1.0]:.3f}x  TFLite {t['mean_ms']:.3f} ms ({t['mean_ms']/base:.2f}x) median {t['median_ms']:.3f}")
