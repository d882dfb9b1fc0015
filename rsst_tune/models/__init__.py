"""Model registry and the built-in models (ViTs, CIFAR ResNets, VGG, torchvision ResNet-50).

``create_model(name, num_classes=..., in_chans=..., img_size=...)`` (shape arguments
optional: each model has a default shape) builds a registered
model or, for ``timm:NAME``, any timm model. Models take inputs already normalised by the
data pipeline (``rsst_tune.data``); none normalises inside. ``inputs`` says which image sizes
a model takes and how its input is normalised; ``weights`` loads pretrained weights from a
local file (``pretrained_file``).
"""

from __future__ import annotations

from rsst_tune.models import cifar_resnet, imagenet_resnet, vgg, vit
from rsst_tune.models.inputs import check_img_size, default_img_size, input_stats, patch_size
from rsst_tune.models.registry import (
    MODELS,
    TIMM_PREFIX,
    ModelEntry,
    ModelFactory,
    canonical_name,
    check_model_name,
    create_model,
    is_registered,
    list_models,
    register_model,
    reject_pretrained,
    unregister_model,
)
from rsst_tune.models.weights import load_pretrained_file, read_state_dict

__all__ = [
    "MODELS",
    "TIMM_PREFIX",
    "ModelEntry",
    "ModelFactory",
    "canonical_name",
    "check_img_size",
    "check_model_name",
    "cifar_resnet",
    "create_model",
    "default_img_size",
    "imagenet_resnet",
    "input_stats",
    "is_registered",
    "list_models",
    "load_pretrained_file",
    "patch_size",
    "read_state_dict",
    "register_model",
    "reject_pretrained",
    "unregister_model",
    "vgg",
    "vit",
]
