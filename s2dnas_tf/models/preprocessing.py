"""`InputPreprocessing`: keras.applications' `preprocess_input` as a model's first layer, and
`with_preprocessing`, which puts it in front of a model.

The project's one rule is that data pipelines yield raw pixels (0..255) and the model
normalises them itself, so the exported model takes raw images. A keras.applications model
(or one fine-tuned from it) usually expects its family's `preprocess_input` to have run
first; `with_preprocessing(model, mode)` moves that step into the model, where it is
trained, searched, calibrated and exported with it:

- `"tf"` (MobileNet, MobileNetV2, Xception, InceptionV3, ...): `x / 127.5 - 1`.
- `"torch"` (DenseNet): `(x / 255 - mean) / std` with ImageNet's RGB mean and std.
- `"caffe"` (VGG, ResNet50, ResNet101, ...): RGB -> BGR, then minus ImageNet's BGR mean.
- `"none"`: the model already takes raw pixels (the EfficientNet, ConvNeXt and RegNet
  families have their preprocessing built in, as do models with an `InputPreprocessing`).

The split rewriter computes this layer once on the image, shared by every stage (like the
input `Normalization` of `with_input_normalization`).
"""

from __future__ import annotations

import keras

from s2dnas_tf import conventions

PREPROCESSING_MODES = ("none", "tf", "torch", "caffe")
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)
_CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


def _check_mode(mode, allow_none: bool) -> str:
    modes = PREPROCESSING_MODES if allow_none else PREPROCESSING_MODES[1:]
    if mode not in modes:
        raise ValueError(
            f"Expected a preprocessing mode in {list(modes)} (keras.applications' "
            f"preprocess_input modes). Received: mode={mode!r}"
        )
    return mode


@keras.saving.register_keras_serializable(package="s2dnas_tf")
class InputPreprocessing(keras.layers.Layer):
    """`keras.applications.imagenet_utils.preprocess_input(x, mode=mode)` as a layer: raw
    RGB pixels (float, 0..255, channels last) in, the family's model input out.

    Args:
        mode: "tf", "torch" or "caffe" (see the module docstring).
    """

    def __init__(self, mode: str, **kwargs):
        super().__init__(**kwargs)
        self.mode = _check_mode(mode, allow_none=False)

    def build(self, input_shape):
        channels = input_shape[-1]
        if self.mode in ("torch", "caffe") and channels != 3:
            raise ValueError(
                f"Preprocessing mode {self.mode!r} is for RGB images (3 channels). Received: "
                f"input shape {tuple(input_shape)}"
            )

    def call(self, inputs):
        x = keras.ops.cast(inputs, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "torch":
            mean = keras.ops.convert_to_tensor(_TORCH_MEAN, self.compute_dtype)
            std = keras.ops.convert_to_tensor(_TORCH_STD, self.compute_dtype)
            return (x / 255.0 - mean) / std
        mean = keras.ops.convert_to_tensor(_CAFFE_BGR_MEAN, self.compute_dtype)
        return keras.ops.flip(x, axis=-1) - mean

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def with_preprocessing(model: keras.Model, mode: str) -> keras.Model:
    """`model` with `InputPreprocessing(mode)` in front, so it takes raw pixels (0..255);
    `model` itself for mode "none".

    Args:
        model: A functional model taking preprocessed images (one image input).
        mode: One of `PREPROCESSING_MODES`.

    Returns:
        A new functional model `raw images -> model(preprocessed images)` with `model`'s
        name, or `model` for "none".

    Raises:
        ValueError: On an unknown mode, a torch/caffe mode for non-RGB input, or a model
            that already contains an `InputPreprocessing` (it would run twice).
    """
    _check_mode(mode, allow_none=True)
    if mode == "none":
        return model
    found = [layer.name for layer in conventions.leaf_layers(model) if isinstance(layer, InputPreprocessing)]
    if found:
        raise ValueError(
            f"Model {model.name!r} already preprocesses its input (layer {found[0]!r}); "
            f"adding mode {mode!r} would preprocess twice. Pass preprocessing 'none'."
        )
    inputs = keras.Input(tuple(model.inputs[0].shape[1:]), name="images")
    x = InputPreprocessing(mode, name=f"preprocess_{mode}")(inputs)
    return keras.Model(inputs, model(x), name=model.name)

