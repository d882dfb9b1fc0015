"""VGG-16 with BatchNorm for small images (CIFAR-style).

Configuration D (13 3x3 convolutions, each followed by BatchNorm and ReLU; five 2x2
max-pools), then a global average pool to 1x1 and a single ``Linear(512, num_classes)``.
A max-pool that would shrink the feature map below 1x1 is replaced by ``nn.Identity`` (so
module indices stay the same at every image size), which lets the model run on the 8x8
digits. Convolutions are ``features[i]``; the stem is ``features[0]``; the classifier is
``classifier``.

Input normalisation is done by the data pipeline (``rsst_tune.data.DeviceData``), not here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rsst_tune.models.registry import register_model, reject_pretrained

__all__ = ["CFG_D", "CifarVGG", "vgg16_bn"]

CFG_D: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M",
)  # fmt: skip


class CifarVGG(nn.Module):
    """VGG with BatchNorm, global average pooling and one linear classifier."""

    def __init__(
        self, cfg: tuple[int | str, ...], *, num_classes: int, in_chans: int, img_size: int
    ) -> None:
        """Build the layers of ``cfg`` (ints are conv widths, ``"M"`` a 2x2 max-pool)."""
        super().__init__()
        layers: list[nn.Module] = []
        channels, size = in_chans, img_size
        for item in cfg:
            if item == "M":
                if size >= 2:
                    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
                    size //= 2
                else:
                    layers.append(nn.Identity())
            else:
                assert isinstance(item, int)
                layers += [
                    nn.Conv2d(channels, item, kernel_size=3, padding=1),
                    nn.BatchNorm2d(item),
                    nn.ReLU(inplace=True),
                ]
                channels = item
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch ``x`` of shape [N, in_chans, H, W]."""
        logits: Tensor = self.classifier(torch.flatten(self.pool(self.features(x)), 1))
        return logits


@register_model("vgg16_bn")
def vgg16_bn(
    *, num_classes: int, in_chans: int, img_size: int, pretrained: bool = False
) -> nn.Module:
    """VGG-16 (configuration D) with BatchNorm, for CIFAR-sized (or smaller) images."""
    reject_pretrained("vgg16_bn", pretrained)
    return CifarVGG(CFG_D, num_classes=num_classes, in_chans=in_chans, img_size=img_size)
