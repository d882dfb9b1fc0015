"""ImageNet-class ResNets from torchvision: ``resnet50`` (Bottleneck blocks, 25.6 M parameters
at 1,000 classes, 23.5 M at 10).

torchvision's ``resnet50`` with ``num_classes`` from the dataset; another number of input
channels replaces the 7x7 stem (Kaiming-initialised, as torchvision does). ``img_size`` is
accepted for the common factory signature and unused (global average pooling): any size from
32 up runs; 224 is what ImageNet weights were trained at.

Filter pruning (``rsst_tune.pruning.structure``) finds every conv but the stem; the inner
convolutions of each Bottleneck (``conv1`` and ``conv2``) are physically removable (their
channels feed only the next conv), while ``conv3`` and ``downsample.0`` write to the residual
sum and stay whole in an export.

Weights: ``pretrained_file=PATH`` with torchvision's state dict (saved on a machine that is
online, see docs/data.md); ``timm:resnet50`` has the same architecture and takes
``pretrained`` from the hub.
"""

from __future__ import annotations

from torch import nn

from rsst_tune.errors import ConfigError
from rsst_tune.models.registry import register_model

__all__ = ["resnet50"]


@register_model("resnet50", num_classes=1000, in_chans=3, img_size=224)
def resnet50(
    *, num_classes: int, in_chans: int, img_size: int, pretrained: bool = False
) -> nn.Module:
    """torchvision's ResNet-50 for ``num_classes`` classes and ``in_chans`` input channels."""
    from torchvision.models import resnet50 as tv_resnet50

    if pretrained:
        raise ConfigError(
            "model 'resnet50' takes torchvision's weights from a file: pretrained_file=PATH "
            "(torch.save(torchvision.models.resnet50(weights='IMAGENET1K_V2').state_dict(), "
            "PATH) on a machine that is online), or use timm:resnet50 with pretrained"
        )
    model: nn.Module = tv_resnet50(weights=None, num_classes=num_classes)
    if in_chans != 3:
        stem = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(stem.weight, mode="fan_out", nonlinearity="relu")
        model.conv1 = stem
    return model
