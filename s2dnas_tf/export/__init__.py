"""Deployment (docs/design.md §7): a dynamic-inference SavedModel for TF Serving, and TFLite.

Modules: `stages` (the per-stage split), `folding` (conv + BatchNorm folding), `serving`
(the `tf.Module`s), `saved_model` (TF Serving's layout), `tflite` (conversion and checks).

The multi-stage network `transform` returns computes every stage for every sample. Here it is
cut into one Keras model per stage (`split_stages`) and wrapped in a `tf.Module` whose serving
functions apply the exit rule in TensorFlow control flow (`DynamicModule`):

1. stage 1 runs on the whole batch; a sample exits after stage s < S if its maximum softmax
   probability is >= tau_s (the rule of `calibration.exit_stages`); the last stage always
   answers;
2. for s >= 2, a `tf.cond` on "is any sample left" runs nothing once every sample has
   exited; otherwise it `tf.gather`s the remaining samples' inputs of stage s (images,
   feature maps of stages < s), runs stage s on them alone, and
   `tf.tensor_scatter_nd_update`s its answers back. The conds are nested: stage s + 1's
   cond is inside the branch that ran stage s, on the rows stage s ran on, so a branch not
   taken produces no placeholder feature maps (it answers with what it has).

`export_saved_model` writes it at `<export_dir>/<name>/<version>/` (TF Serving's layout). The
SavedModel loads with TensorFlow alone and has four signatures, all returning `logits`
[N, K] and `probabilities` [N, K] of the stage where each sample exited and `exit_stage`
int32 [N] (1-based):

- `serving_default(images)`: thresholds are the model's variable `thresholds` (S - 1 floats);
- `serving_with_thresholds(images, thresholds)`: thresholds given with each call;
- `serving_batch1(images)`: one image [1, H, W, C], a plain `tf.cond` per stage and no
  gather/scatter; the function `convert_to_tflite` converts (TFLite `IF` ops);
- `serving_any_size(images)`: raw images [N, h, w, C] of any size (one per call), resized
  to H x W in the graph the way the training images were (`data.decoding.resize_images`:
  bilinear, after a centred crop to the model's aspect ratio unless the module was made
  with `crop_to_aspect_ratio=False`), then `serving_default`.

Images are raw pixels (the models carry their own normalisation), float32 [N, H, W, C];
an empty batch gets empty answers. A signature's declared shape is not enforced by
TensorFlow when the signature is called (TF Serving, `loaded.signatures[...]`), so
`serving_default` and `serving_with_thresholds` check the image shape and the number of
thresholds in the graph and fail with a readable InvalidArgumentError; a wrong dtype is
refused by TensorFlow itself. (`serving_batch1`'s fully static shape lets TensorFlow drop
its check; it is there for conversion.)

`convert_to_tflite` converts `serving_batch1`: stages >= 2 become TFLite `IF` ops whose
branches run only for an image that has not exited, with every variable (weights and
thresholds) frozen into constants; float32, or int8 with a float32 interface. The TFLite
model takes [1, H, W, C] float32; LiteRT rejects another dtype, but its signature runner
resizes the input to whatever shape it is given (the in-graph check does not survive
conversion), so a client should send exactly [1, H, W, C] (TFLite takes the model's fixed
size; resize on the device, or use the SavedModel's `serving_any_size`).

`export_static` writes a static model with the same interface (`exit_stage` always 1), so
static and dynamic models can be served and timed the same way.
"""

from s2dnas_tf.export.folding import fold_batchnorm
from s2dnas_tf.export.saved_model import export_saved_model, export_static
from s2dnas_tf.export.serving import (
    OUTPUT_NAMES,
    SERVING_ANY_SIZE,
    SERVING_BATCH1,
    SERVING_DEFAULT,
    SERVING_WITH_THRESHOLDS,
    DynamicModule,
    StaticModule,
)
from s2dnas_tf.export.stages import IMAGES_KEY, SplitNet, StageModel, call_stage, split_stages
from s2dnas_tf.export.tflite import convert_to_tflite, tflite_op_names, tflite_subgraphs

__all__ = [
    "DynamicModule",
    "IMAGES_KEY",
    "OUTPUT_NAMES",
    "SERVING_ANY_SIZE",
    "SERVING_BATCH1",
    "SERVING_DEFAULT",
    "SERVING_WITH_THRESHOLDS",
    "SplitNet",
    "StageModel",
    "StaticModule",
    "call_stage",
    "convert_to_tflite",
    "export_saved_model",
    "export_static",
    "fold_batchnorm",
    "split_stages",
    "tflite_op_names",
    "tflite_subgraphs",
]
