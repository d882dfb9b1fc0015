"""docs/examples/my_model.py: two models of your own, in plain PyTorch (docs/extending.md).

The pruning finds units by module type and attribute name, not by class:

- `small_convnet`, a CNN: every `nn.Conv2d` but the first (the stem) is a layer of filters;
  filter c is output channel c of the conv and of the `BatchNorm2d` right after it.
- `tiny_transformer`, a ViT: a block with `attn` (linears `qkv` and `proj`, an integer
  `num_heads`) and `mlp` (linears `fc1` and `fc2`) has heads and neurons as units.

A factory gets the dataset's shape as keywords (`num_classes`, `in_chans`, `img_size`) and
`pretrained`; it returns an `nn.Module` that maps normalised [B, in_chans, img_size,
img_size] images to [B, num_classes] logits.

    import my_model                          # registers "small_convnet" and "tiny_transformer"
    rsst_tune.run_trial(model="small_convnet", filter_ratio=0.5, ...)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsst_tune.errors import ConfigError
from rsst_tune.models import register_model, reject_pretrained


# --------------------------------------------------------------------------- a CNN
class SmallConvNet(nn.Module):
    """stem -> conv1 -> max-pool -> conv2 -> global average pool -> linear classifier."""

    def __init__(self, *, num_classes: int, in_chans: int, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_chans, width, 3, padding=1, bias=False)  # kept (prune_stem)
        self.bn0 = nn.BatchNorm2d(width)
        self.conv1 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)  # 32 filters
        self.bn1 = nn.BatchNorm2d(2 * width)  # right after conv1: pruned with its filters
        self.conv2 = nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False)  # 32 filters
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)  # the classifier: never pruned

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn0(self.stem(x)))
        x = F.relu(self.bn1(self.conv1(x)))  # conv1's channels reach only conv2: removable
        x = F.max_pool2d(x, 2)
        x = F.relu(self.bn2(self.conv2(x)))  # conv2's reach only fc: removable
        logits: Tensor = self.fc(torch.flatten(self.pool(x), 1))
        return logits


@register_model("small_convnet", num_classes=10, in_chans=3, img_size=32)
def small_convnet(
    *, num_classes: int, in_chans: int, img_size: int, pretrained: bool = False
) -> nn.Module:
    """Any img_size from 2 up: global pooling makes the classifier size-independent."""
    reject_pretrained("small_convnet", pretrained)
    return SmallConvNet(num_classes=num_classes, in_chans=in_chans)


# --------------------------------------------------------------------------- a ViT
class Attention(nn.Module):
    """Multi-head self-attention in timm's layout: each head is a unit."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads  # an int: an export lowers it as it removes heads
        self.head_dim = dim // num_heads  # never changes
        # qkv's 3 * dim output rows: [q | k | v], each [head 0 | head 1 | ...] of head_dim rows
        self.qkv = nn.Linear(dim, 3 * dim)
        # proj's dim input columns: [head 0 | head 1 | ...], head_dim columns each
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        heads, d = self.num_heads, self.head_dim  # read each call: the export changes heads
        q, k, v = self.qkv(x).reshape(b, n, 3, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # [b, heads, n, d]
        y: Tensor = self.proj(out.transpose(1, 2).reshape(b, n, heads * d))
        return y


class Mlp(nn.Module):
    """Neuron i: row i of fc1 (and its bias), column i of fc2. The activation must map 0 to
    0 (GELU, ReLU), so that a removed neuron contributes nothing."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        y: Tensor = self.fc2(self.act(self.fc1(x)))
        return y


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)  # the names `attn` and `mlp` matter
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        y: Tensor = x + self.mlp(self.norm2(x))
        return y


class TinyTransformer(nn.Module):
    """Patches -> blocks -> mean over tokens -> linear classifier."""

    def __init__(
        self, *, num_classes: int, in_chans: int, img_size: int, patch: int = 2, dim: int = 32
    ) -> None:
        super().__init__()
        tokens = (img_size // patch) ** 2
        self.patch_embed = nn.Conv2d(in_chans, dim, patch, stride=patch)  # never pruned
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))  # sized by img_size
        self.blocks = nn.Sequential(*(Block(dim, num_heads=4, hidden=2 * dim) for _ in range(2)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)  # the classifier: never pruned
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        logits: Tensor = self.head(self.norm(self.blocks(x)).mean(dim=1))
        return logits


@register_model("tiny_transformer", num_classes=10, in_chans=1, img_size=8)
def tiny_transformer(
    *, num_classes: int, in_chans: int, img_size: int, pretrained: bool = False
) -> nn.Module:
    """2 blocks of 4 heads (head_dim 8) and 64 MLP neurons; img_size a multiple of 2."""
    reject_pretrained("tiny_transformer", pretrained)
    if img_size % 2:
        raise ConfigError(f"tiny_transformer needs an even img_size (patches of 2), got {img_size}")
    return TinyTransformer(num_classes=num_classes, in_chans=in_chans, img_size=img_size)
