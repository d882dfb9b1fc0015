"""Vision Transformers for small images, built from timm's ``VisionTransformer``.

All use a class token, token pooling, qkv bias and no dropout. ``img_size`` and
``in_chans`` come from the dataset; the patch size is fixed per model. With 10 classes,
``vit_tiny`` at 3x32x32 has 2,697,610 parameters and ``vit_digits`` at 1x8x8 has 136,138.

Input normalisation is done by the data pipeline (``rsst_tune.data.DeviceData``), not here.
Pretrained weights exist only for ``timm:`` models.
"""

from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from rsst_tune.errors import ConfigError
from rsst_tune.models.registry import register_model, reject_pretrained

__all__ = ["build_vit", "vit_base", "vit_digits", "vit_small", "vit_tiny"]


def build_vit(
    name: str,
    *,
    num_classes: int,
    in_chans: int,
    img_size: int,
    patch_size: int,
    embed_dim: int,
    depth: int,
    num_heads: int,
    mlp_ratio: float,
) -> VisionTransformer:
    """A timm ``VisionTransformer`` with a class token, qkv bias and dropout 0."""
    if img_size % patch_size:
        below, above = (
            (img_size // patch_size) * patch_size,
            (img_size // patch_size + 1) * patch_size,
        )
        near = f"{below} or {above}" if below else f"{above}"
        raise ConfigError(
            f"model {name!r} needs an image size divisible by its patch size {patch_size} "
            f"(valid sizes: multiples of {patch_size}, e.g. {near}), got {img_size}"
        )
    return VisionTransformer(
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        num_classes=num_classes,
        global_pool="token",
        embed_dim=embed_dim,
        depth=depth,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=True,
        class_token=True,
        drop_rate=0.0,
        pos_drop_rate=0.0,
        proj_drop_rate=0.0,
        attn_drop_rate=0.0,
        drop_path_rate=0.0,
    )


@register_model("vit_tiny")
def vit_tiny(
    *, num_classes: int, in_chans: int, img_size: int, pretrained: bool = False
) -> nn.Module:
    """ViT-tiny for CIFAR: patch 4, width 192, depth 9, 3 heads, MLP ratio 2."""
    reject_pretrained("vit_tiny", pretrained)
    return build_vit(
        "vit_tiny", num_classes=num_classes, in_chans=in_chans, img_size=img_size,
        patch_size=4, embed_dim=192, depth=9, num_heads=3, mlp_ratio=2.0,
    )  # fmt: skip


@register_model("vit_small")
def vit_small(
    *, num_classes: int, in_chans: int, img_size: int, pretrained: bool = False
) -> nn.Module:
    """ViT-small for CIFAR: patch 4, width 384, depth 12, 6 heads, MLP ratio 4."""
    reject_pretrained("vit_small", pretrained)
    return build_vit(
        "vit_small", num_classes=num_classes, in_chans=in_chans, img_size=img_size,
        patch_size=4, embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0,
    )  # fmt: skip


@register_model("vit_base")
def vit_base(
    *, num_classes: int, in_chans: int, img_size: int, pretrained: bool = False
) -> nn.Module:
    """ViT-base for CIFAR: patch 4, width 768, depth 12, 12 heads, MLP ratio 4."""
    reject_pretrained("vit_base", pretrained)
    return build_vit(
        "vit_base", num_classes=num_classes, in_chans=in_chans, img_size=img_size,
        patch_size=4, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0,
    )  # fmt: skip


@register_model("vit_digits", num_classes=10, in_chans=1, img_size=8)
def vit_digits(
    *, num_classes: int, in_chans: int, img_size: int, pretrained: bool = False
) -> nn.Module:
    """ViT for the 8x8 digits: patch 2, width 64, depth 4, 4 heads, MLP ratio 2."""
    reject_pretrained("vit_digits", pretrained)
    return build_vit(
        "vit_digits", num_classes=num_classes, in_chans=in_chans, img_size=img_size,
        patch_size=2, embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0,
    )  # fmt: skip
