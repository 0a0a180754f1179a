"""Reference model zoo: CIFAR ResNets, VGG-16-BN, MobileNetV2, as functional models.

```python
from s2dnas_tf.models import build_model, list_models
model = build_model("resnet20", num_classes=10)  # logits, no softmax
```
"""

from s2dnas_tf.models.preprocessing import (
    PREPROCESSING_MODES,
    InputPreprocessing,
    with_preprocessing,
)
from s2dnas_tf.models.registry import (
    build_model,
    list_models,
    register_model,
    with_input_normalization,
)

# Imported for their side effect: each module registers its models.
from s2dnas_tf.models import mobilenetv2_cifar as _mobilenetv2_cifar  # noqa: F401
from s2dnas_tf.models import resnet_cifar as _resnet_cifar  # noqa: F401
from s2dnas_tf.models import vgg_cifar as _vgg_cifar  # noqa: F401

__all__ = [
    "PREPROCESSING_MODES",
    "InputPreprocessing",
    "build_model",
    "list_models",
    "register_model",
    "with_input_normalization",
    "with_preprocessing",
]
