"""CIFAR ResNet-20/32/56 (He et al. 2016, section 4.2).

Three stages of 16/32/64 channels, ``BasicBlock`` s, the parameter-free option-A shortcut
(stride-2 subsampling and zero-padded channels), BatchNorm and Kaiming-normal init. The stem
is the first convolution, ``conv1``; the classifier is ``fc``. ``img_size`` is accepted for
the common factory signature and unused (global average pooling). ResNet-20 with 10 classes
has 269,722 parameters.

Input normalisation is done by the data pipeline (``rsst_tune.data.DeviceData``), not here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsst_tune.models.registry import register_model, reject_pretrained

__all__ = ["BasicBlock", "CifarResNet", "PadShortcut", "resnet20", "resnet32", "resnet56"]


class PadShortcut(nn.Module):
    """Option-A shortcut: take every other pixel, zero-pad the new channels on both sides."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        """Map ``in_planes`` channels to ``planes`` at the given stride, without parameters."""
        super().__init__()
        self.stride = stride
        extra = planes - in_planes
        self.pad_before = extra // 2
        self.pad_after = extra - extra // 2

    def forward(self, x: Tensor) -> Tensor:
        """Subsample and pad ``x``."""
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        """A block from ``in_planes`` to ``planes`` channels; ``stride`` 2 halves the size."""
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = (
            PadShortcut(in_planes, planes, stride)
            if stride != 1 or in_planes != planes
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A CIFAR ResNet with ``blocks_per_stage`` blocks in each of its three stages."""

    def __init__(self, blocks_per_stage: int, *, num_classes: int, in_chans: int) -> None:
        """Build the network for ``in_chans`` input channels and ``num_classes`` outputs."""
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, blocks_per_stage, stride=1)
        self.layer2 = self._stage(16, 32, blocks_per_stage, stride=2)
        self.layer3 = self._stage(32, 64, blocks_per_stage, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.init.kaiming_normal_(module.weight)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Logits for a batch ``x`` of shape [N, in_chans, H, W]."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        logits: Tensor = self.fc(torch.flatten(self.pool(out), 1))
        return logits


@register_model("resnet20", "res20s")
def resnet20(
    *, num_classes: int, in_chans: int, img_size: int, pretrained: bool = False
) -> nn.Module:
    """CIFAR ResNet-20 (3 blocks per stage)."""
    reject_pretrained("resnet20", pretrained)
    return CifarResNet(3, num_classes=num_classes, in_chans=in_chans)


@register_model("resnet32", "res32s")
def resnet32(
    *, num_classes: int, in_chans: int, img_size: int, pretrained: bool = False
) -> nn.Module:
    """CIFAR ResNet-32 (5 blocks per stage)."""
    reject_pretrained("resnet32", pretrained)
    return CifarResNet(5, num_classes=num_classes, in_chans=in_chans)


@register_model("resnet56", "res56s")
def resnet56(
    *, num_classes: int, in_chans: int, img_size: int, pretrained: bool = False
) -> nn.Module:
    """CIFAR ResNet-56 (9 blocks per stage)."""
    reject_pretrained("resnet56", pretrained)
    return CifarResNet(9, num_classes=num_classes, in_chans=in_chans)
