"""Model registry and the built-in models (ViTs, CIFAR ResNets, VGG).

``create_model(name, num_classes=..., in_chans=..., img_size=...)`` (shape arguments
optional: each model has a default shape) builds a registered
model or, for ``timm:NAME``, any timm model. Models take inputs already normalised by the
data pipeline (``rsst_tune.data``); none normalises inside.
"""

from __future__ import annotations

from rsst_tune.models import cifar_resnet, vgg, vit
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

__all__ = [
    "MODELS",
    "TIMM_PREFIX",
    "ModelEntry",
    "ModelFactory",
    "canonical_name",
    "check_model_name",
    "cifar_resnet",
    "create_model",
    "is_registered",
    "list_models",
    "register_model",
    "reject_pretrained",
    "unregister_model",
    "vgg",
    "vit",
]
